import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import { register } from 'prom-client';
import type { Gateway, GatewayConfigInput } from '../../lib/index.js';
import { echo, send, startGateway, startUpstream, unusedPort, waitFor, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 25_000 };
const TOKEN = 'metrics-test-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };
/** The plugin's documented default buckets, in seconds. */
const DEFAULT_BUCKETS = ['0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '2.5', '5', '10', '+Inf'];

// ---------------------------------------------------------------------------------------------
// The Prometheus text format (0.0.4), parsed here rather than with prom-client, so the test
// reads exactly what a scraper would.

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Scrape {
  text: string;
  samples: Sample[];
  /** `# TYPE` of every metric family. */
  types: Map<string, string>;
  /** Sample lines (not comments, not blank): the number of series exposed. */
  seriesLines: number;
}

function parseValue(raw: string): number {
  // Prometheus parses values with Go's ParseFloat, which takes these case-insensitively
  // (prom-client writes NaN as "Nan").
  if (/^\+?inf$/i.test(raw)) return Infinity;
  if (/^-inf$/i.test(raw)) return -Infinity;
  if (/^nan$/i.test(raw)) return Number.NaN;
  const value = Number(raw);
  assert.ok(raw !== '' && !Number.isNaN(value), `not a sample value: ${JSON.stringify(raw)}`);
  return value;
}

function parseLabels(line: string, start: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = start + 1;
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (line[i] === '}') return { labels, end: i + 1 };
    const name = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i))?.[0];
    assert.ok(name, `bad label name at ${i} in ${line}`);
    i += name.length;
    assert.equal(line.slice(i, i + 2), '="', `expected =" after label ${name} in ${line}`);
    i += 2;
    let value = '';
    while (line[i] !== '"') {
      assert.ok(i < line.length, `unterminated label value in ${line}`);
      if (line[i] === '\\') {
        const next = line[i + 1];
        value += next === 'n' ? '\n' : next;
        i += 2;
      } else {
        value += line[i];
        i++;
      }
    }
    i++;
    assert.ok(!(name in labels), `label ${name} twice in ${line}`);
    labels[name] = value;
  }
}

function parseExposition(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  let seriesLines = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const type = /^# TYPE (\S+) (\S+)$/.exec(line);
      if (type) types.set(type[1]!, type[2]!);
      continue;
    }
    seriesLines++;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    assert.ok(name, `bad sample line: ${line}`);
    let labels: Record<string, string> = {};
    let rest = line.slice(name.length);
    if (rest.startsWith('{')) {
      const parsed = parseLabels(line, name.length);
      labels = parsed.labels;
      rest = line.slice(parsed.end);
    }
    const [value] = rest.trim().split(/\s+/);
    samples.push({ name, labels, value: parseValue(value ?? '') });
  }
  return { text, samples, types, seriesLines };
}

/** GET /metrics on the admin server, checked and parsed. */
async function scrape(adminUrl: string, headers: Record<string, string> = {}): Promise<Scrape> {
  const res = await send(`${adminUrl}/metrics`, { headers });
  assert.equal(res.status, 200, `GET /metrics answered ${res.status}: ${res.body}`);
  assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  return parseExposition(res.body);
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

/** Samples of `name` whose labels include `labels`. */
function select(scrape: Scrape, name: string, labels: Record<string, string> = {}): Sample[] {
  return scrape.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one sample of `name` with exactly `labels`; undefined when there is none. */
function valueOf(scrape: Scrape, name: string, labels: Record<string, string>): number | undefined {
  const found = scrape.samples.filter((s) => s.name === name && sameLabels(s.labels, labels));
  assert.ok(found.length <= 1, `${name}${JSON.stringify(labels)} exposed ${found.length} times`);
  return found[0]?.value;
}

/** Like {@link valueOf}, but the sample must exist. */
function requireValue(scrape: Scrape, name: string, labels: Record<string, string>): number {
  const value = valueOf(scrape, name, labels);
  assert.notEqual(value, undefined, `no sample ${name}${JSON.stringify(labels)}; exposed:\n${select(scrape, name).map((s) => JSON.stringify(s)).join('\n')}`);
  return value!;
}

/** Polls /metrics until `check` holds. */
async function waitForMetric(adminUrl: string, check: (s: Scrape) => boolean, what: string, timeoutMs = 5000): Promise<Scrape> {
  let last: Scrape | undefined;
  await waitFor(
    async () => {
      last = await scrape(adminUrl);
      return check(last);
    },
    timeoutMs,
    what,
  );
  return last!;
}

/** The histogram series of `name`, grouped by their labels without `le`. */
function histograms(scrape: Scrape, name: string): { labels: Record<string, string>; buckets: [string, number][]; sum?: number; count?: number }[] {
  const groups = new Map<string, { labels: Record<string, string>; buckets: [string, number][]; sum?: number; count?: number }>();
  const groupOf = (labels: Record<string, string>) => {
    const { le: _le, ...rest } = labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { labels: rest, buckets: [] }));
    return group;
  };
  for (const s of scrape.samples) {
    if (s.name === `${name}_bucket`) groupOf(s.labels).buckets.push([s.labels.le!, s.value]);
    else if (s.name === `${name}_sum`) groupOf(s.labels).sum = s.value;
    else if (s.name === `${name}_count`) groupOf(s.labels).count = s.value;
  }
  return [...groups.values()];
}

