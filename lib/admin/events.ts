import { PassThrough } from 'node:stream';
import type Router from '@koa/router';
import type { GatewayEvents } from '../core/events.js';
import type { AdminHost } from './host.js';
import type { Instance } from '../registry/registry.js';

/** Seconds between keep-alive comments on an idle stream (proxies cut silent connections). */
export const SSE_HEARTBEAT_MS = 15_000;

/** The events `/events` streams: every registry, health and circuit change. */
const STREAMED = ['instance:added', 'instance:removed', 'instance:updated', 'instance:health', 'circuit:state', 'instance:ejected', 'instance:returned', 'service:preserved', 'config:applied', 'config:rejected', 'gateway:closing'] as const;

/**
 * `GET /events`: server-sent events for every registry, health and circuit change, each with the
 * instance and the reason, as `event: <name>` + `data: <json>`. A `: heartbeat` comment goes out
 * every 15 s; listeners are removed when the client leaves or the admin server closes.
 */
export function eventStreamRoute(router: Router, gateway: AdminHost, heartbeatMs = SSE_HEARTBEAT_MS): void {
  router.get('/events', (ctx) => {
    const stream = new PassThrough();
    let nextId = 0;
    const send = (event: string, data: unknown): void => {
      stream.write(`id: ${++nextId}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const listeners = STREAMED.map((event) => {
      const fn = (...args: unknown[]): void => send(event, describe(event, args));
      gateway.on(event, fn as never);
      return [event, fn] as const;
    });
    const heartbeat = setInterval(() => stream.write(': heartbeat\n\n'), heartbeatMs);
    heartbeat.unref();
    const onClosing = (): void => void setImmediate(cleanup);
    const cleanup = (): void => {
      clearInterval(heartbeat);
      for (const [event, fn] of listeners) gateway.off(event, fn as never);
      gateway.off('gateway:closing', onClosing);
      stream.end();
    };
    // The response's close, not the request's: a GET's request side closes as soon as it is read.
    ctx.res.once('close', cleanup);
    gateway.once('gateway:closing', onClosing);
    ctx.req.socket.setTimeout(0);
    ctx.req.socket.setNoDelay(true);
    ctx.status = 200;
    ctx.set('content-type', 'text/event-stream; charset=utf-8');
    ctx.set('cache-control', 'no-cache, no-transform');
    ctx.set('x-accel-buffering', 'no');
    ctx.body = stream;
    stream.write(`: meshgate events\nretry: 2000\n\n`);
  });
}

function describe(event: string, args: unknown[]): Record<string, unknown> {
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
