import type { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { ServerHttp2Stream } from 'node:http2';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Context } from 'koa';
import {
  BadRequestError,
  GatewayClosingError,
  LoopDetectedError,
  MeshError,
  NoHealthyInstanceError,
  NoRouteError,
  NotImplementedError,
  OverloadedError,
  UpstreamProtocolError,
  UpstreamResetError,
  UpgradeRefusedError,
  UpstreamTimeoutError,
} from '../errors.js';
import { http2Fields, http2Head, upstreamRequestHeaders, validField } from '../http/headers.js';
import { grpcTimeout, isGrpcRequest } from '../http/grpc.js';
import { clientAddress, peerTrusted } from '../http/net.js';
import { PathParametersError, normalizeTarget, withoutPathParameters } from '../http/path.js';
import { peerIdentity } from '../http/client-cert.js';
import { decimalMs } from '../kit/decimal.js';
import type { Logger } from '../kit/logger.js';
import type { Instance, Registry, Service } from '../registry/registry.js';
import type { Deadlines } from '../upstream/deadlines.js';
import { dispatchUpstream, isClientFault, isTlsErrorCode, responseHeaders } from '../upstream/exchange.js';
import { connectionKey, type InstancePools } from '../upstream/pools.js';
import type { BalancerRegistry } from './balancers.js';
import { isReplayable, meterBody, requestBody } from '../upstream/request-body.js';
import type { Next } from './compose.js';
import type { GatewayEvents } from './events.js';
import { finalStatus } from './outcome.js';
import type { Stage } from './plugin.js';
import { answerError, applyResponseHeaders, asMeshError, respondLikeKoa, takeSetHeaders } from './respond.js';
import { backendCandidates, chooseBackend } from './backends.js';
import { upstreamPath, type HeaderEdits, type Route } from './router.js';
import type { ConfigSnapshot } from './snapshot.js';
import { MeshState } from './state.js';
import { Tunnel } from '../upstream/tunnel.js';
import { dispatchHttp2 } from '../upstream/http2.js';

/** A composed stage; null when no plugin added middleware to it, so the pipeline calls straight through. */
export type StageChain = ((ctx: Context, next: Next) => Promise<void>) | null;

/** What the request path works with: the gateway's parts. */
export interface PipelineParts {
  /** Where the request path's events go: the gateway. */
  readonly events: EventEmitter<GatewayEvents>;
  readonly log: Logger;
  readonly registry: Registry;
  readonly balancers: BalancerRegistry;
  readonly pools: InstancePools;
  /** The config snapshot in force: a request takes it when it starts. */
  snapshot(): ConfigSnapshot;
  /** Whether close() began: new requests get 503, answers close their connection. */
  closing(): boolean;
  /** This gateway's name in `Via` (`meshgate-1a2b3c4d`): a request that arrives with it went round a loop. */
  readonly name: string;
  /** The gateway's open upstream connections (see `UpstreamPools.connections`). */
  readonly connections: ReadonlySet<string>;
  /** The random source of weighted splits (seedable, as the balancers'). */
  readonly random: () => number;
  /** The gateway's own SAN URI (from `listen.tls.cert`): XFCC's `By`. */
  readonly selfUri: string | null;
}

const kMesh = Symbol('meshgate.state');
/** On a client socket: the key its connection has as an upstream connection when the peer is on this host (it may be the gateway itself), else null. */
const kOwnConnection = Symbol('meshgate.ownConnection');
/** Set on a client socket that sent a request with faulty framing: nothing more is read from it. */
const kFaultyFraming = Symbol('meshgate.faultyFraming');

/** The client went away before the response was complete: abort what is in flight. Shared, not a closure per request. */
function onResponseClose(this: ServerResponse & { [kMesh]?: MeshState; stream?: ServerHttp2Stream }): void {
  const mesh = this[kMesh];
  // An HTTP/2 stream the client reset is ended (writableFinished) by node:http2 before 'close': it says 'aborted'.
  const gone = this.stream === undefined ? !this.writableFinished : this.stream.aborted;
  if (mesh !== undefined && gone) {
    mesh.clientGone = true;
    mesh.exchange?.clientAborted();
  }
}

/**
 * The request path: route match, the stage chains around the attempts, the upstream call, and the
 * answer (the held upstream response, a plugin's answer, or an error). One per gateway.
 *
 * ```
 * route match -> onRequest -> resolve -> retry -> ( select -> balancer -> guard -> upstream ) x attempts -> answer
 * ```
 */
