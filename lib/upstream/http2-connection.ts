import { connect, type ClientHttp2Session } from 'node:http2';
import { GatewayClosingError } from '../errors.js';

/** On a session: the error it failed with, which its streams report instead of their own. */
export const kFailure = Symbol('meshgate.sessionFailure');
/** A connection with no stream for this long is closed; the next request opens a new one. */
const IDLE_MS = 60_000;

/** What an HTTP/2 session to an origin is made with. */
export interface Http2Origin {
  /** `http://host:port` (h2c, prior knowledge) or `https://host:port` (h2 by ALPN). */
  origin: string;
  /** TLS options (CA, client certificate, servername, identity check) for `https` origins. */
  tls?: Record<string, unknown>;
  /** TCP and TLS connect timeout, ms. */
  connectTimeout: number;
  /** Gateway connections to instances, by `connectionKey` (loop detection), kept like the pools'. */
  onSocket?: (socket: import('node:net').Socket) => void;
}

/**
 * One HTTP/2 connection to an origin, shared by every request to it (HTTP/2 multiplexes), made
 * again when it closes, fails or is told to go away. Node's http2 client, not undici: undici
 * speaks h2 only over TLS and without a way to pass trailers back, which gRPC needs.
 */
export class Http2Connection {
  readonly #spec: Http2Origin;
  #session: ClientHttp2Session | null = null;
  #closed = false;

  constructor(spec: Http2Origin) {
    this.#spec = spec;
  }

  /** A live session: the current one, or a new one when it is gone or going away. */
  session(): ClientHttp2Session {
    if (this.#closed) throw new GatewayClosingError();
    const current = this.#session;
    // A session told to go away is dropped from #session by its 'goaway' listener.
    if (current !== null && !current.closed && !current.destroyed) return current;
    const spec = this.#spec;
    const session = connect(spec.origin, { ...spec.tls, settings: { enablePush: false } });
    this.#session = session;
    const timer = setTimeout(() => session.destroy(Object.assign(new Error(`connect to ${spec.origin} timed out`), { code: 'UND_ERR_CONNECT_TIMEOUT' })), spec.connectTimeout);
    timer.unref();
    session.once('connect', () => {
      clearTimeout(timer);
      if (spec.onSocket) spec.onSocket(session.socket as import('node:net').Socket);
    });
    session.once('close', () => {
      clearTimeout(timer);
      if (this.#session === session) this.#session = null;
    });
    session.once('goaway', () => {
      if (this.#session === session) this.#session = null;
    });
    // The reason a session failed: its streams fail with it (see dispatchHttp2).
    session.on('error', (err) => {
      (session as { [kFailure]?: Error })[kFailure] = err;
    });
    // An idle connection does not pin the instance's resources forever.
    session.setTimeout(IDLE_MS, () => session.close());
    session.unref();
    return session;
  }

  /** Closes the connection once its streams are done (`graceful`), or at once. */
  close(graceful = true): void {
    this.#closed = true;
    const session = this.#session;
    this.#session = null;
    if (session === null) return;
    if (graceful) session.close();
    else session.destroy();
  }
}
