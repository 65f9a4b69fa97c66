import { randomBytes, randomUUID } from 'node:crypto';
import type { Gateway } from '../../lib/gateway.js';
import { definePlugin, type GatewayPlugin } from '../../lib/plugin.js';

/** Options of {@link traceContext}. */
export interface TraceContextOptions {
  /** Header carrying the request id. @default 'x-request-id' */
  requestIdHeader?: string;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;
const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);

/**
 * W3C trace context and request ids, on every proxied request:
 * - `traceparent`: an incoming valid one is continued (same trace id, a new span id for the
 *   gateway's hop, same flags); otherwise a new trace starts (sampled flag set). `tracestate`
 *   passes through untouched.
 * - `x-request-id`: an incoming one (printable, up to 200 chars) is kept, else a UUID is made;
 *   it goes to the upstream and back to the client.
 * Both ids land on `ctx.state.mesh` (`requestId`, `traceId`) for logs.
 */
export function traceContext(options: TraceContextOptions = {}): GatewayPlugin {
  const header = (options.requestIdHeader ?? 'x-request-id').toLowerCase();
  return definePlugin({
    name: 'trace-context',
    setup(gateway: Gateway) {
      gateway.use('onRequest', (ctx, next) => {
        const mesh = ctx.state.mesh;
        const headers = ctx.req.headers;
        const incomingId = headers[header];
        const requestId = typeof incomingId === 'string' && REQUEST_ID.test(incomingId) ? incomingId : randomUUID();
        mesh.requestId = requestId;
        mesh.setUpstreamHeader(header, requestId);
        mesh.responseHeaders.push(header, requestId);

        const parent = parseTraceparent(headers.traceparent);
        const traceId = parent?.traceId ?? randomHex(16);
        mesh.traceId = traceId;
        mesh.setUpstreamHeader('traceparent', `00-${traceId}-${randomHex(8)}-${parent?.flags ?? '01'}`);
        return next();
      });
    },
  });
}

/** Parses a `traceparent` header; undefined for anything invalid (which then starts a new trace). */
export function parseTraceparent(value: string | string[] | undefined): { version: string; traceId: string; parentId: string; flags: string } | undefined {
  if (typeof value !== 'string') return undefined;
  const match = TRACEPARENT.exec(value.trim());
  if (!match) return undefined;
  const [, version, traceId, parentId, flags] = match as unknown as [string, string, string, string, string];
  if (version === 'ff' || traceId === ZERO_TRACE || parentId === ZERO_SPAN) return undefined;
  // Version 00 has exactly four fields; later versions may append more, which we ignore.
  if (version === '00' && value.trim().length !== 55) return undefined;
  return { version, traceId, parentId, flags };
}

// Random ids from a pooled buffer: one randomBytes call serves many requests.
let pool = Buffer.alloc(0);
let offset = 0;
function randomHex(bytes: number): string {
  if (offset + bytes > pool.length) {
    pool = randomBytes(4096);
    offset = 0;
  }
  const hex = pool.toString('hex', offset, offset + bytes);
  offset += bytes;
  return hex;
}