export class Pipeline {
  readonly #parts: PipelineParts;
  #chains: Record<Stage, StageChain>;
  readonly #deadlines: Deadlines;
  #inflight = 0;
  #drained: (() => void) | null = null;

  constructor(parts: PipelineParts, chains: Record<Stage, StageChain>, deadlines: Deadlines) {
    this.#parts = parts;
    this.#chains = chains;
    this.#deadlines = deadlines;
  }

  /**
   * The stage chains, composed again when a reload starts a plugin. A request in flight may run
   * the new plugin's middleware in its later stages; they find no section of theirs in the
   * request's (older) snapshot and pass it on.
   */
  setChains(chains: Record<Stage, StageChain>): void {
    this.#chains = chains;
  }

  /** Requests in flight right now. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Resolves when no request is in flight any more (at once when none is). */
  drained(): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = resolve;
    });
  }

  /**
   * Handles one request. `hostNext` is the host app's `next` in mount mode (a request that matches
   * no route goes on to it), null for the standalone listener, where the gateway answers everything.
   */
  async handle(ctx: Context, hostNext: Next | null, upgrade: MeshState['upgrade'] = null): Promise<void> {
    const parts = this.#parts;
    const snapshot = parts.snapshot();
    const mesh = new MeshState(snapshot);
    ctx.state.mesh = mesh;
    mesh.upgrade = upgrade;
    // Over HTTP/2 a WebSocket client sends no key (RFC 8441 5): the instance's HTTP/1.1 handshake needs one.
    if (upgrade?.stream !== undefined) mesh.setUpstreamHeader('sec-websocket-key', randomBytes(16).toString('base64'));
    const socket = ctx.req.socket as Socket & { [kFaultyFraming]?: boolean };
    if (socket[kFaultyFraming] === true) {
      // Parsed from bytes that followed a request with faulty framing: possibly smuggled. Never run it.
      socket.destroy();
      return;
    }
    try {
      if (ctx.req.headers['transfer-encoding'] !== undefined && ctx.req.httpVersionMinor === 0) {
        // HTTP/1.0 has no chunked coding: the framing is faulty (RFC 9112 6.1), and whatever follows
        // the body on this connection may be a smuggled request. Refused, and the connection closed;
        // marked now, before Node's parser hands over the requests behind it in the same read.
        socket[kFaultyFraming] = true;
        ctx.res.shouldKeepAlive = false;
        throw new BadRequestError('Transfer-Encoding in an HTTP/1.0 request', 'MESH_ERR_BAD_REQUEST');
      }
      if (ctx.req.httpVersionMajor === 2) {
        // HTTP/2 names the host in `:authority`, which wins over a Host header (RFC 9113 8.3.1), as
        // it does for Koa and for the instance: routes must match what the instance will see.
        http2Host(ctx.req);
        mesh.grpc = isGrpcRequest(ctx.req);
      }
      const target = normalizeTarget(ctx.req.url ?? '/');
      mesh.path = target.path;
      mesh.query = target.query;
      let routed = target.path;
      if (routed.includes(';')) {
        if (snapshot.config.listen.pathParameters === 'reject') throw new PathParametersError();
        routed = withoutPathParameters(routed);
      }
      const req = ctx.req;
      const route = snapshot.router.match(routed, req.method!, req.headers, target.query);
      if (route !== undefined) {
        mesh.route = route;
        if (route.backends.length > 0) {
          const backend = route.backends.length === 1 ? route.backends[0]! : chooseBackend(route, ctx, parts.random);
          mesh.backend = backend;
          mesh.policy = backend === null ? null : backend.policy;
        }
        // The route's header edits first: plugins that set the same headers (auth's claims) win.
        if (route.requestHeaders !== null) requestHeaderEdits(mesh, route.requestHeaders);
        if (route.hostRewrite !== null) mesh.setUpstreamHeader('host', route.hostRewrite);
      }
    } catch (err) {
      // A malformed path is answered by the gateway in both modes: letting it reach the host
      // app would let a path trick bypass routing.
      mesh.error = err as MeshError;
    }
    if (mesh.route === null && mesh.error === null && hostNext !== null) return hostNext();

    // Mutual TLS: a verified client certificate is the principal (a credential checked later, a JWT, takes over).
    const peer = peerIdentity(ctx.req.socket, parts.selfUri);
    if (peer !== null) mesh.set('principal', { kind: 'certificate', id: peer.uris[0] ?? peer.subject, subject: peer.subject, claims: { uri: peer.uris, dns: peer.dns, subject: peer.subject } });
    const trust = snapshot.trust;
    const socketAddress = ctx.req.socket.remoteAddress ?? '';
    mesh.clientIp = trust === false ? socketAddress : clientAddress(socketAddress, headerValue(ctx.req.headers['x-forwarded-for']), trust);
    this.#inflight++;
    const res = ctx.res as ServerResponse & { [kMesh]?: MeshState };
    res[kMesh] = mesh;
    // on(), not once(): once() wraps the listener in a bound function per request; 'close' fires
    // at most once anyway, and the listener is taken off below.
    res.on('close', onResponseClose);
    // What the answer looked like before the gateway ran: a middleware that changes it answered itself (Koa's way).
    const bodyBefore = ctx.body;
    const statusBefore = res.statusCode;
    let failed = false;
    let failure: unknown;
    try {
      if (parts.closing()) throw new GatewayClosingError();
      const chains = this.#chains;
      if (chains.onRequest === null) await this.#proxy(ctx, mesh);
      else await chains.onRequest(ctx, () => this.#proxy(ctx, mesh));
      if (!mesh.clientGone) {
        const exchange = mesh.exchange;
        const held = exchange !== null && exchange.state === 'headers';
        const untouched = ctx.body === bodyBefore && res.statusCode === statusBefore;
        if (held && untouched) {
          // Over HTTP/2 a 2xx to a handshake opens the WebSocket (RFC 8441): an instance that did not switch cannot say so.
          if (mesh.upgrade?.stream !== undefined && exchange.upgraded === null && exchange.statusCode < 300) {
            throw new UpstreamProtocolError(exchange.instance.url, `the WebSocket handshake with ${exchange.statusCode}, not 101`);
          }
          const committing = exchange.upgraded !== null ? this.#tunnel(ctx, mesh) : this.#commit(ctx, mesh);
          if (committing !== undefined) await committing;
        } else if (exchange !== null && exchange.failure !== null && untouched) {
          // The held answer broke before it could be sent (the instance reset the connection).
          throw exchange.failure;
        } else {
          // A middleware answered instead of the upstream (or after it: its answer wins).
          if (held) exchange.discard();
          await this.#pluginAnswer(ctx, mesh, hostNext !== null);
        }
      }
    } catch (err) {
      failed = true;
      failure = err;
      // Whatever went wrong, an exchange still held at its headers must free its socket.
      if (mesh.exchange?.state === 'headers') mesh.exchange.discard();
      const error = asMeshError(err);
      mesh.error = error;
      if (!(err instanceof MeshError)) parts.events.emit('gateway:error', err instanceof Error ? err : new Error(String(err)));
      answerError(ctx, mesh, error, parts.closing());
    } finally {
      if (mesh.admittedTo !== null) mesh.admittedTo.active--;
      if (mesh.upgrade !== null) this.#releaseTunnel(mesh);
      res.off('close', onResponseClose);
      if (--this.#inflight === 0 && this.#drained) this.#drained();
      if (parts.events.listenerCount('request:end') > 0) this.#requestEnd(ctx, failed ? finalStatus(ctx, failure) : finalStatus(ctx));
    }
  }

  /**
   * A middleware answered with `ctx.status` / `ctx.body`. Mounted, Koa's own respond() writes it
   * once the gateway's middleware returns (so the host app's middleware still see the body);
   * standalone, the gateway writes it the same way.
   */
  #pluginAnswer(ctx: Context, mesh: MeshState, mounted: boolean): Promise<void> | undefined {
    if (mounted) {
      if (!ctx.res.headersSent) applyResponseHeaders(ctx.res, mesh.responseHeaders);
      if (this.#parts.closing()) ctx.res.shouldKeepAlive = false;
      return undefined;
    }
    return respondLikeKoa(ctx, mesh, this.#parts.closing());
  }

  /**
   * Tells the observers (metrics, access log) how a request ended. An event after the pipeline
   * instead of an onRequest middleware wrapped around it: observers see every answered request,
   * whatever plugin answered it, and cost no async frame per request.
   */
  #requestEnd(ctx: Context, status: number): void {
    // One clock reading for every observer: metrics and the access log report the same duration.
    ctx.state.mesh.endedAt = performance.now();
    const events = this.#parts.events;
    // Called one by one, not with emit(): a listener that throws would stop emit() before the rest.
    // rawListeners(), so a once() listener is removed after its call, as emit() would.
    for (const listener of events.rawListeners('request:end')) {
      try {
        Reflect.apply(listener, events, [ctx, status]);
      } catch (err) {
        // An observer's bug must not touch the answer, which is already out, nor the other observers.
        try {
          events.emit('gateway:error', err as Error);
        } catch {
          // a gateway:error listener that throws too: nothing is left to tell
        }
      }
    }
  }

  /** The stages inside onRequest: resolve the service, then the attempts. Its promise settles when an answer is held (or a middleware answered). */
  #proxy(ctx: Context, mesh: MeshState): Promise<void> {
    if (mesh.error) return Promise.reject(mesh.error);
    const route = mesh.route;
    if (route === null) return Promise.reject(new NoRouteError(mesh.path));
    if (route.redirect !== null) return redirect(ctx, mesh, route);
    const policy = mesh.policy;
    const backend = mesh.backend;
    if (policy === null || backend === null) return Promise.reject(new NoRouteError(mesh.path));
    const service = this.#parts.registry.getService(backend.service);
    if (service === undefined) return Promise.reject(new NoRouteError(mesh.path));
    mesh.service = service;
    const maxRequests = policy.config.maxRequests;
    if (maxRequests !== undefined && service.active >= maxRequests) {
      return Promise.reject(new OverloadedError('maxRequests', `service "${service.name}" has ${service.active} requests in flight (maxRequests ${maxRequests})`));
    }
    if (mesh.upgrade !== null) {
      const refused = this.#admitTunnel(mesh, route);
      if (refused !== null) return Promise.reject(refused);
    }
    service.active++;
    mesh.admittedTo = service;
    mesh.upstreamPath = upstreamPath(route, mesh.path) + mesh.query;
    mesh.deadline = mesh.startedAt + policy.config.timeout;
    if (mesh.grpc) {
      // The caller's deadline, when it is sooner than the route's (grpc-timeout).
      const callerMs = grpcTimeout(ctx.req.headers['grpc-timeout']);
      if (callerMs !== undefined) mesh.deadline = Math.min(mesh.deadline, mesh.startedAt + callerMs);
    }
    const req = ctx.req;
    try {
      const te = req.headers['transfer-encoding'];
      if (te !== undefined) {
        // Only chunked is understood: another coding (gzip, chunked) would be lost in forwarding (RFC 9112 6.1).
        if (te.toLowerCase() !== 'chunked') throw new NotImplementedError(`Transfer-Encoding "${te}" is not supported`);
      }
      // A handshake has no body: after it, the client's bytes are the tunnel's.
      mesh.body = mesh.upgrade === null ? requestBody(ctx) : null;
      // A body without a declared length is counted as it streams (bytesIn), and cut at maxBodySize.
      if (mesh.body !== null) mesh.body = meterBody(req, mesh.body, route.config.maxBodySize, (total) => void (mesh.bytesIn = total));
      const socket = req.socket as Socket & { [kOwnConnection]?: string | null };
      const socketAddress = socket.remoteAddress ?? '';
      // The gateway calling itself: the request arrives on one of its own upstream connections, so
      // an instance URL points back at this listener. The connection's key as the gateway's
      // upstream side would see it is worked out once per connection (null: the peer is elsewhere).
      let own = socket[kOwnConnection];
      if (own === undefined) own = socket[kOwnConnection] = socketAddress === socket.localAddress ? connectionKey(socketAddress, socket.remotePort, socket.localAddress, socket.localPort) : null;
      if (own !== null && this.#parts.connections.has(own)) throw new LoopDetectedError();
      const via = mesh.snapshot!.config.listen.via;
      if (via) {
        const incomingVia = req.headers.via;
        if (incomingVia !== undefined && incomingVia.includes(this.#parts.name)) throw new LoopDetectedError();
      }
      const headers = (mesh.upstreamHeaders = upstreamRequestHeaders(req, {
        via: via ? `${req.httpVersion} ${this.#parts.name}` : undefined,
        remoteAddress: socketAddress,
        appendForwardedFor: peerTrusted(mesh.snapshot!.trust, socketAddress),
        maxHeaders: mesh.snapshot!.config.listen.maxHeaders,
        proto: ctx.protocol,
        clientCert: peerIdentity(socket, this.#parts.selfUri)?.xfcc,
        bodyLength: typeof mesh.body === 'string' || Buffer.isBuffer(mesh.body) ? Buffer.byteLength(mesh.body) : undefined,
        overrides: mesh.headerOverrides,
      }));
      const added = route.requestHeaders?.add;
      if (added !== undefined) for (const [name, value] of added) headers.push(name, value);
    } catch (err) {
      // This is onRequest's next(): it rejects, never throws.
      return Promise.reject(err);
    }
    const chains = this.#chains;
    // Empty stages are skipped outright: no `next` closure is made for them.
    const attempts = chains.retry === null ? () => this.#attempt(ctx, mesh) : () => chains.retry!(ctx, () => this.#attempt(ctx, mesh));
    return chains.resolve === null ? attempts() : chains.resolve(ctx, attempts);
  }

  /**
   * One try: select an instance, then run the guard stage around the upstream call. The retry
   * stage's `next()`; like {@link #pick} it never throws, so a retry middleware sees every failure
   * as a rejection.
   */
  #attempt(ctx: Context, mesh: MeshState): Promise<void> {
    if (mesh.exchange !== null) {
      // A retry: the previous answer is dropped, never sent.
      if (mesh.exchange.state === 'headers') mesh.exchange.discard();
      mesh.exchange = null;
    }
    mesh.attempt++;
    // The set of tried instances exists only once there is a second attempt: most requests never need it.
    if (mesh.instance !== null) (mesh.tried ??= new Set()).add(mesh.instance);
    mesh.instance = null;
    const route = mesh.route!;
    if (mesh.attempt > 1 && route.retryOtherBackends) this.#nextBackend(ctx, mesh, route);
    mesh.candidates = backendCandidates(mesh.service!, mesh.backend);
    const select = this.#chains.select;
    return select === null ? this.#pick(ctx, mesh) : select(ctx, () => this.#pick(ctx, mesh));
  }

  /**
   * Picks the instance (unless a select middleware did) and goes on to the guard stage. It is the
   * select stage's `next()`, so it never throws: every failure is a rejected promise, which a
   * middleware's `next().catch(...)` or `.then(..., onError)` sees.
   */
  /** With `retryOtherBackends`: a retry goes to a backend the request has not tried, while one is left. */
  #nextBackend(ctx: Context, mesh: MeshState, route: Route): void {
    const tried = (mesh.triedBackends ??= new Set());
    tried.add(mesh.backend!);
    const next = chooseBackend(route, ctx, this.#parts.random, tried);
    const service = next === null ? undefined : this.#parts.registry.getService(next.service);
    if (next === null || service === undefined || next.policy === null) return;
    mesh.backend = next;
    mesh.service = service;
    mesh.policy = next.policy;
  }

  #pick(ctx: Context, mesh: MeshState): Promise<void> {
    if (mesh.instance === null) {
      const service = mesh.service!;
      if (mesh.candidates.length === 0) {
        const subset = mesh.backend?.subset;
        const what = subset ? `no healthy instance in subset ${subset.key}` : service.instances.size === 0 ? 'no instances registered' : 'no healthy instance';
        return Promise.reject(new NoHealthyInstanceError(service.name, what));
      }
      try {
        mesh.instance = this.#parts.balancers.for(service, mesh.policy!).pick(mesh.candidates, ctx, mesh.tried ?? undefined);
      } catch (err) {
        // An unknown balancer, or a bug in a custom one.
        return Promise.reject(err);
      }
    }
    const guard = this.#chains.guard;
    return guard === null ? this.#callUpstream(ctx, mesh) : guard(ctx, () => this.#callUpstream(ctx, mesh));
  }

  async #callUpstream(ctx: Context, mesh: MeshState): Promise<void> {
    const { events, log, balancers, pools } = this.#parts;
    const instance = mesh.instance!;
    const service = mesh.service!;
    const policy = mesh.policy!;
    const balancer = balancers.for(service, policy);
    for (let staleRetry = true; ; staleRetry = false) {
      const left = mesh.deadline - performance.now();
      if (left <= 0) throw new UpstreamTimeoutError(instance.url, policy.config.timeout);
      const maxConnections = policy.config.maxConnections;
      // Every connection to the instance is busy: the request would wait for one, if the service's queue has room.
      if (maxConnections !== undefined && instance.inflight - (this.#tunnelsOn.get(instance) ?? 0) >= maxConnections) {
        checkPending(service, maxConnections, policy.config.maxPendingRequests, this.#tunnelsOn);
      }
      const timeout = mesh.tryTimeout > 0 ? Math.min(mesh.tryTimeout, left) : left;
      const request = {
        instance,
        method: ctx.req.method!,
        path: instance.basePath + mesh.upstreamPath,
        headers: mesh.upstreamHeaders,
        body: mesh.body,
        timeout: Math.ceil(timeout),
        streamTimeout: mesh.route!.config.streamTimeout,
        deadlines: this.#deadlines,
        upgrade: mesh.upgrade?.protocol,
        grpc: mesh.grpc,
        grpcTimeout: mesh.grpc && ctx.req.headers['grpc-timeout'] !== undefined ? timeout : undefined,
        headerOverrides: mesh.headerOverrides,
        maxHeaders: mesh.snapshot!.config.listen.maxHeaders,
      };
      // HTTP/2 to the instances when the service says so; a WebSocket handshake is HTTP/1.1 whatever it says.
      const protocol = policy.config.protocol;
      const exchange =
        (protocol === 'h2' || protocol === 'h2c') && mesh.upgrade === null
          ? dispatchHttp2(pools.http2For(instance, service.name, policy.config.tls), request)
          : dispatchUpstream(pools.poolFor(instance, service.name, policy.config.tls, policy.config.maxConnections), request);
      mesh.exchange = exchange;
      if (mesh.clientGone) exchange.clientAborted();
      try {
        await exchange.headers;
      } catch (err) {
        // A keep-alive race: the upstream closed an idle socket just as the request went out on it.
        // Nothing was answered, so an idempotent request with a replayable body goes again, once.
        if (staleRetry && err instanceof UpstreamResetError && isReplayable(ctx.req.method!, mesh.body)) continue;
        // What the client sent could not be forwarded: nothing left, and it says nothing of the instance.
        if (isClientFault(err)) throw err;
        balancer.observe?.(instance, performance.now() - exchange.startedAt, true);
        if (isTlsFailure(err)) {
          // A certificate problem is a configuration error somebody must see, not just a 502.
          log.warn({ service: service.name, instance: instance.id, code: ((err as MeshError).cause as { code?: string }).code }, (err as MeshError).message);
        } else if (policy.config.tls && err instanceof UpstreamResetError) {
          // Under TLS 1.3 a server that refuses our client certificate just closes the connection.
          log.warn({ service: service.name, instance: instance.id }, `TLS connection to ${instance.url} closed before any response (is the client certificate accepted?)`);
        }
        if (events.listenerCount('upstream:response') > 0) {
          events.emit('upstream:response', instance, { status: 0, durationMs: performance.now() - exchange.startedAt, error: (err as MeshError).code });
        }
        throw err;
      }
      mesh.upstreamMs = exchange.headersMs;
      // A gRPC failure comes with HTTP 200: policies judge the status it stands for.
      const outcome = exchange.outcomeStatus;
      balancer.observe?.(instance, exchange.headersMs, outcome >= 500);
      if (events.listenerCount('upstream:response') > 0) {
        events.emit('upstream:response', instance, { status: outcome, durationMs: exchange.headersMs });
      }
      return;
    }
  }

  /** Tunnels open or being set up, and per route name: the counts `websocket.maxConnections` limits. */
  #tunnelCount = 0;
  readonly #tunnelsByRoute = new Map<string, number>();
  readonly #tunnels = new Set<Tunnel>();
  /** Open tunnels per instance: in its `inflight` (load for least-request) but out of its pool. */
  readonly #tunnelsOn = new WeakMap<Instance, number>();
  /** Routes a counted handshake holds a place on: released once, when its request ends. */
  readonly #admitted = new WeakSet<MeshState>();

  /** WebSockets open right now (tunnels, and handshakes under way). */
  get websockets(): number {
    return this.#tunnelCount;
  }

  /** Cuts every open tunnel (close() after the drain timeout). */
  closeTunnels(): void {
    for (const tunnel of this.#tunnels) tunnel.close();
  }

  /** A WebSocket handshake on `route`: refused when the route takes none or a limit is reached, else counted. */
  #admitTunnel(mesh: MeshState, route: Route): MeshError | null {
    const own = route.config.websocket;
    if (own === false) return new UpgradeRefusedError(route.name);
    const global = mesh.snapshot!.config.websocket;
    if (global.maxConnections !== undefined && this.#tunnelCount >= global.maxConnections) {
      return new OverloadedError('websocket.maxConnections', `the gateway has ${this.#tunnelCount} WebSockets open (websocket.maxConnections ${global.maxConnections})`);
    }
    const onRoute = this.#tunnelsByRoute.get(route.name) ?? 0;
    if (own?.maxConnections !== undefined && onRoute >= own.maxConnections) {
      return new OverloadedError('routes.websocket.maxConnections', `route "${route.name}" has ${onRoute} WebSockets open (websocket.maxConnections ${own.maxConnections})`);
    }
    this.#tunnelCount++;
    this.#tunnelsByRoute.set(route.name, onRoute + 1);
    this.#admitted.add(mesh);
    return null;
  }

  #releaseTunnel(mesh: MeshState): void {
    if (!this.#admitted.delete(mesh)) return;
    this.#tunnelCount--;
    const name = mesh.route!.name;
    const left = this.#tunnelsByRoute.get(name)! - 1;
    if (left === 0) this.#tunnelsByRoute.delete(name);
    else this.#tunnelsByRoute.set(name, left);
  }

  /**
   * The instance switched protocols: the 101 goes to the client (the instance's headers, filtered,
   * plus the plugins'), then the two sockets are joined until either side closes. Resolves then,
   * so the request ends (`request:end`, the access log's line) with the tunnel.
   */
  async #tunnel(ctx: Context, mesh: MeshState): Promise<void> {
    const exchange = mesh.exchange!;
    const res = ctx.res;
    ctx.respond = false;
    const extra = takeSetHeaders(res);
    for (let i = 0; i < mesh.responseHeaders.length; i++) extra.push(mesh.responseHeaders[i]!);
    const head = answerHead(mesh, extra);
    const upgrade = mesh.upgrade!;
    let client: Duplex;
    if (upgrade.stream !== undefined) {
      // The client reset its stream as the 101 came (its 'close' is on its way): nothing to open.
      if (upgrade.stream.destroyed) {
        mesh.clientGone = true;
        exchange.clientAborted();
        return;
      }
      // RFC 8441: the stream is the tunnel, opened by a 200 without the instance's Sec-WebSocket-Accept.
      client = upgrade.stream;
      res.off('close', onResponseClose);
      res.statusCode = 200;
      const fields = http2Fields(200, http2Head(head));
      delete fields['sec-websocket-accept'];
      upgrade.stream.respond(fields);
    } else {
      client = res.socket!;
      // The socket is the tunnel's now: the response object lets go of it.
      res.detachSocket(client as Socket);
      res.statusCode = 101;
      client.write(switchingProtocols(upgrade.protocol, head));
    }
    const route = mesh.route!;
    const own = route.config.websocket;
    const idleTimeout = (own === false ? undefined : own?.idleTimeout) ?? mesh.snapshot!.config.websocket.idleTimeout ?? 0;
    const tunnel = new Tunnel(client, exchange.upgraded!, upgrade.head, idleTimeout);
    exchange.upgraded = null;
    this.#tunnels.add(tunnel);
    const instance = exchange.instance;
    this.#tunnelsOn.set(instance, (this.#tunnelsOn.get(instance) ?? 0) + 1);
    // A tunnel is not a request in flight for the service's maxRequests (websocket.maxConnections bounds tunnels).
    if (mesh.admittedTo !== null) {
      mesh.admittedTo.active--;
      mesh.admittedTo = null;
    }
    upgrade.openedAt = performance.now();
    this.#parts.events.emit('tunnel:open', ctx);
    const end = await tunnel.closed;
    this.#tunnels.delete(tunnel);
    this.#tunnelsOn.set(instance, this.#tunnelsOn.get(instance)! - 1);
    mesh.bytesIn = end.bytesIn;
    mesh.bytesOut = end.bytesOut;
    upgrade.closedBy = end.reason;
    exchange.endTunnel();
  }

  /** Sends the held upstream response: its status and filtered headers, the plugins' headers, then the body. */
  #commit(ctx: Context, mesh: MeshState): Promise<void> | undefined {
    const exchange = mesh.exchange!;
    const res = ctx.res;
    ctx.respond = false;
    const gatewayMs = performance.now() - mesh.startedAt - exchange.headersMs;
    const extra = takeSetHeaders(res);
    const headersWereSet = extra.length > 0;
    for (let i = 0; i < mesh.responseHeaders.length; i++) extra.push(mesh.responseHeaders[i]!);
    extra.push('server-timing', `gateway;dur=${decimalMs(gatewayMs, 1)}, upstream;dur=${decimalMs(exchange.headersMs, 1)}`);
    if (this.#parts.closing()) res.shouldKeepAlive = false;
    return exchange.commit(res, answerHead(mesh, extra), headersWereSet);
  }
}

/** Applies a route's `requestHeaders` set and remove (before the upstream headers are built; `add` goes on after). */
function requestHeaderEdits(mesh: MeshState, edits: HeaderEdits): void {
  for (const name of edits.remove) mesh.removeUpstreamHeader(name);
  for (const [name, value] of edits.set) mesh.setUpstreamHeader(name, value);
}

/** The head of the held answer: the instance's headers (filtered), then `extra` (the plugins'), with the route's `responseHeaders` edits applied. */
function answerHead(mesh: MeshState, extra: string[]): string[] {
  const exchange = mesh.exchange!;
  const head = responseHeaders(exchange.rawHeaders, extra, exchange.instance.url);
  const edits = mesh.route?.responseHeaders;
  if (edits != null) responseHeaderEdits(head, edits);
  return head;
}

/** Applies a route's `responseHeaders` to a flat response head: remove, then set (replacing), then add. */
function responseHeaderEdits(head: string[], edits: HeaderEdits): void {
  const drop = (name: string): void => {
    for (let i = head.length - 2; i >= 0; i -= 2) if (head[i]!.toLowerCase() === name) head.splice(i, 2);
  };
  for (const name of edits.remove) drop(name);
  for (const [name, value] of edits.set) {
    drop(name);
    head.push(name, value);
  }
  for (const [name, value] of edits.add) head.push(name, value);
}

/** Answers a redirect route: its status and `Location` (scheme, host and path from the route, else the request's; the query kept). */
function redirect(ctx: Context, mesh: MeshState, route: Route): Promise<void> {
  const spec = route.redirect!;
  const scheme = spec.scheme ?? ctx.protocol;
  const host = spec.host ?? ctx.req.headers.host ?? '';
  let path = mesh.path;
  if (spec.path !== undefined) path = spec.path;
  else if (spec.prefix !== undefined) {
    const rest = path.slice(route.prefix === '/' ? 0 : route.prefix.length);
    path = spec.prefix.endsWith('/') && rest.startsWith('/') ? spec.prefix + rest.slice(1) : spec.prefix + rest;
  }
  const location = `${scheme}://${host}${path}${mesh.query}`;
  ctx.status = spec.status;
  ctx.set('location', location);
  ctx.body = '';
  return Promise.resolve();
}

/** The 101 that completes a handshake: `Connection` and `Upgrade` (hop-by-hop, so not in `head`), then the rest. */
function switchingProtocols(protocol: string, head: string[]): string {
  let out = `HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${protocol}\r\n`;
  // Written by hand, so checked by hand: a field with CR or LF (a plugin's header from the query) is dropped, never sent.
  for (let i = 0; i < head.length; i += 2) if (validField(head[i]!, head[i + 1]!)) out += `${head[i]}: ${head[i + 1]}\r\n`;
  return out + '\r\n';
}

/** Refuses a request that would wait for a connection when the service already has `maxPending` waiting. */
function checkPending(service: Service, maxConnections: number, maxPending: number | undefined, tunnels: WeakMap<Instance, number>): void {
  if (maxPending === undefined) return;
  let pending = 0;
  for (const inst of service.instances.values()) {
    // Tunnels count as load on an instance, but their sockets left the pool: they hold no connection of it.
    const requests = inst.inflight - (tunnels.get(inst) ?? 0);
    if (requests > maxConnections) pending += requests - maxConnections;
  }
  if (pending >= maxPending) throw new OverloadedError('maxPendingRequests', `service "${service.name}" has ${pending} requests waiting for a connection (maxPendingRequests ${maxPending})`);
}

function isTlsFailure(err: unknown): boolean {
  return isTlsErrorCode((err as { cause?: { code?: unknown } })?.cause?.code);
}

/** An HTTP/2 request's `:authority` as its Host (without either, it is refused with 400 further on). */
function http2Host(req: Context['req']): void {
  const authority = req.headers[':authority'];
  if (typeof authority === 'string') req.headers.host = authority;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(',') : value;
}
