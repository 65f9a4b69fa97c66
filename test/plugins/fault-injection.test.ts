import assert from 'node:assert/strict';
import { test } from 'node:test';
import { accessLog } from '../../plugins/access-log/index.js';
import { echo, send, sendPath, seededRandom, startGateway, startUpstream, waitFor } from '../helpers.js';

test('a 30% abort over 1,000 requests lands within bounds, flagged FI and counted; aborted requests never reach an instance', async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const lines: string[] = [];
  const { url, adminUrl } = await startGateway(
    t,
    {
      admin: { port: 0 },
      metrics: true,
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ name: 'orders', prefix: '/orders', service: 'api', fault: { abort: { percent: 30, status: 500 } } }],
    },
    { random: seededRandom(3), setup: (gw) => gw.use(accessLog({ destination: { write: (line: string) => void lines.push(line) } })) },
  );
  const statuses = new Map<number, number>();
  for (let i = 0; i < 1000; i++) {
    const res = await sendPath(url, `/orders/${i}`);
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    if (res.status === 500) assert.equal(res.json().error, 'MESH_ERR_FAULT_INJECTED');
  }
  const aborted = statuses.get(500) ?? 0;
  // Binomial(1000, 0.3): mean 300, sd 14.5; four and a half sd either side.
  assert.ok(aborted >= 235 && aborted <= 365, `${aborted} of 1000 aborted (expected about 300)`);
  assert.equal(statuses.get(200), 1000 - aborted);
  assert.equal(upstream.seen.length, 1000 - aborted);
  assert.match((await send(`${adminUrl}/metrics`)).body, new RegExp(`meshgate_faults_injected_total\\{route="orders",kind="abort"\\} ${aborted}`));
  await waitFor(() => lines.join('').split('\n').filter((l) => l.includes('"flags":"FI"')).length === aborted, 2000, 'an FI line per abort');
});

test('a delay holds the request, does not eat the route timeout, and is flagged DI; header-gated faults hit only requests with the header', async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const lines: string[] = [];
  const { url } = await startGateway(
    t,
    {
      services: { api: { instances: [{ url: upstream.url }], timeout: 200 } },
      routes: [
        { prefix: '/slow', service: 'api', fault: { delay: { percent: 100, duration: 300 } } },
        { prefix: '/tester', service: 'api', fault: { abort: { percent: 100, status: 503 }, header: { name: 'x-fault', value: 'on' } } },
      ],
    },
    { setup: (gw) => gw.use(accessLog({ destination: { write: (line: string) => void lines.push(line) } })) },
  );
  const started = performance.now();
  const slow = await sendPath(url, '/slow/x');
  const took = performance.now() - started;
  assert.equal(slow.status, 200, 'a 300 ms delay with a 200 ms timeout: the timeout starts after the delay');
  assert.ok(took >= 290, `the answer came after the delay (${took.toFixed(0)} ms)`);
  await waitFor(() => lines.join('').includes('"flags":"DI"'), 2000, 'a DI line');

  for (let i = 0; i < 20; i++) assert.equal((await sendPath(url, `/tester/${i}`)).status, 200, 'no header, no fault');
  assert.equal((await sendPath(url, '/tester/x', { headers: { 'x-fault': 'off' } })).status, 200, 'another value, no fault');
  for (let i = 0; i < 20; i++) assert.equal((await sendPath(url, `/tester/${i}`, { headers: { 'x-fault': 'on' } })).status, 503);
});
