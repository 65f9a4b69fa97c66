import type { GatewayConfig } from './config/schema.js';
import type { SectionOwner } from './config/sections.js';
import type { GatewayPlugin, GatewayRole } from './core/plugin.js';
import { accessLogSections } from '../plugins/access-log/config.js';
import { authSections } from '../plugins/auth/config.js';
import { authorizationSections } from '../plugins/authorization/config.js';
import { corsSections } from '../plugins/cors/config.js';
import { dashboardSections } from '../plugins/dashboard/config.js';
import { circuitBreakerSections } from '../plugins/circuit-breaker/config.js';
import { dnsDiscoverySections } from '../plugins/dns-discovery/config.js';
import { faultSections } from '../plugins/fault-injection/config.js';
import { healthCheckSections } from '../plugins/health-check/config.js';
import { loadSheddingSections } from '../plugins/load-shedding/config.js';
import { metricsSections } from '../plugins/metrics/config.js';
import { mirrorSections } from '../plugins/mirror/config.js';
import { outlierDetectionSections } from '../plugins/outlier-detection/config.js';
import { rateLimitSections } from '../plugins/rate-limit/config.js';
import { redisDiscoverySections } from '../plugins/redis-discovery/config.js';
import { retriesSections } from '../plugins/retries/config.js';
import { traceContextSections } from '../plugins/trace-context/config.js';
import { zoneAwareSections } from '../plugins/zone-aware/config.js';

/** A built-in plugin as the catalogue knows it, before its module is loaded. */
interface Builtin<O> extends SectionOwner {
  /** Loads the plugin's module and returns its factory. */
  readonly load: () => Promise<(options: O) => GatewayPlugin>;
}

const STATIC_DISCOVERY: Builtin<object> = { name: 'static-discovery', load: async () => (await import('../plugins/static-discovery/index.js')).staticDiscovery };
const LOAD_SHEDDING: Builtin<object> = { name: 'load-shedding', config: loadSheddingSections, load: async () => (await import('../plugins/load-shedding/index.js')).loadShedding };
const REDIS_DISCOVERY: Builtin<undefined> = { name: 'redis-discovery', config: redisDiscoverySections, load: async () => (await import('../plugins/redis-discovery/index.js')).redisDiscovery };
const DNS_DISCOVERY: Builtin<object> = { name: 'dns-discovery', config: dnsDiscoverySections, load: async () => (await import('../plugins/dns-discovery/index.js')).dnsDiscovery };
const TRACE_CONTEXT: Builtin<undefined> = { name: 'trace-context', config: traceContextSections, load: async () => (await import('../plugins/trace-context/index.js')).traceContext };
const METRICS: Builtin<{ cluster?: 'primary' | 'worker' }> = { name: 'metrics', config: metricsSections, load: async () => (await import('../plugins/metrics/index.js')).metrics };
const DASHBOARD: Builtin<object> = { name: 'dashboard', config: dashboardSections, load: async () => (await import('../plugins/dashboard/index.js')).dashboard };
const ACCESS_LOG: Builtin<object> = { name: 'access-log', config: accessLogSections, load: async () => (await import('../plugins/access-log/index.js')).accessLog };
const AUTH: Builtin<object> = { name: 'auth', config: authSections, load: async () => (await import('../plugins/auth/index.js')).auth };
const CORS: Builtin<object> = { name: 'cors', config: corsSections, load: async () => (await import('../plugins/cors/index.js')).cors };
const AUTHORIZATION: Builtin<object> = { name: 'authorization', config: authorizationSections, load: async () => (await import('../plugins/authorization/index.js')).authorization };
const RATE_LIMIT: Builtin<object> = { name: 'rate-limit', config: rateLimitSections, load: async () => (await import('../plugins/rate-limit/index.js')).rateLimit };
const HEALTH_CHECK: Builtin<object> = { name: 'health-check', config: healthCheckSections, load: async () => (await import('../plugins/health-check/index.js')).healthChecks };
const CIRCUIT_BREAKER: Builtin<object> = { name: 'circuit-breaker', config: circuitBreakerSections, load: async () => (await import('../plugins/circuit-breaker/index.js')).circuitBreaker };
const OUTLIER_DETECTION: Builtin<object> = { name: 'outlier-detection', config: outlierDetectionSections, load: async () => (await import('../plugins/outlier-detection/index.js')).outlierDetection };
const ZONE_AWARE: Builtin<object> = { name: 'zone-aware', config: zoneAwareSections, load: async () => (await import('../plugins/zone-aware/index.js')).zoneAware };
const FAULT_INJECTION: Builtin<object> = { name: 'fault-injection', config: faultSections, load: async () => (await import('../plugins/fault-injection/index.js')).faultInjection };
const MIRROR: Builtin<object> = { name: 'mirror', config: mirrorSections, load: async () => (await import('../plugins/mirror/index.js')).mirror };
const RETRIES: Builtin<object> = { name: 'retries', config: retriesSections, load: async () => (await import('../plugins/retries/index.js')).retries };

/**
 * The config sections of every built-in plugin, whether or not a config turns it on: the config
 * schema is the core's fields plus these plus the registered plugins' own.
 */
