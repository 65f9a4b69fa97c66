/**
 * The dashboard in cluster mode: the workers proxy and count, the primary serves the page and adds
 * the workers' counts up; a circuit that opens in a worker shows on the primary, as an event too.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { send, startCluster, startUpstream, waitFor } from '../helpers.js';

const TOKEN = 'dashboard-cluster-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };

test('workers: 2: the primary\'s dashboard adds up the workers\' requests and shows a circuit a worker opened', { timeout: 60_000 }, async (t) => {
  const good = await startUpstream(t);
  const bad = await startUpstream(t, (_req, res) => void res.writeHead(500).end('down'));
  const { port, admin } = await startCluster(
    t,
    [
      'services:',
      `  api: { instances: [ { url: "${good.url}", id: good-1 } ] }`,
      `  flaky: { instances: [ { url: "${bad.url}", id: bad-1 } ], circuitBreaker: { volumeThreshold: 3, resetTimeout: 10m } }`,
      'routes: [ { name: api, prefix: /api, service: api }, { name: flaky, prefix: /flaky, service: flaky } ]',
    ],
    TOKEN,
  );

  const N = 40;
  const results = await Promise.all(Array.from({ length: N }, () => send(`http://127.0.0.1:${port}/api/x`)));
  assert.ok(results.every((r) => r.status === 200));
  assert.equal(good.seen.length, N);
  const requests = async (query: string): Promise<number> => {
    const body = JSON.parse((await send(`${admin}/dashboard/api/series?${query}`, { headers: AUTH })).body) as { requests: number[] };
    return body.requests.reduce((a, b) => a + b, 0);
  };
  // Workers report every second; the sum is exact once both have.
  await waitFor(async () => (await requests('kind=route&name=api')) === N, 10_000, 'the workers\' counts to add up on the primary');
  assert.equal(await requests('kind=service&name=api'), N);

  for (let i = 0; i < 20; i++) await send(`http://127.0.0.1:${port}/flaky/x`);
  const state = async (): Promise<{ role: string; workers: number; services: { name: string; instances: { id: string; circuit: string }[] }[]; events: { event: string; reason?: string }[] }> =>
    JSON.parse((await send(`${admin}/dashboard/api/state`, { headers: AUTH })).body);
  await waitFor(async () => (await state()).services.find((s) => s.name === 'flaky')!.instances[0]!.circuit === 'open', 10_000, 'the circuit a worker opened to show on the primary');
  const last = await state();
  assert.equal(last.role, 'primary');
  assert.equal(last.workers, 2);
  assert.ok(last.events.some((e) => e.event === 'circuit:state' && /^circuit open \(worker \d+\)$/.test(e.reason ?? '')), JSON.stringify(last.events));
  assert.ok((await requests('kind=route&name=flaky')) > 0);
});
