import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { X509Certificate } from 'node:crypto';
import { accessSync, constants, readFileSync } from 'node:fs';
import { ServerResponse, type IncomingMessage, type Server } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import Koa, { type Context } from 'koa';
import { AdminServer } from '../admin/server.js';
import type { Balancer, BalancerFactory } from '../balancers/balancer.js';
import { canonicalJson, configVersion, RESTART_KEYS } from '../config/fleet.js';
import { readConfigFile, validateConfig } from '../config/load.js';
import { watchFilesSettled } from '../config/watch.js';
import type { GatewayConfig } from '../config/schema.js';
import type { SectionOwner } from '../config/sections.js';
import { BadRequestError, ConfigError, GatewayClosingError, MeshError, NotImplementedError, PluginError, type ConfigIssue } from '../errors.js';
import { createLogger, type Logger, type LoggerOptions } from '../kit/logger.js';
import { LeaseKeeper } from '../registry/leases.js';
import { LocalRegistrar, type Registrar } from '../registry/registrar.js';
import { Registry, type Instance, type Service } from '../registry/registry.js';
import { Deadlines } from '../upstream/deadlines.js';
import type { Http2Connection } from '../upstream/http2-connection.js';
import { InstancePools, UpstreamPools, type PoolOptions, type UpstreamPool } from '../upstream/pools.js';
import { BalancerRegistry } from './balancers.js';
import type { Middleware, Next } from './compose.js';
import type { GatewayEvents } from './events.js';
import { Pipeline } from './pipeline.js';
import { answerBareError } from './respond.js';
import { PluginRegistry } from './plugin-host.js';
import { loadPluginModules } from './plugin-loader.js';
import { checkPlugin, type GatewayPlugin, type GatewayRole, type GatewayServices, type PluginHost, type Stage, type StageMiddleware } from './plugin.js';
import type { Router } from './router.js';
import { sanUris } from '../http/client-cert.js';
import { closeHttp2Sessions, createListener, listenerTlsFiles, urlHost } from './server.js';
import { buildSnapshot, type ConfigSnapshot, type ReloadOptions } from './snapshot.js';
import type { Upgrade } from './state.js';

export type { ReloadOptions } from './snapshot.js';

/** Options that are not part of the config file. */
export interface GatewayOptions {
  /** Directory that relative paths in the config (TLS files, plugin modules) resolve against. @default process.cwd() */
  baseDir?: string;
  /** The config file, named in config errors. */
  source?: string;
  /** Logger; defaults to pino at `config.logLevel` on stderr. */
  logger?: Logger;
  /** The default logger's format and the fields on each of its lines (see `createLogger`). */
  log?: LoggerOptions;
  /** Options for every upstream connection pool. */
  pool?: PoolOptions;
  /** Random source of the balancers, uniform in [0, 1); pass a seeded one for reproducible runs. @default Math.random */
  random?: () => number;
  /**
   * In cluster mode: `primary` runs the control plane (discovery, leases, health checks, admin),
   * `worker` proxies and mirrors the primary's registry. @default 'standalone'
   */
  role?: GatewayRole;
  /**
   * Plugins whose config sections the document may hold even when they are not registered
   * (`createGateway` passes every built-in plugin's, so a `healthCheck` section stays valid in a
   * cluster worker, which runs no health checks).
   */
  sections?: Iterable<SectionOwner>;
  /**
   * The built-in plugins' catalogue (`createGateway` passes it): which built-ins a config turns on,
   * so a reload can start those it turns on, and their order in the stage chains.
   */
  builtins?: BuiltinCatalogue;
}

/** What a gateway needs to know of the built-in plugins to reload. */
export interface BuiltinCatalogue {
  /** The built-ins `config` turns on, in their order. */
  plugins(config: GatewayConfig, role: GatewayRole): GatewayPlugin[];
  /** A built-in's place in the stage chains (its catalogue position); undefined for other plugins. */
  rank(plugin: GatewayPlugin): number | undefined;
}


/** Where the gateway is listening, after {@link Gateway.listen}. */
export interface ListenInfo {
  /** The proxy's base URL, as `http://127.0.0.1:8080`. */
  url: string;
  port: number;
  /** The admin server's base URL, when `admin` is configured. */
  adminUrl?: string;
  adminPort?: number;
}

/**
 * A gateway: the facade over the plugin host, the registry, the request pipeline and the
 * listeners. Create it with `createGateway(config)`, register plugins with `use(plugin)`, then
 * either `listen()` or mount `middleware()` in a Koa app. `close()` drains in-flight requests and
 * shuts everything down.
 */