/** Asserts what holds for every series of a histogram: default buckets, cumulative, +Inf == _count. */
function assertWellFormedHistogram(scrape: Scrape, name: string): void {
  assert.equal(scrape.types.get(name), 'histogram');
  const series = histograms(scrape, name);
  assert.ok(series.length > 0, `no ${name} series`);
  for (const h of series) {
    const where = `${name}${JSON.stringify(h.labels)}`;
    assert.deepEqual(
      h.buckets.map(([le]) => le),
      DEFAULT_BUCKETS,
      `${where}: buckets`,
    );
    for (let i = 1; i < h.buckets.length; i++) {
      assert.ok(h.buckets[i]![1] >= h.buckets[i - 1]![1], `${where}: bucket le=${h.buckets[i]![0]} (${h.buckets[i]![1]}) < le=${h.buckets[i - 1]![0]} (${h.buckets[i - 1]![1]}): not cumulative`);
    }
    assert.equal(h.buckets.at(-1)![1], h.count, `${where}: +Inf bucket != _count`);
    assert.ok(h.sum !== undefined && h.sum >= 0, `${where}: _sum missing`);
  }
}

function bucket(h: { buckets: [string, number][] }, le: string): number {
  const found = h.buckets.find(([b]) => b === le);
  assert.ok(found, `no bucket le=${le}`);
  return found[1];
}

// ---------------------------------------------------------------------------------------------

/** A gateway with the admin server (token set) and therefore metrics. */
function startMetricsGateway(t: TestContext, config: Omit<GatewayConfigInput, 'admin'> & { admin?: Record<string, unknown> }, setup?: (gw: Gateway) => void) {
  return startGateway(t, { ...config, admin: { token: TOKEN, ...config.admin } } as GatewayConfigInput, setup ? { setup } : {});
}

function instanceIdOf(upstream: Upstream): string {
  return `127.0.0.1:${upstream.port}`;
}

