import type { GatewayConfig, ServiceConfig } from './config/schema.js';
import type { GatewayRole } from './gateway.js';
import type { GatewayPlugin } from './plugin.js';
import { accessLog } from '../plugins/access-log/index.js';
import { auth } from '../plugins/auth/index.js';
import { circuitBreaker } from '../plugins/circuit-breaker/index.js';
import { dnsDiscovery } from '../plugins/dns-discovery/index.js';
import { healthChecks } from '../plugins/health-check/index.js';
import { metrics } from '../plugins/metrics/index.js';
import { rateLimit } from '../plugins/rate-limit/index.js';
import { redisDiscovery } from '../plugins/redis-discovery/index.js';
import { retries } from '../plugins/retries/index.js';
import { staticDiscovery } from '../plugins/static-discovery/index.js';
import { traceContext } from '../plugins/trace-context/index.js';

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
  if (controlPlane && config.discovery?.redis) plugins.push(redisDiscovery(config.discovery.redis));
  if (controlPlane && anyService('dns')) plugins.push(dnsDiscovery(config.discovery?.dns ?? {}));
  // Observability first: its onRequest middleware then wraps everything the others do.
  if (config.tracing !== false) plugins.push(traceContext(typeof config.tracing === 'object' ? config.tracing : {}));
  if (config.metrics !== false && (config.metrics !== undefined || config.admin !== undefined)) {
    plugins.push(metrics({ ...(typeof config.metrics === 'object' ? config.metrics : {}), cluster: role === 'standalone' ? undefined : role }));
  }
  if (config.accessLog !== undefined && config.accessLog !== false) plugins.push(accessLog());
  // Who is asking, then how often: rate limits may key on the authenticated subject.
  if (config.routes.some((r) => r.auth)) plugins.push(auth());
  if (config.routes.some((r) => r.rateLimit)) plugins.push(rateLimit());
  if (controlPlane && anyService('healthCheck')) plugins.push(healthChecks());
  if (anyService('circuitBreaker')) plugins.push(circuitBreaker());
  if (anyService('retries')) plugins.push(retries());
  return plugins;
}