export class Gateway extends EventEmitter<GatewayEvents> implements PluginHost {
  readonly registry: Registry;
  readonly pools: UpstreamPools;
  readonly log: Logger;
  /** The admin (control-plane) server; plugins add routes to `admin.router`. */
  readonly admin: AdminServer;
  readonly baseDir: string;
  /** The balancers' random source. */
  readonly random: () => number;
  /** What this process does in cluster mode; `standalone` otherwise. */
  readonly role: GatewayRole;
  /** Where admin registrations go; a fleet-wide discovery plugin replaces it in its setup. */
  registrar: Registrar;
  readonly leases: LeaseKeeper;
  /** This gateway's name in the `Via` header it adds with `listen.via`, random per gateway: a request that comes back with it is refused (508). */
  readonly name = `meshgate-${randomBytes(4).toString('hex')}`;

  /** The config document in force, as given (validated again, whole, once every plugin is known). */
  #document: unknown;
  #source: string | undefined;
  readonly #catalogue: SectionOwner[];
  readonly #builtins: BuiltinCatalogue | null;
  /** Whether the gateway made its logger (then a reload may change its level). */
  readonly #ownLogger: boolean;
  /** Reloads run one at a time, in the order asked. */
  #reloads: Promise<unknown> = Promise.resolve();
  /** The snapshot being put in force while a plugin a reload turned on runs its setup: only that plugin's scope reads it. */
  #pending: ConfigSnapshot | null = null;
  #pendingSlot = -1;
  readonly #plugins = new PluginRegistry();
  readonly #balancers: BalancerRegistry;
  readonly #instancePools: InstancePools;
  /** The deadlines of attempts waiting for response headers: one timer for all of them. */
  readonly #deadlines = new Deadlines();
  /** The config validated with the sections known at construction; the snapshot's once ready. */
  #config: GatewayConfig;
  #snapshot: ConfigSnapshot | null = null;
  #pipeline: Pipeline | null = null;
  #checked: Promise<ConfigSnapshot> | null = null;
  #ready: Promise<void> | null = null;
  #closing = false;
  #koa: Koa | null = null;
  #closed: Promise<void> | null = null;
  #server: Server | null = null;

