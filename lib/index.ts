/**
 * meshgate: a service-mesh gateway as a composable Koa pipeline. This is its public surface:
 * everything the built-in plugins use comes from here or from the subpaths `meshgate/config`
 * (declaring config sections), `meshgate/kit` (token buckets, formatting) and `meshgate/redis`.
 * @example
 * import { createGateway } from 'meshgate';
 * const gateway = createGateway({ services: { users: { instances: [{ url: 'http://127.0.0.1:3001' }] } }, routes: [{ prefix: '/users', service: 'users' }] });
 * await gateway.listen();
 */
import { BUILTIN_SECTIONS, builtinPlugins, builtinRank } from './builtins.js';
import * as load from './config/load.js';
import type { GatewayConfig, GatewayConfigInput } from './config/schema.js';
import type { SectionOwner } from './config/sections.js';
import { Gateway, type GatewayOptions } from './core/gateway.js';

export { Gateway } from './core/gateway.js';
export type { GatewayOptions, ListenInfo } from './core/gateway.js';
export { definePlugin, STAGES } from './core/plugin.js';
export type {
  GatewayPlugin,
  GatewayRole,
  GatewayServices,
  MeshCarrier,
  PluginHost,
  PluginScope,
  Stage,
  StageContext,
  StageMesh,
  StageMiddleware,
} from './core/plugin.js';
export type { Middleware, Next } from './core/compose.js';
export type { ConfigSnapshot } from './core/snapshot.js';
export type { ServicePolicy } from './core/policy.js';
export type { Balancer, BalancerContext, BalancerFactory } from './balancers/balancer.js';
export * from './balancers/index.js';
export { Registry, Service, Instance, UnknownInstanceError, UnknownServiceError, defaultInstanceId } from './registry/registry.js';
export type { Health, CircuitState, InstanceSpec, RegistryEvents, PreservedService } from './registry/registry.js';
export type { LeaseKeeper, LeaseVerifier, SelfPreservationPolicy } from './registry/leases.js';
export type { GatewayEvents, RemovalReason } from './core/events.js';
export { STREAMED_EVENTS, describeEvent, serverSentEvents, type StreamedEvent } from './admin/events.js';
export { MeshState, type Upgrade } from './core/state.js';
export { GrpcStatus, grpcStatusForError } from './http/grpc.js';
export type { Principal, RequestVariables } from './core/state.js';
export type { Route, Backend, RouteMatch, Subset, HeaderEdits, ValueCondition } from './core/router.js';
export { finalStatus, observeOutcome } from './core/outcome.js';
export type { UpstreamExchange } from './upstream/exchange.js';
export type { UpstreamPool } from './upstream/pools.js';
export type { Http2Connection } from './upstream/http2-connection.js';
export { teeBody, type RequestBody } from './upstream/request-body.js';
export * from './errors.js';
export { parseDuration, defineSections } from './config/index.js';
export type {
  GatewayConfig,
  GatewayConfigInput,
  ServiceConfig,
  ServiceConfigInput,
  RouteConfig,
  RouteConfigInput,
  RouteSections,
  ServiceSections,
  GlobalSections,
  DiscoverySections,
  PluginSections,
  SectionSpec,
  SectionContext,
  StandardSchemaV1,
} from './config/index.js';
export type { LoadedConfig } from './config/load.js';
export type { Logger } from './kit/logger.js';
export { seededRandom } from './kit/random.js';
export { registerInstance } from './registry/registration.js';
export type { RegisterOptions, Registration } from './registry/registration.js';
export { LocalRegistrar } from './registry/registrar.js';
export type { Registrar, RegistrationResult } from './registry/registrar.js';

/** How to validate a config outside a gateway. */
export interface ValidateOptions {
  /** Plugins (or just their `{ name, config }` declarations) whose sections the config may hold, besides the built-ins. */
  plugins?: Iterable<SectionOwner>;
  /** The environment `${ENV}` references read. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** The file, named in the error. */
  source?: string;
}

function sectionsOf(options: ValidateOptions): SectionOwner[] {
  return [...BUILTIN_SECTIONS, ...(options.plugins ?? [])];
}

/**
 * Validates a config object: the core's fields, the built-in plugins' sections and those of
 * `options.plugins`. Throws a `ConfigError` listing every problem with its path.
 */
export function validateConfig(input: unknown, options: ValidateOptions = {}): GatewayConfig {
  return load.validateConfig(input, { ...options, sections: sectionsOf(options) });
}

/** Parses YAML (or JSON) text and validates it like {@link validateConfig}. */
export function parseConfig(text: string, options: ValidateOptions = {}): GatewayConfig {
  return load.parseConfig(text, { ...options, sections: sectionsOf(options) });
}

/**
 * Reads and parses a config file (YAML or JSON) into a plain document, without validating it:
 * `${ENV}` references stay as written (`createGateway` substitutes them, and `GET /config` shows
 * them so). A syntax error throws a `ConfigError` naming the line.
 */
export const readConfigFile = load.readConfigFile;

/** Reads, parses and validates a config file like {@link validateConfig}; `${ENV}` references read `env`. */
export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env, options: Pick<ValidateOptions, 'plugins'> = {}): Promise<load.LoadedConfig> {
  return load.loadConfigFile(file, env, { sections: sectionsOf(options) });
}

/**
 * Creates a gateway from a config object (validated here: a bad field throws a `ConfigError`
 * naming its path). Built-in plugins for the config's sections are registered; add your own with
 * `gateway.use(plugin)` before `listen()`, `ready()` or `middleware()`: their sections are checked
 * when the gateway starts.
 */
export function createGateway(config: GatewayConfigInput | GatewayConfig = {}, options: GatewayOptions = {}): Gateway {
  const gateway = new Gateway(config, {
    ...options,
    sections: [...BUILTIN_SECTIONS, ...(options.sections ?? [])],
    builtins: { plugins: builtinPlugins, rank: builtinRank },
  });
  for (const plugin of builtinPlugins(gateway.config, options.role)) gateway.use(plugin);
  return gateway;
}
