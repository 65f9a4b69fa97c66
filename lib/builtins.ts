import type { GatewayConfig, ServiceConfig } from './config/schema.js';
import type { GatewayRole } from './core/gateway.js';
import type { GatewayPlugin } from './core/plugin.js';
import { staticDiscovery } from '../plugins/static-discovery/index.js';

/**
 * A built-in plugin whose module loads when the gateway starts, not when meshgate is imported:
 * a gateway without Redis, JWTs or breakers never loads ioredis, jose or opossum (tens of MB of
 * code and heap). The stub carries the real plugin's name, so dependency checks still hold.
 */
function lazy<O>(name: string, load: () => Promise<(options: O) => GatewayPlugin>, options: O): GatewayPlugin {
  return {
    name,
    async setup(gateway) {
      const factory = await load();
      await factory(options).setup(gateway);
    },
  };
}

/**
 * The one place that maps config sections to built-in plugins. A section that is absent leaves its
 * plugin off; static discovery is always on. Order matters: discovery first, then what reads it.
 */
export function builtinPlugins(config: GatewayConfig, role: GatewayRole = 'standalone'): GatewayPlugin[] {
  const services = Object.values(config.services);
  const anyService = (section: keyof ServiceConfig): boolean => services.some((s) => s[section] !== undefined);
  const plugins: GatewayPlugin[] = [staticDiscovery()];
  // In cluster mode discovery and health checks run once, in the primary; workers mirror its registry.
  const controlPlane = role !== 'worker';
  if (controlPlane && config.discovery?.redis) {
    plugins.push(lazy('redis-discovery', async () => (await import('../plugins/redis-discovery/index.js')).redisDiscovery, config.discovery.redis));
  }
  if (controlPlane && anyService('dns')) {
    plugins.push(lazy('dns-discovery', async () => (await import('../plugins/dns-discovery/index.js')).dnsDiscovery, config.discovery?.dns ?? {}));
  }
  // Observability first: its onRequest middleware then wraps everything the others do.
  if (config.tracing !== false) {
    plugins.push(lazy('trace-context', async () => (await import('../plugins/trace-context/index.js')).traceContext, typeof config.tracing === 'object' ? config.tracing : {}));
  }
  if (config.metrics !== false && (config.metrics !== undefined || config.admin !== undefined)) {
    const options = { ...(typeof config.metrics === 'object' ? config.metrics : {}), cluster: role === 'standalone' ? undefined : role };
    plugins.push(lazy('metrics', async () => (await import('../plugins/metrics/index.js')).metrics, options));
  }
  if (config.accessLog !== undefined && config.accessLog !== false) {
    plugins.push(lazy('access-log', async () => (await import('../plugins/access-log/index.js')).accessLog, {}));
  }
  // Who is asking, then how often: rate limits may key on the authenticated subject.
  if (config.routes.some((r) => r.auth)) plugins.push(lazy('auth', async () => (await import('../plugins/auth/index.js')).auth, {}));
  if (config.routes.some((r) => r.rateLimit)) plugins.push(lazy('rate-limit', async () => (await import('../plugins/rate-limit/index.js')).rateLimit, {}));
  if (controlPlane && anyService('healthCheck')) {
    plugins.push(lazy('health-check', async () => (await import('../plugins/health-check/index.js')).healthChecks, {}));
  }
  if (anyService('circuitBreaker')) plugins.push(lazy('circuit-breaker', async () => (await import('../plugins/circuit-breaker/index.js')).circuitBreaker, {}));
  if (anyService('retries')) plugins.push(lazy('retries', async () => (await import('../plugins/retries/index.js')).retries, {}));
  return plugins;
}
