/**
 * The dashboard's data without a browser: the ring buffer and its quantiles, the admin routes
 * (what needs the token and what does not, bad input, exact counts), the stream, and when the
 * plugin is on.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { createGateway, validateConfig } from '../../lib/index.js';
import { LATENCY_BINS, RingSeries, binUpperBound, latencyBin, quantile, STRIDE } from '../../plugins/dashboard/series.js';
import { echo, send, startGateway, startUpstream, waitFor } from '../helpers.js';

const TOKEN = 'dashboard-api-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };

describe('the ring buffer', () => {
  test('latency bins: two per doubling, every value in the bin whose bounds hold it', () => {
    let previous = 0;
    for (let ms = 0.01; ms < 100_000; ms *= 1.07) {
      const bin = latencyBin(ms);
      assert.ok(bin >= previous, `bins grow with latency (${ms} ms)`);
      previous = bin;
      if (bin > 0) assert.ok(ms > binUpperBound(bin - 1) * (1 - 1e-9), `${ms} ms above bin ${bin}'s lower bound`);
      if (bin < LATENCY_BINS - 1) assert.ok(ms <= binUpperBound(bin) * (1 + 1e-9), `${ms} ms within bin ${bin}'s upper bound`);
    }
    assert.equal(latencyBin(0), 0);
    assert.equal(latencyBin(Number.NaN), 0);
    assert.equal(latencyBin(1e9), LATENCY_BINS - 1);
  });

  test('p50 and p99 read from the bins are in the exact value\'s bin: within a factor of √2', () => {
    const series = new RingSeries(4);
    const values: number[] = [];
    // A skewed distribution: most requests fast, a tail of slow ones.
    for (let i = 0; i < 10_000; i++) {
      const ms = i % 100 === 0 ? 200 + (i % 700) : 2 + ((i * 7919) % 1000) / 100;
      values.push(ms);
      series.record(7, latencyBin(ms), i % 10 === 0);
    }
    values.sort((a, b) => a - b);
    const point = series.sum(7, 7);
    assert.equal(point.count, 10_000);
    assert.equal(point.errors, 1000);
    for (const [q, got] of [[0.5, point.p50], [0.99, point.p99]] as const) {
      const exact = values[Math.ceil(q * values.length) - 1]!;
      assert.ok(got! >= exact / Math.SQRT2 && got! <= exact * Math.SQRT2, `q${q}: ${got} vs ${exact}`);
    }
    assert.equal(quantile(new Uint32Array(STRIDE), 2, 0, 0.5), null, 'no requests, no latency');
  });

  test('a slot is cleared when a new bucket reuses it; sums and points see only the window', () => {
    const series = new RingSeries(3);
    series.record(10, 2, false);
    series.record(11, 2, true);
    series.record(11, 2, false);
    assert.deepEqual([series.sum(10, 11).count, series.sum(10, 11).errors], [3, 1]);
    series.record(13, 2, false); // slot of bucket 10
    assert.equal(series.sum(10, 13).count, 3, 'bucket 10 is gone, 11 and 13 stay');
    assert.deepEqual(series.points(11, 13).map((p) => p.count), [2, 0, 1]);
    assert.equal(series.active(12, 12), false);
    assert.equal(series.active(11, 13), true);
  });

  test('take() hands over what a bucket counted since the last take, and add() merges it elsewhere', () => {
    const worker = new RingSeries(2);
    const primary = new RingSeries(10);
    worker.record(5, latencyBin(3), false);
    worker.record(5, latencyBin(300), true);
    primary.add(5, worker.take(5)!);
    assert.equal(worker.take(5), null, 'nothing new');
    worker.record(5, latencyBin(3), false);
    primary.add(5, worker.take(5)!);
    const point = primary.sum(5, 5);
    assert.deepEqual([point.count, point.errors], [3, 1]);
  });
});

describe('the dashboard routes', () => {
  test('the page and its assets need no token and carry no data; every data route needs it; bad input is a JSON 4xx', { timeout: 30_000 }, async (t) => {
    const up = await startUpstream(t, echo('a'));
    const { adminUrl, url } = await startGateway(t, {
      admin: { port: 0, token: TOKEN },
      services: { api: { instances: [{ url: up.url, id: 'api-1' }] } },
      routes: [{ name: 'api', prefix: '/api', service: 'api' }],
    });
    for (const path of ['/', '/dashboard']) {
      const page = await send(`${adminUrl}${path}`);
      assert.equal(page.status, 200, path);
      assert.match(String(page.headers['content-type']), /^text\/html/);
      assert.doesNotMatch(page.body, /api-1|127\.0\.0\.1/, 'no registry data in the page');
      // The one inline script, the import map, is allowed by its hash and nothing else inline is.
      const map = /<script type="importmap">([\s\S]*?)<\/script>/.exec(page.body)![1]!;
      const csp = String(page.headers['content-security-policy']);
      assert.ok(csp.includes(`'sha256-${createHash('sha256').update(map).digest('base64')}'`), csp);
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /frame-ancestors 'none'/);
      for (const asset of Object.values(JSON.parse(map).imports as Record<string, string>)) {
        const res = await send(`${adminUrl}${asset}`);
        assert.equal(res.status, 200, asset);
        assert.match(String(res.headers['content-type']), /^text\/javascript/, asset);
        assert.match(res.body, /export\s*\{|export default/, `${asset} is an ES module`);
      }
    }
    for (const asset of ['app.js', 'app.css', 'uplot.css']) assert.equal((await send(`${adminUrl}/dashboard/assets/${asset}`)).status, 200, asset);
    const etag = (await send(`${adminUrl}/dashboard/assets/app.js`)).headers.etag as string;
    assert.equal((await send(`${adminUrl}/dashboard/assets/app.js`, { headers: { 'if-none-match': etag } })).status, 304);
    assert.equal((await send(`${adminUrl}/dashboard/assets/nope.js`)).status, 401, 'only the known assets are public');

    for (const path of ['/dashboard/api/state', '/dashboard/api/series', '/dashboard/api/stream']) {
      const res = await send(`${adminUrl}${path}`);
      assert.equal(res.status, 401, path);
      assert.equal(JSON.parse(res.body).error, 'MESH_ERR_UNAUTHORIZED');
    }
    const bad = async (query: string, status: number, code: string): Promise<void> => {
      const res = await send(`${adminUrl}/dashboard/api/series?${query}`, { headers: AUTH });
      assert.equal(res.status, status, query);
      assert.equal(JSON.parse(res.body).error, code, query);
    };
    await bad('kind=everything', 400, 'MESH_ERR_VALIDATION');
    await bad('kind=service', 400, 'MESH_ERR_VALIDATION');
    await bad('kind=service&name=nope', 404, 'MESH_ERR_UNKNOWN_SERVICE');
    await bad('kind=route&name=nope', 404, 'MESH_ERR_UNKNOWN_ROUTE');

    // Exact counts: what the series say is what was sent, errors apart.
    for (let i = 0; i < 12; i++) assert.equal((await send(`${url}/api/x`)).status, 200);
    assert.equal((await send(`${url}/nowhere`)).status, 404);
    const sum = async (query: string): Promise<number> => {
      const body = JSON.parse((await send(`${adminUrl}/dashboard/api/series?${query}`, { headers: AUTH })).body) as { requests: number[]; t: number[]; rps: number[]; p99: (number | null)[] };
      assert.equal(body.t.length, 180, '15 minutes of 5 s points');
      assert.equal(body.rps.length, 180);
      return body.requests.reduce((a, b) => a + b, 0);
    };
    assert.equal(await sum('kind=route&name=api'), 12);
    assert.equal(await sum('kind=service&name=api'), 12);
    assert.equal(await sum('kind=gateway'), 13, 'the gateway counts the unmatched request too');
    const state = JSON.parse((await send(`${adminUrl}/dashboard/api/state`, { headers: AUTH })).body) as { services: { name: string; instances: { id: string; health: string }[] }[]; series: unknown[][] };
    assert.deepEqual(state.services.map((s) => [s.name, s.instances.map((i) => [i.id, i.health])]), [['api', [['api-1', 'healthy']]]]);
    const route = state.series.find((s) => s[0] === 'route' && s[1] === 'api')!;
    assert.ok((route[2] as number) > 0, 'a rate for the last minute');
    assert.equal(route[3], 0, 'no errors');
  });

  test('the stream sends hello, each registry event as it happens, and ticks with the series and the instances that moved', { timeout: 30_000 }, async (t) => {
    const up = await startUpstream(t, echo('a'));
    const extra = await startUpstream(t, echo('b'));
    const { adminUrl, url } = await startGateway(t, {
      admin: { port: 0, token: TOKEN },
      services: { api: { instances: [{ url: up.url, id: 'api-1' }] } },
      routes: [{ name: 'api', prefix: '/api', service: 'api' }],
    });
    const abort = new AbortController();
    t.after(() => abort.abort());
    const res = await fetch(`${adminUrl}/dashboard/api/stream`, { headers: AUTH, signal: abort.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type')!, /^text\/event-stream/);
    const messages: { event: string; data: Record<string, unknown> }[] = [];
    void (async () => {
      let buffer = '';
      for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) messages.push({ event, data: JSON.parse(data) });
        }
      }
    })().catch(() => {});
    await waitFor(() => messages.some((m) => m.event === 'hello'), 5000, 'hello');
    const registered = await send(`${adminUrl}/services/api/instances`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ url: extra.url, id: 'api-2' }) });
    assert.equal(registered.status, 201);
    await waitFor(() => messages.some((m) => m.event === 'event' && m.data.event === 'instance:added'), 2000, 'the registration on the stream');
    const added = messages.find((m) => m.data.event === 'instance:added')!.data;
    assert.equal((added.instance as { id: string }).id, 'api-2');
    assert.equal(added.reason, 'registered by admin');
    assert.ok(typeof added.id === 'number' && typeof added.at === 'string');
    for (let i = 0; i < 5; i++) await send(`${url}/api/x`);
    await waitFor(() => messages.some((m) => m.event === 'tick' && (m.data.series as unknown[][]).some((s) => s[0] === 'route' && s[1] === 'api')), 5000, 'a tick with the route');
    const tick = messages.findLast((m) => m.event === 'tick' && (m.data.series as unknown[][]).some((s) => s[0] === 'route'))!;
    const route = (tick.data.series as unknown[][]).find((s) => s[0] === 'route')!;
    const points = route[6] as number[][];
    assert.equal(points.reduce((n, p) => n + p[1]!, 0), 5, 'the current and previous buckets hold the five requests');
    // The state agrees, and carries the event for a page that opens now.
    const state = JSON.parse((await send(`${adminUrl}/dashboard/api/state`, { headers: AUTH })).body) as { events: { event: string }[] };
    assert.ok(state.events.some((e) => e.event === 'instance:added'));
  });
});

describe('when the dashboard is on', () => {
  test('with admin, unless dashboard: false; never without admin', async () => {
    const on = createGateway({ admin: { port: 0 } });
    const off = createGateway({ admin: { port: 0 }, dashboard: false });
    const none = createGateway({});
    const tuned = createGateway({ admin: { port: 0 }, dashboard: { window: '30m', resolution: '10s' } });
    for (const gw of [on, off, none, tuned]) await gw.ready();
    assert.deepEqual([on, off, none, tuned].map((gw) => gw.hasPlugin('dashboard')), [true, false, false, true]);
    for (const gw of [on, off, none, tuned]) await gw.close();
  });

  test('dashboard: false leaves / to the admin API\'s 404', { timeout: 10_000 }, async (t) => {
    const { adminUrl } = await startGateway(t, { admin: { port: 0 }, dashboard: false });
    const res = await send(`${adminUrl}/`);
    assert.equal(res.status, 404);
    assert.equal(JSON.parse(res.body).error, 'MESH_ERR_NOT_FOUND');
  });

  test('its section is checked: a window under a minute, or more than 2,000 points, is refused with its path', () => {
    assert.throws(() => validateConfig({ dashboard: { window: '10s' } }), /dashboard\.window/);
    assert.throws(() => validateConfig({ dashboard: { window: '24h', resolution: '1s' } }), /at most 2000 points/);
    assert.throws(() => validateConfig({ dashboard: { colour: 'blue' } }), /dashboard/);
  });

  test('a reload cannot change it (the series are sized when the gateway starts)', async (t) => {
    const gw = createGateway({ logLevel: 'silent', admin: { port: 0 } });
    t.after(() => gw.close());
    await gw.ready();
    await assert.rejects(gw.reload({ admin: { port: 0 }, dashboard: false }), /dashboard: cannot change in a reload \(needs a restart\)/);
  });
});
