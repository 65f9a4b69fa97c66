import type { GatewayConfig } from './config/schema.js';
import type { GatewayPlugin } from './plugin.js';
import { staticDiscovery } from '../plugins/static-discovery/index.js';

/**
 * The one place that maps config sections to built-in plugins. A section that is absent leaves its
 * plugin off; static discovery is always on. Order matters: discovery first, then what reads it.
 */
export function builtinPlugins(_config: GatewayConfig): GatewayPlugin[] {
  const plugins: GatewayPlugin[] = [staticDiscovery()];
  return plugins;
}
