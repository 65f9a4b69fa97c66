import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';
import { watchFilesSettled } from '../config/watch.js';
import { sanEntries } from '../http/client-cert.js';
import type { Pool as UndiciPool } from 'undici';
import type { ServiceConfig } from '../config/schema.js';
import { GatewayClosingError } from '../errors.js';
import type { Instance } from '../registry/registry.js';
import { Pool, buildConnector, type Connector } from './undici.js';
import { Http2Connection } from './http2-connection.js';

/**
 * What a pool's sockets tell its exchanges: whether a socket is being reset right now. undici
 * ends a response whose end is the connection's close (no length, not chunked) on a reset as on an
 * orderly close, so a body cut by a reset would reach the client as complete. The pool's connector
 * puts a listener on every socket ahead of undici's own, which sets this during the 'error' event
 * of a reset (cleared as soon as the event is over): an exchange completed inside that event was cut.
 */
export interface ResetWatch {
  resetting: boolean;
}

const kResetWatch = Symbol('meshgate.resetWatch');

/** The reset watch of a pool made by {@link UpstreamPools}. */
export function resetWatchOf(pool: UpstreamPool): ResetWatch | undefined {
  return (pool as UpstreamPool & { [kResetWatch]?: ResetWatch })[kResetWatch];
}

/**
 * The key of a TCP connection seen from one end: `local address|local port|remote address|remote port`.
 * The same connection seen from its other end has the two halves swapped.
 */
export function connectionKey(localAddress: string | undefined, localPort: number | undefined, remoteAddress: string | undefined, remotePort: number | undefined): string {
  return `${localAddress}|${localPort}|${remoteAddress}|${remotePort}`;
}

/**
 * A connector that watches its sockets for resets (see {@link ResetWatch}) and keeps the open
 * ones in `connections` (by {@link connectionKey}): a request arriving on one of them came from
 * this gateway. (A local port alone would not do: Linux shares an ephemeral port between
 * connections to different destinations.)
 */
function watchingConnector(connector: Connector, watch: ResetWatch, connections: Set<string>): Connector {
  const onError = (err: NodeJS.ErrnoException): void => {
    if (err?.code !== 'ECONNRESET') return;
    watch.resetting = true;
    queueMicrotask(() => {
      watch.resetting = false;
    });
  };
  return (options, callback) =>
    connector(options, (err, socket) => {
      if (socket) {
        socket.on('error', onError);
        const key = connectionKey(socket.localAddress, socket.localPort, socket.remoteAddress, socket.remotePort);
        connections.add(key);
        socket.once('close', () => connections.delete(key));
      }
      callback(err, socket);
    });
}

/** An undici Pool: what `gateway.poolFor(instance)` hands plugins (health checks use its `request()`). */
export type UpstreamPool = UndiciPool;

/** Options for every upstream connection pool. */
export interface PoolOptions {
  /**
   * Idle keep-alive time of upstream sockets. Kept below the usual upstream idle timeout (Node's
   * is 5 s) so the gateway closes an idle socket before the upstream does.
   * @default 4000
   */
  keepAliveTimeout?: number;
  /** Most connections per upstream origin. @default unlimited */
  connections?: number;
  /** TCP connect timeout in ms. @default 5000 */
  connectTimeout?: number;
  /** TLS options to the instances (`ca`, `cert`, `key`, `servername`, `rejectUnauthorized`). */
  tls?: Record<string, unknown>;
}

/**
 * One undici Pool per upstream origin (and TLS profile), owned by a gateway. Pools whose
 * instances all left are closed gracefully, so churn does not leak sockets.
 */
export class UpstreamPools {
  readonly #pools = new Map<string, UndiciPool>();
  /** HTTP/2 connections, keyed like the pools (a service's `protocol: h2 | h2c`). */
  readonly #http2 = new Map<string, Http2Connection>();
  readonly #defaults: PoolOptions;
  #closed = false;
  /** This gateway's open upstream connections, by {@link connectionKey}: a request on one of them is the gateway calling itself. */
  readonly connections = new Set<string>();

  constructor(defaults: PoolOptions = {}) {
    this.#defaults = defaults;
  }

