import assert from 'node:assert/strict';
import { test } from 'node:test';
import { send, startCluster, startUpstream, waitFor } from './helpers.js';

const TOKEN = 'cluster-token';

/** Reads one sample's value from Prometheus text, or 0 when the series is absent. */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

test('workers: 2 shares the listener; metrics on the primary add up across workers; registrations reach every worker; SIGTERM drains and exits 0', { timeout: 60_000 }, async (t) => {
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const { port, admin, run } = await startCluster(t, [`services: { api: { instances: [ { url: "${a.url}" } ] } }`, 'routes: [ { prefix: /api, service: api } ]'], TOKEN);

  const N = 60;
  const results = await Promise.all(Array.from({ length: N }, () => send(`http://127.0.0.1:${port}/api/x`)));
  assert.ok(results.every((r) => r.status === 200));
  assert.equal(a.seen.length, N);

  const metrics = await send(`${admin}/metrics`);
  assert.equal(metrics.status, 200);
  // Each worker counts only what it served; the primary's /metrics is their sum.
  assert.equal(sample(metrics.body, 'meshgate_requests_total{route="/api",service="api",method="GET",code="200"}'), N);
  assert.equal(sample(metrics.body, 'meshgate_instances{service="api"}'), 1, 'a gauge the same on every worker is not summed');

  // A registration on the primary reaches every worker: enough requests land on both workers
  // (the primary hands out connections round-robin) and all of them route to both instances.
  const registered = await send(`${admin}/services/api/instances`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ url: b.url }),
  });
  assert.equal(registered.status, 201);
  await waitFor(async () => sample((await send(`${admin}/metrics`)).body, 'meshgate_instances{service="api"}') === 2, 5000, 'workers to see the new instance');
  const before = b.seen.length;
  for (let i = 0; i < 40; i++) assert.equal((await send(`http://127.0.0.1:${port}/api/y`)).status, 200);
  assert.ok(b.seen.length - before >= 10, `the new instance got ${b.seen.length - before} of 40`);

  run.child.kill('SIGTERM');
  const { code } = await run.exited;
  assert.equal(code, 0, run.stderr());
});

test('workers: 2 keeps the rate limit the user wrote: the buckets are the primary\'s, shared by every worker', { timeout: 60_000 }, async (t) => {
  const upstream = await startUpstream(t);
  const { port, run } = await startCluster(t, [
    `services: { api: { instances: [ { url: "${upstream.url}" } ] } }`,
    // A slow refill (one token every 100 s), so the count below is exact even on a loaded machine.
    'routes: [ { prefix: /api, service: api, rateLimit: { rps: 0.01, burst: 4 } } ]',
  ]);
  // New connections each: the primary hands them to the workers in turn. One at a time: a burst of
  // twelve connections keeps the primary busy handing them out, and a draw it answers after 50 ms
  // is decided by the worker's local bucket (by design), which would make the count inexact.
  const results: Awaited<ReturnType<typeof send>>[] = [];
  for (let i = 0; i < 12; i++) results.push(await send(`http://127.0.0.1:${port}/api/x`, { headers: { connection: 'close' } }));
  const admitted = results.filter((r) => r.status === 200).length;
  assert.equal(admitted, 4, `admitted ${admitted} of 12 (per-worker buckets would admit up to 8)`);
  assert.ok(results.filter((r) => r.status === 429).every((r) => r.headers['retry-after'] !== undefined));
  assert.equal(upstream.seen.length, 4);
  run.child.kill('SIGTERM');
  assert.equal((await run.exited).code, 0, run.stderr());
});

test('workers: 2 reloads as one: SIGHUP on the primary, then PUT /config, reach every worker', { timeout: 60_000 }, async (t) => {
  const a = await startUpstream(t);
  const config = (routes: string): string[] => [`services: { api: { instances: [ { url: "${a.url}" } ] } }`, `routes: ${routes}`];
  const { port, admin, run, write } = await startCluster(t, config('[ { prefix: /one, service: api } ]'), TOKEN);
  // New connections each: the primary hands them to the workers in turn, so both answer.
  const statuses = async (path: string): Promise<Set<number>> => new Set((await Promise.all(Array.from({ length: 20 }, () => send(`http://127.0.0.1:${port}${path}`)))).map((r) => r.status));

  await write(config('[ { prefix: /two, service: api } ]'));
  run.child.kill('SIGHUP');
  await waitFor(async () => [...(await statuses('/two/x'))].join() === '200', 10_000, 'every worker to route /two');
  assert.deepEqual(await statuses('/one/x'), new Set([404]));

  const put = await send(`${admin}/config`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ logLevel: 'warn', services: { api: { instances: [{ url: a.url }] } }, routes: [{ prefix: '/three', service: 'api' }] }),
  });
  assert.equal(put.status, 200, put.body);
  await waitFor(async () => [...(await statuses('/three/x'))].join() === '200', 10_000, 'every worker to route /three');
  assert.deepEqual(await statuses('/two/x'), new Set([404]));
  run.child.kill('SIGTERM');
  assert.equal((await run.exited).code, 0, run.stderr());
});