async function inBatches<T>(items: T[], size: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

describe('metrics: request counts', () => {
  test('meshgate_requests_total counts exactly what was sent, by configured route prefix, service, method and code', LIMIT, async (t) => {
    const api = await startUpstream(t, echo('api'));
    const deadPort = await unusedPort();
    const { url, adminUrl } = await startMetricsGateway(t, {
      services: { api: { instances: [{ url: api.url }] }, dead: { instances: [{ url: `http://127.0.0.1:${deadPort}` }] } },
      routes: [
        { prefix: '/api', service: 'api' },
        { prefix: '/dead', service: 'dead' },
      ],
    });

    const gets = Array.from({ length: 37 }, (_, i) => `/api/items/${i}?q=${i}`);
    const posts = Array.from({ length: 4 }, (_, i) => `/api/orders/${i}`);
    const unknown = Array.from({ length: 5 }, (_, i) => `/nowhere/${i}`);
    const failing = Array.from({ length: 3 }, (_, i) => `/dead/thing/${i}`);
    await inBatches(gets, 10, async (path) => assert.equal((await send(url + path)).status, 200));
    await inBatches(posts, 10, async (path) => assert.equal((await send(url + path, { method: 'POST', body: 'x' })).status, 200));
    await inBatches(unknown, 10, async (path) => assert.equal((await send(url + path)).status, 404));
    await inBatches(failing, 10, async (path) => assert.equal((await send(url + path)).status, 502));

    const m = await scrape(adminUrl!);
    assert.equal(m.types.get('meshgate_requests_total'), 'counter');
    const requests = 'meshgate_requests_total';
    assert.equal(requireValue(m, requests, { route: '/api', service: 'api', method: 'GET', code: '200' }), 37);
    assert.equal(requireValue(m, requests, { route: '/api', service: 'api', method: 'POST', code: '200' }), 4);
    assert.equal(requireValue(m, requests, { route: '', service: '', method: 'GET', code: '404' }), 5);
    assert.equal(requireValue(m, requests, { route: '/dead', service: 'dead', method: 'GET', code: '502' }), 3);
    // Nothing else: every request counted once, and no series per raw path.
    const all = select(m, requests);
    assert.equal(all.length, 4, `unexpected series:\n${all.map((s) => JSON.stringify(s)).join('\n')}`);
    assert.equal(
      all.reduce((sum, s) => sum + s.value, 0),
      37 + 4 + 5 + 3,
    );
    for (const s of m.samples) {
      if (!s.name.startsWith('meshgate_')) continue;
      for (const value of Object.values(s.labels)) assert.doesNotMatch(value, /items|orders|nowhere|thing/, `a raw path leaked into ${s.name}${JSON.stringify(s.labels)}`);
    }

    // The duration histogram has one series per counter series, with the same counts.
    for (const s of all) {
      assert.equal(requireValue(m, 'meshgate_request_duration_seconds_count', s.labels), s.value, `histogram _count of ${JSON.stringify(s.labels)}`);
    }

    // Upstream attempts, by instance and outcome.
    assert.equal(requireValue(m, 'meshgate_upstream_requests_total', { service: 'api', instance: instanceIdOf(api), outcome: '2xx' }), 41);
    assert.equal(requireValue(m, 'meshgate_upstream_requests_total', { service: 'dead', instance: `127.0.0.1:${deadPort}`, outcome: 'connect_error' }), 3);
    assert.equal(select(m, 'meshgate_upstream_requests_total').length, 2);
  });
});

describe('metrics: duration histograms', () => {
  test('buckets are cumulative, +Inf == _count == N, _sum > 0; a ~120 ms upstream lands in le=0.25, not le=0.1', LIMIT, async (t) => {
    const DELAY = 120;
    const fast = await startUpstream(t, echo('fast'));
    const serveSlow = echo('slow');
    const slow = await startUpstream(t, (req, res) => void setTimeout(() => serveSlow(req, res), DELAY));
    const { url, adminUrl } = await startMetricsGateway(t, {
      services: { fast: { instances: [{ url: fast.url }] }, slow: { instances: [{ url: slow.url }] } },
      routes: [
        { prefix: '/fast', service: 'fast' },
        { prefix: '/slow', service: 'slow' },
      ],
    });
    const N_FAST = 25;
    const N_SLOW = 6;
    await inBatches(Array.from({ length: N_FAST }, (_, i) => i), 5, async (i) => assert.equal((await send(`${url}/fast/${i}`)).status, 200));
    await Promise.all(Array.from({ length: N_SLOW }, async (_, i) => assert.equal((await send(`${url}/slow/${i}`)).status, 200)));

    const m = await scrape(adminUrl!);
    assertWellFormedHistogram(m, 'meshgate_request_duration_seconds');
    assertWellFormedHistogram(m, 'meshgate_upstream_request_duration_seconds');

    const series = histograms(m, 'meshgate_request_duration_seconds');
    const fastH = series.find((h) => sameLabels(h.labels, { route: '/fast', service: 'fast', method: 'GET', code: '200' }));
    const slowH = series.find((h) => sameLabels(h.labels, { route: '/slow', service: 'slow', method: 'GET', code: '200' }));
    assert.ok(fastH && slowH, `series: ${JSON.stringify(series.map((h) => h.labels))}`);
    assert.equal(fastH.count, N_FAST);
    assert.equal(bucket(fastH, '+Inf'), N_FAST);
    assert.ok(fastH.sum! > 0, '_sum of the fast series is 0');
    assert.equal(slowH.count, N_SLOW);
    assert.equal(bucket(slowH, '+Inf'), N_SLOW);
    assert.equal(bucket(slowH, '0.1'), 0, 'a request that waited 120 ms for its upstream was counted under 0.1 s');
    assert.equal(bucket(slowH, '0.25'), N_SLOW, 'the ~120 ms requests should all be within 0.25 s');
    assert.ok(slowH.sum! >= (N_SLOW * (DELAY - 5)) / 1000, `_sum ${slowH.sum} is less than ${N_SLOW} x ${DELAY} ms`);

    // The upstream histogram times the same wait, per instance.
    const upstreamSlow = histograms(m, 'meshgate_upstream_request_duration_seconds').find((h) => sameLabels(h.labels, { service: 'slow', instance: instanceIdOf(slow) }));
    assert.ok(upstreamSlow, 'no upstream histogram for the slow instance');
    assert.equal(upstreamSlow.count, N_SLOW);
    assert.equal(bucket(upstreamSlow, '0.1'), 0);
    assert.equal(bucket(upstreamSlow, '0.25'), N_SLOW);
  });
});

describe('metrics: upstream, retries, health, circuits, instances', () => {
  test('meshgate_retries_total counts the retries made around a dead instance', LIMIT, async (t) => {
    const live = await startUpstream(t, echo('live'));
    const deadUrl = `http://127.0.0.1:${await unusedPort()}`;
    const retries: string[] = [];
    const { url, adminUrl } = await startMetricsGateway(
      t,
      {
        services: { flaky: { instances: [{ url: deadUrl, id: 'dead' }, { url: live.url, id: 'live' }], retries: { attempts: 2 } } },
        routes: [{ prefix: '/flaky', service: 'flaky' }],
      },
      (gw) => gw.on('request:retry', (service) => retries.push(service.name)),
    );
    const N = 12;
    for (let i = 0; i < N; i++) assert.equal((await send(`${url}/flaky/${i}`)).status, 200);

    const m = await scrape(adminUrl!);
    const connectErrors = requireValue(m, 'meshgate_upstream_requests_total', { service: 'flaky', instance: 'dead', outcome: 'connect_error' });
    assert.ok(connectErrors >= 1, 'round-robin never picked the dead instance');
    assert.equal(retries.length, connectErrors, 'every failed attempt should have been retried');
    assert.equal(requireValue(m, 'meshgate_retries_total', { service: 'flaky' }), retries.length);
    assert.equal(requireValue(m, 'meshgate_upstream_requests_total', { service: 'flaky', instance: 'live', outcome: '2xx' }), N);
    assert.equal(m.types.get('meshgate_retries_total'), 'counter');
  });

  test('meshgate_retries_total counts one per retry, also when a request retries twice', LIMIT, async (t) => {
    const live = await startUpstream(t, echo('live'));
    const dead = [`http://127.0.0.1:${await unusedPort()}`, `http://127.0.0.1:${await unusedPort()}`];
    const retries: number[] = [];
    const { url, adminUrl } = await startMetricsGateway(
      t,
      {
        // Round-robin from the first: the first request tries dead, dead, then live.
        services: { flaky: { instances: [{ url: dead[0]!, id: 'dead1' }, { url: dead[1]!, id: 'dead2' }, { url: live.url, id: 'live' }], retries: { attempts: 2 } } },
        routes: [{ prefix: '/flaky', service: 'flaky' }],
      },
      (gw) => gw.on('request:retry', (_service, info) => retries.push(info.attempt)),
    );
    for (let i = 0; i < 3; i++) assert.equal((await send(`${url}/flaky/${i}`)).status, 200);
    assert.ok(retries.includes(3), `a request retried twice (attempts seen: ${retries.join(',')})`);
    const m = await scrape(adminUrl!);
    assert.equal(requireValue(m, 'meshgate_retries_total', { service: 'flaky' }), retries.length);
  });

  test('meshgate_instance_healthy goes to 0 when health checks fail and back to 1 when they pass', LIMIT, async (t) => {
    const health = { status: 200 };
    const serve = echo('checked');
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/health') return serve(req, res);
      res.writeHead(health.status).end();
    });
    const { adminUrl } = await startMetricsGateway(t, {
      services: { checked: { instances: [{ url: upstream.url }], healthCheck: { path: '/health', interval: 100, timeout: 1000, unhealthyThreshold: 1, healthyThreshold: 1 } } },
      routes: [{ prefix: '/checked', service: 'checked' }],
    });
    const labels = { service: 'checked', instance: instanceIdOf(upstream) };
    const before = await waitForMetric(adminUrl!, (m) => upstream.seen.some((s) => s.url === '/health') && valueOf(m, 'meshgate_instance_healthy', labels) === 1, 'a passed health check');
    assert.equal(before.types.get('meshgate_instance_healthy'), 'gauge');
    health.status = 500;
    await waitForMetric(adminUrl!, (m) => valueOf(m, 'meshgate_instance_healthy', labels) === 0, 'meshgate_instance_healthy 0 after failing checks');
    health.status = 200;
    await waitForMetric(adminUrl!, (m) => valueOf(m, 'meshgate_instance_healthy', labels) === 1, 'meshgate_instance_healthy 1 after passing checks');
  });

  test('meshgate_circuit_state is 2 once an instance\'s circuit opens', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res: ServerResponse) => {
      res.writeHead(500, { 'content-type': 'text/plain' }).end('broken');
    });
    const { url, adminUrl } = await startMetricsGateway(t, {
      services: { breaking: { instances: [{ url: upstream.url }], circuitBreaker: { volumeThreshold: 3, errorThresholdPercentage: 50, resetTimeout: 60_000 } } },
      routes: [{ prefix: '/breaking', service: 'breaking' }],
    });
    const labels = { service: 'breaking', instance: instanceIdOf(upstream) };
    const closed = await scrape(adminUrl!);
    assert.equal(requireValue(closed, 'meshgate_circuit_state', labels), 0);
    for (let i = 0; i < 5; i++) await send(`${url}/breaking/${i}`);
    const open = await waitForMetric(adminUrl!, (m) => valueOf(m, 'meshgate_circuit_state', labels) === 2, 'meshgate_circuit_state 2');
    assert.ok(requireValue(open, 'meshgate_upstream_requests_total', { ...labels, outcome: '5xx' }) >= 3);
  });

  test('meshgate_instances follows registrations and deregistrations through the admin API', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('dyn'));
    const { adminUrl } = await startMetricsGateway(t, { services: { dyn: {} }, routes: [{ prefix: '/dyn', service: 'dyn' }] });
    const instances = (m: Scrape) => valueOf(m, 'meshgate_instances', { service: 'dyn' });
    assert.equal(instances(await scrape(adminUrl!)), 0);
    const ids: string[] = [];
    for (const id of ['a', 'b', 'c']) {
      const res = await send(`${adminUrl}/services/dyn/instances`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/json' },
        body: JSON.stringify({ url: upstream.url, id }),
      });
      assert.equal(res.status, 201, res.body);
      ids.push(res.json().id as string);
    }
    let m = await scrape(adminUrl!);
    assert.equal(instances(m), 3);
    assert.equal(requireValue(m, 'meshgate_instance_healthy', { service: 'dyn', instance: 'b' }), 1);
    assert.equal((await send(`${adminUrl}/services/dyn/instances/b`, { method: 'DELETE', headers: AUTH })).status, 204);
    m = await scrape(adminUrl!);
    assert.equal(instances(m), 2);
    assert.equal(valueOf(m, 'meshgate_instance_healthy', { service: 'dyn', instance: 'b' }), undefined, 'the series of a removed instance stays');
    assert.equal(valueOf(m, 'meshgate_circuit_state', { service: 'dyn', instance: 'b' }), undefined, 'the series of a removed instance stays');
    assert.equal(requireValue(m, 'meshgate_instance_healthy', { service: 'dyn', instance: 'a' }), 1);
  });
});

