import type { IncomingMessage } from 'node:http';
import type { MeshError } from '../errors.js';
import type { UpstreamExchange } from '../upstream/proxy.js';
import type { Instance, Service } from '../registry/registry.js';
import type { Route } from './router.js';

/**
 * Per-request state, at `ctx.state.mesh`. Created by the core with every field present, so its
 * shape never changes (fast property access) and plugins never test for existence.
 */
export class MeshState {
  /** The matched route, or null when none matched. */
  route: Route | null = null;
  /** The route's service. */
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
  /** Time the upstream took to send response headers in the final attempt, ms. */
  upstreamMs = 0;
  /** Request id (x-request-id), set by the trace-context plugin; '' when off. */
  requestId = '';
  /** W3C trace id of this request, set by the trace-context plugin; '' when off. */
  traceId = '';
  /** The client's address: the socket's, or from X-Forwarded-For behind trusted proxies (`listen.trustProxy`). */
  clientIp = '';
  /** Who the auth plugin authenticated, or null. */
  principal: { kind: 'jwt' | 'api-key'; subject: string | undefined; claims: Readonly<Record<string, unknown>> } | null = null;
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
