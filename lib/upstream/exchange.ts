import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Dispatcher } from 'undici';
import {
  BadRequestError,
  ClientAbortedError,
  MeshError,
  UpstreamConnectError,
  UpstreamProtocolError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import { HOP_BY_HOP, TooManyHeadersError, connectionTokens, http2Head, trailerObject, writeHead } from '../http/headers.js';
import { grpcOutcomeStatus, grpcStatusIn, respondHeadersOnly } from '../http/grpc.js';
import type { Instance } from '../registry/registry.js';
import type { Deadline, Deadlines } from './deadlines.js';
import { resetWatchOf, type ResetWatch, type UpstreamPool } from './pools.js';
import { headerNameToString } from './undici.js';

/** What one attempt sends upstream. */
export interface UpstreamRequest {
  instance: Instance;
  method: string;
  /** Path and query the upstream sees, including the instance's base path. */
  path: string;
  /** Flat `[name, value, name, value, ...]` list, hop-by-hop headers already removed. */
  headers: string[];
  /** The body: the client's request stream, a replayable buffer, or nothing. */
  body: IncomingMessage | Buffer | string | null;
  /** Per-attempt deadline until the response headers, in ms (0: none). */
  timeout: number;
  /** Longest quiet time between body bytes once the headers came (ms); none when absent. */
  streamTimeout?: number;
  /** The gateway's deadline keeper, which aborts the attempt when `timeout` passes first. */
  deadlines: Deadlines;
  /** The protocol a WebSocket handshake asks for (`websocket`): undici sends `Connection: upgrade` and hands over the socket at 101. */
  upgrade?: string;
  /** A gRPC call: the response's `grpc-status` (in its headers, for a trailers-only answer, or its trailers) is read. */
  grpc?: boolean;
  /** The time this attempt has, as the `grpc-timeout` sent in place of the caller's (ms), when the caller sent one. */
  grpcTimeout?: number;
  /** Header names the route and plugins set or removed (`mesh.headerOverrides`): no client trailer may carry them. */
  headerOverrides?: readonly (string | null)[] | null;
  /** `listen.maxHeaders`, which bounds the client's trailers too. */
  maxHeaders?: number;
}

/** Statuses whose answers have no body, whatever their headers say (RFC 9110 6.4.1). */
function bodiless(status: number, method: string): boolean {
  return status === 204 || status === 304 || method === 'HEAD';
}

type ExchangeState = 'waiting' | 'headers' | 'streaming' | 'done' | 'failed';

/**
 * How much of a held response is buffered before undici is paused. Most answers are smaller and
 * arrive whole with their headers: they are then written in one go, with no pause and resume.
 */
export const HOLD_BUFFER_BYTES = 64 * 1024;

/**
 * One request to one instance, and its undici dispatch handler (the legacy handler API, which
 * undici 7 runs natively). The response is held at its headers until {@link commit}: the guard
 * stage sees the status first and may {@link discard} it (for a retry) before a byte reaches the
 * client. While held, up to {@link HOLD_BUFFER_BYTES} of body is buffered, then undici is paused.
 * Once committed, body chunks go straight to the client's socket with backpressure.
 */
export class UpstreamExchange implements Dispatcher.DispatchHandler, Deadline {
  readonly instance: Instance;
  readonly startedAt = performance.now();
  /** Response status, 0 until the headers arrive. */
  statusCode = 0;
  /** Response headers as undici gave them (raw name/value buffers). */
  rawHeaders: (Buffer | string)[] = [];
  /** Time to response headers in ms. */
  headersMs = 0;
  /** Request body bytes written to the upstream; 0 means a failed attempt is safe to replay. */
  bodyBytesSent = 0;
  /** Response body bytes passed to the client. */
  bytesReceived = 0;
  state: ExchangeState = 'waiting';
  /** @internal see {@link Deadline}. */
  deadlineAt = Infinity;
  /** @internal see {@link Deadline}. */
  deadlineSlot = -1;

  #abort: ((err?: Error) => void) | null = null;
  #abortReason: Error | null = null;
  #resume: (() => void) | null = null;
  #res: ServerResponse | null = null;
  #early: Buffer[] | null = null;
  #earlyBytes = 0;
  #complete = false;
  readonly #deadlines: Deadlines;
  readonly #timeout: number;
  #onHeaders!: (exchange: UpstreamExchange) => void;
  #onHeadersError!: (err: Error) => void;
  #onDone: ((err?: Error) => void) | null = null;
  readonly #method: string;
  readonly #resets: ResetWatch | undefined;
  /**
   * A gRPC call's status in the response headers (a trailers-only answer: no message was sent),
   * which policies judge; null otherwise. A status in trailers comes after messages the client has
   * had, so it never makes an attempt a retry: see {@link grpcFinalStatus}.
   */
  grpcStatus: number | null = null;
  #trailerGrpcStatus: number | null = null;
  readonly #grpc: boolean;
  /** The response's trailers (flat raw list), when it had any: sent on after the body (gRPC's `grpc-status`). */
  trailers: (Buffer | string)[] | null = null;
  /** The instance's socket after it switched protocols (101), until the tunnel takes it or the exchange is discarded. */
  upgraded: Socket | null = null;
  /** Why the exchange failed, once it has (a held answer cut by the upstream, say). */
  failure: MeshError | null = null;
  /** Settles when the response headers arrive (resolves) or the attempt fails before them (rejects). */
  readonly headers: Promise<UpstreamExchange>;

  constructor(instance: Instance, timeout: number, deadlines: Deadlines, method = 'GET', resets?: ResetWatch, grpc = false) {
    this.instance = instance;
    this.#grpc = grpc;
    this.#timeout = timeout;
    this.#deadlines = deadlines;
    this.#method = method;
    this.#resets = resets;
    this.headers = new Promise((resolve, reject) => {
      this.#onHeaders = resolve;
      this.#onHeadersError = reject;
    });
    instance.inflight++;
    if (timeout > 0) {
      this.deadlineAt = this.startedAt + timeout;
      deadlines.add(this);
    }
  }

  /** @internal the deadline passed before the response headers came. */
  expire(): void {
    this.abort(new UpstreamTimeoutError(this.instance.url, this.#timeout));
  }

  // undici handler API --------------------------------------------------------------------

  onConnect(abort: (err?: Error) => void): void {
    if (this.#abortReason) abort(this.#abortReason);
    else this.#abort = abort;
  }

  onBodySent(_chunkSize: number, totalBytesSent: number): void {
    this.bodyBytesSent = totalBytesSent;
  }

  onHeaders(statusCode: number, rawHeaders: (Buffer | string)[], resume: () => void): boolean {
    // 1xx responses other than 101 are informational (103 Early Hints): the final answer follows.
    if (statusCode < 200) return true;
    if (statusCode > 599) {
      // Not an HTTP status a client can act on: the instance's fault, never relayed.
      this.abort(new UpstreamProtocolError(this.instance.url, `status ${statusCode}`));
      return false;
    }
    this.#clearDeadline();
    this.statusCode = statusCode;
    this.rawHeaders = rawHeaders;
    if (this.#grpc) this.grpcStatus = grpcStatusIn(rawHeaders);
    this.headersMs = performance.now() - this.startedAt;
    this.#resume = resume;
    this.state = 'headers';
    this.#onHeaders(this);
    return true;
  }

  /** The call's gRPC status as the client got it: the trailers', else the headers'; null when there was none (yet). */
  get grpcFinalStatus(): number | null {
    return this.#trailerGrpcStatus ?? this.grpcStatus;
  }

  /** The status policies judge the answer by: the HTTP status, or for a gRPC call the one its `grpc-status` stands for. */
  get outcomeStatus(): number {
    return this.grpcStatus === null ? this.statusCode : grpcOutcomeStatus(this.grpcStatus);
  }

  /**
   * The instance switched protocols (101): the socket is ours now, out of undici's pool. It is
   * held like a response at its headers; the attempt stays in flight (and counts in the instance's
   * `inflight`, as an open stream does for least-request) until {@link endTunnel}.
   */
  onUpgrade(statusCode: number, rawHeaders: Buffer[], socket: Socket): void {
    this.#clearDeadline();
    if (this.#abortReason !== null) {
      socket.destroy();
      return;
    }
    this.statusCode = statusCode;
    this.rawHeaders = rawHeaders;
    this.headersMs = performance.now() - this.startedAt;
    this.upgraded = socket;
    this.state = 'headers';
    this.#onHeaders(this);
  }

  /** The tunnel over {@link upgraded} closed: the attempt is over (its bytes are counted on `mesh`). */
  endTunnel(): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.state = 'done';
    this.upgraded = null;
    this.#release();
  }

  onData(chunk: Buffer): boolean {
    const res = this.#res;
    if (res === null) {
      // Held: keep what comes until the guard stage decides, up to a bound, then pause undici.
      (this.#early ??= []).push(chunk);
      this.#earlyBytes += chunk.length;
      return this.#earlyBytes < HOLD_BUFFER_BYTES;
    }
    this.bytesReceived += chunk.length;
    return res.write(chunk);
  }

  onComplete(trailers?: (Buffer | string)[] | null): void {
    if (trailers != null && trailers.length > 0) this.trailers = trailers;
    if (this.#grpc && this.trailers !== null) this.#trailerGrpcStatus = grpcStatusIn(this.trailers);
    if (this.#resets?.resetting === true && !bodiless(this.statusCode, this.#method)) {
      // The end of this body was a reset, not an orderly close: it was cut, so it must reach the client cut.
      this.onError(new UpstreamResetError(this.instance.url, { code: 'ECONNRESET' }));
      return;
    }
    this.#complete = true;
    if (this.#res !== null) this.#finish();
  }

  onError(err: Error): void {
    this.#clearDeadline();
    // A 204, a 304 or an answer to HEAD has no body whatever Content-Length says (RFC 9110 8.6):
    // undici's complaint that the body was missing means the answer is complete.
    if (this.state !== 'waiting' && (err as { code?: string }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && bodiless(this.statusCode, this.#method)) {
      this.#complete = true;
      if (this.#res !== null) this.#finish();
      return;
    }
    const reason = this.#abortReason ?? err;
    if (this.state === 'waiting') {
      this.state = 'failed';
      this.#release();
      this.#onHeadersError(toMeshError(reason, this.instance, this.#timeout));
      return;
    }
    this.#fail(reason);
  }

  // gateway API ----------------------------------------------------------------------------

  /**
   * Sends the held response to the client: `head` is the status line's headers (already filtered),
   * then the body streams through. Returns nothing when the answer was already complete and is
   * now written; otherwise a promise that resolves when the last byte is handed to the socket and
   * rejects when the upstream or the client breaks off.
   */
  commit(res: ServerResponse, head: string[], headersWereSet = false): Promise<void> | undefined {
    this.#res = res;
    this.state = 'streaming';
    if (res.req.httpVersionMajor === 2) {
      // HTTP/2 refuses a repeated single-value header (two Content-Type) that HTTP/1.1 lets through.
      head = http2Head(head);
      if (this.#complete && this.#early === null && this.trailers === null && respondHeadersOnly(res, this.statusCode, head)) {
        // A whole answer without body or trailers, to an HTTP/2 client: one HEADERS frame, as it came
        // (a gRPC status without a message only reads as a status in that form).
        this.state = 'done';
        this.#release();
        return undefined;
      }
    }
    try {
      writeHead(res, this.statusCode, head, headersWereSet);
    } catch (err) {
      // A header Node will not send: the instance's answer cannot be relayed (502), and the attempt is over.
      this.state = 'headers';
      this.#res = null;
      this.abort(new UpstreamProtocolError(this.instance.url, (err as Error).message));
      throw this.failure ?? new UpstreamProtocolError(this.instance.url, (err as Error).message);
    }
    const early = this.#early;
    this.#early = null;
    if (this.#complete && (early === null || early.length === 1)) {
      // The whole answer is here (the usual case): one end() writes head and body together,
      // and there is nothing to wait for (no promise is made).
      this.bytesReceived = this.#earlyBytes;
      this.#finish(early === null ? undefined : early[0]);
      return undefined;
    }
    return new Promise<void>((resolve, reject) => {
      this.#onDone = (err) => (err ? reject(err) : resolve());
      (res as ResponseWithExchange)[kExchange] = this;
      res.on('drain', onResponseDrain);
      let flowing = true;
      if (early) {
        for (const chunk of early) {
          this.bytesReceived += chunk.length;
          flowing = res.write(chunk);
        }
      }
      if (this.#complete) this.#finish();
      else if (flowing) this.#resume?.();
    });
  }

  /** Drops a held response (or a pending attempt) and frees its socket. */
  discard(): void {
    this.abort(new UpstreamResetError(this.instance.url, { code: 'MESH_DISCARDED' }));
  }

  /** Aborts the exchange with `reason`, whatever state it is in. */
  abort(reason: Error): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.#abortReason ??= reason;
    if (this.upgraded !== null) {
      // A switched socket is out of undici: dropping it is closing it.
      this.upgraded.destroy();
      this.upgraded = null;
      this.state = 'failed';
      this.#release();
      return;
    }
    // A response that already arrived whole has nothing left in undici to abort.
    if (this.#complete) this.#fail(reason);
    else if (this.#abort) this.#abort(reason);
    else if (this.state === 'waiting') {
      // undici has not called onConnect yet (a connect still hanging, or queued in the pool): the
      // attempt ends now, not when the connect gives up. onConnect aborts it with #abortReason.
      this.state = 'failed';
      this.#release();
      this.#onHeadersError(toMeshError(reason, this.instance, this.#timeout));
    }
  }

  /** Ends the exchange because the client went away. */
  clientAborted(): void {
    this.abort(new ClientAbortedError());
  }

  /** @internal the client's socket drained: let undici deliver more. */
  resumeUpstream(): void {
    this.#resume?.();
  }

  #finish(last?: Buffer): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.state = 'done';
    this.#release();
    const res = this.#res!;
    res.off('drain', onResponseDrain);
    if (this.trailers !== null) res.addTrailers(trailerObject(this.trailers));
    if (last === undefined) res.end();
    else res.end(last);
    this.#onDone?.();
  }

  #fail(err: Error): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.state = 'failed';
    this.failure = toMeshError(err, this.instance, this.#timeout);
    this.#release();
    const res = this.#res;
    if (res) {
      res.off('drain', onResponseDrain);
      // Headers are out: the only honest signal left is to cut the client's connection.
      if (!res.destroyed) res.destroy();
    }
    this.#onDone?.(toMeshError(err, this.instance, this.#timeout));
  }

  #release(): void {
    this.#clearDeadline();
    this.instance.inflight--;
    this.#resume = null;
    this.#early = null;
  }

  #clearDeadline(): void {
    this.#deadlines.delete(this);
  }
}

const kExchange = Symbol('meshgate.exchange');
type ResponseWithExchange = ServerResponse & { [kExchange]?: UpstreamExchange };

/** Shared 'drain' listener: one function for every response instead of a closure per exchange. */
function onResponseDrain(this: ResponseWithExchange): void {
  this[kExchange]?.resumeUpstream();
}

/** Starts one attempt. The returned exchange's `headers` promise settles at the response headers. */
export function dispatchUpstream(pool: UpstreamPool, req: UpstreamRequest): UpstreamExchange {
  const exchange = new UpstreamExchange(req.instance, req.timeout, req.deadlines, req.method, resetWatchOf(pool), req.grpc);
  pool.dispatch(
    {
      origin: req.instance.origin,
      path: req.path,
      method: req.method as Dispatcher.HttpMethod,
      headers: req.headers,
      body: req.body,
      // The exchange runs its own deadline until the headers; after them the body may stream as long as it needs.
      headersTimeout: 0,
      // After them, only a body that goes quiet for `streamTimeout` (per route; none by default) is cut.
      bodyTimeout: req.streamTimeout ?? 0,
      // A WebSocket handshake: undici adds `Connection: upgrade` and hands the socket to onUpgrade at 101.
      upgrade: req.upgrade,
    },
    exchange,
  );
  return exchange;
}

/**
 * The response headers to send to the client: the upstream's, minus hop-by-hop headers and any
 * header the upstream's `Connection` names, plus `extra` (already flat). The upstream's names go
 * out in lower case, as Envoy sends them (and as HTTP/2 requires): undici's lookup tree gives a
 * well-known name as an interned lower-case string without decoding the bytes, which saved 4.9k
 * of the core's 156k instructions per request (3%).
 */
export function responseHeaders(raw: readonly (Buffer | string)[], extra: string[], instanceUrl = 'the instance'): string[] {
  const out: string[] = [];
  let named: Set<string> | null = null;
  const replaced = replacedNames(extra);
  for (let i = 0; i < raw.length; i += 2) {
    const lower = headerNameToString(raw[i]!);
    if (lower === 'connection') {
      named = connectionTokens(raw[i + 1]!.toString('latin1'), named);
      continue;
    }
    if (lower === 'transfer-encoding') {
      // Codings besides chunked (gzip, chunked) are kept: Node frames the body chunked again and the
      // client decodes the rest. A body that is not chunked at the end cannot be framed: 502.
      const codings = raw[i + 1]!.toString('latin1');
      if (!/(?:^|,)\s*chunked\s*$/i.test(codings)) throw new UpstreamProtocolError(instanceUrl, `Transfer-Encoding "${codings}"`);
      if (!/^\s*chunked\s*$/i.test(codings)) out.push(lower, codings);
      continue;
    }
    if (HOP_BY_HOP.has(lower) || (replaced !== null && replaced.includes(lower))) continue;
    out.push(lower, raw[i + 1]!.toString('latin1'));
  }
  if (named !== null) {
    for (let i = out.length - 2; i >= 0; i -= 2) {
      if (named.has(out[i]!)) out.splice(i, 2);
    }
  }
  for (let i = 0; i < extra.length; i++) out.push(extra[i]!);
  return out;
}

/**
 * Headers the gateway set itself replace the upstream's of the same name; `Set-Cookie` and
 * `Server-Timing` are lists, so both sides' entries are kept. Lower-cased names, or null when
 * nothing is replaced (only Server-Timing, the usual case). A few names: an array, not a Set.
 */
function replacedNames(extra: string[]): string[] | null {
  let names: string[] | null = null;
  for (let i = 0; i < extra.length; i += 2) {
    const lower = extra[i]!.toLowerCase();
    if (lower !== 'set-cookie' && lower !== 'server-timing') (names ??= []).push(lower);
  }
  return names;
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT',
  // HTTP/2: the instance refused the stream (REFUSED_STREAM) or was already going away: nothing was processed.
  'ERR_HTTP2_STREAM_REFUSED',
  'ERR_HTTP2_GOAWAY_SESSION',
]);

const TLS_CODE = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY/;

/**
 * Whether an error code comes from the TLS handshake or certificate checks (Node's and
 * OpenSSL's: `CERT_HAS_EXPIRED`, `ERR_TLS_CERT_ALTNAME_INVALID`, `ERR_SSL_*`, ...).
 */
export function isTlsErrorCode(code: unknown): boolean {
  return typeof code === 'string' && TLS_CODE.test(code);
}

/**
 * undici's refusals of a request before any byte of it left: what the client sent cannot be
 * forwarded (a header value with a control character, a method undici will not send, a body
 * shorter or longer than its declared length). The client's fault: 400, never counted against an
 * instance, never retried.
 */
const CLIENT_FAULT_CODES = new Set([
  'UND_ERR_INVALID_ARG',
  'UND_ERR_NOT_SUPPORTED',
  'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH',
  'ERR_INVALID_CHAR',
  'ERR_INVALID_HTTP_TOKEN',
  // node:http2 refusing the client's headers (a repeated single-value header, a forbidden value)
  'ERR_HTTP2_HEADER_SINGLE_VALUE',
  'ERR_HTTP2_INVALID_HEADER_VALUE',
  'ERR_HTTP2_INVALID_CONNECTION_HEADERS',
]);

/** Whether an attempt failed because of what the client sent, not because of the instance. */
export function isClientFault(err: unknown): boolean {
  return err instanceof BadRequestError || err instanceof TooManyHeadersError;
}

/** Maps what undici or the socket threw to the gateway's own error for that failure. */
export function toMeshError(err: Error, instance: Instance, timeout: number): MeshError {
  if (err instanceof MeshError) return err;
  const code = (err as { code?: string }).code ?? '';
  if (CLIENT_FAULT_CODES.has(code)) return new BadRequestError(`the request cannot be forwarded: ${err.message}`);
  // A failed handshake is a failed connection: nothing of the request was sent.
  if (CONNECT_CODES.has(code) || isTlsErrorCode(code)) {
    return new UpstreamConnectError(instance.url, err);
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new UpstreamTimeoutError(instance.url, timeout, err);
  }
  return new UpstreamResetError(instance.url, err);
}