export const BUILTIN_SECTIONS: readonly SectionOwner[] = [LOAD_SHEDDING, REDIS_DISCOVERY, DNS_DISCOVERY, TRACE_CONTEXT, METRICS, DASHBOARD, ACCESS_LOG, CORS, AUTH, AUTHORIZATION, RATE_LIMIT, HEALTH_CHECK, CIRCUIT_BREAKER, OUTLIER_DETECTION, ZONE_AWARE, FAULT_INJECTION, MIRROR, RETRIES];

/**
 * A built-in plugin whose module loads when the gateway starts, not when meshgate is imported:
 * a gateway without Redis, JWTs or breakers never loads ioredis, jose or opossum (tens of MB of
 * code and heap). The stub carries the real plugin's name and sections, so dependency checks and
 * config validation hold before its module is loaded.
 */
function lazy<O>(builtin: Builtin<O>, options: O): GatewayPlugin {
  const stub: GatewayPlugin = {
    name: builtin.name,
    ...(builtin.config ? { config: builtin.config } : {}),
    async setup(gateway, scope) {
      const factory = await builtin.load();
      await factory(options).setup(gateway, scope);
    },
  };
  STUBS.add(stub);
  return stub;
}

const STUBS = new WeakSet<GatewayPlugin>();

/** The order of the built-ins in every stage chain: the order {@link builtinPlugins} lists them in. */
const ORDER = ['static-discovery', 'redis-discovery', 'dns-discovery', 'load-shedding', 'trace-context', 'metrics', 'dashboard', 'access-log', 'cors', 'auth', 'authorization', 'rate-limit', 'fault-injection', 'mirror', 'health-check', 'circuit-breaker', 'outlier-detection', 'zone-aware', 'retries'];

/** A built-in plugin's place in the stage chains, so one a reload turns on runs where it would have at boot; undefined for other plugins. */
export function builtinRank(plugin: GatewayPlugin): number | undefined {
  return STUBS.has(plugin) ? ORDER.indexOf(plugin.name) : undefined;
}

/**
 * The one place that maps config sections to built-in plugins. A section that is absent leaves its
 * plugin off; static discovery is always on. Order matters: discovery first, then what reads it.
 */
export function builtinPlugins(config: GatewayConfig, role: GatewayRole = 'standalone'): GatewayPlugin[] {
  const services = Object.values(config.services);
  const anyService = (section: string): boolean => services.some((s) => (s as Record<string, unknown>)[section] !== undefined);
  const anyRoute = (section: string): boolean => config.routes.some((r) => (r as Record<string, unknown>)[section] !== undefined);
  const plugins: GatewayPlugin[] = [lazy(STATIC_DISCOVERY, {})];
  // In cluster mode discovery and health checks run once, in the primary; workers mirror its registry.
  const controlPlane = role !== 'worker';
  if (controlPlane && config.discovery?.redis) plugins.push(lazy(REDIS_DISCOVERY, undefined));
  if (controlPlane && anyService('dns')) plugins.push(lazy(DNS_DISCOVERY, {}));
  // Shedding before anything else: a shed request must cost as little as possible.
  if (config.overload !== undefined) plugins.push(lazy(LOAD_SHEDDING, {}));
  // Observability first: its onRequest middleware then wraps everything the others do.
  if (config.tracing !== false) plugins.push(lazy(TRACE_CONTEXT, undefined));
  if (config.metrics !== false && (config.metrics !== undefined || config.admin !== undefined)) {
    plugins.push(lazy(METRICS, { cluster: role === 'standalone' ? undefined : role }));
  }
  // The dashboard comes with the admin port, as metrics do; its workers count and report to the primary.
  if (config.dashboard !== false && (config.dashboard !== undefined || config.admin !== undefined)) plugins.push(lazy(DASHBOARD, {}));
  if (config.accessLog !== undefined && config.accessLog !== false) plugins.push(lazy(ACCESS_LOG, {}));
  // Who is asking, then how often: rate limits may key on the authenticated subject.
  // Preflights carry no credentials: CORS answers them before authentication could refuse them.
  if (anyRoute('cors')) plugins.push(lazy(CORS, {}));
  if (anyRoute('auth')) plugins.push(lazy(AUTH, {}));
  // Then what they may do: a denied request costs no rate-limit token.
  if ((config as Record<string, unknown>).authorization !== undefined || anyRoute('authorization')) plugins.push(lazy(AUTHORIZATION, {}));
  if (anyRoute('rateLimit')) plugins.push(lazy(RATE_LIMIT, {}));
  // resolve stage, in this order: faults first (an aborted request is not mirrored), then the copy.
  if (anyRoute('fault')) plugins.push(lazy(FAULT_INJECTION, {}));
  if (anyRoute('mirror')) plugins.push(lazy(MIRROR, {}));
  if (controlPlane && anyService('healthCheck')) plugins.push(lazy(HEALTH_CHECK, {}));
  if (anyService('circuitBreaker')) plugins.push(lazy(CIRCUIT_BREAKER, {}));
  if (anyService('outlierDetection')) plugins.push(lazy(OUTLIER_DETECTION, {}));
  if (services.some((s) => s.zoneAware !== undefined && s.zoneAware !== false)) plugins.push(lazy(ZONE_AWARE, {}));
  if (anyService('retries')) plugins.push(lazy(RETRIES, {}));
  return plugins;
}
