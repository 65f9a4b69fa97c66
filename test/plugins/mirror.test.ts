import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { echo, send, sendPath, startGateway, startUpstream, unusedPort, waitFor } from '../helpers.js';

const sha = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

test('the mirror sees the same method, path and body, with the shadow host and header; the primary answers as before', async (t) => {
  const primary = await startUpstream(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(JSON.stringify({ name: 'primary', sha: sha(Buffer.concat(chunks)) })));
  });
  const copies: { method: string; url: string; host: string; shadow: string | undefined; sha: string }[] = [];
  const shadow = await startUpstream(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      copies.push({ method: req.method!, url: req.url!, host: req.headers.host!, shadow: req.headers['x-meshgate-shadow'] as string | undefined, sha: sha(Buffer.concat(chunks)) });
      res.writeHead(500).end('the shadow is broken, and nobody must notice');
    });
  });
  const { url, adminUrl } = await startGateway(t, {
    admin: { port: 0 },
    metrics: true,
    services: { api: { instances: [{ url: primary.url }] }, shadow: { instances: [{ url: shadow.url }] } },
    routes: [{ name: 'orders', prefix: '/orders', service: 'api', mirror: { service: 'shadow', maxBodySize: '64kb' } }],
  });
  const body = randomBytes(40_000);
  const res = await sendPath(url, '/orders/7?x=1', { method: 'POST', body, headers: { host: 'shop.example.com:8080', 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 200);
  assert.equal(res.json().sha, sha(body));
  const get = await sendPath(url, '/orders/8');
  assert.equal(get.status, 200, 'the shadow answers 500; the client never sees it');
  await waitFor(() => copies.length === 2, 2000, 'two copies');
  const post = copies.find((c) => c.method === 'POST')!;
  assert.deepEqual(post, { method: 'POST', url: '/orders/7?x=1', host: 'shop.example.com-shadow:8080', shadow: '1', sha: sha(body) });
  assert.equal(copies.find((c) => c.method === 'GET')!.url, '/orders/8');

  // Too large a body is not copied, and that is counted.
  assert.equal((await sendPath(url, '/orders/big', { method: 'POST', body: randomBytes(100_000) })).status, 200);
  await waitFor(async () => /meshgate_mirror_requests_total\{route="orders",service="shadow",outcome="dropped_body"\} 1/.test((await send(`${adminUrl}/metrics`)).body), 2000, 'dropped_body counted');
  assert.equal(copies.length, 2);
  assert.match((await send(`${adminUrl}/metrics`)).body, /meshgate_mirror_requests_total\{route="orders",service="shadow",outcome="answered"\} 2/);
});

test('a mirror that hangs or is down changes neither the status nor the latency of the primary, and the in-flight cap holds', async (t) => {
  const primary = await startUpstream(t, echo('primary'));
  let held = 0;
  const hanging = await startUpstream(t, (req) => {
    held++;
    req.resume();
  });
  const { url, adminUrl } = await startGateway(t, {
    admin: { port: 0 },
    metrics: true,
    services: {
      api: { instances: [{ url: primary.url }] },
      hangs: { instances: [{ url: hanging.url }], timeout: '30s' },
      down: { instances: [{ url: `http://127.0.0.1:${await unusedPort()}` }] },
    },
    routes: [
      { prefix: '/plain', service: 'api' },
      { prefix: '/hangs', service: 'api', mirror: { service: 'hangs', maxInflight: 4 } },
      { prefix: '/down', service: 'api', mirror: { service: 'down' } },
    ],
  });
  const timed = async (path: string): Promise<number> => {
    const started = performance.now();
    const res = await sendPath(url, path);
    assert.equal(res.status, 200, `${path}: ${res.body}`);
    return performance.now() - started;
  };
  const runs: Record<string, number[]> = { plain: [], hangs: [], down: [] };
  // Interleaved, so the machine's noise falls on all three alike.
  for (let i = 0; i < 150; i++) for (const name of Object.keys(runs)) runs[name]!.push(await timed(`/${name}/${i}`));
  const p50 = (list: number[]): number => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)]!;
  const [plain, hangs, down] = [p50(runs.plain!), p50(runs.hangs!), p50(runs.down!)];
  t.diagnostic(`p50 ms: no mirror ${plain.toFixed(2)}, hanging mirror ${hangs.toFixed(2)}, mirror down ${down.toFixed(2)}`);
  // Not a speed limit: the same requests with and without a mirror, compared; a primary that
  // waited for its copy would take at least the copy's time (forever here).
  assert.ok(hangs < plain * 2 + 1 && down < plain * 2 + 1, `p50 ms: no mirror ${plain}, hanging ${hangs}, down ${down}`);
  assert.equal(held, 4, 'no more copies in flight than maxInflight');
  await waitFor(async () => /meshgate_mirror_requests_total\{route="\/down",service="down",outcome="failed"\} 150/.test((await send(`${adminUrl}/metrics`)).body), 2000, 'every copy to the mirror that is down counted as failed');
  assert.match((await send(`${adminUrl}/metrics`)).body, /meshgate_mirror_requests_total\{route="\/hangs",service="hangs",outcome="dropped_inflight"\} 146/);
});
