import type { PluginHost } from '../core/plugin.js';

/** What the admin server needs from its gateway: the plugin surface (config, reloads, readiness, the listener). */
export type AdminHost = PluginHost;
