/**
 * The fleet registry on Redis, end to end: real redis-server processes started by the tests,
 * real gateways (two per fleet, in this process), real upstreams, real sidecar processes.
 */
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { registerInstance, type Gateway, type Registration } from '../../lib/index.js';
import { echo, send, sleep, spawnNode, spawnScript, startGateway, startUpstream, waitFor, type ChildRun } from '../helpers.js';
import { startRedis } from '../redis-server.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOKEN = 'fleet-secret';
const AUTH = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
const EVENTS = 'meshgate:events';

/** The documented key of an instance: `<prefix>svc:{<service>}:inst:<id>`. */
const keyOf = (id: string, service = 'api'): string => `meshgate:svc:{${service}}:inst:${id}`;

interface FleetGateway {
  gateway: Gateway;
  url: string;
  adminUrl: string;
}

/** A gateway of the fleet: admin API, Redis discovery, an empty `api` service routed at /api. */
async function fleetGateway(
  t: TestContext,
  redisUrl: string,
  extra: { resyncInterval?: string | number; staticUrl?: string } = {},
): Promise<FleetGateway> {
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { token: TOKEN },
    discovery: { redis: { url: redisUrl, ...(extra.resyncInterval !== undefined ? { resyncInterval: extra.resyncInterval } : {}) } },
    services: {
      api: {},
      ...(extra.staticUrl ? { web: { instances: [{ url: extra.staticUrl }] } } : {}),
    },
    routes: [{ prefix: '/api', service: 'api' }, ...(extra.staticUrl ? [{ prefix: '/web', service: 'web' }] : [])],
  });
  assert.ok(adminUrl);
  return { gateway, url, adminUrl };
}

/** A plain Redis client for the test's own reads and writes (what another language would do). */
function redisClient(t: TestContext, url: string): Redis {
  const client = new Redis(url, { retryStrategy: () => 50 });
  client.on('error', () => {}); // reconnects are expected while a test kills the server
  t.after(() => client.disconnect());
  return client;
}

const has = (fleet: FleetGateway, id: string): boolean => fleet.gateway.registry.getInstance('api', id) !== undefined;

function adminRegister(fleet: FleetGateway, body: Record<string, unknown>) {
  return send(`${fleet.adminUrl}/services/api/instances`, { method: 'POST', headers: AUTH, body: JSON.stringify(body) });
}
function adminHeartbeat(fleet: FleetGateway, id: string) {
  return send(`${fleet.adminUrl}/services/api/instances/${encodeURIComponent(id)}/heartbeat`, { method: 'PUT', headers: AUTH });
}
function adminDeregister(fleet: FleetGateway, id: string) {
  return send(`${fleet.adminUrl}/services/api/instances/${encodeURIComponent(id)}`, { method: 'DELETE', headers: AUTH });
}

/** Every instance key in Redis (SCAN, as the plugin does). */
async function instanceKeys(redis: Redis): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, page] = await redis.scan(cursor, 'MATCH', 'meshgate:svc:*:inst:*', 'COUNT', 100);
    cursor = next;
    keys.push(...page);
  } while (cursor !== '0');
  return keys.sort();
}

/** Writes an instance the way a service in another language would: SET with PX, then PUBLISH. */
async function externalRegister(redis: Redis, id: string, url: string, ttl: number, publish = true): Promise<void> {
  const instance = { id, service: 'api', url, ttl, registeredAt: Date.now() };
  await redis.set(keyOf(id), JSON.stringify(instance), 'PX', ttl);
  if (publish) await redis.publish(EVENTS, JSON.stringify({ op: 'register', service: 'api', id, instance }));
}

/** Runs the real sidecar CLI (`meshgate register`) against a Redis registry. */
function sidecar(t: TestContext, redisUrl: string, url: string, ttl: string): Promise<ChildRun> {
  return spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', redisUrl, '--service', 'api', '--url', url, '--ttl', ttl], {
    cwd: ROOT,
    env: { MESHGATE_ADMIN_TOKEN: undefined },
  });
}

/** Number of connections the Redis server has open (CLIENT LIST), the asking one included. */
async function connectionCount(redis: Redis): Promise<number> {
  const list = (await redis.call('CLIENT', 'LIST')) as string;
  return list.split('\n').filter((line) => line.trim() !== '').length;
}