describe('metrics: registries', () => {
  test('prom-client\'s default process and Node runtime metrics are exported; metrics: { defaultMetrics: false } leaves them out', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const config = { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] };
    const withDefaults = await startMetricsGateway(t, config);
    const without = await startMetricsGateway(t, { ...config, metrics: { defaultMetrics: false } });
    const m = await scrape(withDefaults.adminUrl!);
    for (const name of ['process_cpu_user_seconds_total', 'process_start_time_seconds', 'nodejs_heap_size_total_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_version_info']) {
      assert.ok(select(m, name).length > 0, `${name} missing`);
    }
    assert.equal(valueOf(m, 'nodejs_version_info', { version: process.version, major: process.versions.node.split('.')[0]!, minor: process.versions.node.split('.')[1]!, patch: process.versions.node.split('.')[2]! }), 1);
    const bare = await scrape(without.adminUrl!);
    assert.deepEqual(
      bare.samples.filter((s) => !s.name.startsWith('meshgate_')).map((s) => s.name),
      [],
    );
    assert.ok(select(bare, 'meshgate_instances').length > 0);
  });

  test('two gateways in one process keep independent registries, and the global prom-client registry stays empty', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const config = { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] };
    const a = await startMetricsGateway(t, config);
    const b = await startMetricsGateway(t, config);
    assert.notEqual(a.gateway.get('metricsRegistry'), b.gateway.get('metricsRegistry'));
    for (let i = 0; i < 3; i++) assert.equal((await send(`${a.url}/api/${i}`)).status, 200);
    for (let i = 0; i < 7; i++) assert.equal((await send(`${b.url}/api/${i}`)).status, 200);
    const labels = { route: '/api', service: 'api', method: 'GET', code: '200' };
    assert.equal(requireValue(await scrape(a.adminUrl!), 'meshgate_requests_total', labels), 3);
    assert.equal(requireValue(await scrape(b.adminUrl!), 'meshgate_requests_total', labels), 7);
    assert.deepEqual(await register.getMetricsAsJSON(), [], 'something registered metrics on prom-client\'s global registry');
  });
});

