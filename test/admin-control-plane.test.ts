import assert from 'node:assert/strict';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway, Instance, RemovalReason } from '../lib/index.js';
import { echo, send, sleep, startGateway, startUpstream, waitFor } from './helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };
const TOKEN = 'control-plane-token';

type Reply = Awaited<ReturnType<typeof send>>;

/** A gateway with an admin server (token required) and an `api` service that starts empty. */
async function controlPlane(t: TestContext): Promise<{ gateway: Gateway; url: string; adminUrl: string; admin: AdminClient }> {
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { token: TOKEN },
    services: { api: {} },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  assert.ok(adminUrl);
  return { gateway, url, adminUrl, admin: adminClient(adminUrl) };
}

interface AdminClient {
  /** A JSON request with the right token; `body` is sent as is when it is a string. */
  call(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply>;
  register(body: Record<string, unknown>): Promise<Reply>;
  heartbeat(id: string, service?: string): Promise<Reply>;
  deregister(id: string, service?: string): Promise<Reply>;
}

function adminClient(adminUrl: string): AdminClient {
  const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> =>
    send(`${adminUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      body: body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
    });
  return {
    call,
    register: (body) => call('POST', '/services/api/instances', body),
    heartbeat: (id, service = 'api') => call('PUT', `/services/${service}/instances/${encodeURIComponent(id)}/heartbeat`),
    deregister: (id, service = 'api') => call('DELETE', `/services/${service}/instances/${encodeURIComponent(id)}`),
  };
}

function instances(gateway: Gateway): Instance[] {
  return [...gateway.registry.getService('api')!.instances.values()];
}

function recordRemovals(gateway: Gateway): { id: string; reason: RemovalReason; at: number }[] {
  const removed: { id: string; reason: RemovalReason; at: number }[] = [];
  gateway.on('instance:removed', (inst, reason) => removed.push({ id: inst.id, reason, at: Date.now() }));
  return removed;
}

/** Sends `n` GETs through the proxy; returns their statuses. */
async function sendMany(url: string, n: number): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) statuses.push((await send(`${url}/api/item/${i}`)).status);
  return statuses;
}

describe('admin control plane: register, heartbeat, deregister', () => {
  test('POST registers an instance (201 { id }) that takes traffic; heartbeat answers 200; DELETE answers 204 and traffic stops at once', LIMIT, async (t) => {
    const one = await startUpstream(t, echo('one'));
    const two = await startUpstream(t, echo('two'));
    const { gateway, url, admin } = await controlPlane(t);
    const added: Instance[] = [];
    gateway.on('instance:added', (inst) => added.push(inst));

    const empty = await send(`${url}/api/before`);
    assert.equal(empty.status, 503);
    assert.equal(empty.json().error, 'MESH_ERR_NO_HEALTHY_INSTANCE');

    const reg = await admin.register({ url: one.url, weight: 2, metadata: { version: '1.2.3' }, ttl: '30s' });
    assert.equal(reg.status, 201, reg.body);
    const { id } = reg.json() as { id: string };
    assert.equal(typeof id, 'string');
    assert.deepEqual(reg.json(), { id, ttl: 30_000 });
    assert.equal(reg.headers.location, `/services/api/instances/${encodeURIComponent(id)}`);
    assert.equal(added.length, 1);
    assert.equal(added[0]!.url, one.url);
    assert.equal(added[0]!.weight, 2);
    assert.deepEqual(added[0]!.metadata, { version: '1.2.3' });
    assert.equal(added[0]!.source, 'admin');

    const proxied = await send(`${url}/api/hello`);
    assert.equal(proxied.status, 200);
    assert.equal(proxied.json().name, 'one');

    const inst = gateway.registry.getInstance('api', id)!;
    const beatBefore = inst.lastHeartbeat!;
    await sleep(20);
    const beat = await admin.heartbeat(id);
    assert.equal(beat.status, 200, beat.body);
    assert.deepEqual(beat.json(), { id, ttl: 30_000 });
    assert.ok(inst.lastHeartbeat! > beatBefore, 'the heartbeat renewed the lease');

    const second = await admin.register({ url: two.url });
    assert.equal(second.status, 201);
    assert.ok((await sendMany(url, 6)).every((s) => s === 200));
    assert.ok(one.seen.length > 1 && two.seen.length > 0, 'both registered instances take traffic');

    const del = await admin.deregister(id);
    assert.equal(del.status, 204);
    assert.equal(del.body, '');
    assert.equal(gateway.registry.getInstance('api', id), undefined);
    const oneSeen = one.seen.length;
    const after = await sendMany(url, 10);
    assert.ok(after.every((s) => s === 200));
    assert.equal(one.seen.length, oneSeen, 'the deregistered instance got nothing more');
    assert.equal(two.seen.length >= 10, true);
  });

  test('registering the same URL again is idempotent: same id, one instance, updated weight', LIMIT, async (t) => {
    const one = await startUpstream(t, echo('one'));
    const { gateway, admin } = await controlPlane(t);
    const first = await admin.register({ url: one.url, weight: 1 });
    const again = await admin.register({ url: one.url, weight: 5 });
    assert.equal(first.status, 201);
    assert.equal(again.status, 201);
    assert.equal(again.json().id, first.json().id);
    assert.equal(instances(gateway).length, 1);
    assert.equal(instances(gateway)[0]!.weight, 5);
  });

  test('GET /services and GET /services/:name show the instances with health, circuit, inflight, lastHeartbeat', LIMIT, async (t) => {
    const held: ServerResponse[] = [];
    const one = await startUpstream(t, (req, res) => {
      if (req.url?.startsWith('/api/hold')) held.push(res);
      else echo('one')(req, res);
    });
    const { gateway, url, admin } = await controlPlane(t);
    const reg = await admin.register({ url: one.url, weight: 3, metadata: { zone: 'eu' }, ttl: '10s' });
    const { id } = reg.json() as { id: string };

    const slow = send(`${url}/api/hold`);
    await waitFor(() => held.length === 1, 5000, 'the upstream to hold a request');

    const list = await admin.call('GET', '/services');
    assert.equal(list.status, 200);
    assert.deepEqual(list.json(), { services: [{ name: 'api', balancer: 'round-robin', instances: 1, healthy: 1 }] });

    const detail = await admin.call('GET', '/services/api');
    assert.equal(detail.status, 200);
    const body = detail.json() as { name: string; instances: Record<string, unknown>[] };
    assert.equal(body.name, 'api');
    assert.equal(body.instances.length, 1);
    const view = body.instances[0]!;
    assert.equal(view.id, id);
    assert.equal(view.url, one.url);
    assert.equal(view.weight, 3);
    assert.deepEqual(view.metadata, { zone: 'eu' });
    assert.equal(view.health, 'healthy');
    assert.equal(view.circuit, 'closed');
    assert.equal(view.inflight, 1, 'the held request is in flight');
    assert.equal(view.ttl, 10_000);
    assert.equal(typeof view.lastHeartbeat, 'string');
    const beatAge = Date.now() - Date.parse(view.lastHeartbeat as string);
    assert.ok(beatAge >= 0 && beatAge < 60_000, `lastHeartbeat ${String(view.lastHeartbeat)}`);

    held[0]!.end('released');
    assert.equal((await slow).status, 200);
    gateway.registry.setHealth(gateway.registry.getInstance('api', id)!, 'unhealthy', 'test');
    const listAfter = (await admin.call('GET', '/services')).json();
    assert.deepEqual(listAfter.services[0], { name: 'api', balancer: 'round-robin', instances: 1, healthy: 0 });
    const viewAfter = (await admin.call('GET', '/services/api')).json().instances[0];
    assert.equal(viewAfter.health, 'unhealthy');
    assert.equal(viewAfter.inflight, 0);
  });
});

describe('admin control plane: bad requests', () => {
  test('every bad registration answers 400 naming the field, and registers nothing', LIMIT, async (t) => {
    const { gateway, admin } = await controlPlane(t);
    const url = 'http://127.0.0.1:3000';
    const cases: [string, unknown, string][] = [
      ['non-http URL', { url: 'ftp://127.0.0.1:21' }, 'url'],
      ['not a URL', { url: 'not a url' }, 'url'],
      ['missing url', { weight: 1 }, 'url'],
      ['negative weight', { url, weight: -1 }, 'weight'],
      ['zero weight', { url, weight: 0 }, 'weight'],
      ['non-integer weight', { url, weight: 1.5 }, 'weight'],
      ['weight as a string', { url, weight: '2' }, 'weight'],
      ['unknown field', { url, colour: 'blue' }, 'colour'],
      ['bad ttl', { url, ttl: 'soon' }, 'ttl'],
      ['ttl below 100ms', { url, ttl: '10ms' }, 'ttl'],
      ['metadata not an object', { url, metadata: 'x' }, 'metadata'],
    ];
    for (const [what, body, field] of cases) {
      const res = await admin.register(body as Record<string, unknown>);
      assert.equal(res.status, 400, `${what}: ${res.body}`);
      const json = res.json() as { error: string; message: string; fields: { path: string }[] };
      assert.equal(json.error, 'MESH_ERR_VALIDATION', what);
      assert.ok(json.fields.some((f) => f.path === field), `${what}: fields ${JSON.stringify(json.fields)}`);
      assert.match(json.message, new RegExp(`\\b${field}\\b`), what);
    }
    assert.equal(instances(gateway).length, 0);
  });

  test('malformed JSON answers 400, and so does a JSON value that is not an object', LIMIT, async (t) => {
    const { gateway, admin } = await controlPlane(t);
    const malformed = await admin.call('POST', '/services/api/instances', '{"url": "http://127.0.0.1:1",');
    assert.equal(malformed.status, 400);
    assert.equal(malformed.json().error, 'MESH_ERR_BAD_JSON');
    const array = await admin.call('POST', '/services/api/instances', '[{"url": "http://127.0.0.1:1"}]');
    assert.equal(array.status, 400);
    assert.equal(array.json().error, 'MESH_ERR_BAD_JSON');
    assert.equal(instances(gateway).length, 0);
  });

  test('a body over 64 KiB answers 413, with or without Content-Length', LIMIT, async (t) => {
    const { gateway, adminUrl, admin } = await controlPlane(t);
    const big = JSON.stringify({ url: 'http://127.0.0.1:1', metadata: { pad: 'x'.repeat(70 * 1024) } });
    const declared = await admin.call('POST', '/services/api/instances', big);
    assert.equal(declared.status, 413);
    assert.equal(declared.json().error, 'MESH_ERR_PAYLOAD_TOO_LARGE');

    // Chunked: the limit is enforced while reading.
    const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(
        `${adminUrl}/services/api/instances`,
        { method: 'POST', agent: false, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' } },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        },
      );
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write(big.slice(i * 8000, (i + 1) * 8000));
      req.end(big.slice(80_000));
    });
    assert.equal(chunked.status, 413);
    assert.equal(JSON.parse(chunked.body).error, 'MESH_ERR_PAYLOAD_TOO_LARGE');
    assert.equal(instances(gateway).length, 0);
  });

  test('a wrong or missing token answers 401 on every control-plane route, GET /services included', LIMIT, async (t) => {
    const { gateway, adminUrl, admin } = await controlPlane(t);
    const reg = await admin.register({ url: 'http://127.0.0.1:1' });
    const id = encodeURIComponent(reg.json().id as string);
    const routes: [string, string, string?][] = [
      ['POST', '/services/api/instances', JSON.stringify({ url: 'http://127.0.0.1:2' })],
      ['PUT', `/services/api/instances/${id}/heartbeat`],
      ['DELETE', `/services/api/instances/${id}`],
      ['GET', '/services'],
      ['GET', '/services/api'],
    ];
    for (const auth of [undefined, 'Bearer wrong-token', `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`, TOKEN]) {
      for (const [method, path, body] of routes) {
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (auth !== undefined) headers.authorization = auth;
        const res = await send(`${adminUrl}${path}`, { method, headers, body });
        assert.equal(res.status, 401, `${method} ${path} with ${auth ?? 'no token'}`);
        assert.equal(res.json().error, 'MESH_ERR_UNAUTHORIZED');
        assert.match(String(res.headers['www-authenticate']), /^Bearer/);
      }
    }
    // Nothing changed: the one instance registered with the token is still there, alone.
    assert.equal(instances(gateway).length, 1);
  });

  test('an unknown service answers 404; heartbeat and delete of an unknown id answer 404', LIMIT, async (t) => {
    const { admin } = await controlPlane(t);
    const post = await admin.call('POST', '/services/ghost/instances', { url: 'http://127.0.0.1:1' });
    assert.equal(post.status, 404);
    assert.equal(post.json().error, 'MESH_ERR_UNKNOWN_SERVICE');
    const get = await admin.call('GET', '/services/ghost');
    assert.equal(get.status, 404);
    assert.equal(get.json().error, 'MESH_ERR_UNKNOWN_SERVICE');
    const beatGhostService = await admin.heartbeat('x', 'ghost');
    assert.equal(beatGhostService.status, 404);

    const beat = await admin.heartbeat('127.0.0.1:1');
    assert.equal(beat.status, 404);
    assert.equal(beat.json().error, 'MESH_ERR_UNKNOWN_INSTANCE');
    const del = await admin.deregister('127.0.0.1:1');
    assert.equal(del.status, 404);
    assert.equal(del.json().error, 'MESH_ERR_UNKNOWN_INSTANCE');
  });
});

describe('admin control plane: heartbeat leases', () => {
  test('a leased instance lives while heartbeats come, leaves within TTL + 1 s after they stop, and can register again', LIMIT, async (t) => {
    const TTL = 1000;
    const one = await startUpstream(t, echo('one'));
    const { gateway, url, admin } = await controlPlane(t);
    const removed = recordRemovals(gateway);

    const reg = await admin.register({ url: one.url, ttl: '1s' });
    assert.equal(reg.status, 201);
    const { id } = reg.json() as { id: string };
    assert.equal((await send(`${url}/api/a`)).status, 200);

    // Heartbeats every 300 ms keep it well past its TTL.
    let lastBeatSentAt = 0;
    const keepUntil = Date.now() + 2.5 * TTL;
    while (Date.now() < keepUntil) {
      lastBeatSentAt = Date.now();
      assert.equal((await admin.heartbeat(id)).status, 200);
      await sleep(300);
    }
    assert.equal(removed.length, 0, 'heartbeats kept the lease');
    assert.equal((await send(`${url}/api/b`)).status, 200);

    // Silence: it leaves, as expired, once its lease runs out.
    await waitFor(() => removed.length === 1, TTL + 1000, 'the lease to expire');
    assert.equal(removed[0]!.id, id);
    assert.equal(removed[0]!.reason, 'expired');
    assert.ok(removed[0]!.at - lastBeatSentAt >= TTL, `expired ${removed[0]!.at - lastBeatSentAt} ms after the last heartbeat`);
    const gone = await send(`${url}/api/c`);
    assert.equal(gone.status, 503);
    const seen = one.seen.length;

    // A late heartbeat is told the instance is unknown, so the caller registers again.
    const late = await admin.heartbeat(id);
    assert.equal(late.status, 404);
    assert.equal(late.json().error, 'MESH_ERR_UNKNOWN_INSTANCE');
    const again = await admin.register({ url: one.url, ttl: '1s' });
    assert.equal(again.status, 201);
    assert.equal(again.json().id, id);
    assert.equal((await send(`${url}/api/d`)).status, 200);
    assert.equal(one.seen.length, seen + 1);

    // Deregistration does not wait for the lease.
    assert.equal((await admin.deregister(id)).status, 204);
    assert.equal((await send(`${url}/api/e`)).status, 503);
    assert.equal(removed.length, 2);
    assert.equal(removed[1]!.reason, 'deregistered');
  });
});