describe('redis discovery: one registry for the fleet', () => {
  test('a registration through gateway A is routed by gateway B within 1 s; a deregistration through B stops A within 1 s', async (t) => {
    const redis = await startRedis(t);
    const upstream = await startUpstream(t, echo('one'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);

    const created = await adminRegister(a, { url: upstream.url, ttl: '30s' });
    assert.equal(created.status, 201, created.body);
    const id = created.json().id as string;
    assert.equal(id, `127.0.0.1:${upstream.port}`);
    await waitFor(() => has(b, id), 1000, 'gateway B to learn the instance registered through A');

    const res = await send(`${b.url}/api/hello`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().name, 'one');
    assert.equal(upstream.seen.at(-1)?.url, '/api/hello');

    // Before the deregistration A routes there too, so the check below is about the change.
    assert.equal((await send(`${a.url}/api/before`)).status, 200);
    const seenBefore = upstream.seen.length;

    const removed = await adminDeregister(b, id);
    assert.equal(removed.status, 204, removed.body);
    await waitFor(() => !has(a, id), 1000, 'gateway A to drop the instance deregistered through B');
    const after = await send(`${a.url}/api/after`);
    assert.equal(after.status, 503, after.body);
    assert.equal(after.json().error, 'MESH_ERR_NO_HEALTHY_INSTANCE');
    assert.equal(upstream.seen.length, seenBefore, 'no request reached the deregistered upstream');
  });

  test('the key schema: <prefix>svc:{service}:inst:<id> with a PX lease; an instance written with plain SET + PUBLISH joins every gateway', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const first = await startUpstream(t, echo('first'));
    const external = await startUpstream(t, echo('external'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);

    const created = await adminRegister(a, { url: first.url, ttl: 5000, weight: 2, metadata: { version: '1.2.3' } });
    assert.equal(created.status, 201, created.body);
    const id = created.json().id as string;
    const pttl = await client.pttl(keyOf(id));
    assert.ok(pttl > 4000 && pttl <= 5000, `PTTL of ${keyOf(id)} should be close to the 5000 ms ttl, got ${pttl}`);
    const stored = JSON.parse((await client.get(keyOf(id)))!) as Record<string, unknown>;
    assert.equal(stored.url, first.url);
    assert.equal(stored.ttl, 5000);
    assert.equal(stored.id, id);
    assert.equal(stored.service, 'api');
    assert.equal(stored.weight, 2);
    assert.deepEqual(stored.metadata, { version: '1.2.3' });
    assert.deepEqual(await instanceKeys(client), [keyOf(id)]);

    // What a service written in another language does: no meshgate code involved.
    await externalRegister(client, 'py-worker-1', external.url, 10_000);
    await waitFor(() => has(a, 'py-worker-1') && has(b, 'py-worker-1'), 1000, 'both gateways to learn the externally written instance');
    const inst = b.gateway.registry.getInstance('api', 'py-worker-1')!;
    assert.equal(inst.url, external.url);
    assert.equal(inst.ttl, 10_000);

    // Both gateways route to it (round-robin over two instances: 4 requests reach each twice).
    for (const gw of [a, b]) {
      const before = external.seen.length;
      for (let i = 0; i < 4; i++) assert.equal((await send(`${gw.url}/api/x`)).status, 200);
      assert.ok(external.seen.length > before, `requests through ${gw.url} should reach the external instance`);
    }
  });

  test('a service that heartbeats with plain PEXPIRE, as README shows, stays on every gateway past several TTLs', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const external = await startUpstream(t, echo('external'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);
    const removed: string[] = [];
    for (const gw of [a, b]) gw.gateway.on('instance:removed', (inst, reason) => removed.push(`${inst.id} (${reason})`));

    const ttl = 1000;
    await externalRegister(client, 'go-worker-1', external.url, ttl);
    await waitFor(() => has(a, 'go-worker-1') && has(b, 'go-worker-1'), 1000, 'both gateways to learn the instance');
    // README: `PEXPIRE key <ttl>` is the heartbeat ("0 means gone: register again"), every ttl/3.
    const until = Date.now() + 3 * ttl;
    while (Date.now() < until) {
      await sleep(ttl / 3);
      assert.equal(await client.pexpire(keyOf('go-worker-1'), ttl), 1);
      assert.ok(has(a, 'go-worker-1') && has(b, 'go-worker-1'), `the heartbeating instance must stay (removed: ${removed.join(', ')})`);
    }
    assert.deepEqual(removed, []);
  });

  test('a heartbeat for an expired or deleted key answers 404 and does not recreate it; re-registration is idempotent', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const upstream = await startUpstream(t);
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);

    // Expired: a 300 ms lease that nobody renews.
    const short = await adminRegister(a, { url: upstream.url, id: 'short-lived', ttl: '300ms' });
    assert.equal(short.status, 201, short.body);
    await waitFor(async () => (await client.exists(keyOf('short-lived'))) === 0, 2000, 'the 300 ms key to expire in Redis');
    const late = await adminHeartbeat(b, 'short-lived');
    assert.equal(late.status, 404, late.body);
    assert.equal(late.json().error, 'MESH_ERR_UNKNOWN_INSTANCE');
    assert.equal(await client.exists(keyOf('short-lived')), 0, 'a heartbeat must not resurrect an expired instance');

    // A live lease: the heartbeat renews it (the positive control of the 404 above).
    const live = await adminRegister(a, { url: upstream.url, id: 'live', ttl: '5s' });
    assert.equal(live.status, 201, live.body);
    await sleep(300);
    const aged = await client.pttl(keyOf('live'));
    const beat = await adminHeartbeat(b, 'live');
    assert.equal(beat.status, 200, beat.body);
    assert.deepEqual(beat.json(), { id: 'live', ttl: 5000 });
    assert.ok((await client.pttl(keyOf('live'))) > aged, 'the heartbeat renews the PTTL');

    // Deleted behind the gateways' backs (no message): the next heartbeat tells the owner to register again.
    await client.del(keyOf('live'));
    const gone = await adminHeartbeat(a, 'live');
    assert.equal(gone.status, 404, gone.body);
    assert.equal(await client.exists(keyOf('live')), 0, 'a heartbeat must not recreate a deleted key');

    // The same id twice: one key, one instance per gateway.
    for (let i = 0; i < 2; i++) {
      const res = await adminRegister(i === 0 ? a : b, { url: upstream.url, id: 'twice', ttl: '10s' });
      assert.equal(res.status, 201, res.body);
      assert.equal(res.json().id, 'twice');
    }
    assert.deepEqual(await instanceKeys(client), [keyOf('twice')]);
    await waitFor(() => has(a, 'twice') && has(b, 'twice'), 1000, 'both gateways to know "twice"');
    for (const gw of [a, b]) {
      const ids = [...gw.gateway.registry.getService('api')!.instances.keys()].filter((k) => k === 'twice');
      assert.equal(ids.length, 1);
    }
  });

  test('an id registered again with a new URL (a pod back with a new IP) is routed to the new URL by every gateway', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const old = await startUpstream(t, echo('old'));
    const moved = await startUpstream(t, echo('moved'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);

    assert.equal((await adminRegister(a, { url: old.url, id: 'api-0', ttl: '10s' })).status, 201);
    await waitFor(() => has(b, 'api-0'), 1000, 'B to learn api-0');
    assert.equal((await send(`${b.url}/api/x`)).json().name, 'old');

    const again = await adminRegister(b, { url: moved.url, id: 'api-0', ttl: '10s' });
    assert.equal(again.status, 201, again.body);
    assert.equal(JSON.parse((await client.get(keyOf('api-0')))!).url, moved.url, 'Redis holds the new URL');
    await waitFor(() => a.gateway.registry.getInstance('api', 'api-0')?.url === moved.url, 1000, 'A to apply the new URL of api-0');
    for (const gw of [a, b]) {
      assert.equal(gw.gateway.registry.getInstance('api', 'api-0')!.url, moved.url);
      const res = await send(`${gw.url}/api/y`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().name, 'moved', `${gw.url} routes api-0 to its new URL`);
    }
  });

  test('resync: a key written without a message shows up after resyncInterval; an unleased key deleted silently leaves', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const upstream = await startUpstream(t);
    const a = await fleetGateway(t, redis.url, { resyncInterval: '300ms' });

    // No PUBLISH: as if the subscriber had been disconnected when the message went out.
    await externalRegister(client, 'missed', upstream.url, 10_000, false);
    await waitFor(() => has(a, 'missed'), 1000, 'the periodic resync (300 ms) to find the silently written key');
    assert.equal((await send(`${a.url}/api/resynced`)).status, 200);

    // An instance without a lease has no other way to leave than the resync noticing it is gone.
    await client.set(keyOf('unleased'), JSON.stringify({ id: 'unleased', service: 'api', url: 'http://127.0.0.1:1' }));
    await waitFor(() => has(a, 'unleased'), 1000, 'the unleased key to be picked up');
    await client.del(keyOf('unleased'));
    await waitFor(() => !has(a, 'unleased'), 1000, 'the silently deleted unleased key to leave on resync');
    assert.ok(has(a, 'missed'), 'a resync keeps what is still in Redis');
  });

  test('sidecars: SIGKILL leaves after the TTL (within ttl + 1.5 s), SIGTERM deregisters at once', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const one = await startUpstream(t, echo('one'));
    const two = await startUpstream(t, echo('two'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);
    const idOne = `127.0.0.1:${one.port}`;
    const idTwo = `127.0.0.1:${two.port}`;

    const killed = await sidecar(t, redis.url, one.url, '1s');
    const stopped = await sidecar(t, redis.url, two.url, '10s');
    await waitFor(() => has(a, idOne) && has(b, idOne) && has(a, idTwo) && has(b, idTwo), 15_000, `both sidecars to register (stderr: ${killed.stderr()} ${stopped.stderr()})`);
    assert.equal((await send(`${b.url}/api/x`)).status, 200);
    // The 1 s lease is kept alive by the sidecar's heartbeats, past several TTLs.
    await sleep(1500);
    assert.ok(has(a, idOne) && has(b, idOne), 'heartbeats keep the sidecar instance past its TTL');

    killed.child.kill('SIGKILL');
    await killed.exited;
    // A lease, not a goodbye: the instance is still there right after the kill.
    assert.ok(has(a, idOne) && has(b, idOne), 'SIGKILL sends no deregistration');
    await waitFor(() => !has(a, idOne) && !has(b, idOne), 2500, 'the SIGKILLed sidecar instance to leave both gateways after its 1 s TTL');
    assert.equal(await client.exists(keyOf(idOne)), 0, 'its key expired in Redis');
    assert.ok(has(a, idTwo) && has(b, idTwo), 'the other sidecar stays');
    const afterKill = await send(`${a.url}/api/after-kill`);
    assert.equal(afterKill.status, 200);
    assert.equal(afterKill.json().name, 'two');

    stopped.child.kill('SIGTERM');
    // 1 s is a tenth of its lease: only the deregistration explains the removal.
    await waitFor(() => !has(a, idTwo) && !has(b, idTwo), 1000, 'the SIGTERMed sidecar instance to leave both gateways at once');
    assert.equal(await client.exists(keyOf(idTwo)), 0, 'its key was deleted');
    const exit = await stopped.exited;
    assert.equal(exit.code, 0, stopped.stderr());
    assert.match(stopped.stderr(), /deregistered/);
  });

  test('Redis killed under load: zero failed requests, admin writes answer 503, an empty restart is refilled within two heartbeats', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const one = await startUpstream(t, echo('one'));
    const two = await startUpstream(t, echo('two'));
    const spare = await startUpstream(t, echo('spare'));
    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);
    const ttl = 900;
    const registrations: Registration[] = [];
    t.after(() => Promise.all(registrations.map((r) => r.close())));
    for (const up of [one, two]) registrations.push(await registerInstance({ registry: redis.url, service: 'api', url: up.url, ttl, onError: () => {} }));
    const ids = registrations.map((r) => r.id);
    const allSeen = (): boolean => ids.every((id) => has(a, id) && has(b, id));
    await waitFor(allSeen, 1000, 'both gateways to see both registered instances');

    // 4 clients, each alternating between A and B, until stopped.
    const results: { at: number; status: number | string; name?: string }[] = [];
    let running = true;
    const clients = Array.from({ length: 4 }, async (_, w) => {
      for (let i = w; running; i++) {
        const gw = i % 2 === 0 ? a : b;
        try {
          const res = await send(`${gw.url}/api/load`);
          results.push({ at: Date.now(), status: res.status, name: res.status === 200 ? res.json().name : res.body });
        } catch (err) {
          results.push({ at: Date.now(), status: (err as Error).message });
        }
      }
    });
    const stopLoad = async (): Promise<void> => {
      running = false;
      await Promise.all(clients);
    };
    t.after(stopLoad);

    await sleep(300);
    const killedAt = Date.now();
    await redis.kill('SIGKILL');

    // Admin writes during the outage: 503 with a stable code, on both gateways.
    const write = await adminRegister(a, { url: spare.url, ttl: '10s' });
    assert.equal(write.status, 503, write.body);
    assert.equal(write.json().error, 'MESH_ERR_REGISTRY_UNAVAILABLE');
    const beat = await adminHeartbeat(b, ids[0]!);
    assert.equal(beat.status, 503, beat.body);
    assert.equal(beat.json().error, 'MESH_ERR_REGISTRY_UNAVAILABLE');
    const del = await adminDeregister(b, ids[1]!);
    assert.equal(del.status, 503, del.body);
    assert.equal(del.json().error, 'MESH_ERR_REGISTRY_UNAVAILABLE');

    // More than two TTLs without Redis: the leases are held, not expired.
    await sleep(2 * ttl + 300);
    assert.ok(allSeen(), 'both gateways still hold both instances after 2 TTLs without Redis');
    const restartAt = Date.now();
    const downResults = results.filter((r) => r.at >= killedAt && r.at < restartAt);

    await redis.restart();
    const restartedAt = Date.now();
    // The registration clients notice the empty Redis on their next heartbeat and register again.
    await waitFor(
      async () => (await Promise.all(ids.map((id) => client.exists(keyOf(id))))).every((n) => n === 1),
      2 * (ttl / 3) + 1000,
      'both registration clients to re-register in the restarted (empty) Redis',
    );
    const refilledAt = Date.now();
    assert.ok(allSeen(), 'both gateways see both instances after the restart');
    // And keep them past a full TTL: fresh registrations and heartbeats are reaching them again.
    await sleep(ttl + 300);
    assert.ok(allSeen(), 'both gateways still see both instances one TTL after the refill');
    for (const gw of [a, b]) {
      for (const id of ids) {
        const inst = gw.gateway.registry.getInstance('api', id)!;
        assert.ok(Date.now() - inst.lastHeartbeat! < ttl, `${id} on ${gw.url} has a live lease`);
      }
    }
    await stopLoad();

    const failed = results.filter((r) => r.status !== 200);
    assert.deepEqual(failed.slice(0, 5), [], `${failed.length} of ${results.length} requests failed`);
    assert.ok(downResults.length > 20, `requests were served while Redis was down (${downResults.length})`);
    const downNames = new Set(downResults.map((r) => r.name));
    assert.deepEqual([...downNames].sort(), ['one', 'two'], 'both instances served during the outage');
    const afterRestart = results.filter((r) => r.at >= refilledAt);
    assert.ok(afterRestart.length > 20, `traffic flowed after the restart (${afterRestart.length})`);
    assert.ok(restartedAt >= restartAt);

    // Admin writes work again once Redis is back.
    const again = await adminRegister(a, { url: spare.url, ttl: '10s' });
    assert.equal(again.status, 201, again.body);
    await waitFor(() => has(b, `127.0.0.1:${spare.port}`), 1000, 'B to learn the post-restart registration');
  });

  test('a gateway started while Redis is down boots, serves its static instances, and catches up once Redis starts', async (t) => {
    const redis = await startRedis(t);
    await redis.kill();
    const staticUp = await startUpstream(t, echo('static'));
    const first = await startUpstream(t, echo('first'));
    const second = await startUpstream(t, echo('second'));

    const a = await fleetGateway(t, redis.url, { staticUrl: staticUp.url });
    const res = await send(`${a.url}/web/x`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().name, 'static');
    const write = await adminRegister(a, { url: first.url, ttl: '10s' });
    assert.equal(write.status, 503, write.body);
    assert.equal(write.json().error, 'MESH_ERR_REGISTRY_UNAVAILABLE');

    await redis.restart();
    const client = redisClient(t, redis.url);
    await externalRegister(client, 'first', first.url, 10_000);
    // ioredis retries with capped backoff (at most 2 s between attempts).
    await waitFor(() => has(a, 'first'), 4000, 'the gateway to catch up with Redis once it is up');
    await waitFor(async () => (await adminRegister(a, { url: first.url, id: 'first', ttl: '10s' })).status === 201, 2000, 'admin writes to work again');

    // Live updates, not only the catch-up read: a change published now arrives within 1 s.
    const b = await fleetGateway(t, redis.url);
    const created = await adminRegister(b, { url: second.url, ttl: '10s' });
    assert.equal(created.status, 201, created.body);
    const id = created.json().id as string;
    await waitFor(() => has(a, id), 1000, 'the late-connected gateway to receive a registration over pub/sub');
    const removed = await adminDeregister(b, 'first');
    assert.equal(removed.status, 204, removed.body);
    await waitFor(() => !has(a, 'first'), 1000, 'the late-connected gateway to receive a deregistration over pub/sub');
    const routed = await send(`${a.url}/api/y`);
    assert.equal(routed.status, 200, routed.body);
    assert.equal(routed.json().name, 'second');
  });
});

