import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway, GatewayConfigInput, Health, Instance } from '../../lib/index.js';
import { echo, send, sleep, startGateway, startUpstream, unusedPort, waitFor, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };
/** Check interval of every test: short, so thresholds are reached in a fraction of a second. */
const INTERVAL = 100;
/** Room for jitter and a loaded machine on top of the time a threshold needs. */
const SLACK = 1500;

/** An upstream whose `/health` answer the test sets through `health.status` ('hang' never answers); other paths echo. */
interface CheckedUpstream extends Upstream {
  health: { status: number | 'hang' };
  /** `/health` requests received so far. */
  checks(): number;
  /** `/health` requests answered 2xx so far. */
  passed(): number;
  /** `/health` requests answered with a non-2xx status so far. */
  failed(): number;
  /** Requests to any other path (the proxied traffic). */
  traffic(): number;
}

async function checkedUpstream(t: TestContext, name: string, status: number | 'hang' = 200): Promise<CheckedUpstream> {
  const health: { status: number | 'hang' } = { status };
  const held: ServerResponse[] = [];
  let passed = 0;
  let failed = 0;
  const serve = echo(name);
  const upstream = await startUpstream(t, (req, res) => {
    if (req.url !== '/health') return serve(req, res);
    const answer = health.status;
    if (answer === 'hang') {
      held.push(res);
      return;
    }
    if (answer >= 200 && answer <= 299) passed++;
    else failed++;
    res.writeHead(answer, answer >= 300 && answer < 400 ? { location: '/health-elsewhere' } : {});
    res.end('health');
  });
  return Object.assign(upstream, {
    health,
    checks: () => upstream.seen.filter((s) => s.url === '/health').length,
    passed: () => passed,
    failed: () => failed,
    traffic: () => upstream.seen.filter((s) => s.url !== '/health').length,
  });
}

function config(urls: string[], healthCheck: Record<string, unknown>): GatewayConfigInput {
  return {
    services: {
      api: {
        instances: urls.map((url) => ({ url })),
        healthCheck: { path: '/health', interval: INTERVAL, timeout: 1000, unhealthyThreshold: 2, healthyThreshold: 1, ...healthCheck },
      },
    },
    routes: [{ prefix: '/api', service: 'api' }],
  };
}

function instanceAt(gateway: Gateway, url: string): Instance {
  const inst = [...gateway.registry.getService('api')!.instances.values()].find((i) => i.url === url);
  assert.ok(inst, `no instance with url ${url}`);
  return inst;
}

interface HealthEvent {
  url: string;
  previous: Health;
  health: Health;
  reason: string;
}

function recordHealthEvents(gateway: Gateway): HealthEvent[] {
  const events: HealthEvent[] = [];
  gateway.on('instance:health', (inst, previous, reason) => events.push({ url: inst.url, previous, health: inst.health, reason }));
  return events;
}

/** Sends `n` GETs one after another; returns their statuses. */
async function sendMany(url: string, n: number): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) statuses.push((await send(`${url}/api/item/${i}`)).status);
  return statuses;
}

