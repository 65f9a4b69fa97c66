/**
 * The registration client with a `redis://` registry, against a real redis-server: the key it
 * writes, the lease its heartbeats keep, re-registration when the key vanishes, and close().
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Redis } from 'ioredis';
import { registerInstance } from '../lib/index.js';
import { fileURLToPath } from 'node:url';
import { sleep, spawnNode, startGateway, startUpstream, waitFor } from './helpers.js';
import { startRedis } from './redis-server.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const keyOf = (id: string, service = 'api', prefix = 'meshgate:'): string => `${prefix}svc:{${service}}:inst:${id}`;

function redisClient(t: TestContext, url: string): Redis {
  const client = new Redis(url);
  client.on('error', () => {});
  t.after(() => client.disconnect());
  return client;
}

/** Every message on the registry's events channel, parsed. */
async function recordEvents(t: TestContext, url: string, channel = 'meshgate:events'): Promise<{ op: string; service: string; id: string }[]> {
  const subscriber = redisClient(t, url);
  const messages: { op: string; service: string; id: string }[] = [];
  subscriber.on('message', (_channel: string, text: string) => messages.push(JSON.parse(text) as { op: string; service: string; id: string }));
  await subscriber.subscribe(channel);
  return messages;
}

test('registerInstance with a redis:// registry writes the documented key, with the lease as PX', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  const events = await recordEvents(t, redis.url);
  const reg = await registerInstance({ registry: redis.url, service: 'api', url: 'http://127.0.0.1:4000', ttl: '2s', weight: 3, zone: 'eu-1', metadata: { v: 1 } });
  t.after(() => reg.close());

  assert.equal(reg.id, '127.0.0.1:4000');
  const pttl = await client.pttl(keyOf(reg.id));
  assert.ok(pttl > 1500 && pttl <= 2000, `PTTL close to the 2000 ms ttl, got ${pttl}`);
  const stored = JSON.parse((await client.get(keyOf(reg.id)))!) as Record<string, unknown>;
  assert.equal(stored.id, reg.id);
  assert.equal(stored.service, 'api');
  assert.equal(stored.url, 'http://127.0.0.1:4000');
  assert.equal(stored.ttl, 2000);
  assert.equal(stored.weight, 3);
  assert.equal(stored.zone, 'eu-1');
  assert.deepEqual(stored.metadata, { v: 1 });
  await waitFor(() => events.some((m) => m.op === 'register' && m.id === reg.id), 1000, 'the register message');
  assert.equal(events.find((m) => m.op === 'register')!.service, 'api');
});

test('heartbeats keep the PTTL fresh past several TTLs; a deleted key is registered again; close() deletes the key', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  const events = await recordEvents(t, redis.url);
  // Long enough that a test process stalled by a loaded machine (two test files run at once on
  // two cores) still heartbeats in time: at 600 ms a full run once lost the key.
  const ttl = 1200;
  const reregistered: string[] = [];
  const errors: Error[] = [];
  const reg = await registerInstance({
    registry: redis.url,
    service: 'api',
    url: 'http://127.0.0.1:4001',
    ttl,
    onReregister: (id) => reregistered.push(id),
    onError: (err) => errors.push(err),
  });
  t.after(() => reg.close());
  const key = keyOf(reg.id);

  // Four TTLs: without heartbeats the key would be long gone.
  const until = Date.now() + 4 * ttl;
  let samples = 0;
  while (Date.now() < until) {
    const pttl = await client.pttl(key);
    assert.ok(pttl > 0, `the key must never expire while heartbeats run (PTTL ${pttl} after ${samples} samples)`);
    samples++;
    await sleep(25);
  }
  assert.ok(events.filter((m) => m.op === 'heartbeat' && m.id === reg.id).length >= 3, 'heartbeats were published');
  assert.deepEqual(reregistered, [], 'no re-registration while the key lives');

  // Deleted behind its back (Redis flushed, or an operator): the next heartbeat registers again.
  const deletedAt = Date.now();
  await client.del(key);
  await waitFor(async () => (await client.exists(key)) === 1, 2 * (ttl / 3) + 500, 'the client to register again within two heartbeats');
  assert.ok(Date.now() - deletedAt < 2 * (ttl / 3) + 500);
  assert.deepEqual(reregistered, [reg.id]);
  const pttl = await client.pttl(key);
  assert.ok(pttl > ttl / 2 && pttl <= ttl, `a fresh lease, PTTL ${pttl}`);
  assert.deepEqual(errors, []);

  await reg.close();
  assert.equal(await client.exists(key), 0, 'close() deletes the key');
  await waitFor(() => events.some((m) => m.op === 'deregister' && m.id === reg.id), 1000, 'the deregister message');
  // And it stays deleted: no heartbeat after close() brings it back.
  await sleep(ttl);
  assert.equal(await client.exists(key), 0, 'nothing re-registers after close()');
  await reg.close(); // idempotent
});

test('close() hangs up the client\'s Redis connection', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  await client.ping();
  const count = async (): Promise<number> => ((await client.call('CLIENT', 'LIST')) as string).split('\n').filter((l) => l.trim()).length;
  const baseline = await count();
  const reg = await registerInstance({ registry: redis.url, service: 'api', url: 'http://127.0.0.1:4002', ttl: '1s' });
  t.after(() => reg.close());
  assert.equal(await count(), baseline + 1);
  await reg.close();
  await waitFor(async () => (await count()) === baseline, 2000, 'the connection count to return to the baseline');
});

test('the prefix option: keys under another prefix, seen by a gateway configured with the same prefix', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  const upstream = await startUpstream(t);
  const { gateway } = await startGateway(t, {
    discovery: { redis: { url: redis.url, prefix: 'fleet2:' } },
    services: { api: {} },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  const reg = await registerInstance({ registry: redis.url, prefix: 'fleet2:', service: 'api', url: upstream.url, ttl: '5s' });
  t.after(() => reg.close());
  assert.equal(await client.exists(keyOf(reg.id, 'api', 'fleet2:')), 1);
  assert.equal(await client.exists(keyOf(reg.id)), 0, 'nothing under the default prefix');
  await waitFor(() => gateway.registry.getInstance('api', reg.id) !== undefined, 1000, 'the gateway on prefix fleet2: to see the instance');
});

test('the sidecar CLI: `register --registry redis://… --prefix` writes under the prefix and deletes the key on SIGTERM', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  const key = keyOf('127.0.0.1:4003', 'api', 'fleet3:');
  const run = await spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', redis.url, '--prefix', 'fleet3:', '--service', 'api', '--url', 'http://127.0.0.1:4003', '--ttl', '1s'], {
    cwd: ROOT,
    env: { MESHGATE_ADMIN_TOKEN: undefined },
  });
  await waitFor(async () => (await client.exists(key)) === 1, 15_000, `the sidecar to register (stderr: ${run.stderr()})`);
  assert.deepEqual(await client.keys('meshgate:*'), [], 'nothing under the default prefix');
  const stored = JSON.parse((await client.get(key))!) as Record<string, unknown>;
  assert.equal(stored.ttl, 1000);
  // Its heartbeats keep the 1 s lease past two TTLs.
  await sleep(2000);
  assert.ok((await client.pttl(key)) > 0, 'the lease is renewed by the sidecar');

  run.child.kill('SIGTERM');
  const exit = await run.exited;
  assert.equal(exit.code, 0, run.stderr());
  assert.equal(await client.exists(key), 0, 'SIGTERM deregisters');
});
