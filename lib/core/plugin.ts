import type { EventEmitter } from 'node:events';
import type KoaRouter from '@koa/router';
import type { DefaultState, ParameterizedContext } from 'koa';
import type { BalancerFactory } from '../balancers/balancer.js';
import type { GatewayConfig } from '../config/schema.js';
import type { PluginSections } from '../config/sections.js';
import { PluginDependencyError, PluginError } from '../errors.js';
import type { Logger } from '../kit/logger.js';
import type { SharedBuckets } from '../kit/token-bucket.js';
import type { LeaseKeeper } from '../registry/leases.js';
import type { Registrar } from '../registry/registrar.js';
import type { Instance, Registry, Service } from '../registry/registry.js';
import type { Http2Connection } from '../upstream/http2-connection.js';
import type { UpstreamPool } from '../upstream/pools.js';
import type { Next } from './compose.js';
import type { GatewayEvents } from './events.js';
import type { Route } from './router.js';
import type { ConfigSnapshot, ReloadOptions } from './snapshot.js';
import type { MeshState } from './state.js';

/**
 * The pipeline stages, outermost first. Each is its own middleware chain; plugins add to a stage
 * by name, so the order in which plugins register never reorders the pipeline.
 * - `onRequest`: wraps the whole exchange, the response included (auth, rate limits, ids).
 * - `resolve`: the route and service are known; adjust the request before any attempt.
 * - `retry`: wraps the attempts; its `next()` may be called again for another attempt.
 * - `select`: one attempt; narrows `mesh.candidates` or sets `mesh.instance` (the balancer picks otherwise).
 * - `guard`: wraps the call to the chosen instance (circuit breakers, per-try accounting).
 * A middleware in any stage may answer the request itself instead of calling `next()`: the Koa
 * way (`ctx.status`, `ctx.body`) or by throwing a `MeshError`.
 */
export const STAGES = ['onRequest', 'resolve', 'retry', 'select', 'guard'] as const;
export type Stage = (typeof STAGES)[number];

/** `ctx.state.mesh` as a stage sees it: from `resolve` on, the route and service are known; in `guard`, the instance too. */
export type StageMesh<S extends Stage> = S extends 'onRequest'
  ? MeshState
  : S extends 'guard'
    ? MeshState & { route: Route; service: Service; instance: Instance }
    : MeshState & { route: Route; service: Service };

/** The Koa context a stage's middleware gets, with `ctx.state.mesh` typed for that stage. */
export type StageContext<S extends Stage> = ParameterizedContext<DefaultState & { mesh: StageMesh<S> }>;

/** A middleware of one stage: Koa's shape. `next()` returns a promise that rejects (never throws) on failure. */
export type StageMiddleware<S extends Stage> = (ctx: StageContext<S>, next: Next) => unknown;

/** Anything with the per-request state: a Koa context of any stage. */
export interface MeshCarrier {
  readonly state: { readonly mesh: MeshState };
}

/**
 * What a plugin's `setup` gets: the gateway as plugins see it. Every member is documented on
 * `Gateway`, which implements it.
 */
export interface PluginHost extends EventEmitter<GatewayEvents> {
  /** The config in force (the current snapshot's). Read it per request through the plugin's scope instead. */
  readonly config: GatewayConfig;
  /** The config snapshot in force: routes, services and every plugin's prepared sections. */
  readonly snapshot: ConfigSnapshot;
  /** The config document in force, as given (before `${ENV}` substitution and defaults). */
  readonly document: unknown;
  /**
   * Puts a new config document in force without dropping a request (a control-plane plugin's
   * way to change routes and policies live); rejects with a `ConfigError` naming every bad path.
   * Do not await it in `setup`: it waits for the gateway to be ready.
   */
  reload(document: unknown, options?: ReloadOptions): Promise<ConfigSnapshot>;
  /** Checks a document as `reload` would, without applying it (`report`: a refusal is logged and emitted like a reload's). */
  checkReload(document: unknown, options?: ReloadOptions & { report?: boolean }): Promise<ConfigSnapshot>;
  /** This gateway's name: random per gateway, in `Via` and in the fleet's reports. */
  readonly name: string;
  /** The proxy's listener, once listening. */
  readonly server: import('node:http').Server | null;
  /** True once plugins are set up and until close() begins. */
  readonly isReady: boolean;
  readonly registry: Registry;
  /** Where run-time registrations go; a fleet-wide discovery plugin replaces it in its setup. */
  registrar: Registrar;
  readonly leases: LeaseKeeper;
  readonly log: Logger;
  /**
   * The admin (control-plane) server; plugins add routes to `admin.router`, which need the admin
   * token unless `admin.allowAnonymous(path)` exempts that exact path (a page that holds no data).
   */
  readonly admin: { readonly router: KoaRouter; allowAnonymous(path: string): void };
  readonly role: GatewayRole;
  /** The balancers' random source (seedable through `GatewayOptions.random`). */
  readonly random: () => number;
  readonly baseDir: string;
  resolvePath(path: string): string;
  /** Adds middleware to a stage. Only from a plugin's setup, before the gateway starts. */
  addMiddleware<S extends Stage>(stage: S, middleware: StageMiddleware<S>): this;
  decorate<K extends keyof GatewayServices>(key: K, value: GatewayServices[K]): this;
  decorate(key: string, value: unknown): this;
  get<K extends keyof GatewayServices>(key: K): GatewayServices[K];
  get<T = unknown>(key: string): T;
  has(key: string): boolean;
  /** Requests in flight right now. */
  readonly inflight: number;
  /** Runs `fn` on close, after in-flight requests drained; hooks run in reverse order. */
  onClose(fn: () => unknown): this;
  /** Runs `fn` after a new config snapshot is in force (not for the first one: setup sees that). */
  onConfig(fn: (snapshot: ConfigSnapshot, previous: ConfigSnapshot) => unknown): this;
  defineBalancer(name: string, factory: BalancerFactory): this;
  balancerNames(): string[];
  hasPlugin(name: string): boolean;
  pluginNames(): string[];
  /** The connection pool for an instance (its service's TLS profile included). */
  poolFor(instance: Instance, service?: Service): UpstreamPool;
  /** The HTTP/2 connection to an instance (h2 over TLS for `https://` instances with its service's TLS settings, else h2c), for probes that need HTTP/2 (gRPC health checks). */
  http2For(instance: Instance, service?: Service): Http2Connection;
}