describe('redis discovery: no leaks', () => {
  test('close() hangs up every Redis connection of the gateways and the registration client', async (t) => {
    const redis = await startRedis(t);
    const client = redisClient(t, redis.url);
    const upstream = await startUpstream(t);
    await client.ping();
    const baseline = await connectionCount(client);

    const a = await fleetGateway(t, redis.url);
    const b = await fleetGateway(t, redis.url);
    const reg = await registerInstance({ registry: redis.url, service: 'api', url: upstream.url, ttl: '5s' });
    t.after(() => reg.close());
    await waitFor(() => has(a, reg.id) && has(b, reg.id), 1000, 'both gateways to see the registration');
    // Two connections per gateway (commands + subscriber), one for the registration client.
    assert.equal(await connectionCount(client), baseline + 5);

    await Promise.all([a.gateway.close(), b.gateway.close(), reg.close()]);
    await waitFor(async () => (await connectionCount(client)) === baseline, 2000, 'the Redis connection count to return to the baseline');
  });

  test('a process that closes its gateway and registration exits on its own (no timer or socket keeps it alive)', async (t) => {
    const redis = await startRedis(t);
    const upstream = await startUpstream(t);
    const lib = new URL('../../lib/index.ts', import.meta.url).href;
    // Runs in its own process: if anything is left referenced, it never exits and the test fails.
    const script = `
      const { createGateway, registerInstance } = await import(${JSON.stringify(lib)});
      const gateway = createGateway({
        logLevel: 'silent',
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0, token: 't' },
        discovery: { redis: { url: ${JSON.stringify(redis.url)}, resyncInterval: '200ms' } },
        services: { api: {} },
        routes: [{ prefix: '/api', service: 'api' }],
      });
      await gateway.listen();
      const reg = await registerInstance({ registry: ${JSON.stringify(redis.url)}, service: 'api', url: ${JSON.stringify(upstream.url)}, ttl: '300ms' });
      const start = Date.now();
      while (!gateway.registry.getInstance('api', reg.id)) {
        if (Date.now() - start > 5000) throw new Error('the gateway never saw the registration');
        await new Promise((r) => setTimeout(r, 20));
      }
      // Let heartbeats, resyncs and lease sweeps run a few rounds first.
      await new Promise((r) => setTimeout(r, 700));
      await reg.close();
      await gateway.close();
      process.stdout.write('closed\\n');
    `;
    const run = await spawnScript(t, script);
    await waitFor(() => run.stdout().includes('closed') || run.child.exitCode !== null, 15_000, 'the child to close its gateway');
    assert.match(run.stdout(), /closed/, run.stderr());
    await waitFor(() => run.child.exitCode !== null, 3000, 'the child process to exit by itself after close()');
    assert.equal(run.child.exitCode, 0, run.stderr());
  });
});

describe('redis discovery: a registration answered 503 did not happen', () => {
  test('Redis paused: the registration times out with 503, and when Redis runs again it does not take effect', { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t);
    const fleet = await fleetGateway(t, redis.url);
    const reader = redisClient(t, redis.url);
    redis.pause();
    const res = await adminRegister(fleet, { url: 'http://127.0.0.1:9', id: 'ghost' });
    assert.equal(res.status, 503);
    assert.equal(res.json().error, 'MESH_ERR_REGISTRY_UNAVAILABLE');
    redis.resume();
    // Redis runs the registration it was sent, then the take-back sent behind it.
    await sleep(1500);
    assert.equal(await reader.exists('meshgate:svc:{api}:inst:ghost'), 0, 'the registration is in Redis');
    assert.equal(has(fleet, 'ghost'), false, 'the gateway routes to an instance it said was not registered');
    // A registration after that works as usual.
    assert.equal((await adminRegister(fleet, { url: 'http://127.0.0.1:9', id: 'real', ttl: '5s' })).status, 201);
    await waitFor(() => has(fleet, 'real'), 5000, 'the new registration');
  });
});
