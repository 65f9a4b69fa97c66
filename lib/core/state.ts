import type { IncomingMessage } from 'node:http';
import type { ServerHttp2Stream } from 'node:http2';
import type { MeshError } from '../errors.js';
import type { Instance, Service } from '../registry/registry.js';
import type { UpstreamExchange } from '../upstream/exchange.js';
import type { ServicePolicy } from './policy.js';
import { backendCandidates } from './backends.js';
import type { Backend, Route } from './router.js';
import type { ConfigSnapshot } from './snapshot.js';

/** Who a request is from, as authentication established it. Policies, rate limits and logs read it. */
export interface Principal {
  /** How it was established. */
  kind: 'jwt' | 'api-key' | (string & {});
  /** What policies name it by: an API key's name, a JWT's `sub`, a client certificate's SAN URI. */
  id: string;
  /** The subject (a JWT's `sub`), when there is one. */
  subject: string | undefined;
  /** The credential's claims (a JWT's payload; empty for an API key). */
  claims: Readonly<Record<string, unknown>>;
}

/** A WebSocket handshake and, once the instance switched protocols, its tunnel. */
export interface Upgrade {
  /** The protocol the client asked for (`websocket`). */
  readonly protocol: string;
  /** What the client sent after its handshake request, before the answer. */
  readonly head: Buffer;
  /** When the 101 went to the client (`performance.now()`); 0 while the handshake is under way. */
  openedAt: number;
  /** Who closed the tunnel: `client`, `upstream`, `idle` (its idle timeout) or `shutdown` (close() after the drain). */
  closedBy: 'client' | 'upstream' | 'idle' | 'shutdown' | null;
  /** A WebSocket over HTTP/2 (RFC 8441): the client's stream the tunnel runs on, answered 200 rather than 101. */
  readonly stream?: ServerHttp2Stream;
}

/**
 * Per-request values plugins keep for themselves or for each other, read with `mesh.get(key)`
 * and written with `mesh.set(key, value)` (as Hono's `c.get`/`c.set`). A plugin declares the
 * variables it sets by augmenting this interface, so every reader is typed and the core's
 * `MeshState` never grows a field per plugin.
 * @example
 * declare module 'meshgate' { interface RequestVariables { tenant: string } }
 * mesh.set('tenant', 'acme'); mesh.get('tenant'); // string | undefined
 */
export interface RequestVariables {
  /** Who the request is from: set by authentication plugins (auth), read by rate limits, policies and logs. */
  principal: Principal;
  /** Which authorization rule decided the request (`authorization` plugin), for the access log. */
  authorization: { rule: string; action: 'allow' | 'deny'; enforced: boolean };
}

/**
 * Per-request state, at `ctx.state.mesh`. Created by the core with every field present, so its
 * shape never changes (fast property access) and plugins never test for existence.
 */