describe('health-check plugin: failing checks', () => {
  test('a /health answering 500 marks the instance unhealthy within interval x unhealthyThreshold, and it stops receiving traffic', LIMIT, async (t) => {
    const bad = await checkedUpstream(t, 'bad');
    const good1 = await checkedUpstream(t, 'good1');
    const good2 = await checkedUpstream(t, 'good2');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], { unhealthyThreshold: 3 }));
    const events = recordHealthEvents(gateway);
    const inst = instanceAt(gateway, bad.url);

    // Healthy at first: it takes its share.
    assert.deepEqual(await sendMany(url, 6), [200, 200, 200, 200, 200, 200]);
    assert.ok(bad.traffic() > 0, 'the instance took traffic while healthy');
    await waitFor(() => bad.checks() >= 2, INTERVAL * 2 + SLACK, 'health checks to run');
    assert.equal(inst.health, 'healthy');

    let failedWhenMarked = -1;
    gateway.on('instance:health', (i) => {
      if (i === inst) failedWhenMarked = bad.failed();
    });
    bad.health.status = 500;
    await waitFor(() => inst.health === 'unhealthy', INTERVAL * 3 + SLACK, 'the instance to be marked unhealthy');
    assert.ok(failedWhenMarked >= 3, `marked after ${failedWhenMarked} failed check(s); unhealthyThreshold is 3`);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.url, bad.url);
    assert.equal(events[0]!.previous, 'healthy');
    assert.equal(events[0]!.health, 'unhealthy');
    assert.match(events[0]!.reason, /status 500/);

    const before = bad.traffic();
    const statuses = await sendMany(url, 30);
    assert.ok(statuses.every((s) => s === 200), `statuses: ${statuses.join(',')}`);
    assert.equal(bad.traffic(), before, 'the unhealthy instance received no traffic');
    assert.equal(good1.traffic() + good2.traffic(), 30 + 6 - before);
    // The checks are what the docs say: GET on the configured path with the plugin's User-Agent.
    const check = bad.seen.find((s) => s.url === '/health')!;
    assert.equal(check.method, 'GET');
    assert.equal(check.headers['user-agent'], 'meshgate-health-check');
  });

  test('a health check that times out marks the instance unhealthy, with a timeout reason', LIMIT, async (t) => {
    const slow = await checkedUpstream(t, 'slow', 'hang');
    const good1 = await checkedUpstream(t, 'good1');
    const good2 = await checkedUpstream(t, 'good2');
    const { gateway, url } = await startGateway(t, config([slow.url, good1.url, good2.url], { timeout: 100, unhealthyThreshold: 2 }));
    const events = recordHealthEvents(gateway);
    const inst = instanceAt(gateway, slow.url);
    let checksWhenMarked = -1;
    gateway.on('instance:health', (i) => {
      if (i === inst) checksWhenMarked = slow.checks();
    });

    await waitFor(() => inst.health === 'unhealthy', (INTERVAL + 100) * 2 + SLACK, 'the instance to be marked unhealthy');
    assert.ok(checksWhenMarked >= 2, `marked after ${checksWhenMarked} check(s); unhealthyThreshold is 2`);
    assert.equal(events.length, 1);
    assert.match(events[0]!.reason, /timeout/i);

    const statuses = await sendMany(url, 20);
    assert.ok(statuses.every((s) => s === 200), `statuses: ${statuses.join(',')}`);
    assert.equal(slow.traffic(), 0, 'the instance whose checks time out received no traffic');
  });

  test('a closed port marks the instance unhealthy, with the connect error as reason', LIMIT, async (t) => {
    const deadUrl = `http://127.0.0.1:${await unusedPort()}`;
    const good1 = await checkedUpstream(t, 'good1');
    const good2 = await checkedUpstream(t, 'good2');
    const { gateway, url } = await startGateway(t, config([deadUrl, good1.url, good2.url], { unhealthyThreshold: 2 }));
    const events = recordHealthEvents(gateway);
    const inst = instanceAt(gateway, deadUrl);

    await waitFor(() => inst.health === 'unhealthy', INTERVAL * 2 + SLACK, 'the dead instance to be marked unhealthy');
    assert.equal(events.length, 1);
    assert.equal(events[0]!.url, deadUrl);
    assert.match(events[0]!.reason, /ECONNREFUSED/);

    // Out of the candidates: no request is sent to the dead port any more (no 502s without retries).
    const statuses = await sendMany(url, 20);
    assert.ok(statuses.every((s) => s === 200), `statuses: ${statuses.join(',')}`);
  });

  for (const status of [302, 404, 503]) {
    test(`only 2xx counts: a ${status} health answer is a failure`, LIMIT, async (t) => {
      const odd = await checkedUpstream(t, 'odd', status);
      const good1 = await checkedUpstream(t, 'good1');
      const good2 = await checkedUpstream(t, 'good2');
      const { gateway, url } = await startGateway(t, config([odd.url, good1.url, good2.url], { unhealthyThreshold: 2 }));
      const events = recordHealthEvents(gateway);
      const inst = instanceAt(gateway, odd.url);

      await waitFor(() => inst.health === 'unhealthy', INTERVAL * 2 + SLACK, `a ${status} answer to count as a failure`);
      assert.equal(events.length, 1, 'only the odd instance changed health');
      assert.match(events[0]!.reason, new RegExp(`status ${status}`));
      assert.equal(instanceAt(gateway, good1.url).health, 'healthy');
      assert.equal(instanceAt(gateway, good2.url).health, 'healthy');

      const statuses = await sendMany(url, 20);
      assert.ok(statuses.every((s) => s === 200));
      assert.equal(odd.traffic(), 0);
    });
  }
});

