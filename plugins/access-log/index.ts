import pino from 'pino';
import type { Context } from 'koa';
import { observeOutcome } from '../../lib/outcome.js';
import type { Gateway } from '../../lib/gateway.js';
import { definePlugin, type GatewayPlugin } from '../../lib/plugin.js';
import type { MeshState } from '../../lib/state.js';

/** Options of {@link accessLog}. */
export interface AccessLogOptions {
  /** Where lines go: a file descriptor or a pino destination stream. @default 1 (stdout) */
  destination?: number | pino.DestinationStream;
  /** Write synchronously (tests, CLIs that exit right away). @default false */
  sync?: boolean;
}

/**
 * Envoy-style response flags, from the error a request was answered with:
 * NR no route, UH no healthy upstream, UF upstream connect failure, UT upstream timeout,
 * UC upstream connection reset, UO overflow (circuit open, budget), RL rate limited,
 * DC downstream (client) went away, DI path rejected.
 */
export function responseFlags(mesh: MeshState, status: number): string {
  if (mesh.clientGone) return 'DC';
  const code = mesh.error?.code;
  switch (code) {
    case undefined:
      return status === 429 ? 'RL' : '-';
    case 'MESH_ERR_NO_ROUTE':
      return 'NR';
    case 'MESH_ERR_NO_HEALTHY_INSTANCE':
      return 'UH';
    case 'MESH_ERR_UPSTREAM_CONNECT':
      return 'UF';
    case 'MESH_ERR_UPSTREAM_TIMEOUT':
      return 'UT';
    case 'MESH_ERR_UPSTREAM_RESET':
      return 'UC';
    case 'MESH_ERR_CIRCUIT_OPEN':
      return 'UO';
    case 'MESH_ERR_RATE_LIMITED':
      return 'RL';
    case 'MESH_ERR_BAD_PATH':
      return 'DI';
    default:
      return '-';
  }
}

/**
 * One JSON line per request (pino, to stdout by default): time, method, path, route, service,
 * instance, status, duration and upstream time in ms, attempts, bytes, request and trace ids, and
 * Envoy-style response flags. Turned on by `accessLog: true` in the config.
 */
export function accessLog(options: AccessLogOptions = {}): GatewayPlugin {
  return definePlugin({
    name: 'access-log',
    setup(gateway: Gateway) {
      // Lines are gathered into 4 KiB writes (one syscall per ~20 requests, not one each), and
      // flushed at least every 200 ms so a quiet gateway's log stays current; and on close.
      const destination =
        typeof options.destination === 'object'
          ? options.destination
          : pino.destination({ fd: options.destination ?? 1, sync: options.sync ?? false, minLength: options.sync ? 0 : 4096 });
      // Each line is one JSON.stringify of a flat object written to pino's buffered destination:
      // a pino logger would spend more on its generic serializer than the proxy spends on the request.
      const write = (line: string): void => {
        destination.write(line);
      };
      const flusher = setInterval(() => {
        const d = destination as { flush?: (cb?: (err?: Error) => void) => void; writing?: boolean };
        // An async flush while a write is in flight throws in sonic-boom; the next tick catches up.
        if (typeof d.flush === 'function' && !d.writing) {
          try {
            d.flush(() => {});
          } catch {
            // nothing buffered yet, or a write just started: the next tick flushes
          }
        }
      }, 200);
      flusher.unref();
      gateway.onClose(() => {
        clearInterval(flusher);
        const flush = (destination as { flushSync?: () => void }).flushSync;
        try {
          flush?.call(destination);
        } catch {
          // a destination that is not ready yet has nothing buffered to lose
        }
      });
      gateway.use('onRequest', (ctx, next) => observeOutcome(ctx, next, (status) => write(`${JSON.stringify(entry(ctx, status))}\n`)));
    },
  });
}

function entry(ctx: Context, status: number): Record<string, unknown> {
  const mesh = ctx.state.mesh;
  const exchange = mesh.exchange;
  return {
    time: new Date().toISOString(),
    method: ctx.method,
    path: mesh.path || ctx.path,
    route: mesh.route?.prefix ?? null,
    service: mesh.service?.name ?? null,
    instance: mesh.instance?.id ?? null,
    status,
    durationMs: round(performance.now() - mesh.startedAt),
    upstreamMs: exchange ? round(exchange.headersMs) : null,
    attempts: mesh.attempt,
    bytesIn: Number(ctx.req.headers['content-length'] ?? 0) || (exchange?.bodyBytesSent ?? 0),
    bytesOut: exchange?.bytesReceived ?? 0,
    requestId: mesh.requestId || null,
    traceId: mesh.traceId || null,
    flags: responseFlags(mesh, status),
    error: mesh.error?.code ?? null,
  };
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