describe('metrics: the /metrics route', () => {
  test('GET /metrics needs no token even when admin.token is set (the rest of the admin API does)', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { url, adminUrl } = await startMetricsGateway(t, { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    assert.equal((await send(`${url}/api/x`)).status, 200);
    assert.equal((await send(`${adminUrl}/services`)).status, 401, 'the token is not enforced at all, so this test proves nothing');
    const m = await scrape(adminUrl!);
    assert.equal(requireValue(m, 'meshgate_requests_total', { route: '/api', service: 'api', method: 'GET', code: '200' }), 1);
    // A wrong token on a public path changes nothing either.
    assert.equal((await send(`${adminUrl}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 200);
  });

  test('metrics: false removes the plugin and the route: GET /metrics answers 404 JSON, with or without the token', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { gateway, url, adminUrl } = await startMetricsGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
      metrics: false,
    });
    assert.equal(gateway.hasPlugin('metrics'), false);
    assert.equal(gateway.has('metricsRegistry'), false);
    assert.equal((await send(`${url}/api/x`)).status, 200);
    for (const headers of [{}, AUTH]) {
      const res = await send(`${adminUrl}/metrics`, { headers });
      assert.equal(res.status, 404, res.body);
      assert.match(String(res.headers['content-type']), /application\/json/);
      assert.equal(res.json().error, 'MESH_ERR_NOT_FOUND');
    }
    // The admin server itself is still there.
    assert.equal((await send(`${adminUrl}/healthz`)).status, 200);
  });

  test('promtool check metrics accepts the exposition', LIMIT, async (t) => {
    const api = await startUpstream(t);
    const deadPort = await unusedPort();
    const { url, adminUrl } = await startMetricsGateway(t, {
      services: {
        api: { instances: [{ url: api.url }], retries: { attempts: 1 }, circuitBreaker: {} },
        dead: { instances: [{ url: `http://127.0.0.1:${deadPort}` }] },
      },
      routes: [
        { prefix: '/api', service: 'api' },
        { prefix: '/dead', service: 'dead' },
      ],
    });
    // Every family gets samples: successes, failures, unmatched paths.
    await send(`${url}/api/x`);
    await send(`${url}/dead/x`);
    await send(`${url}/nowhere`);
    const res = await send(`${adminUrl}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.body, /^meshgate_requests_total\{/m);

    const result = await promtool(res.body);
    if (result === null) {
      t.diagnostic('promtool is not on PATH (Debian package "prometheus"; CI installs it): the exposition was parsed by this test only, not linted by promtool');
      return;
    }
    t.diagnostic(`promtool check metrics: exit ${result.code}${result.output ? `\n${result.output}` : ''}`);
    assert.notEqual(result.code, 1, `promtool could not parse the exposition:\n${result.output}`);
    assert.equal(result.code, 0, `promtool check metrics reported problems:\n${result.output}`);
  });
});

/** Runs `promtool check metrics` with `text` on stdin; null when promtool is not installed. */
function promtool(text: string): Promise<{ code: number | null; output: string } | null> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (output += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (output += s));
    child.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? resolve(null) : reject(err)));
    child.once('close', (code) => resolve({ code, output: output.trim() }));
    // promtool may exit before reading everything when it gives up on a parse error.
    child.stdin.on('error', () => undefined);
    child.stdin.end(text);
  });
}

describe('metrics: cardinality under churn', () => {
  test('registering and deregistering 1000 instances brings the series count back to where it started', { timeout: 30_000 }, async (t) => {
    const upstream = await startUpstream(t, echo('churn'));
    const { url, adminUrl } = await startMetricsGateway(t, {
      admin: { registrationRate: 100_000 },
      // Runtime metrics come and go with handles and GC kinds; this test counts the gateway's own.
      metrics: { defaultMetrics: false },
      services: { churn: { instances: [{ url: upstream.url, id: 'static' }] } },
      routes: [{ prefix: '/churn', service: 'churn' }],
    });
    // The request series (route, method, code) and the static instance's series exist from here on.
    assert.equal((await send(`${url}/churn/warm-up`)).status, 200);
    const start = await scrape(adminUrl!);
    assert.equal(start.samples.length, start.seriesLines);

    const N = 1000;
    const ids = Array.from({ length: N }, (_, i) => `churn-${String(i).padStart(4, '0')}`);
    await inBatches(ids, 50, async (id) => {
      const res = await send(`${adminUrl}/services/churn/instances`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/json' },
        body: JSON.stringify({ url: upstream.url, id }),
      });
      assert.equal(res.status, 201, res.body);
    });
    // Round-robin spreads these over the new instances, so some of them get upstream series.
    for (let i = 0; i < 20; i++) assert.equal((await send(`${url}/churn/${i}`)).status, 200);

    const peak = await scrape(adminUrl!);
    assert.equal(requireValue(peak, 'meshgate_instances', { service: 'churn' }), N + 1);
    assert.ok(peak.seriesLines >= start.seriesLines + 2 * N, `only ${peak.seriesLines - start.seriesLines} series were added for ${N} instances`);
    const churnedUpstream = select(peak, 'meshgate_upstream_requests_total').filter((s) => s.labels.instance!.startsWith('churn-'));
    assert.ok(churnedUpstream.length >= 10, `expected upstream series for the new instances, got ${churnedUpstream.length}`);

    await inBatches(ids, 50, async (id) => {
      const res = await send(`${adminUrl}/services/churn/instances/${id}`, { method: 'DELETE', headers: AUTH });
      assert.equal(res.status, 204, res.body);
    });

    const end = await scrape(adminUrl!);
    const leftovers = end.samples.filter((s) => s.labels.instance?.startsWith('churn-'));
    assert.deepEqual(leftovers, [], 'series of deregistered instances are still exposed');
    assert.equal(requireValue(end, 'meshgate_instances', { service: 'churn' }), 1);
    assert.equal(end.seriesLines, start.seriesLines, 'the number of series did not return to its starting value');
  });
});