  /**
   * Validates `config` right away (a bad core field or built-in section throws a `ConfigError`
   * naming its path); sections of plugins registered later are checked by `ready()`.
   */
  constructor(config: unknown, options: GatewayOptions = {}) {
    super();
    this.#document = config;
    this.#source = options.source;
    this.#catalogue = [...(options.sections ?? [])];
    this.#builtins = options.builtins ?? null;
    this.#ownLogger = options.logger === undefined;
    this.#config = validateConfig(config, { sections: this.#catalogue, unknownSections: 'ignore', source: options.source });
    this.baseDir = options.baseDir ?? process.cwd();
    this.log = options.logger ?? createLogger(this.#config.logLevel, options.log);
    this.registry = new Registry(this);
    this.pools = new UpstreamPools(options.pool);
    this.#instancePools = new InstancePools(this.pools, (path) => this.resolvePath(path));
    this.registrar = new LocalRegistrar(this.registry);
    this.leases = new LeaseKeeper(this.registry, this.log, this, () => this.config.selfPreservation);
    this.admin = new AdminServer(this);
    this.random = options.random ?? Math.random;
    this.role = options.role ?? 'standalone';
    this.#balancers = new BalancerRegistry(this.random);
    for (const [name, policy] of Object.entries(this.#config.services)) this.registry.addService(name, policy);
    this.on('instance:added', (inst) => {
      this.#instancePools.ref(inst.origin, 1);
      this.leases.track(inst);
    });
    this.on('instance:updated', (inst) => this.leases.track(inst));
    this.on('instance:removed', (inst) => {
      this.#instancePools.ref(inst.origin, -1);
      this.leases.untrack(inst);
    });
    // EventEmitter throws on an unhandled 'error'; ours is a plain event that always has a listener.
    this.on('gateway:error', (err) => this.log.error({ err }, err.message));
  }

  /** The config in force: the current snapshot's (before `ready()`, the config as validated at construction). */
  get config(): GatewayConfig {
    return this.#snapshot?.config ?? this.#config;
  }

  /** The config snapshot in force: routes, service policies and every plugin's prepared sections. Set by `ready()`. */
  get snapshot(): ConfigSnapshot {
    if (this.#snapshot === null) throw new PluginError('the gateway has no config snapshot before ready()', 'MESH_ERR_NOT_READY');
    return this.#snapshot;
  }

  /** The route table in force. */
  get router(): Router {
    return this.snapshot.router;
  }

  // plugin host -----------------------------------------------------------------------------

  /** Registers a plugin, before the gateway starts (`listen()`, `ready()` or `middleware()`). */
  use(plugin: GatewayPlugin): this {
    if (typeof plugin === 'string') {
      throw new PluginError(`use() registers plugins; add middleware to the "${plugin as string}" stage with addMiddleware("${plugin as string}", fn) in a plugin's setup`);
    }
    if (this.#ready || this.#checked) throw new PluginError(`plugin "${plugin?.name}" added after the gateway started`);
    // Dependencies are checked at boot (ready/listen), where the whole list is known.
    this.#plugins.register(plugin, this.#builtins?.rank(plugin));
    this.#defineBalancersOf(plugin);
    return this;
  }

  /** Adds middleware to a stage; from a plugin's setup, before the gateway starts. */
  addMiddleware<S extends Stage>(stage: S, middleware: StageMiddleware<S>): this {
    this.#plugins.addMiddleware(stage, middleware as Middleware);
    return this;
  }

  /** Whether a plugin of that name is registered. */
  hasPlugin(name: string): boolean {
    return this.#plugins.has(name);
  }

  /** The names of the registered plugins, in order. */
  pluginNames(): string[] {
    return this.#plugins.names();
  }

  /** Shares an app-lifetime value under `key`. A key can be decorated once. */
  decorate<K extends keyof GatewayServices>(key: K, value: GatewayServices[K]): this;
  decorate(key: string, value: unknown): this;
  decorate(key: string, value: unknown): this {
    this.#plugins.decorate(key, value);
    return this;
  }

  /** A value shared with {@link decorate}; throws when missing. */
  get<K extends keyof GatewayServices>(key: K): GatewayServices[K];
  get<T = unknown>(key: string): T;
  get(key: string): unknown {
    return this.#plugins.decorator(key);
  }

  /** Whether a value was shared under `key`. */
  has(key: string): boolean {
    return this.#plugins.hasDecorator(key);
  }

  /** Runs `fn` on close, after in-flight requests drained. Hooks run in reverse order of registration. */
  onClose(fn: () => unknown): this {
    this.#plugins.onClose(fn);
    return this;
  }

  /**
   * Runs `fn` after a new config snapshot is in force, with the one it replaced. Not for the first
   * snapshot: a plugin's setup already reads that one.
   */
  onConfig(fn: (snapshot: ConfigSnapshot, previous: ConfigSnapshot) => unknown): this {
    this.#plugins.onConfig(fn);
    return this;
  }

  /** Makes a balancer available to `services.<name>.balancer: <name>`. */
  defineBalancer(name: string, factory: BalancerFactory): this {
    this.#balancers.define(name, factory);
    return this;
  }

  /** The balancer names that are defined. */
  balancerNames(): string[] {
    return this.#balancers.names();
  }

  /** The balancer of a service under the config in force, made on first use. */
  balancerFor(service: Service): Balancer {
    const policy = this.snapshot.services.get(service.name);
    if (policy === undefined) throw new ConfigError([{ path: `services.${service.name}`, message: 'not in the config in force' }]);
    return this.#balancers.for(service, policy);
  }

  /** Resolves a path from the config against the config file's directory. */
  resolvePath(path: string): string {
    return isAbsolute(path) ? path : resolvePath(this.baseDir, path);
  }

  /** The connection pool for an instance (its service's TLS profile included). */
  poolFor(instance: Instance, service: Service = this.registry.requireService(instance.service)): UpstreamPool {
    return this.#instancePools.poolFor(instance, service.name, service.policy.tls, service.policy.maxConnections);
  }

  /** The HTTP/2 connection to an instance, with its service's TLS settings. */
  http2For(instance: Instance, service: Service = this.registry.requireService(instance.service)): Http2Connection {
    return this.#instancePools.http2For(instance, service.name, service.policy.tls);
  }

  /**
   * Starts the gateway, once: loads the config's plugin modules, validates the whole config
   * against every plugin's sections, makes the first config snapshot and runs every plugin's
   * setup. `listen()` and `middleware()` call it; call it yourself to fail fast on a bad plugin
   * or config.
   */
  ready(): Promise<void> {
    this.#ready ??= this.#start();
    return this.#ready;
  }

  /**
   * Checks the whole config without starting anything: loads the `plugins:` modules, validates
   * every section against its plugin's schema and prepares the first snapshot (keys read, limits
   * compiled). Resolves with that snapshot; rejects with a `ConfigError` naming every bad path.
   * `meshgate validate` runs it.
   */
  check(): Promise<ConfigSnapshot> {
    this.#checked ??= this.#check();
    return this.#checked;
  }

  async #check(): Promise<ConfigSnapshot> {
    try {
      const early = this.#config;
      if (early.plugins.length > 0) {
        for (const plugin of await loadPluginModules(early.plugins, (path) => this.resolvePath(path), new Set(this.#plugins.names()))) {
          this.#plugins.register(plugin);
          this.#defineBalancersOf(plugin);
        }
      }
      const plugins = this.#plugins.plugins;
      const owners = [...plugins, ...this.#catalogue.filter((owner) => !this.#plugins.has(owner.name))];
      const config = validateConfig(this.#document, { sections: owners, source: this.#source });
      const snapshot = buildSnapshot(config, { plugins, resolvePath: (path) => this.resolvePath(path), version: configVersion(this.#document) });
      const files = unreadableFiles(config, (path) => this.resolvePath(path));
      if (files.length > 0) throw new ConfigError(files);
      return snapshot;
    } catch (err) {
      throw inFile(err, this.#source);
    }
  }

  /**
   * What `meshgate validate` checks beyond {@link check}: the balancers the config names exist
   * (the built-ins, those plugins declare, those defined so far). A plugin that defines a
   * balancer only in its setup is not known here: declare it in the plugin's `balancers`.
   */
  async validate(): Promise<ConfigSnapshot> {
    const snapshot = await this.check();
    const issues = this.#balancers.check(snapshot.services.values());
    if (issues.length > 0) throw new ConfigError(issues, this.#source);
    return snapshot;
  }

  #defineBalancersOf(plugin: GatewayPlugin): void {
    for (const [name, factory] of Object.entries(plugin.balancers ?? {})) this.#balancers.define(name, factory);
  }

  async #start(): Promise<void> {
    const snapshot = await this.check();
    const plugins = this.#plugins.plugins;
    this.#apply(snapshot);
    for (const warning of snapshot.warnings()) this.log.warn(warning);
    const registered = new Set<string>();
    for (const [slot, plugin] of plugins.entries()) {
      checkPlugin(plugin, registered);
      registered.add(plugin.name);
      this.log.debug({ plugin: plugin.name }, 'plugin setup');
      await this.#plugins.setup(slot, () => plugin.setup(this, this.#plugins.scope(slot, () => this.#scopeSnapshot(slot))));
    }
    const issues = this.#balancers.check(snapshot.services.values());
    if (issues.length > 0) throw new ConfigError(issues, this.#source);
    this.#balancers.seal();
    this.#pipeline = new Pipeline(
      {
        events: this,
        log: this.log,
        registry: this.registry,
        balancers: this.#balancers,
        pools: this.#instancePools,
        snapshot: () => this.#snapshot!,
        closing: () => this.#closing,
        name: this.name,
        connections: this.pools.connections,
        random: this.random,
        selfUri: ownUri(this.config.listen, (path) => this.resolvePath(path)),
      },
      this.#plugins.seal(),
      this.#deadlines,
    );
    // A worker's registry mirrors the primary's, which decides when leases run out.
    if (this.role !== 'worker') this.leases.start();
  }

  // live config --------------------------------------------------------------------------

  /** The config document in force, as given: before `${ENV}` substitution and defaults. */
  get document(): unknown {
    return this.#document;
  }

  /**
   * Checks a config document as {@link reload} would (the whole document, every plugin's
   * sections, what a reload cannot change), without applying it. Resolves with the snapshot it
   * would put in force; rejects with a `ConfigError` naming every bad path.
   */
  async checkReload(document: unknown, options: ReloadOptions & { report?: boolean } = {}): Promise<ConfigSnapshot> {
    await this.ready();
    try {
      return (await this.#prepare(document, options.source)).snapshot;
    } catch (err) {
      // A check on the way to applying (PUT /config in a fleet) is refused like a reload.
      if (options.report === true) this.#refused(err, options.origin ?? 'api', configVersion(document));
      throw err;
    }
  }

  /** Reports a refused config: a `config:rejected` event and an error line naming every bad path. */
  #refused(err: unknown, origin: string, proposed: string): void {
    const running = this.snapshot.version;
    const issues: readonly ConfigIssue[] = err instanceof ConfigError ? err.issues : [{ path: '', message: (err as Error)?.message ?? String(err) }];
    const error = err instanceof ConfigError ? err.message : `${(err as Error)?.message ?? String(err)}`;
    this.emit('config:rejected', { origin, version: running, proposed, previous: running, error, issues });
    this.log.error({ origin, proposed, running, issues }, `config ${proposed} refused (${origin}), still running ${running}: ${issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ')}`);
  }

  /**
   * Puts a new config in force without dropping a request: validates the whole document first
   * (an invalid one is refused, with every bad path, and the running config stays), starts the
   * built-in plugins it turns on, then swaps the snapshot in one assignment. Requests in flight
   * finish on the config they started with. What did not change keeps its state: instances,
   * their pools, health, circuits and ejections, sections whose options are the same (rate-limit
   * buckets), balancers whose settings are the same. Services and instances it removes finish
   * their requests in flight before their pools close. `listen`, `admin`, `discovery`,
   * `workers`, `plugins`, `metrics`, `tracing` and `accessLog` need a restart: a document that
   * changes them is refused. Reloads run one at a time. Emits `config:applied` or
   * `config:rejected`.
   */
  reload(document: unknown, options: ReloadOptions = {}): Promise<ConfigSnapshot> {
    const run = this.#reloads.then(() => this.#reload(document, options));
    this.#reloads = run.catch(() => {});
    return run;
  }

  /**
   * Reads a config file and reloads it ({@link reload}). An empty file is refused (an editor
   * that truncates before it writes must never leave the gateway with an empty config), and so
   * is one that does not parse; both are reported like an invalid config.
   */
  reloadFile(file: string, origin = 'file'): Promise<ConfigSnapshot> {
    const read = async (): Promise<unknown> => {
      const { document, source } = await readConfigFile(file);
      if (document === null || document === undefined) throw new ConfigError([{ path: '', message: 'the file is empty' }], source);
      return document;
    };
    const run = this.#reloads.then(() => this.#reload(read, { origin, source: resolvePath(file) }));
    this.#reloads = run.catch(() => {});
    return run;
  }

  async #reload(given: unknown, options: ReloadOptions): Promise<ConfigSnapshot> {
    await this.ready();
    if (this.#closing) throw new GatewayClosingError();
    const previous = this.snapshot;
    const origin = options.origin ?? 'api';
    let proposed = '';
    let snapshot: ConfigSnapshot;
    let document: unknown;
    try {
      // A file is read here, in the reload queue, so what it holds when its turn comes is what counts.
      if (options.ifMatch !== undefined && options.ifMatch !== previous.version) {
        throw new MeshError('MESH_ERR_CONFIG_CONFLICT', 409, `If-Match ${options.ifMatch} is not the running version ${previous.version}`);
      }
      document = typeof given === 'function' ? await (given as () => Promise<unknown>)() : given;
      proposed = configVersion(document);
      const prepared = await this.#prepare(document, options.source);
      snapshot = prepared.snapshot;
      // close() may have begun meanwhile: a closing gateway starts nothing and applies nothing.
      if (this.#closing) throw new GatewayClosingError();
      await this.#startPlugins(prepared.added, snapshot);
      if (this.#closing) throw new GatewayClosingError();
    } catch (err) {
      this.#refused(err, origin, proposed);
      throw err;
    }
    this.#document = document;
    if (options.source !== undefined) this.#source = options.source;
    this.#apply(snapshot);
    for (const warning of snapshot.warnings()) this.log.warn(warning);
    this.emit('config:applied', { origin, version: snapshot.version, proposed, previous: previous.version });
    this.log.info({ origin, version: snapshot.version, previous: previous.version }, `config ${snapshot.version} applied (${origin}), was ${previous.version}`);
    return snapshot;
  }

  /** Validates a document for a reload and builds its snapshot; the plugins it turns on are returned, not started. */
  async #prepare(document: unknown, source = this.#source): Promise<{ snapshot: ConfigSnapshot; added: GatewayPlugin[] }> {
    try {
      const running = this.snapshot.config;
      const known = this.#plugins.plugins;
      const others = (plugins: readonly GatewayPlugin[]): SectionOwner[] => this.#catalogue.filter((owner) => !plugins.some((p) => p.name === owner.name));
      // The catalogue holds every built-in's sections, so this is the whole check: a plugin a
      // reload turns on declares nothing new, and new plugin modules are refused below.
      const config = validateConfig(document, { sections: [...known, ...others(known)], source });
      const fixed: ConfigIssue[] = [];
      for (const key of RESTART_KEYS) {
        if (canonicalJson(config[key]) !== canonicalJson(running[key])) {
          fixed.push({ path: key, message: `cannot change in a reload (needs a restart); the gateway keeps the ${key} it started with` });
        }
      }
      if (fixed.length > 0) throw new ConfigError(fixed);
      const added = (this.#builtins?.plugins(config, this.role) ?? []).filter((plugin) => !this.#plugins.has(plugin.name));
      const plugins = [...known, ...added];
      const snapshot = buildSnapshot(config, { plugins, resolvePath: (path) => this.resolvePath(path), previous: this.snapshot, version: configVersion(document) });
      const issues = [...unreadableFiles(config, (path) => this.resolvePath(path)), ...this.#balancers.check(snapshot.services.values())];
      if (issues.length > 0) throw new ConfigError(issues);
      return { snapshot, added };
    } catch (err) {
      throw inFile(err, source);
    }
  }

  /** Registers and sets up the built-ins a reload turns on, then composes the stage chains again. */
  async #startPlugins(added: readonly GatewayPlugin[], snapshot: ConfigSnapshot): Promise<void> {
    if (added.length === 0) return;
    this.#pending = snapshot;
    try {
      for (const plugin of added) {
        checkPlugin(plugin, new Set(this.#plugins.names()));
        const slot = this.#plugins.register(plugin, this.#builtins?.rank(plugin));
        this.log.info({ plugin: plugin.name }, `plugin ${plugin.name} started by a reload`);
        this.#pendingSlot = slot;
        try {
          await this.#plugins.setup(slot, () => plugin.setup(this, this.#plugins.scope(slot, () => this.#scopeSnapshot(slot))));
        } catch (err) {
          // Not half a plugin: what its setup added is taken back, and what it started is closed.
          for (const hook of this.#plugins.abandon(slot)) {
            try {
              await hook();
            } catch (closeErr) {
              this.emit('gateway:error', closeErr as Error);
            }
          }
          throw new PluginError(`plugin ${plugin.name} could not start: ${(err as Error)?.message ?? String(err)}`);
        }
      }
    } finally {
      this.#pending = null;
      this.#pendingSlot = -1;
      // The plugins that did start run (with no section in the snapshot in force, they pass requests on).
      this.#pipeline!.setChains(this.#plugins.seal());
    }
  }

  /** What a plugin's scope reads: the config in force, or, for a plugin a reload is starting, the one it will put in force. */
  #scopeSnapshot(slot: number): ConfigSnapshot {
    return this.#pending !== null && this.#pendingSlot === slot ? this.#pending : this.snapshot;
  }

  /** Puts a snapshot in force: services it adds join the registry, the others take its policies, those it lost leave. */
  #apply(snapshot: ConfigSnapshot): void {
    const previous = this.#snapshot;
    for (const policy of snapshot.services.values()) {
      const service = this.registry.getService(policy.name);
      if (service === undefined) this.registry.addService(policy.name, policy.config);
      else service.policy = policy.config;
    }
    snapshot.appliedAt = Date.now();
    this.#snapshot = snapshot;
    if (previous === null) return;
    for (const name of previous.services.keys()) {
      // Its instances leave the registry; their pools close once their requests in flight end.
      if (!snapshot.services.has(name)) this.registry.removeService(name, 'config');
    }
    if (this.#ownLogger && snapshot.config.logLevel !== previous.config.logLevel) this.log.level = snapshot.config.logLevel;
    this.#balancers.retire(previous.services.values(), snapshot.services);
    for (const hook of this.#plugins.configHooks()) {
      try {
        hook(snapshot, previous);
      } catch (err) {
        this.emit('gateway:error', err as Error);
      }
    }
  }

  // serving ---------------------------------------------------------------------------------

  /**
   * Koa middleware. A request whose path matches a route is proxied (or answered by a plugin);
   * any other request goes on to `next()`, so the host app keeps working. Starts the gateway at
   * once (health checks, leases, admin registrations work before the first request): register
   * plugins before calling it. `await gateway.ready()` to fail fast on a bad config.
   */
  middleware(): (ctx: Context, next: Next) => Promise<void> {
    this.ready().catch((err: unknown) => this.log.error({ err }, `meshgate failed to start: ${(err as Error).message}`));
    return (ctx, next) => (this.#pipeline !== null ? this.#pipeline.handle(ctx, next) : this.ready().then(() => this.#pipeline!.handle(ctx, next)));
  }

  /**
   * Handles a request that asks to switch protocols (the HTTP server's `'upgrade'` event). A
   * WebSocket handshake goes through the pipeline like any request (route, plugins, balancer,
   * breaker) and, once an instance answers 101, becomes a tunnel; a refusal is a normal HTTP
   * answer, after which the connection closes. Another protocol (`h2c`) is ignored, as RFC 9110
   * allows: the request is served as plain HTTP/1.1. The listener calls this; mounted in a Koa
   * app, call it from your server: `server.on('upgrade', (req, socket, head) => gateway.handleUpgrade(req, socket, head))`.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const res = new ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as Socket);
    // An answer instead of a tunnel ends the connection (the request's bytes after it were never
    // parsed), closed once written: the HTTP server's timeouts no longer watch this socket.
    res.once('finish', () => (socket as Socket).destroySoon());
    socket.on('error', () => socket.destroy());
    const protocol = req.headers.upgrade ?? '';
    const websocket = protocol.toLowerCase() === 'websocket';
    // Node does not parse the body of an upgrade request, so one cannot be forwarded.
    const body = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
    if (websocket ? body || req.method !== 'GET' : body) {
      const error = websocket
        ? new BadRequestError('a WebSocket handshake is a GET without a body (RFC 6455 4.1)', 'MESH_ERR_BAD_REQUEST')
        : new NotImplementedError(`Upgrade: ${protocol} with a request body is not supported; send it without Upgrade`);
      answerBareError(res, error);
      return;
    }
    this.#handshake(req, res, websocket ? { protocol, head, openedAt: 0, closedBy: null } : null);
  }

  /**
   * Serves a CONNECT stream of an HTTP/2 server. A WebSocket over HTTP/2 (RFC 8441: an extended
   * CONNECT with `:protocol: websocket`) goes through the pipeline as the HTTP/1.1 handshake it
   * stands for (a GET with `Upgrade: websocket`, as Envoy translates it), so routes and plugins see
   * one kind of handshake; the instance gets that handshake over HTTP/1.1, the client a 200 once it
   * switched. Any other CONNECT is refused: the gateway is not a forward proxy. The gateway's own
   * listener calls it; mounted on your own HTTP/2 server (created with
   * `settings: { enableConnectProtocol: true }`), call it from the server's `'connect'` event:
   * `server.on('connect', (req, res) => gateway.handleConnect(req, res))`.
   */
  handleConnect(req: Http2ServerRequest, res: Http2ServerResponse): void {
    const protocol = req.headers[':protocol'];
    if (protocol === undefined) return answerBareError(res as unknown as ServerResponse, new MeshError('MESH_ERR_METHOD_NOT_ALLOWED', 405, 'CONNECT is not supported'));
    if (protocol !== 'websocket') return answerBareError(res as unknown as ServerResponse, new NotImplementedError(`CONNECT with :protocol ${protocol} is not supported; only websocket is`));
    (req as { method: string }).method = 'GET';
    req.headers.upgrade = 'websocket';
    req.headers.connection = 'upgrade';
    this.#handshake(req as unknown as IncomingMessage, res as unknown as ServerResponse, { protocol, head: Buffer.alloc(0), openedAt: 0, closedBy: null, stream: res.stream });
  }

  /** Runs a handshake through the pipeline (once the gateway is ready); `upgrade` null: served as a plain request. */
  #handshake(req: IncomingMessage, res: ServerResponse, upgrade: Upgrade | null): void {
    const run = (): Promise<void> => {
      res.statusCode = 404;
      return this.#pipeline!.handle(this.#servingApp.createContext(req, res), null, upgrade);
    };
    (this.#pipeline !== null ? run() : this.ready().then(run)).catch((err: unknown) => this.emit('gateway:error', err as Error));
  }

  /** The Koa app whose contexts the listener's requests get (made once, on first use). */
  get #servingApp(): Koa {
    return (this.#koa ??= this.app());
  }

  /** A standalone Koa app that proxies every route and answers 404 JSON for the rest. */
  app(): Koa {
    const app = new Koa();
    // Koa's default error handler logs to stderr; ours already answered and logged.
    app.silent = true;
    app.use((ctx) => (this.#pipeline !== null ? this.#pipeline.handle(ctx, null) : this.ready().then(() => this.#pipeline!.handle(ctx, null))));
    return app;
  }

  /** Starts the proxy listener (`listen.host:port`) and, when configured, the admin server. */
  async listen(overrides: { port?: number; host?: string } = {}): Promise<ListenInfo> {
    await this.ready();
    // A config a plugin put in force at start (a fleet's, from Redis) is applied before the first request.
    await this.#reloads;
    if (this.#closing) throw new GatewayClosingError();
    if (this.#server) throw new PluginError('gateway is already listening', 'MESH_ERR_ALREADY_LISTENING');
    const listen = this.config.listen;
    // The gateway answers every request itself, so Koa's callback (its on-finished listeners,
    // compose and respond()) would be pure overhead; plugins still get a real Koa context.
    const app = this.#servingApp;
    const pipeline = this.#pipeline!;
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      // As Koa's own handler does: an answer a plugin leaves without a status is a 404.
      res.statusCode = 404;
      pipeline.handle(app.createContext(req, res), null).catch((err: unknown) => this.emit('gateway:error', err as Error));
    };
    const server = createListener(listen, (path) => this.resolvePath(path), handler, (req, socket, head) => this.handleUpgrade(req, socket, head), (req, res) => this.handleConnect(req, res));
    this.#server = server;
    if (listen.tls) this.#rotateCertificates(server as import('node:https').Server, listen.tls);
    if (listen.tls?.clientCert) {
      // Mutual TLS: a client certificate that does not verify is refused (require) or anonymous (request); either way, said.
      server.on('tlsClientError', (err: Error, socket: import('node:net').Socket) =>
        this.log.warn({ client: socket.remoteAddress, err: err.message }, `TLS handshake refused: ${err.message}`),
      );
      server.on('secureConnection', (socket: import('node:tls').TLSSocket) => {
        if (!socket.authorized && socket.getPeerCertificate()?.raw !== undefined) {
          this.log.warn({ client: socket.remoteAddress, err: String(socket.authorizationError) }, `client certificate not verified (${String(socket.authorizationError)}): the connection is anonymous`);
        }
      });
    }
    const host = overrides.host ?? listen.host;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(overrides.port ?? listen.port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    const scheme = listen.tls ? 'https' : 'http';
    const info: ListenInfo = { url: `${scheme}://${urlHost(host)}:${port}`, port };
    // Cluster workers leave the admin API to the primary: a shared admin port would scatter writes.
    if (this.config.admin && this.role !== 'worker') {
      try {
        const admin = await this.admin.listen();
        info.adminUrl = admin.url;
        info.adminPort = admin.port;
      } catch (err) {
        // Half a gateway is worse than none: release the proxy port too.
        this.#server = null;
        await new Promise<void>((resolve) => server.close(() => resolve()));
        throw err;
      }
    }
    // The address as bound (0.0.0.0 is every interface), not the loopback URL `info.url` gives for connecting.
    const bound = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`;
    this.log.info({ url: info.url, admin: info.adminUrl }, `meshgate listening on ${bound}${info.adminUrl ? `, admin on ${info.adminUrl}` : ''}`);
    return info;
  }

  /**
   * Re-reads the listener's certificate, key and CA when one of their files changes (a
   * `meshgate ca issue` before the old certificate expires): new connections get the new ones,
   * open connections carry on. A file that does not parse is logged and the old ones stay.
   */
  #rotateCertificates(server: import('node:https').Server, tls: NonNullable<GatewayConfig['listen']['tls']>): void {
    const files = [tls.cert, tls.key, tls.clientCert ? tls.clientCa : tls.ca].filter((f): f is string => f !== undefined).map((f) => this.resolvePath(f));
    const stop = watchFilesSettled(files, () => {
      try {
        server.setSecureContext(listenerTlsFiles(tls, (path) => this.resolvePath(path)));
        this.log.info({ files }, 'listener certificate reloaded');
      } catch (err) {
        this.log.error({ err: (err as Error).message, files }, `listener certificate not reloaded, the old one stays: ${(err as Error).message}`);
      }
    });
    this.onClose(stop);
  }

  /** The proxy's HTTP server, once listening. */
  get server(): Server | null {
    return this.#server;
  }

  /** Requests in flight right now. */
  get inflight(): number {
    return this.#pipeline?.inflight ?? 0;
  }

  /** WebSockets open right now: tunnels, and handshakes under way. */
  get websockets(): number {
    return this.#pipeline?.websockets ?? 0;
  }

  /** True once plugins are set up and until close() begins. */
  get isReady(): boolean {
    return this.#pipeline !== null && !this.#closing;
  }

  /**
   * Stops taking requests, waits up to `drainTimeout` for in-flight ones, then runs close hooks
   * (reverse order), closes the connection pools and the admin server. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.emit('gateway:closing');
    // A reload under way finishes (or stops at its next check) before anything is torn down.
    await this.#reloads;
    const server = this.#server;
    server?.close();
    server?.closeIdleConnections();
    // HTTP/2 clients get a GOAWAY: streams under way finish, new ones go elsewhere.
    if (server) closeHttp2Sessions(server, true);
    const pipeline = this.#pipeline;
    if (pipeline !== null && pipeline.inflight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.config.drainTimeout);
        timer.unref();
        void pipeline.drained().then(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (pipeline.inflight > 0) this.log.warn({ inflight: pipeline.inflight, websockets: pipeline.websockets }, 'drain timeout: cutting off in-flight requests and WebSockets');
    }
    if (pipeline !== null && pipeline.websockets > 0) {
      // Tunnels past the drain are cut; their requests end (and are logged) as their sockets close.
      pipeline.closeTunnels();
      await Promise.race([pipeline.drained(), new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
    }
    server?.closeAllConnections();
    if (server) closeHttp2Sessions(server, false);
    this.leases.stop();
    for (const hook of this.#plugins.closeHooks()) {
      try {
        await hook();
      } catch (err) {
        this.emit('gateway:error', err as Error);
      }
    }
    this.#balancers.close();
    this.#instancePools.close();
    await Promise.all([this.pools.close(), this.admin.close()]);
    this.#deadlines.clear();
  }
}

/** The SAN URI of the listener's own certificate (XFCC's `By`), or null. */
function ownUri(listen: GatewayConfig['listen'], resolve: (path: string) => string): string | null {
  if (!listen.tls) return null;
  try {
    return sanUris(new X509Certificate(readFileSync(resolve(listen.tls.cert))))[0] ?? null;
  } catch {
    return null; // not a certificate node can read here: the listener will say so
  }
}

/** A config error that names its file. */
function inFile(err: unknown, source: string | undefined): unknown {
  return err instanceof ConfigError && source !== undefined && !err.message.includes(source) ? new ConfigError(err.issues, source) : err;
}

/** The files a config names that cannot be read (TLS certificates and keys), each at its path. */
function unreadableFiles(config: GatewayConfig, resolve: (path: string) => string): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  const check = (file: string | undefined, path: string): void => {
    if (file === undefined) return;
    try {
      accessSync(resolve(file), constants.R_OK);
    } catch (err) {
      issues.push({ path, message: `cannot read ${resolve(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
    }
  };
  const tls = config.listen.tls;
  if (tls) for (const key of ['cert', 'key', 'ca', 'clientCa'] as const) check(tls[key], `listen.tls.${key}`);
  for (const [name, service] of Object.entries(config.services)) {
    if (service.tls) for (const key of ['ca', 'cert', 'key'] as const) check(service.tls[key], `services.${name}.tls.${key}`);
  }
  return issues;
}