export class MeshState {
  /** The config snapshot the request started with; it reads only this one to its end. */
  readonly snapshot: ConfigSnapshot | null;
  /** The matched route, or null when none matched. */
  route: Route | null = null;
  /** The route's service policy in {@link snapshot}, or null when no route matched. */
  policy: ServicePolicy | null = null;
  /** The route's backend this request goes to (its service, weight, subset), chosen with the route; null for none (a redirect, no route). */
  backend: Backend | null = null;
  /** Backends tried already, with `retryOtherBackends`; null until a retry changes backend. */
  triedBackends: Set<Backend> | null = null;
  /** The service whose `active` count holds this request (it was admitted under `maxRequests`); null when none does. */
  admittedTo: Service | null = null;
  /** The route's service in the registry (its instances), from the `resolve` stage on. */
  service: Service | null = null;
  /** Instances the balancer may pick from for this attempt; select-stage middleware may narrow it. */
  candidates: readonly Instance[] = [];
  /** The instance of the current attempt, set by the select stage. */
  instance: Instance | null = null;
  /** 1 for the first try, 2 for the first retry, ... */
  attempt = 0;
  /** Instances earlier attempts went to (null until a second attempt starts); balancers avoid them. */
  tried: Set<Instance> | null = null;
  /** Normalized request path (no query). */
  path = '';
  /** The raw query string, with its leading `?`, or `''`. */
  query = '';
  /** Path and query to send upstream (before the instance's base path). */
  upstreamPath = '';
  /** The request body to send: the client's stream, a replayable buffer, or null for none. */
  body: IncomingMessage | Buffer | string | null = null;
  /** Headers for the upstream, built once per request. Plugins may push `name, value` pairs. */
  upstreamHeaders: string[] = [];
  /** Epoch of the request in `performance.now()` ms. */
  readonly startedAt = performance.now();
  /** When the request ended, in `performance.now()` ms: set just before `request:end`, 0 until then. */
  endedAt = 0;
  /** Absolute deadline (`performance.now()` ms) across all attempts; Infinity for none. */
  deadline = Infinity;
  /** Per-attempt timeout in ms set by the retry stage; 0 means "until the deadline". */
  tryTimeout = 0;
  /** The current attempt's exchange; after the pipeline, the response that is sent. */
  exchange: UpstreamExchange | null = null;
  /** The error the request was answered with, if any. */
  error: MeshError | null = null;
  /** The client went away; the pipeline stops at the next step. */
  clientGone = false;
  /** A gRPC call (HTTP/2, `content-type: application/grpc*`): errors answer in gRPC form, gRPC statuses count as failures. */
  grpc = false;
  /** A WebSocket handshake (and its tunnel once open); null for plain HTTP. */
  upgrade: Upgrade | null = null;
  /** Time the upstream took to send response headers in the final attempt, ms. */
  upstreamMs = 0;
  /** Request body bytes read from a client that declared no length (a chunked upload); 0 otherwise. */
  bytesIn = 0;
  /** Body bytes of an answer the gateway or a plugin wrote itself (an error, a Koa-style answer); an upstream answer counts on its exchange. */
  bytesOut = 0;
  /** The client's address: the socket's, or from X-Forwarded-For behind trusted proxies (`listen.trustProxy`). */
  clientIp = '';
  /**
   * Response headers plugins add, flat `[name, value, ...]`; cheaper than `ctx.set`, and they
   * replace the upstream's headers of the same name (Set-Cookie and Server-Timing are appended).
   */
  readonly responseHeaders: string[] = [];
  /**
   * Upstream headers set (a string) or removed (null) by plugins, flat `[name, value, ...]` with
   * lower-case names; they win over the client's. Null until one is. (An array, not a Map: one
   * or two entries per request, and a Map costs far more to create.)
   */
  headerOverrides: (string | null)[] | null = null;
  /**
   * Response flags plugins add for the access log (Envoy's: `OE` outlier ejection, `FI` fault
   * abort, `DI` fault delay), after the flag of the error the request was answered with. Null
   * until one is added.
   */
  flags: string[] | null = null;
  /** The variables plugins set; made on the first `set`. */
  #variables: Map<keyof RequestVariables, unknown> | null = null;

  constructor(snapshot: ConfigSnapshot | null = null) {
    this.snapshot = snapshot;
  }

  /**
   * Whether a retry has somewhere left to go: a candidate of the current backend the request has
   * not tried (the current instance counts as tried), or, with `retryOtherBackends`, a backend it
   * has not tried.
   */
  hasUntried(): boolean {
    const route = this.route;
    const backend = this.backend;
    if (route !== null && route.retryOtherBackends) {
      for (const other of route.backends) if (other !== backend && other.weight > 0 && !this.triedBackends?.has(other)) return true;
    }
    const service = this.service;
    if (service === null) return false;
    const tried = this.tried;
    for (const inst of backendCandidates(service, backend)) if (inst !== this.instance && (tried === null || !tried.has(inst))) return true;
    return false;
  }

  /** Adds a response flag (see {@link flags}), once. */
  addFlag(flag: string): void {
    const flags = (this.flags ??= []);
    if (!flags.includes(flag)) flags.push(flag);
  }

  /** A per-request variable a plugin set (see {@link RequestVariables}), or undefined. */
  get<K extends keyof RequestVariables>(key: K): RequestVariables[K] | undefined {
    return this.#variables?.get(key) as RequestVariables[K] | undefined;
  }

  /** Sets a per-request variable (see {@link RequestVariables}). */
  set<K extends keyof RequestVariables>(key: K, value: RequestVariables[K]): void {
    (this.#variables ??= new Map()).set(key, value);
  }

  /**
   * Sets a header for the upstream request, replacing any the client sent. Works before the
   * upstream headers are built (onRequest) and after (resolve and later).
   */
  setUpstreamHeader(name: string, value: string): void {
    this.#override(name.toLowerCase(), value);
  }

  /** Removes a header the client sent, so it never reaches the upstream. */
  removeUpstreamHeader(name: string): void {
    this.#override(name.toLowerCase(), null);
  }

  #override(lower: string, value: string | null): void {
    const overrides = (this.headerOverrides ??= []);
    let i = 0;
    while (i < overrides.length && overrides[i] !== lower) i += 2;
    overrides[i] = lower;
    overrides[i + 1] = value;
    const headers = this.upstreamHeaders;
    if (headers.length === 0) return; // not built yet: the builder applies the overrides
    for (let i = headers.length - 2; i >= 0; i -= 2) {
      if (headers[i]!.toLowerCase() === lower) headers.splice(i, 2);
    }
    if (value !== null) headers.push(lower, value);
  }
}

declare module 'koa' {
  interface DefaultState {
    mesh: MeshState;
  }
}
