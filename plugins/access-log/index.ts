import type { EventEmitter } from 'node:events';
import pino from 'pino';
import type { Context } from 'koa';
import { definePlugin, errorCodeInfo, type GatewayPlugin, type MeshState } from '../../lib/index.js';
import { decimalMs } from '../../lib/kit/index.js';
import { accessLogSections } from './config.js';

export { accessLogSchema } from './config.js';

/** Options of {@link accessLog}. */
export interface AccessLogOptions {
  /** Where lines go: a file descriptor or a pino destination stream. @default 1 (stdout) */
  destination?: number | pino.DestinationStream;
  /** Write synchronously (tests, CLIs that exit right away). @default false */
  sync?: boolean;
}

/**
 * Envoy-style response flags, from the catalogue entry of the error a request was answered with
 * (`ERROR_CODES`): NR no route, UH no healthy upstream, UF upstream connect failure, UT upstream
 * timeout, UC upstream connection reset, UO overflow (circuit open, limits), RL rate limited, DC
 * downstream (client) went away, DPE path rejected; then the flags plugins added (`mesh.flags`:
 * OE outlier ejection, FI fault abort, DI fault delay); `-` for none.
 */
export function responseFlags(mesh: MeshState, status: number): string {
  if (mesh.clientGone) return 'DC';
  const error = mesh.error;
  const flag = error === null ? (status === 429 ? 'RL' : '-') : (errorCodeInfo(error.code)?.flag ?? '-');
  const added = mesh.flags;
  if (added === null) return flag;
  return flag === '-' ? added.join(',') : `${flag},${added.join(',')}`;
}

/**
 * How much of the log may wait in memory for a destination that does not keep up (a stuck pipe),
 * before lines are dropped rather than the gateway's memory growing without bound.
 */
const MAX_BUFFERED = 16 * 1024 * 1024;

/**
 * One JSON line per request (to stdout by default): time, method, path, route, service, instance,
 * status, duration and upstream time in ms, retries (tries after the first: what `retries.attempts` counts), bytes, request and trace ids, and Envoy-style
 * response flags. Turned on by `accessLog: true` in the config. Lines are counted on the gateway's
 * `request:end` event, so every answered request has one, whichever plugin answered it.
 */
export function accessLog(options: AccessLogOptions = {}): GatewayPlugin<boolean | Record<string, never>, unknown, unknown> {
  const sync = options.sync ?? false;
  return definePlugin({
    name: 'access-log',
    config: accessLogSections,
    setup(gateway) {
      // Our own destination takes Buffers (sonic-boom's buffer mode): lines are ASCII, so a batch
      // converts in one copy, where a string batch would be scanned for its UTF-8 length on every
      // write and release. A destination passed in gets strings, as pino's do.
      const given = typeof options.destination === 'object' ? options.destination : null;
      const own = given === null;
      const destination =
        given ??
        pino.destination({ fd: (options.destination as number | undefined) ?? 1, sync, minLength: 0, maxLength: MAX_BUFFERED, contentMode: 'buffer' } as Parameters<typeof pino.destination>[0]);
      const emitter = destination as Partial<EventEmitter>;
      // sonic-boom emits 'error' (EPIPE, EBADF...); unhandled, EventEmitter would throw it and crash the gateway.
      if (typeof emitter.on === 'function') emitter.on('error', (err: Error) => gateway.emit('gateway:error', err));

      // Lines are gathered into 64 KiB writes (one syscall per ~200 requests, not one each), and
      // flushed at least every 200 ms so a quiet gateway's log stays current; and on close.
      let pending = '';
      const flush = (): void => {
        if (pending === '') return;
        const chunk = pending;
        pending = '';
        destination.write((own ? Buffer.from(chunk, 'latin1') : chunk) as string);
      };
      const flusher = setInterval(flush, 200);
      flusher.unref();
      // After close, lines of requests that end late (cut off at the drain timeout, a client that
      // leaves) are written one by one: nothing would flush them any more.
      let closed = false;
      gateway.onClose(() => {
        closed = true;
        clearInterval(flusher);
        flush();
        const flushSync = (destination as { flushSync?: () => void }).flushSync;
        try {
          flushSync?.call(destination);
        } catch {
          // a destination that is not ready yet (still opening) has nothing written to lose
        }
      });

      const clock = new IsoClock();
      const quoted = new QuotedNames();
      gateway.on('request:end', (ctx, status) => {
        pending += formatLine(ctx, status, clock.now(), quoted);
        if (sync || closed || pending.length >= 65536) flush();
      });
    },
  });
}

