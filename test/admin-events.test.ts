import assert from 'node:assert/strict';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import Router from '@koa/router';
import Koa from 'koa';
import { SSE_HEARTBEAT_MS, eventStreamRoute } from '../lib/admin/events.js';
import type { Gateway, GatewayConfigInput } from '../lib/index.js';
import { createTestGateway, echo, listenApp, send, startGateway, startUpstream, waitFor, within } from './helpers.js';

const LIMIT = { timeout: 20_000 };
const TOKEN = 'events-test-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };
/** The events lib/admin/events.ts subscribes to for each stream. */
const STREAMED = ['instance:added', 'instance:removed', 'instance:updated', 'instance:health', 'circuit:state', 'gateway:closing'] as const;

interface ServerSentEvent {
  id?: string;
  event: string;
  data: any;
}

/** A live `GET /events` stream, parsed as it arrives. */
interface EventStream {
  res: IncomingMessage;
  events: ServerSentEvent[];
  /** Comment lines (`: ...`), without the colon. */
  comments: string[];
  /** Resolves with the first event named `name` (already received or still to come) that matches. */
  next(name: string, match?: (e: ServerSentEvent) => boolean, timeoutMs?: number): Promise<ServerSentEvent>;
  /** Hangs up. */
  close(): void;
}

/** Opens `GET <adminUrl>/events`; resolves once the response head arrived (any status). */
function openEvents(t: TestContext, url: string, headers: Record<string, string> = AUTH): Promise<EventStream> {
  return new Promise((resolve, reject) => {
    let req: ClientRequest | undefined;
    req = httpRequest(`${url}/events`, { headers, agent: false }, (res) => {
      const events: ServerSentEvent[] = [];
      const comments: string[] = [];
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event: Partial<ServerSentEvent> & { rawData?: string[] } = {};
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            else if (line.startsWith('event: ')) event.event = line.slice(7);
            else if (line.startsWith('data: ')) (event.rawData ??= []).push(line.slice(6));
            else if (line.startsWith('id: ')) event.id = line.slice(4);
          }
          if (event.event !== undefined) {
            events.push({ id: event.id, event: event.event, data: event.rawData ? JSON.parse(event.rawData.join('\n')) : undefined });
          }
        }
      });
      res.on('error', () => undefined);
      const stream: EventStream = {
        res,
        events,
        comments,
        async next(name, match = () => true, timeoutMs = 5000) {
          let found: ServerSentEvent | undefined;
          await waitFor(() => (found = events.find((e) => e.event === name && match(e))) !== undefined, timeoutMs, `event ${name} (got: ${events.map((e) => e.event).join(', ') || 'none'})`);
          return found!;
        },
        close: () => req!.destroy(),
      };
      t.after(() => stream.close());
      resolve(stream);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A gateway with an admin server (token set) and whatever services the test needs. */
function eventsGateway(t: TestContext, config: Omit<GatewayConfigInput, 'admin'>) {
  return startGateway(t, { ...config, admin: { token: TOKEN } });
}

function listenerCounts(gateway: Gateway): Record<string, number> {
  return Object.fromEntries(STREAMED.map((e) => [e, gateway.listenerCount(e)]));
}

describe('admin /events: access', () => {
  test('without the token, or with a wrong one, GET /events answers 401', LIMIT, async (t) => {
    const { adminUrl, gateway } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const before = listenerCounts(gateway);
    const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer wrong' }, { authorization: TOKEN }];
    for (const headers of attempts) {
      const res = await send(`${adminUrl}/events`, { headers });
      assert.equal(res.status, 401, JSON.stringify(headers));
      assert.equal(res.json().error, 'MESH_ERR_UNAUTHORIZED');
      assert.match(String(res.headers['www-authenticate']), /^Bearer/);
    }
    assert.deepEqual(listenerCounts(gateway), before, 'a refused stream subscribed to events');
  });

  test('with the token it is a text/event-stream', LIMIT, async (t) => {
    const { adminUrl } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const stream = await openEvents(t, adminUrl!);
    assert.equal(stream.res.statusCode, 200);
    assert.match(String(stream.res.headers['content-type']), /^text\/event-stream/);
    assert.match(String(stream.res.headers['cache-control']), /no-cache/);
  });
});

describe('admin /events: registry changes', () => {
  test('instance:added when an instance registers, instance:removed with reason "expired" when its ttl runs out', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('leased'));
    const { adminUrl } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const stream = await openEvents(t, adminUrl!);
    const registered = await send(`${adminUrl}/services/api/instances`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ url: upstream.url, ttl: '500ms' }),
    });
    assert.equal(registered.status, 201, registered.body);
    const id = registered.json().id as string;

    const added = await stream.next('instance:added');
    assert.equal(added.data.instance.id, id);
    assert.equal(added.data.instance.url, upstream.url);
    assert.equal(added.data.instance.service, 'api');
    assert.equal(added.data.reason, 'registered by admin');
    assert.ok(added.id, 'events carry an id');

    // No heartbeats: the lease (500 ms, swept every 250 ms) runs out.
    const removed = await stream.next('instance:removed', (e) => e.data.instance.id === id, 5000);
    assert.equal(removed.data.reason, 'expired');
    assert.ok(Number(removed.id) > Number(added.id), 'event ids increase');
    assert.equal((await send(`${adminUrl}/services/api`, { headers: AUTH })).json().instances.length, 0);
  });

  test('instance:removed with reason "deregistered" after DELETE', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('x'));
    const { adminUrl } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const stream = await openEvents(t, adminUrl!);
    const { id } = (
      await send(`${adminUrl}/services/api/instances`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ url: upstream.url }) })
    ).json() as { id: string };
    assert.equal((await send(`${adminUrl}/services/api/instances/${encodeURIComponent(id)}`, { method: 'DELETE', headers: AUTH })).status, 204);
    const removed = await stream.next('instance:removed');
    assert.equal(removed.data.instance.id, id);
    assert.equal(removed.data.reason, 'deregistered');
  });

  test('instance:health when a health check fails, with the previous state and a reason', LIMIT, async (t) => {
    const health = { status: 200 };
    const serve = echo('checked');
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/health') return serve(req, res);
      res.writeHead(health.status).end();
    });
    const { adminUrl } = await eventsGateway(t, {
      services: { api: { instances: [{ url: upstream.url }], healthCheck: { path: '/health', interval: 100, timeout: 1000, unhealthyThreshold: 1, healthyThreshold: 1 } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const stream = await openEvents(t, adminUrl!);
    health.status = 503;
    const down = await stream.next('instance:health', (e) => e.data.instance.health === 'unhealthy');
    assert.equal(down.data.previous, 'healthy');
    assert.equal(down.data.instance.url, upstream.url);
    assert.match(String(down.data.reason), /health check failed/);
    health.status = 200;
    const up = await stream.next('instance:health', (e) => e.data.instance.health === 'healthy');
    assert.equal(up.data.previous, 'unhealthy');
    assert.match(String(up.data.reason), /health check passed/);
  });

  test('circuit:state when a circuit opens, with the previous state and a reason', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => void res.writeHead(500).end('broken'));
    const { url, adminUrl } = await eventsGateway(t, {
      services: { api: { instances: [{ url: upstream.url }], circuitBreaker: { volumeThreshold: 3, errorThresholdPercentage: 50, resetTimeout: 60_000 } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const stream = await openEvents(t, adminUrl!);
    for (let i = 0; i < 5; i++) await send(`${url}/api/${i}`);
    const opened = await stream.next('circuit:state', (e) => e.data.instance.circuit === 'open');
    assert.equal(opened.data.previous, 'closed');
    assert.equal(opened.data.instance.url, upstream.url);
    assert.equal(typeof opened.data.reason, 'string');
    assert.match(opened.data.reason, /open/);
  });
});

describe('admin /events: heartbeat and clean-up', () => {
  test('a ": heartbeat" comment arrives every heartbeat interval (15 s in production; 50 ms on a router of our own)', LIMIT, async (t) => {
    assert.equal(SSE_HEARTBEAT_MS, 15_000, 'README documents a heartbeat every 15 s');
    const gateway = createTestGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const router = new Router();
    eventStreamRoute(router, gateway, 50);
    const app = new Koa();
    app.use(router.routes());
    const { url } = await listenApp(t, app);
    const stream = await openEvents(t, url, {});
    assert.equal(stream.res.statusCode, 200);
    await waitFor(() => stream.comments.filter((c) => c === 'heartbeat').length >= 3, 5000, 'three heartbeat comments');
    // Events still flow between heartbeats.
    gateway.registry.upsertInstance('api', { url: 'http://127.0.0.1:1', id: 'hb', source: 'test' });
    const added = await stream.next('instance:added');
    assert.equal(added.data.reason, 'registered by test');
  });

  test('a client that hangs up leaves no listener behind on the gateway', LIMIT, async (t) => {
    const { adminUrl, gateway } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const baseline = listenerCounts(gateway);
    const streams: EventStream[] = [];
    for (let i = 0; i < 3; i++) streams.push(await openEvents(t, adminUrl!));
    await waitFor(() => gateway.listenerCount('instance:added') === baseline['instance:added']! + 3, 5000, 'three subscribed streams');
    for (const stream of streams) stream.close();
    await waitFor(() => gateway.listenerCount('instance:added') === baseline['instance:added']!, 5000, 'instance:added listeners back to the baseline');
    await waitFor(() => gateway.listenerCount('instance:removed') === baseline['instance:removed']!, 5000, 'instance:removed listeners back to the baseline');
    // Every event the stream subscribed to, 'gateway:closing' included: a reconnecting dashboard must not grow the gateway's listener lists.
    await waitFor(() => STREAMED.every((e) => gateway.listenerCount(e) === baseline[e]), 2000, 'every streamed event back to the baseline').catch(() => {
      // The assertion below names the event whose listeners stayed.
    });
    assert.deepEqual(listenerCounts(gateway), baseline);
  });

  test('close() ends open streams', LIMIT, async (t) => {
    const { adminUrl, gateway } = await eventsGateway(t, { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    const stream = await openEvents(t, adminUrl!);
    const ended = new Promise<void>((resolve) => stream.res.once('close', () => resolve()));
    await within(gateway.close(), 5000, 'gateway.close() with an open event stream');
    await within(ended, 5000, 'the event stream ending');
  });
});
