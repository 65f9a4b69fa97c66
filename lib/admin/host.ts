import type { Server } from 'node:http';
import type { PluginHost } from '../core/plugin.js';
import type { ConfigSnapshot, ReloadOptions } from '../core/snapshot.js';

/** What the admin server needs from its gateway: the plugin surface, and whether the gateway takes traffic. */
export interface AdminHost extends PluginHost {
  /** True once plugins are set up and until close() begins (`GET /readyz`). */
  readonly isReady: boolean;
  /** The proxy's listener, once listening: a registration must not point back at it. */
  readonly server: Server | null;
  /** The config snapshot in force. */
  readonly snapshot: ConfigSnapshot;
  /** The config document in force, as given. */
  readonly document: unknown;
  checkReload(document: unknown, options?: ReloadOptions & { report?: boolean }): Promise<ConfigSnapshot>;
  reload(document: unknown, options?: ReloadOptions): Promise<ConfigSnapshot>;
}