/**
 * `new Date().toISOString()` at most once per millisecond: a busy gateway ends many requests in
 * the same one, and the conversion costs more than the rest of the line.
 */
class IsoClock {
  #ms = -1;
  #iso = '';

  now(): string {
    const ms = Date.now();
    if (ms !== this.#ms) {
      this.#ms = ms;
      this.#iso = new Date(ms).toISOString();
    }
    return this.#iso;
  }
}

/**
 * One access-log line, JSON, fields in a fixed order. Built as a template rather than
 * `JSON.stringify` of an object (a third of the cost); names of routes, services and instances
 * are quoted once per object and kept; durations are written from small integers.
 */
function formatLine(ctx: Context, status: number, time: string, quoted: QuotedNames): string {
  const mesh = ctx.state.mesh;
  const exchange = mesh.exchange;
  const route = mesh.route;
  const service = mesh.service;
  const instance = mesh.instance;
  const backend = mesh.backend;
  // What crossed the wire: a declared length, else what was counted as it streamed.
  const bytesIn = Number(ctx.req.headers['content-length'] ?? 0) || mesh.bytesIn;
  const requestId = mesh.get('requestId');
  const traceId = mesh.get('traceId');
  const principal = mesh.get('principal');
  const authorization = mesh.get('authorization');
  return (
    `{"time":"${time}","method":${jsonString(ctx.req.method!)},"path":${jsonString(mesh.path || ctx.path)},` +
    `"route":${route === null ? 'null' : quoted.of(route, route.name)},"service":${service === null ? 'null' : quoted.of(service, service.name)},` +
    `"backend":${backend === null ? 'null' : quoted.of(backend, backend.name)},` +
    `"instance":${instance === null ? 'null' : quoted.of(instance, instance.id)},"status":${status},` +
    `"durationMs":${decimalMs(mesh.endedAt - mesh.startedAt, 2)},"upstreamMs":${exchange ? decimalMs(exchange.headersMs, 2) : 'null'},` +
    `"retries":${mesh.attempt > 1 ? mesh.attempt - 1 : 0},"bytesIn":${bytesIn},"bytesOut":${mesh.bytesOut + (exchange?.bytesReceived ?? 0)},` +
    `"requestId":${requestId ? jsonString(requestId) : 'null'},"traceId":${traceId ? jsonString(traceId) : 'null'},` +
    (principal === undefined ? '' : `"principal":${jsonString(principal.id)},`) +
    (mesh.upgrade === null || mesh.upgrade.openedAt === 0 ? '' : `"websocket":{"closedBy":"${mesh.upgrade.closedBy}"},`) +
    (authorization === undefined ? '' : `"authorization":{"rule":${jsonString(authorization.rule)},"action":"${authorization.action}","enforced":${authorization.enforced}},`) +
    `"flags":"${responseFlags(mesh, status)}","error":${mesh.error ? jsonString(mesh.error.code) : 'null'}}\n`
  );
}

/** JSON string literals of long-lived objects' names (routes, services, instances), made once each. */
class QuotedNames {
  readonly #cache = new WeakMap<object, string>();

  of(owner: object, name: string): string {
    let literal = this.#cache.get(owner);
    if (literal === undefined) {
      literal = jsonString(name);
      this.#cache.set(owner, literal);
    }
    return literal;
  }
}

/** Printable ASCII without `"` and `\`: such a string is its own JSON body, no escaping needed. */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;
const NON_ASCII = /[\u007f-\uffff]/g;

/** A string as a JSON string literal in ASCII (anything else as `\uXXXX`, which JSON reads back the same). */
function jsonString(value: string): string {
  if (PLAIN.test(value)) return `"${value}"`;
  return JSON.stringify(value).replace(NON_ASCII, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

