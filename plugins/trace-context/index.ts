import { randomBytes } from 'node:crypto';
import type { Context } from 'koa';
import { definePlugin, observeOutcome, type GatewayPlugin, type Next } from '../../lib/index.js';
import { traceContextSections } from './config.js';

export { tracingSchema } from './config.js';

/** Options of {@link traceContext}; by default the config's `tracing` section. */
export interface TraceContextOptions {
  /** Header carrying the request id. @default 'x-request-id' */
  requestIdHeader?: string;
}

declare module '../../lib/index.js' {
  interface RequestVariables {
    /** The request id (`x-request-id`), kept from the client or made by trace-context. */
    requestId: string;
    /** The request's W3C trace id, set by trace-context. */
    traceId: string;
  }
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
 * Both ids are request variables (`mesh.get('requestId')`, `mesh.get('traceId')`) for logs.
 *
 * OpenTelemetry (optional peer dependency): when `@opentelemetry/api` is installed and a tracer
 * provider is registered, every request gets a SERVER span, child of the incoming traceparent;
 * the span's own ids are the gateway hop in the upstream's traceparent, so the trace has no gap.
 */
export function traceContext(options?: TraceContextOptions): GatewayPlugin<boolean | TraceContextOptions, unknown, unknown> {
  return definePlugin({
    name: 'trace-context',
    config: traceContextSections,
    async setup(gateway, scope) {
      const section = scope.global();
      const header = ((options ?? (typeof section === 'object' ? section : {})).requestIdHeader ?? 'x-request-id').toLowerCase();
      const otel = await loadOpenTelemetry();
      const random = new RandomHex();
      gateway.addMiddleware('onRequest', (ctx, next) => {
        const mesh = ctx.state.mesh;
        const headers = ctx.req.headers;
        const incomingId = headers[header];
        const requestId = typeof incomingId === 'string' && REQUEST_ID.test(incomingId) ? incomingId : uuid4(random.take(32));
        mesh.set('requestId', requestId);
        mesh.setUpstreamHeader(header, requestId);
        mesh.responseHeaders.push(header, requestId);

        const parent = parseTraceparent(headers.traceparent);
        if (otel !== null) {
          const span = startSpan(otel, ctx, parent);
          if (span !== null) return traced(otel, span, ctx, next);
        }
        const traceId = parent === undefined ? random.take(32) : parent.traceId;
        mesh.set('traceId', traceId);
        mesh.setUpstreamHeader('traceparent', `00-${traceId}-${random.take(16)}-${parent?.flags ?? '01'}`);
        return next();
      });
    },
  });
}

type OpenTelemetry = typeof import('@opentelemetry/api');
type Span = import('@opentelemetry/api').Span;

/** `@opentelemetry/api` when the application installed it, else null. */
async function loadOpenTelemetry(): Promise<OpenTelemetry | null> {
  try {
    return (await import('@opentelemetry/api')) as OpenTelemetry;
  } catch {
    return null; // not installed: tracing stays header-only
  }
}

/** Whether an application registered a tracer provider (the API's default is a no-op one). */
function tracerRegistered(otel: OpenTelemetry): boolean {
  const provider = otel.trace.getTracerProvider() as { getDelegate?: () => { constructor: { name: string } } };
  const delegate = provider.getDelegate?.() ?? provider;
  return delegate.constructor.name !== 'NoopTracerProvider';
}

/** A recording SERVER span for the request, or null when no tracer provider is registered. */
function startSpan(otel: OpenTelemetry, ctx: Context, parent: ReturnType<typeof parseTraceparent>): Span | null {
  // Checked per request (an application may register its provider after the gateway starts),
  // and cheap: without a provider no span object is made at all.
  if (!tracerRegistered(otel)) return null;
  const parentContext =
    parent === undefined
      ? otel.ROOT_CONTEXT
      : otel.trace.setSpanContext(otel.ROOT_CONTEXT, { traceId: parent.traceId, spanId: parent.parentId, traceFlags: parseInt(parent.flags, 16), isRemote: true });
  const mesh = ctx.state.mesh;
  const span = otel.trace.getTracer('meshgate').startSpan(
    `${ctx.method} ${mesh.route?.name ?? 'unmatched'}`,
    {
      kind: otel.SpanKind.SERVER,
      attributes: { 'http.request.method': ctx.method, 'url.path': mesh.path, 'http.route': mesh.route?.name ?? '', 'meshgate.service': mesh.backend?.service ?? '', 'meshgate.backend': mesh.backend?.name ?? '' },
    },
    parentContext,
  );
  if (span.isRecording()) return span;
  span.end();
  return null;
}

function traced(otel: OpenTelemetry, span: Span, ctx: Context, next: Next): Promise<void> {
  const mesh = ctx.state.mesh;
  const { traceId, spanId, traceFlags } = span.spanContext();
  mesh.set('traceId', traceId);
  mesh.setUpstreamHeader('traceparent', `00-${traceId}-${spanId}-${traceFlags.toString(16).padStart(2, '0')}`);
  return observeOutcome(ctx, next, (status, error) => {
    if (error !== undefined) span.recordException(error as Error);
    span.setAttribute('http.response.status_code', status);
    if (mesh.instance) span.setAttribute('meshgate.instance', mesh.instance.id);
    if (mesh.attempt > 1) span.setAttribute('meshgate.attempts', mesh.attempt);
    // OpenTelemetry's enduser.id: who the request was from (an API key's name, a JWT's sub, a SPIFFE id).
    const principal = mesh.get('principal');
    if (principal !== undefined && principal.id !== '') span.setAttribute('enduser.id', principal.id);
    const authorization = mesh.get('authorization');
    if (authorization !== undefined) span.setAttribute('meshgate.authorization.rule', authorization.rule);
    if (status >= 500) span.setStatus({ code: otel.SpanStatusCode.ERROR, message: mesh.error?.code });
    span.end();
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

/**
 * Random hex digits from the CSPRNG, made in batches: one `randomBytes` and one hex conversion
 * serve about 50 requests (request id, trace id, span id), and each id is a slice of the batch.
 * (Measured on the shared-core bench: a third of the cost of `randomUUID()` plus a hex conversion
 * per request.) Batches of 16 KiB saved another 250 instructions per request but were not kept:
 * a slice keeps its whole batch alive, and an id a plugin keeps would hold 32 KB instead of 4.
 * One per gateway, no module state.
 */
class RandomHex {
  #digits = '';
  #offset = 0;

  take(length: number): string {
    if (this.#offset + length > this.#digits.length) {
      this.#digits = randomBytes(2048).toString('hex');
      this.#offset = 0;
    }
    const hex = this.#digits.slice(this.#offset, this.#offset + length);
    this.#offset += length;
    return hex;
  }
}

/** The UUID variant digit (RFC 9562: binary 10xx) for a random hex digit's value. */
const UUID_VARIANT = '89ab89ab89ab89ab';

/** A version 4 UUID (RFC 9562) from 32 random hex digits: version digit 4, variant 10xx. */
function uuid4(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${UUID_VARIANT[parseInt(hex[16]!, 16)]}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}
