import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { Transform } from 'node:stream';
import Koa, { type Context } from 'koa';
import { AdminServer } from '../admin/server.js';
import type { Balancer, BalancerFactory } from '../balancers/balancer.js';
import { BUILTIN_BALANCERS } from '../balancers/index.js';
import { compose, type Middleware, type Next } from './compose.js';
import type { GatewayConfig } from '../config/schema.js';
import {
  ConfigError,
  GatewayClosingError,
  MeshError,
  PayloadTooLargeError,
  NoHealthyInstanceError,
  NoRouteError,
  PluginError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import type { GatewayEvents } from './events.js';
import { upstreamRequestHeaders, writeHead } from '../http/headers.js';
import { createLogger, type Logger } from '../kit/logger.js';
import { decimalMs } from '../kit/decimal.js';
import { Deadlines } from '../upstream/deadlines.js';
import { LeaseKeeper } from '../registry/leases.js';
import { clientAddress, compileTrust, type ProxyTrust } from '../http/net.js';
import { finalStatus } from './outcome.js';
import { normalizeTarget } from '../http/path.js';
import { STAGES, checkPlugin, type GatewayPlugin, type Stage } from './plugin.js';
import { UpstreamPools, dispatchUpstream, isTlsErrorCode, responseHeaders, type PoolOptions } from '../upstream/proxy.js';
import { LocalRegistrar, type Registrar } from '../registry/registrar.js';
import { Registry, type Instance, type Service } from '../registry/registry.js';
import { Router, upstreamPath } from './router.js';
import { MeshState } from './state.js';

/**
 * App-lifetime values plugins share through `gateway.decorate(key, value)` / `gateway.get(key)`.
 * Augment it to type your own:
 * @example
 * declare module 'meshgate' { interface GatewayServices { myCache: Map<string, string> } }
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface GatewayServices {}

/** Options that are not part of the config file. */
export interface GatewayOptions {
  /** Directory that relative paths in the config (TLS files, plugin modules) resolve against. @default process.cwd() */
  baseDir?: string;
  /** Logger; defaults to pino at `config.logLevel` on stderr. */
  logger?: Logger;
  /** Options for every upstream connection pool. */
  pool?: PoolOptions;
  /** Random source of the balancers, uniform in [0, 1); pass a seeded one for reproducible runs. @default Math.random */
  random?: () => number;
  /**
   * In cluster mode: `primary` runs the control plane (discovery, leases, health checks, admin),
   * `worker` proxies and mirrors the primary's registry. @default 'standalone'
   */
  role?: GatewayRole;
}

/** What a gateway process does; see {@link GatewayOptions.role}. */
export type GatewayRole = 'standalone' | 'primary' | 'worker';

/** Where the gateway is listening, after {@link Gateway.listen}. */
export interface ListenInfo {
  /** The proxy's base URL, as `http://127.0.0.1:8080`. */
  url: string;
  port: number;
  /** The admin server's base URL, when `admin` is configured. */
  adminUrl?: string;
  adminPort?: number;
}

/** A composed stage; null when no plugin added middleware to it, so the pipeline calls straight through. */
type StageChain = ((ctx: Context, next: Next) => Promise<void>) | null;

/**
 * A gateway: the plugin host, the registry, the router and the proxy. Create it with
 * `createGateway(config)`, add plugins with `use(plugin)`, then either `listen()` or mount
 * `middleware()` in a Koa app. `close()` drains in-flight requests and shuts everything down.
 */
export class Gateway extends EventEmitter<GatewayEvents> {
  readonly config: GatewayConfig;
  readonly registry: Registry;
  readonly router: Router;
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

  readonly #plugins: GatewayPlugin[] = [];
  readonly #pluginNames = new Set<string>();
  readonly #stages = new Map<Stage, Middleware[]>(STAGES.map((s) => [s, []]));
  readonly #services = new Map<string, unknown>();
  readonly #closeHooks: (() => unknown)[] = [];
  readonly #balancerFactories = new Map<string, BalancerFactory>();
  readonly #balancers = new Map<Service, Balancer>();
  readonly #originRefs = new Map<string, number>();
  /** TLS connect options per service, read from files once. */
  readonly #tls = new Map<Service, Record<string, unknown>>();
  readonly #trust: ProxyTrust;
  /** The deadlines of attempts waiting for response headers: one timer for all of them. */
  readonly #deadlines = new Deadlines();

  #chains: Record<Stage, StageChain> | null = null;
  #ready: Promise<void> | null = null;
  #started = false;
  #closing = false;
  #closed: Promise<void> | null = null;
  #inflight = 0;
  #drained: (() => void) | null = null;
  #server: Server | null = null;

  constructor(config: GatewayConfig, options: GatewayOptions = {}) {
    super();
    this.config = config;
    this.baseDir = options.baseDir ?? process.cwd();
    this.log = options.logger ?? createLogger(config.logLevel);
    this.registry = new Registry(this);
    this.router = new Router(config.routes);
    this.pools = new UpstreamPools(options.pool);
    this.registrar = new LocalRegistrar(this.registry);
    this.leases = new LeaseKeeper(this);
    this.admin = new AdminServer(this);
    this.random = options.random ?? Math.random;
    this.role = options.role ?? 'standalone';
    this.#trust = compileTrust(config.listen.trustProxy);
    for (const [name, factory] of Object.entries(BUILTIN_BALANCERS)) this.defineBalancer(name, factory);
    for (const [name, policy] of Object.entries(config.services)) this.registry.addService(name, policy);
    this.on('instance:added', (inst) => this.#refOrigin(inst, 1));
    this.on('instance:removed', (inst) => this.#refOrigin(inst, -1));
    // EventEmitter throws on an unhandled 'error'; ours is a plain event that always has a listener.
    this.on('gateway:error', (err) => this.log.error({ err }, err.message));
  }

  // plugin host -----------------------------------------------------------------------------

  /** Registers a plugin (before the gateway starts), or adds middleware to a stage (from a plugin's setup). */
  use(plugin: GatewayPlugin): this;
  use(stage: Stage, middleware: Middleware): this;
  use(pluginOrStage: GatewayPlugin | Stage, middleware?: Middleware): this {
    if (typeof pluginOrStage === 'string') {
      const stack = this.#stages.get(pluginOrStage);
      if (!stack) throw new PluginError(`unknown stage "${pluginOrStage}" (stages: ${STAGES.join(', ')})`);
      if (typeof middleware !== 'function') throw new PluginError(`use("${pluginOrStage}", fn): fn must be a function`);
      if (this.#chains) throw new PluginError('middleware must be added from a plugin setup, before the gateway starts');
      stack.push(middleware);
      return this;
    }
    if (this.#ready) throw new PluginError(`plugin "${pluginOrStage?.name}" added after the gateway started`);
    // Dependencies are checked at boot (ready/listen), where the whole list is known.
    checkPlugin(pluginOrStage, this.#pluginNames, false);
    this.#plugins.push(pluginOrStage);
    this.#pluginNames.add(pluginOrStage.name);
    return this;
  }

  /** Whether a plugin of that name is registered. */
  hasPlugin(name: string): boolean {
    return this.#pluginNames.has(name);
  }

  /** The names of the plugins registered with `use`, in order. */
  pluginNames(): string[] {
    return [...this.#pluginNames];
  }

  /** Shares an app-lifetime value under `key`. A key can be decorated once. */
  decorate<K extends keyof GatewayServices>(key: K, value: GatewayServices[K]): this;
  decorate(key: string, value: unknown): this;
  decorate(key: string, value: unknown): this {
    if (this.#services.has(key)) throw new PluginError(`decorator "${key}" is already defined`, 'MESH_ERR_DECORATOR_DUPLICATE');
    this.#services.set(key, value);
    return this;
  }

  /** A value shared with {@link decorate}; throws when missing. */
  get<K extends keyof GatewayServices>(key: K): GatewayServices[K];
  get<T = unknown>(key: string): T;
  get(key: string): unknown {
    if (!this.#services.has(key)) throw new PluginError(`decorator "${key}" is not defined`, 'MESH_ERR_DECORATOR_MISSING');
    return this.#services.get(key);
  }

  /** Whether a value was shared under `key`. */
  has(key: string): boolean {
    return this.#services.has(key);
  }

  /** Runs `fn` on close, after in-flight requests drained. Hooks run in reverse order of registration. */
  onClose(fn: () => unknown): this {
    this.#closeHooks.push(fn);
    return this;
  }

  /** Makes a balancer available to `services.<name>.balancer: <name>`. */
  defineBalancer(name: string, factory: BalancerFactory): this {
    if (this.#balancerFactories.has(name) && this.#started) throw new PluginError(`balancer "${name}" is already defined`);
    this.#balancerFactories.set(name, factory);
    for (const [service, balancer] of this.#balancers) {
      if (service.policy.balancer === name) {
        balancer.close?.();
        this.#balancers.delete(service);
        service.balancer = null;
      }
    }
    return this;
  }

  /** The balancer names that are defined. */
  balancerNames(): string[] {
    return [...this.#balancerFactories.keys()];
  }

  /** The balancer of a service, created on first use. */
  balancerFor(service: Service): Balancer {
    if (service.balancer !== null) return service.balancer;
    let balancer = this.#balancers.get(service);
    if (!balancer) {
      const factory = this.#balancerFactories.get(service.policy.balancer);
      if (!factory) throw new ConfigError([{ path: `services.${service.name}.balancer`, message: `unknown balancer "${service.policy.balancer}"` }]);
      balancer = factory(service, { random: this.random });
      this.#balancers.set(service, balancer);
    }
    service.balancer = balancer;
    return balancer;
  }

  /** Resolves a path from the config against the config file's directory. */
  resolvePath(path: string): string {
    return isAbsolute(path) ? path : resolvePath(this.baseDir, path);
  }

  /**
   * Runs every plugin's setup, once. `listen()` and the first request through `middleware()`
   * call it; call it yourself to fail fast on a bad plugin or config.
   */
  ready(): Promise<void> {
    this.#ready ??= this.#setup();
    return this.#ready;
  }

  async #setup(): Promise<void> {
    const registered = new Set<string>();
    for (const plugin of this.#plugins) {
      checkPlugin(plugin, registered);
      registered.add(plugin.name);
      this.log.debug({ plugin: plugin.name }, 'plugin setup');
      await plugin.setup(this);
    }
    const issues = [];
    for (const service of this.registry.services()) {
      if (!this.#balancerFactories.has(service.policy.balancer)) {
        issues.push({
          path: `services.${service.name}.balancer`,
          message: `unknown balancer "${service.policy.balancer}" (known: ${this.balancerNames().join(', ')})`,
        });
      }
    }
    if (issues.length > 0) throw new ConfigError(issues);
    const chains = {} as Record<Stage, StageChain>;
    for (const stage of STAGES) {
      const stack = this.#stages.get(stage)!;
      chains[stage] = stack.length === 0 ? null : compose(stack, stage === 'retry');
    }
    this.#chains = chains;
    this.#started = true;
    // A worker's registry mirrors the primary's, which decides when leases run out.
    if (this.role !== 'worker') this.leases.start();
  }

  // serving ---------------------------------------------------------------------------------

  /**
   * Koa middleware. A request whose path matches a route is proxied; any other request goes on
   * to `next()`, so the host app keeps working.
   */
  middleware(): (ctx: Context, next: Next) => Promise<void> {
    return (ctx, next) => (this.#started ? this.#handle(ctx, next) : this.ready().then(() => this.#handle(ctx, next)));
  }

  /** A standalone Koa app that proxies every route and answers 404 JSON for the rest. */
  app(): Koa {
    const app = new Koa();
    // Koa's default error handler logs to stderr; ours already answered and logged.
    app.silent = true;
    app.use((ctx) => (this.#started ? this.#handle(ctx, null) : this.ready().then(() => this.#handle(ctx, null))));
    return app;
  }

  /** Starts the proxy listener (`listen.host:port`) and, when configured, the admin server. */
  async listen(overrides: { port?: number; host?: string } = {}): Promise<ListenInfo> {
    await this.ready();
    if (this.#closing) throw new GatewayClosingError();
    if (this.#server) throw new PluginError('gateway is already listening', 'MESH_ERR_ALREADY_LISTENING');
    const { listen } = this.config;
    // The gateway answers every request itself, so Koa's callback (its on-finished listeners,
    // compose and respond()) would be pure overhead; plugins still get a real Koa context.
    const app = this.app();
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      this.#handle(app.createContext(req, res), null).catch((err: unknown) => this.emit('gateway:error', err as Error));
    };
    const serverOptions = {
      maxHeaderSize: listen.maxHeaderSize,
      headersTimeout: listen.headersTimeout,
      requestTimeout: listen.requestTimeout,
      keepAliveTimeout: listen.keepAliveTimeout,
      // Node checks those timeouts only every connectionsCheckingInterval (30 s by default),
      // which would let a slowloris client hold a socket 60 times longer than configured.
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(Math.min(listen.headersTimeout, listen.requestTimeout) / 2))),
    };
    const server = listen.tls
      ? createHttpsServer(
          {
            ...serverOptions,
            cert: readFileSync(this.resolvePath(listen.tls.cert)),
            key: readFileSync(this.resolvePath(listen.tls.key)),
            ...(listen.tls.ca ? { ca: readFileSync(this.resolvePath(listen.tls.ca)) } : {}),
          },
          handler,
        )
      : createHttpServer(serverOptions, handler);
    // A gateway is not a forward proxy: CONNECT tunnels are refused outright.
    server.on('connect', (_req: IncomingMessage, socket: import('node:net').Socket) => {
      const body = JSON.stringify({ error: 'MESH_ERR_METHOD_NOT_ALLOWED', message: 'CONNECT is not supported' });
      socket.end(`HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    });
    this.#server = server;
    const host = overrides.host ?? listen.host;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(overrides.port ?? listen.port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    const info: ListenInfo = { url: `${listen.tls ? 'https' : 'http'}://${urlHost(host)}:${port}`, port };
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
    this.log.info({ url: info.url, admin: info.adminUrl }, `meshgate listening on ${info.url}`);
    return info;
  }

  /** The proxy's HTTP server, once listening. */
  get server(): Server | null {
    return this.#server;
  }

  /** Requests in flight right now. */
  get inflight(): number {
    return this.#inflight;
  }

  /** True once plugins are set up and until close() begins. */
  get isReady(): boolean {
    return this.#started && !this.#closing;
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
    const server = this.#server;
    server?.close();
    server?.closeIdleConnections();
    if (this.#inflight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.config.drainTimeout);
        timer.unref();
        this.#drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (this.#inflight > 0) this.log.warn({ inflight: this.#inflight }, 'drain timeout: cutting off in-flight requests');
    }
    server?.closeAllConnections();
    this.leases.stop();
    for (const hook of [...this.#closeHooks].reverse()) {
      try {
        await hook();
      } catch (err) {
        this.emit('gateway:error', err as Error);
      }
    }
    for (const balancer of this.#balancers.values()) balancer.close?.();
    await Promise.all([this.pools.close(), this.admin.close()]);
    this.#deadlines.clear();
  }

  // the request path ------------------------------------------------------------------------

  async #handle(ctx: Context, hostNext: Next | null): Promise<void> {
    const mesh = new MeshState();
    ctx.state.mesh = mesh;
    const chains = this.#chains!;
    try {
      const target = normalizeTarget(ctx.req.url ?? '/');
      mesh.path = target.path;
      mesh.query = target.query;
      mesh.route = this.router.match(target.path) ?? null;
    } catch (err) {
      // A malformed path is answered by the gateway in both modes: letting it reach the host
      // app would let a path trick bypass routing.
      mesh.error = err as MeshError;
    }
    if (mesh.route === null && mesh.error === null && hostNext !== null) return hostNext();

    const socketAddress = ctx.req.socket.remoteAddress ?? '';
    mesh.clientIp = this.#trust === false ? socketAddress : clientAddress(socketAddress, headerValue(ctx.req.headers['x-forwarded-for']), this.#trust);
    this.#inflight++;
    const res = ctx.res as ServerResponse & { [kMesh]?: MeshState };
    res[kMesh] = mesh;
    // on(), not once(): once() wraps the listener in a bound function per request; 'close' fires
    // at most once anyway, and the listener is taken off below.
    res.on('close', onResponseClose);
    let failed = false;
    let failure: unknown;
    try {
      if (this.#closing) throw new GatewayClosingError();
      if (chains.onRequest === null) await this.#proxyRequest(ctx, mesh, chains);
      else await chains.onRequest(ctx, () => this.#proxyRequest(ctx, mesh, chains));
    } catch (err) {
      failed = true;
      failure = err;
      this.#answerError(ctx, mesh, err);
    } finally {
      res.off('close', onResponseClose);
      if (--this.#inflight === 0 && this.#drained) this.#drained();
      if (this.listenerCount('request:end') > 0) this.#requestEnd(ctx, failed ? finalStatus(ctx, failure) : finalStatus(ctx));
    }
  }

  /**
   * Tells the observers (metrics, access log) how a request ended. An event after the pipeline
   * instead of an onRequest middleware wrapped around it: observers see every answered request,
   * whatever plugin answered it, and cost no async frame per request.
   */
  #requestEnd(ctx: Context, status: number): void {
    // One clock reading for every observer: metrics and the access log report the same duration.
    ctx.state.mesh.endedAt = performance.now();
    // Called one by one, not with emit(): a listener that throws would stop emit() before the rest.
    // rawListeners(), so a once() listener is removed after its call, as emit() would.
    for (const listener of this.rawListeners('request:end')) {
      try {
        Reflect.apply(listener, this, [ctx, status]);
      } catch (err) {
        // An observer's bug must not touch the answer, which is already out, nor the other observers.
        try {
          this.emit('gateway:error', err as Error);
        } catch {
          // a gateway:error listener that throws too: nothing is left to tell
        }
      }
    }
  }

  async #proxyRequest(ctx: Context, mesh: MeshState, chains: Record<Stage, StageChain>): Promise<void> {
    if (mesh.error) throw mesh.error;
    const route = mesh.route;
    if (route === null) throw new NoRouteError(mesh.path);
    const service = this.registry.getService(route.service)!;
    mesh.service = service;
    mesh.upstreamPath = upstreamPath(route, mesh.path) + mesh.query;
    mesh.deadline = mesh.startedAt + service.policy.timeout;
    const req = ctx.req;
    mesh.body = requestBody(ctx);
    const limit = route.config.maxBodySize;
    if (limit !== undefined) mesh.body = limitBody(req, mesh.body, limit);
    mesh.upstreamHeaders = upstreamRequestHeaders(req, {
      remoteAddress: req.socket.remoteAddress ?? '',
      appendForwardedFor: this.#trust !== false,
      proto: ctx.protocol,
      bodyLength: typeof mesh.body === 'string' || Buffer.isBuffer(mesh.body) ? Buffer.byteLength(mesh.body) : undefined,
      overrides: mesh.headerOverrides,
    });
    try {
      // Empty stages are skipped outright: no `next` closure is made for them.
      const attempts = chains.retry === null ? () => this.#attempt(ctx, mesh, chains) : () => chains.retry!(ctx, () => this.#attempt(ctx, mesh, chains));
      await (chains.resolve === null ? attempts() : chains.resolve(ctx, attempts));
      if (mesh.clientGone) return;
      const committing = this.#commit(ctx, mesh);
      if (committing !== undefined) await committing;
    } catch (err) {
      // Whatever went wrong, an exchange still held at its headers must free its socket.
      if (mesh.exchange?.state === 'headers') mesh.exchange.discard();
      // Recorded now, so onRequest middleware (logs, metrics) see it while they unwind.
      if (err instanceof MeshError) mesh.error = err;
      throw err;
    }
  }

  /**
   * One try: select an instance, then run the guard stage around the upstream call. The retry
   * stage's `next()`; like {@link #pick} it never throws, so a retry middleware sees every failure
   * as a rejection.
   */
  #attempt(ctx: Context, mesh: MeshState, chains: Record<Stage, StageChain>): Promise<void> {
    if (mesh.exchange !== null) {
      // A retry: the previous answer is dropped, never sent.
      if (mesh.exchange.state === 'headers') mesh.exchange.discard();
      mesh.exchange = null;
    }
    mesh.attempt++;
    // The set of tried instances exists only once there is a second attempt: most requests never need it.
    if (mesh.instance !== null) (mesh.tried ??= new Set()).add(mesh.instance);
    mesh.instance = null;
    mesh.candidates = mesh.service!.candidates();
    return chains.select === null ? this.#pick(ctx, mesh, chains) : chains.select(ctx, () => this.#pick(ctx, mesh, chains));
  }

  /**
   * Picks the instance (unless a select middleware did) and goes on to the guard stage. It is the
   * select stage's `next()`, so it never throws: every failure is a rejected promise, which a
   * middleware's `next().catch(...)` or `.then(..., onError)` sees.
   */
  #pick(ctx: Context, mesh: MeshState, chains: Record<Stage, StageChain>): Promise<void> {
    if (mesh.instance === null) {
      const service = mesh.service!;
      if (mesh.candidates.length === 0) {
        return Promise.reject(new NoHealthyInstanceError(service.name, service.instances.size === 0 ? 'no instances registered' : 'no healthy instance'));
      }
      try {
        mesh.instance = this.balancerFor(service).pick(mesh.candidates, ctx, mesh.tried ?? undefined);
      } catch (err) {
        // An unknown balancer, or a bug in a custom one.
        return Promise.reject(err);
      }
    }
    return chains.guard === null ? this.#callUpstream(ctx, mesh) : chains.guard(ctx, () => this.#callUpstream(ctx, mesh));
  }

  async #callUpstream(ctx: Context, mesh: MeshState): Promise<void> {
    const instance = mesh.instance!;
    const service = mesh.service!;
    const balancer = this.balancerFor(service);
    for (let staleRetry = true; ; staleRetry = false) {
      const left = mesh.deadline - performance.now();
      if (left <= 0) throw new UpstreamTimeoutError(instance.url, service.policy.timeout);
      const timeout = mesh.tryTimeout > 0 ? Math.min(mesh.tryTimeout, left) : left;
      const exchange = dispatchUpstream(this.poolFor(instance, service), {
        instance,
        method: ctx.req.method!,
        path: instance.basePath + mesh.upstreamPath,
        headers: mesh.upstreamHeaders,
        body: mesh.body,
        timeout: Math.ceil(timeout),
        deadlines: this.#deadlines,
      });
      mesh.exchange = exchange;
      if (mesh.clientGone) exchange.clientAborted();
      try {
        await exchange.headers;
      } catch (err) {
        // A keep-alive race: the upstream closed an idle socket just as the request went out on it.
        // Nothing was answered, so an idempotent request with a replayable body goes again, once.
        if (staleRetry && err instanceof UpstreamResetError && isReplayable(ctx.req.method!, mesh)) continue;
        balancer.observe?.(instance, performance.now() - exchange.startedAt, true);
        if (isTlsFailure(err)) {
          // A certificate problem is a configuration error somebody must see, not just a 502.
          this.log.warn({ service: service.name, instance: instance.id, code: ((err as MeshError).cause as { code?: string }).code }, (err as MeshError).message);
        } else if (service.policy.tls && err instanceof UpstreamResetError) {
          // Under TLS 1.3 a server that refuses our client certificate just closes the connection.
          this.log.warn({ service: service.name, instance: instance.id }, `TLS connection to ${instance.url} closed before any response (is the client certificate accepted?)`);
        }
        if (this.listenerCount('upstream:response') > 0) {
          this.emit('upstream:response', instance, { status: 0, durationMs: performance.now() - exchange.startedAt, error: (err as MeshError).code });
        }
        throw err;
      }
      mesh.upstreamMs = exchange.headersMs;
      balancer.observe?.(instance, exchange.headersMs, exchange.statusCode >= 500);
      if (this.listenerCount('upstream:response') > 0) {
        this.emit('upstream:response', instance, { status: exchange.statusCode, durationMs: exchange.headersMs });
      }
      return;
    }
  }

  #commit(ctx: Context, mesh: MeshState): Promise<void> | undefined {
    const exchange = mesh.exchange!;
    const res = ctx.res;
    ctx.respond = false;
    const gatewayMs = performance.now() - mesh.startedAt - exchange.headersMs;
    const extra = takeSetHeaders(res);
    const headersWereSet = extra.length > 0;
    for (let i = 0; i < mesh.responseHeaders.length; i++) extra.push(mesh.responseHeaders[i]!);
    extra.push('server-timing', `gateway;dur=${decimalMs(gatewayMs, 1)}, upstream;dur=${decimalMs(exchange.headersMs, 1)}`);
    if (this.#closing) res.shouldKeepAlive = false;
    return exchange.commit(res, responseHeaders(exchange.rawHeaders, extra), headersWereSet);
  }

  #answerError(ctx: Context, mesh: MeshState, err: unknown): void {
    const error = err instanceof MeshError ? err : new MeshError('MESH_ERR_INTERNAL', 500, String((err as Error)?.message ?? err), { cause: err, expose: false });
    mesh.error = error;
    const res = ctx.res;
    ctx.respond = false;
    if (!(err instanceof MeshError)) this.emit('gateway:error', err instanceof Error ? err : new Error(String(err)));
    if (res.headersSent || res.destroyed || res.writableEnded || mesh.clientGone) {
      if (!res.destroyed && !res.writableEnded) res.destroy();
      return;
    }
    const body = JSON.stringify(error.toJSON());
    const head = takeSetHeaders(res);
    const headersWereSet = head.length > 0;
    for (let i = 0; i < mesh.responseHeaders.length; i++) head.push(mesh.responseHeaders[i]!);
    head.push('content-type', 'application/json; charset=utf-8', 'content-length', String(Buffer.byteLength(body)));
    if (this.#closing) res.shouldKeepAlive = false;
    // The request body may still be arriving; without reading it the connection cannot be reused.
    if (!ctx.req.readableEnded) res.shouldKeepAlive = false;
    writeHead(res, error.status, head, headersWereSet);
    res.end(body);
  }

  /** The connection pool for an instance (its service's TLS profile included). */
  poolFor(instance: Instance, service: Service = this.registry.requireService(instance.service)) {
    const tls = service.policy.tls;
    if (!tls) return this.pools.get(instance.origin);
    return this.pools.get(instance.origin, `tls:${service.name}`, { tls: this.#tlsOptions(service) });
  }

  #tlsOptions(service: Service): Record<string, unknown> {
    const cached = this.#tls.get(service);
    if (cached !== undefined) return cached;
    const tls = service.policy.tls!;
    const options: Record<string, unknown> = { rejectUnauthorized: tls.rejectUnauthorized };
    if (tls.ca) options.ca = readFileSync(this.resolvePath(tls.ca));
    if (tls.cert) options.cert = readFileSync(this.resolvePath(tls.cert));
    if (tls.key) options.key = readFileSync(this.resolvePath(tls.key));
    if (tls.servername) options.servername = tls.servername;
    this.#tls.set(service, options);
    return options;
  }

  #refOrigin(instance: Instance, delta: number): void {
    const key = instance.origin;
    const count = (this.#originRefs.get(key) ?? 0) + delta;
    if (count > 0) {
      this.#originRefs.set(key, count);
      return;
    }
    this.#originRefs.delete(key);
    if (delta < 0) {
      this.pools.release(key);
      const service = this.registry.getService(instance.service);
      if (service?.policy.tls) this.pools.release(key, `tls:${service.name}`);
    }
  }
}

/**
 * The body to send upstream. Normally the client's stream, untouched. When a body parser in the
 * host app already read the stream, the parsed body is sent instead (re-serialized), so the
 * request does not hang waiting for bytes that will never come.
 */
function requestBody(ctx: Context): IncomingMessage | Buffer | string | null {
  const req = ctx.req;
  const parsed = (ctx.request as { body?: unknown; rawBody?: unknown }).body;
  if (parsed !== undefined && (req.readableEnded || req.readableDidRead)) {
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw === 'string' || Buffer.isBuffer(raw)) return raw;
    if (typeof parsed === 'string' || Buffer.isBuffer(parsed)) return parsed;
    const type = String(req.headers['content-type'] ?? '');
    if (type.includes('application/x-www-form-urlencoded') && parsed && typeof parsed === 'object') {
      return new URLSearchParams(parsed as Record<string, string>).toString();
    }
    return JSON.stringify(parsed);
  }
  const headers = req.headers;
  const length = headers['content-length'];
  if (headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) return req;
  return null;
}

/**
 * Headers already set on the response (by the host app, or plugins with `ctx.set`), taken off
 * it as a flat list so `writeHead` can send them with the upstream's without collapsing
 * repeated upstream headers such as `Set-Cookie`.
 */
function takeSetHeaders(res: ServerResponse): string[] {
  const names = res.getHeaderNames();
  const out: string[] = [];
  for (const name of names) {
    const value = res.getHeader(name);
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else if (value !== undefined) out.push(name, String(value));
    res.removeHeader(name);
  }
  return out;
}

const kMesh = Symbol('meshgate.state');

/** The client went away before the response was complete: abort what is in flight. Shared, not a closure per request. */
function onResponseClose(this: ServerResponse & { [kMesh]?: MeshState }): void {
  const mesh = this[kMesh];
  if (mesh !== undefined && !this.writableFinished) {
    mesh.clientGone = true;
    mesh.exchange?.clientAborted();
  }
}

/**
 * Applies a route's `maxBodySize`: a declared length over it is refused before any upstream is
 * dialed; a chunked body is counted as it streams and cut off with 413 when it passes the limit.
 */
function limitBody(req: IncomingMessage, body: IncomingMessage | Buffer | string | null, limit: number): IncomingMessage | Buffer | string | null {
  if (body === null) return null;
  if (body !== req) {
    if (Buffer.byteLength(body as Buffer | string) > limit) throw new PayloadTooLargeError(limit);
    return body;
  }
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    if (Number(declared) > limit) throw new PayloadTooLargeError(limit);
    return body; // Node's parser enforces the declared length itself
  }
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      seen += chunk.length;
      if (seen > limit) callback(new PayloadTooLargeError(limit));
      else callback(null, chunk);
    },
  });
  req.on('error', (err) => counter.destroy(err));
  req.pipe(counter);
  // undici streams this in place of the request; it keeps the IncomingMessage type for the proxy's sake.
  return Object.assign(counter, { headers: req.headers }) as unknown as IncomingMessage;
}

function isTlsFailure(err: unknown): boolean {
  return isTlsErrorCode((err as { cause?: { code?: unknown } })?.cause?.code);
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(',') : value;
}

const SAFE_TO_REPEAT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** An idempotent request whose body (if any) can be sent again. */
function isReplayable(method: string, mesh: MeshState): boolean {
  return SAFE_TO_REPEAT.has(method) && (mesh.body === null || typeof mesh.body === 'string' || Buffer.isBuffer(mesh.body));
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::' || host === '') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
