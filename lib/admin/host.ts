import type { PluginHost } from '../core/plugin.js';

/** What the admin server needs from its gateway: the plugin surface, and whether the gateway takes traffic. */
export interface AdminHost extends PluginHost {
  /** True once plugins are set up and until close() begins (`GET /readyz`). */
  readonly isReady: boolean;
}