/** What a gateway process does; see `GatewayOptions.role`. */
export type GatewayRole = 'standalone' | 'primary' | 'worker';

/**
 * App-lifetime values plugins share through `gateway.decorate(key, value)` / `gateway.get(key)`.
 * Augment it to type your own:
 * @example
 * declare module 'meshgate' { interface GatewayServices { myCache: Map<string, string> } }
 */
export interface GatewayServices {
  /**
   * Token buckets shared by every process of a cluster (the primary keeps them), set in cluster
   * workers: a rate limit then holds for the whole gateway, not per worker.
   */
  sharedBuckets: SharedBuckets;
}

/**
 * A plugin's view of its own config: the prepared options of its sections, for the request at
 * hand or for the config in force. The second argument of `setup`.
 */
export interface PluginScope<GP = unknown, SP = unknown, RP = unknown> {
  /** The plugin's name. */
  readonly name: string;
  /** The global section: of the config the request started with when `ctx` is given, else of the config in force. */
  global(ctx?: MeshCarrier): GP | undefined;
  /** The section of the request's route; undefined when the route has none or no route matched. */
  route(ctx: MeshCarrier): RP | undefined;
  /** The section of the request's service (its route's); undefined when it has none or no route matched. */
  service(ctx: MeshCarrier): SP | undefined;
  /** A service's section in the config in force, by name (for timers and background work). */
  forService(name: string): SP | undefined;
  /** Every route of the config in force that has the section, with it. */
  routes(): { route: Route; options: RP }[];
  /** Every service of the config in force that has the section, with it. */
  services(): { name: string; options: SP }[];
}

/**
 * A plugin: a plain object from a factory. `setup` runs once, awaited, in registration order.
 * `G`, `S`, `R` are the parsed options of its global, service and route sections; `GP`, `SP`,
 * `RP` what their `prepare` makes of them, as its scope hands them out.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export interface GatewayPlugin<G = any, S = any, R = any, GP = G, SP = S, RP = R> {
  /** Unique name; others name it in `dependencies`. */
  name: string;
  /** Plugins that must be registered before this one. */
  dependencies?: readonly string[];
  /** The config sections it owns; validated with the rest of the config, read through `scope`. */
  config?: PluginSections<G, S, R, GP, SP, RP>;
  /**
   * Balancers it makes available to `services.<name>.balancer`, by name. Declared here rather than
   * with `gateway.defineBalancer()` in setup, `meshgate validate` knows them.
   */
  balancers?: Readonly<Record<string, BalancerFactory>>;
  setup(gateway: PluginHost, scope: PluginScope<GP, SP, RP>): void | Promise<void>;
}

/**
 * Gives a plugin object its type, the types of its sections' options included.
 * @example
 * export const hello = (opts: { name?: string } = {}) =>
 *   definePlugin({
 *     name: 'hello',
 *     setup(gateway) {
 *       gateway.addMiddleware('onRequest', (ctx, next) => {
 *         ctx.state.mesh.responseHeaders.push('x-hello', opts.name ?? 'world');
 *         return next();
 *       });
 *     },
 *   });
 */
export function definePlugin<G = unknown, S = unknown, R = unknown, GP = G, SP = S, RP = R>(plugin: GatewayPlugin<G, S, R, GP, SP, RP>): GatewayPlugin<G, S, R, GP, SP, RP> {
  return plugin;
}

/** Checks a plugin's shape, that its name is new, and (at boot) that its dependencies came before it. */
export function checkPlugin(plugin: unknown, registered: ReadonlySet<string>, dependencies = true): asserts plugin is GatewayPlugin {
  const p = plugin as Partial<GatewayPlugin> | null;
  if (!p || typeof p !== 'object' || typeof p.name !== 'string' || !p.name || typeof p.setup !== 'function') {
    throw new PluginError('a plugin must be an object with a non-empty `name` and a `setup(gateway)` function');
  }
  if (registered.has(p.name)) throw new PluginError(`plugin "${p.name}" is registered twice`, 'MESH_ERR_PLUGIN_DUPLICATE');
  if (!dependencies) return;
  for (const dep of p.dependencies ?? []) {
    if (!registered.has(dep)) throw new PluginDependencyError(p.name, dep);
  }
}
