import { PassThrough } from 'node:stream';
import type Router from '@koa/router';
import type { Context } from 'koa';
import type { GatewayEvents } from '../core/events.js';
import type { AdminHost } from './host.js';
import type { Instance } from '../registry/registry.js';

/** Seconds between keep-alive comments on an idle stream (proxies cut silent connections). */
export const SSE_HEARTBEAT_MS = 15_000;

/** The events `/events` streams (and the dashboard shows): every registry, health and circuit change, and config changes. */
export const STREAMED_EVENTS = ['instance:added', 'instance:removed', 'instance:updated', 'instance:health', 'circuit:state', 'instance:ejected', 'instance:returned', 'service:preserved', 'config:applied', 'config:rejected', 'gateway:closing'] as const;

/** One of {@link STREAMED_EVENTS}. */
export type StreamedEvent = (typeof STREAMED_EVENTS)[number];

/**
 * `GET /events`: server-sent events for every registry, health and circuit change, each with the
 * instance and the reason, as `event: <name>` + `data: <json>`. A `: heartbeat` comment goes out
 * every 15 s; listeners are removed when the client leaves or the admin server closes.
 */
export function eventStreamRoute(router: Router, gateway: AdminHost, heartbeatMs = SSE_HEARTBEAT_MS): void {
  router.get('/events', (ctx) => {
    let nextId = 0;
    const send = (event: string, data: unknown): void => {
      stream.write(`id: ${++nextId}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const listeners = STREAMED_EVENTS.map((event) => {
      const fn = (...args: unknown[]): void => send(event, describeEvent(event, args));
      gateway.on(event, fn as never);
      return [event, fn] as const;
    });
    const onClosing = (): void => void setImmediate(() => stream.end());
    const stream = serverSentEvents(ctx, ': meshgate events\nretry: 2000\n\n', () => {
      for (const [event, fn] of listeners) gateway.off(event, fn as never);
      gateway.off('gateway:closing', onClosing);
    }, heartbeatMs);
    gateway.once('gateway:closing', onClosing);
  });
}

/**
 * Answers `ctx` with a stream of server-sent events, starting with `first`: the socket never
 * times out, a `: heartbeat` comment goes out every `heartbeatMs` (proxies cut silent
 * connections), and `onClose` runs once when the client leaves or the stream is ended.
 */
export function serverSentEvents(ctx: Context, first: string, onClose: () => void, heartbeatMs = SSE_HEARTBEAT_MS): PassThrough {
  const stream = new PassThrough();
  const heartbeat = setInterval(() => stream.write(': heartbeat\n\n'), heartbeatMs);
  heartbeat.unref();
  let closed = false;
  const cleanup = (): void => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    onClose();
    stream.end();
  };
  // The response's close, not the request's: a GET's request side closes as soon as it is read.
  ctx.res.once('close', cleanup);
  stream.once('finish', cleanup);
  ctx.req.socket.setTimeout(0);
  ctx.req.socket.setNoDelay(true);
  ctx.status = 200;
  ctx.set('content-type', 'text/event-stream; charset=utf-8');
  ctx.set('cache-control', 'no-cache, no-transform');
  ctx.set('x-accel-buffering', 'no');
  ctx.body = stream;
  stream.write(first);
  return stream;
}

/** A streamed event's arguments as JSON: the instance (`Instance.toJSON()`), and why. */
export function describeEvent(event: StreamedEvent, args: unknown[]): Record<string, unknown> {
  const [first, second, third] = args as [Instance | undefined, unknown, unknown];
  switch (event as keyof GatewayEvents) {
    case 'instance:removed':
      return { instance: first?.toJSON(), reason: second };
    case 'instance:health':
      return { instance: first?.toJSON(), previous: second, reason: third };
    case 'circuit:state':
      return { instance: first?.toJSON(), previous: second, reason: `circuit ${first?.circuit}` };
    case 'instance:ejected':
      return { instance: first?.toJSON(), reason: second };
    case 'instance:returned':
      return { instance: first?.toJSON(), reason: 'ejection over' };
    case 'service:preserved':
      return { service: first, preserved: second, reason: second ? 'self-preservation: leases held' : 'self-preservation over' };
    case 'config:applied':
    case 'config:rejected':
      return first as unknown as Record<string, unknown>;
    case 'gateway:closing':
      return { reason: 'gateway shutting down' };
    default:
      return { instance: first?.toJSON(), reason: event === 'instance:added' ? `registered by ${first?.source}` : 'updated' };
  }
}