  /** The pool for an origin; `profile` separates pools with different TLS options for one origin. */
  get(origin: string, profile = '', options?: PoolOptions): UndiciPool {
    const key = poolKey(origin, profile);
    let pool = this.#pools.get(key);
    if (pool) return pool;
    if (this.#closed) throw new GatewayClosingError();
    const opts = { ...this.#defaults, ...options };
    const watch: ResetWatch = { resetting: false };
    pool = new Pool(origin, {
      connections: opts.connections ?? null,
      keepAliveTimeout: opts.keepAliveTimeout ?? 4000,
      // Never trust a server hint to keep a socket longer than our own limit.
      keepAliveMaxTimeout: opts.keepAliveTimeout ?? 4000,
      connect: watchingConnector(buildConnector({ timeout: opts.connectTimeout ?? 5000, ...opts.tls }), watch, this.connections) as never,
      headersTimeout: 0,
      bodyTimeout: 0,
    });
    (pool as UpstreamPool & { [kResetWatch]?: ResetWatch })[kResetWatch] = watch;
    this.#pools.set(key, pool);
    return pool;
  }

  /** The HTTP/2 connection to an origin (one per origin and profile: HTTP/2 multiplexes). */
  http2(origin: string, profile = '', options?: PoolOptions): Http2Connection {
    const key = poolKey(origin, profile);
    let connection = this.#http2.get(key);
    if (connection) return connection;
    if (this.#closed) throw new GatewayClosingError();
    const opts = { ...this.#defaults, ...options };
    const connections = this.connections;
    connection = new Http2Connection({
      origin,
      tls: opts.tls,
      connectTimeout: opts.connectTimeout ?? 5000,
      onSocket: (socket) => {
        const id = connectionKey(socket.localAddress, socket.localPort, socket.remoteAddress, socket.remotePort);
        connections.add(id);
        socket.once('close', () => connections.delete(id));
      },
    });
    this.#http2.set(key, connection);
    return connection;
  }

  /** Closes the pool of an origin once its queued requests finish (when no instance uses it any more). */
  release(origin: string, profile = ''): void {
    const key = poolKey(origin, profile);
    const connection = this.#http2.get(key);
    if (connection) {
      this.#http2.delete(key);
      connection.close();
    }
    const pool = this.#pools.get(key);
    if (!pool) return;
    this.#pools.delete(key);
    pool.close().catch(() => {
      // close() only rejects if already destroyed, which means it is already gone
    });
  }

  get size(): number {
    return this.#pools.size;
  }

  /** Releases every pool, of any origin, whose profile starts with `prefix` (a service's TLS pools, when its files changed). */
  releaseAll(prefix: string): void {
    for (const [key, connection] of [...this.#http2]) {
      if (!key.startsWith(prefix)) continue;
      this.#http2.delete(key);
      connection.close();
    }
    for (const key of [...this.#pools.keys()]) {
      if (!key.startsWith(prefix)) continue;
      const pool = this.#pools.get(key)!;
      this.#pools.delete(key);
      pool.close().catch(() => {});
    }
  }

  /** Releases every pool of `origin` whose profile starts with `prefix` ('' for all: the TLS and limit profiles of every service). */
  releaseProfiles(origin: string, prefix: string): void {
    for (const key of new Set([...this.#pools.keys(), ...this.#http2.keys()])) {
      if (key.startsWith(prefix) && key.endsWith(`|${origin}`)) this.release(origin, key.slice(0, key.length - origin.length - 1));
    }
  }

  /** Closes every pool: waits for running requests, then destroys what is left after `graceMs`. */
  async close(graceMs = 1000): Promise<void> {
    this.#closed = true;
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    const http2 = [...this.#http2.values()];
    this.#http2.clear();
    for (const connection of http2) connection.close();
    if (http2.length > 0) {
      const timer = setTimeout(() => {
        for (const connection of http2) connection.close(false);
      }, graceMs);
      timer.unref();
    }
    await Promise.all(
      pools.map(async (pool) => {
        const timer = setTimeout(() => pool.destroy().catch(() => {}), graceMs);
        timer.unref();
        try {
          await pool.close();
        } catch {
          // already destroyed by the grace timer: nothing left to close
        } finally {
          clearTimeout(timer);
        }
      }),
    );
  }
}


/** Where an origin's pool and HTTP/2 connection of one profile are kept: `profile|origin`, or the origin alone. */
function poolKey(origin: string, profile: string): string {
  return profile ? `${profile}|${origin}` : origin;
}

/** The pool profile of a service's own pools: its TLS settings and connection limit make them its own. */
function profileOf(service: string, tls: boolean, connections: number | undefined): string {
  return `${service}|${tls ? 'tls' : ''}|${connections ?? ''}`;
}

/** The TLS settings of a service toward its instances (`services.<name>.tls`). */
export type UpstreamTls = NonNullable<ServiceConfig['tls']>;

/**
 * The pools of the registry's instances: one per origin, and one per origin and TLS profile for
 * services with `tls` (their files read once). An origin's pools are released when its last
 * instance leaves, so churn does not leak sockets.
 */
export class InstancePools {
  readonly #pools: UpstreamPools;
  readonly #resolvePath: (path: string) => string;
  readonly #refs = new Map<string, number>();
  /** TLS connect options per service, read from files once (per distinct settings, until a file changes). */
  readonly #tls = new Map<string, { json: string; options: Record<string, unknown> }>();
  /** Each service's watch on its TLS files (stop functions). */
  readonly #watched = new Map<string, () => void>();

  constructor(pools: UpstreamPools, resolvePath: (path: string) => string) {
    this.#pools = pools;
    this.#resolvePath = resolvePath;
  }

  /** The pool for an instance of `service`, whose TLS settings are `tls` and connection limit `connections`. */
  poolFor(instance: Instance, service: string, tls: UpstreamTls | undefined, connections?: number): UpstreamPool {
    if (!tls && connections === undefined) return this.#pools.get(instance.origin);
    const options: PoolOptions = {};
    if (tls) options.tls = this.#tlsOptions(service, tls);
    if (connections !== undefined) options.connections = connections;
    return this.#pools.get(instance.origin, profileOf(service, tls !== undefined, connections), options);
  }

  /** The HTTP/2 connection for an instance of `service` (`protocol: h2 | h2c`), with its TLS settings. */
  http2For(instance: Instance, service: string, tls: UpstreamTls | undefined): Http2Connection {
    if (!tls) return this.#pools.http2(instance.origin);
    return this.#pools.http2(instance.origin, profileOf(service, true, undefined), { tls: this.#tlsOptions(service, tls) });
  }

  /** Counts an instance of `origin` in (`1`) or out (`-1`); the last one out, of any service, releases the origin's pools. */
  ref(origin: string, delta: 1 | -1): void {
    const count = (this.#refs.get(origin) ?? 0) + delta;
    if (count > 0) {
      this.#refs.set(origin, count);
      return;
    }
    this.#refs.delete(origin);
    if (delta < 0) {
      this.#pools.release(origin);
      this.#pools.releaseProfiles(origin, '');
    }
  }

  /**
   * Stops watching TLS files (the gateway closes). While it runs, a service's CA, certificate or
   * key file that changes (a reissued mesh certificate) makes its pools new: requests from then on
   * connect with the new files, and the old pools close once their requests in flight end.
   */
  close(): void {
    for (const stop of this.#watched.values()) stop();
    this.#watched.clear();
  }

  #watch(service: string, files: string[]): void {
    this.#watched.get(service)?.();
    this.#watched.set(
      service,
      watchFilesSettled(files, () => {
        this.#tls.delete(service);
        this.#pools.releaseAll(`${service}|tls|`);
      }),
    );
  }

  #tlsOptions(service: string, tls: UpstreamTls): Record<string, unknown> {
    const cached = this.#tls.get(service);
    const json = JSON.stringify(tls);
    if (cached !== undefined && cached.json === json) return cached.options;
    this.#watch(service, [tls.ca, tls.cert, tls.key].filter((f): f is string => f !== undefined).map((f) => this.#resolvePath(f)));
    const options: Record<string, unknown> = { rejectUnauthorized: tls.rejectUnauthorized };
    if (tls.ca) options.ca = readFileSync(this.#resolvePath(tls.ca));
    if (tls.cert) options.cert = readFileSync(this.#resolvePath(tls.cert));
    if (tls.key) options.key = readFileSync(this.#resolvePath(tls.key));
    if (tls.servername) options.servername = tls.servername;
    const expected = tls.expectedIdentity;
    if (expected !== undefined) {
      // The chain is verified against the CA as always; the name checked is the SPIFFE identity, not the host.
      options.checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
        const uris = sanEntries(cert.subjectaltname, 'URI');
        return uris.includes(expected) ? undefined : new Error(`the instance's certificate is ${uris.join(', ') || 'without a SAN URI'}, not ${expected}`);
      };
    }
    this.#tls.set(service, { json, options });
    return options;
  }
}