describe('health-check plugin: recovery', () => {
  test('an unhealthy instance comes back after healthyThreshold successful checks, and takes traffic again', LIMIT, async (t) => {
    const flaky = await checkedUpstream(t, 'flaky', 500);
    const good1 = await checkedUpstream(t, 'good1');
    const good2 = await checkedUpstream(t, 'good2');
    const { gateway, url } = await startGateway(t, config([flaky.url, good1.url, good2.url], { unhealthyThreshold: 2, healthyThreshold: 3 }));
    const events = recordHealthEvents(gateway);
    const inst = instanceAt(gateway, flaky.url);

    await waitFor(() => inst.health === 'unhealthy', INTERVAL * 2 + SLACK, 'the instance to be marked unhealthy');
    await sendMany(url, 9);
    assert.equal(flaky.traffic(), 0);

    const passedBefore = flaky.passed();
    let passedWhenHealthy = -1;
    gateway.on('instance:health', (i) => {
      if (i === inst && i.health === 'healthy') passedWhenHealthy = flaky.passed() - passedBefore;
    });
    flaky.health.status = 200;
    await waitFor(() => inst.health === 'healthy', INTERVAL * 3 + SLACK, 'the instance to be healthy again');
    assert.ok(passedWhenHealthy >= 3, `back after ${passedWhenHealthy} successful check(s); healthyThreshold is 3`);

    assert.deepEqual(
      events.map((e) => [e.url, e.previous, e.health]),
      [
        [flaky.url, 'healthy', 'unhealthy'],
        [flaky.url, 'unhealthy', 'healthy'],
      ],
    );
    assert.ok(events.every((e) => e.reason.length > 0), 'every transition has a reason');

    const statuses = await sendMany(url, 9);
    assert.ok(statuses.every((s) => s === 200));
    assert.ok(flaky.traffic() > 0, 'the recovered instance takes traffic again');
  });

  test('one passing check in between resets the failure count', LIMIT, async (t) => {
    // Failures must be consecutive: fail, pass, fail, pass... never reaches unhealthyThreshold 2.
    let n = 0;
    const alternating = await startUpstream(t, (req, res) => {
      if (req.url === '/health') {
        res.writeHead(n++ % 2 === 0 ? 500 : 200);
        res.end();
        return;
      }
      res.end('ok');
    });
    const good = await checkedUpstream(t, 'good');
    const { gateway } = await startGateway(t, config([alternating.url, good.url], { unhealthyThreshold: 2 }));
    const events = recordHealthEvents(gateway);
    await waitFor(() => n >= 8, INTERVAL * 8 + SLACK * 2, 'eight checks');
    assert.deepEqual(events, []);
    assert.equal(instanceAt(gateway, alternating.url).health, 'healthy');
  });
});

describe('health-check plugin: streaks', () => {
  test('a failed check resets the success streak: with healthyThreshold 3, pass pass fail pass pass pass brings it back only at the last pass', LIMIT, async (t) => {
    // The instance is unhealthy from the start (two failures), then answers the script below.
    const script = [500, 500, 200, 200, 500, 200, 200, 200];
    let n = 0;
    const scripted = await startUpstream(t, (req, res) => {
      if (req.url !== '/health') return void res.end('ok');
      res.writeHead(script[Math.min(n, script.length - 1)]!);
      n++;
      res.end();
    });
    const good = await checkedUpstream(t, 'good');
    const { gateway } = await startGateway(t, config([scripted.url, good.url], { unhealthyThreshold: 2, healthyThreshold: 3 }));
    const inst = instanceAt(gateway, scripted.url);
    let backAtCheck = -1;
    gateway.on('instance:health', (i) => {
      if (i === inst && i.health === 'healthy') backAtCheck = n;
    });
    await waitFor(() => backAtCheck !== -1, INTERVAL * 12 + SLACK * 2, 'the instance to come back');
    assert.equal(backAtCheck, 8, `back after check ${backAtCheck}: the failure at check 5 must restart the streak`);
  });
});

describe('health-check plugin: lifecycle', () => {
  test('checks start for an instance added at run time and stop when it is removed', LIMIT, async (t) => {
    const a = await checkedUpstream(t, 'a');
    const b = await checkedUpstream(t, 'b');
    const { gateway } = await startGateway(t, config([a.url], {}));

    gateway.registry.upsertInstance('api', { url: b.url, source: 'test' });
    await waitFor(() => b.checks() >= 2, INTERVAL * 2 + SLACK, 'the added instance to be checked');

    gateway.registry.removeInstance('api', instanceAt(gateway, b.url).id);
    // A check already on the wire may still land; after that, silence.
    await sleep(50);
    const after = b.checks();
    const aBefore = a.checks();
    await sleep(INTERVAL * 6);
    assert.equal(b.checks(), after, 'no health checks after the instance was removed');
    assert.ok(a.checks() > aBefore, 'the remaining instance is still checked');
  });

  test('close() stops every check: the upstreams see no /health request afterwards', LIMIT, async (t) => {
    const a = await checkedUpstream(t, 'a');
    const b = await checkedUpstream(t, 'b', 'hang');
    const { gateway } = await startGateway(t, config([a.url, b.url], { timeout: 5000 }));
    await waitFor(() => a.checks() >= 2 && b.checks() >= 1, INTERVAL * 2 + SLACK, 'checks to run');

    // A check held by `b` is in flight: close() must not wait for it nor leave its timer behind.
    await gateway.close();
    const events = recordHealthEvents(gateway);
    await sleep(50);
    const aAfter = a.checks();
    const bAfter = b.checks();
    await sleep(INTERVAL * 6);
    assert.equal(a.checks(), aAfter, 'no checks of a after close');
    assert.equal(b.checks(), bAfter, 'no checks of b after close');
    // A checker left running would fail against the closed pools and mark instances unhealthy.
    assert.deepEqual(events, [], 'no health transitions after close');
    assert.equal(instanceAt(gateway, a.url).health, 'healthy');
  });
});
