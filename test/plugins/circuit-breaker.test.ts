import assert from 'node:assert/strict';
import { request as httpRequest, type ClientRequest, type ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import CircuitBreaker from 'opossum';
import type { CircuitState, Gateway, GatewayConfigInput, Instance } from '../../lib/index.js';
import { CountingWindow, WindowClock } from '../../plugins/circuit-breaker/window.js';
import { echo, send, sleep, startGateway, startUpstream, trackProcessErrors, unusedPort, waitFor, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };
/** A small window so a circuit opens after a handful of failures. */
const VOLUME = 5;

/** An upstream that answers 500 (`fail`), echoes its name (`ok`) or holds its answer (`hold`), as `state.mode` says. */
interface SwitchUpstream extends Upstream {
  state: { mode: 'fail' | 'ok' | 'hold' };
  /** Answers held in `hold` mode, for the test to send. */
  held: ServerResponse[];
}

async function switchUpstream(t: TestContext, name: string, mode: SwitchUpstream['state']['mode']): Promise<SwitchUpstream> {
  const state: SwitchUpstream['state'] = { mode };
  const held: ServerResponse[] = [];
  const serve = echo(name);
  const upstream = await startUpstream(t, (req, res) => {
    if (state.mode === 'ok') return serve(req, res);
    if (state.mode === 'hold') {
      held.push(res);
      return;
    }
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`${name} failed`);
  });
  return Object.assign(upstream, { state, held });
}

function config(urls: string[], circuitBreaker: Record<string, unknown>): GatewayConfigInput {
  return {
    services: {
      api: {
        instances: urls.map((url) => ({ url })),
        circuitBreaker: { errorThresholdPercentage: 50, volumeThreshold: VOLUME, resetTimeout: 10_000, ...circuitBreaker },
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

/** `circuit:state` transitions as `[url, previous, now]`. */
function recordCircuitEvents(gateway: Gateway): [string, CircuitState, CircuitState][] {
  const events: [string, CircuitState, CircuitState][] = [];
  gateway.on('circuit:state', (inst, previous) => events.push([inst.url, previous, inst.circuit]));
  return events;
}

/** Sends `n` GETs one after another; returns the responses. */
async function sendMany(url: string, n: number): Promise<{ status: number; body: string }[]> {
  const out: { status: number; body: string }[] = [];
  for (let i = 0; i < n; i++) {
    const res = await send(`${url}/api/item/${i}`);
    out.push({ status: res.status, body: res.body });
  }
  return out;
}

const count = (list: { status: number }[], status: number): number => list.filter((r) => r.status === status).length;

describe('circuit-breaker plugin', () => {
  test('an instance answering 500 stops receiving traffic once its circuit opens; the good ones get the rest', LIMIT, async (t) => {
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], {}));
    const events = recordCircuitEvents(gateway);

    const responses = await sendMany(url, 100);
    // It opens once the window holds volumeThreshold calls, all failed: only a handful reach it.
    assert.ok(bad.seen.length >= VOLUME, `the circuit opened before volumeThreshold (${bad.seen.length} calls)`);
    assert.ok(bad.seen.length <= VOLUME + 3, `the bad instance saw ${bad.seen.length} of 100 requests`);
    // No retries configured: the client saw exactly the bad instance's answers as 500s.
    assert.equal(count(responses, 500), bad.seen.length);
    assert.equal(count(responses, 200), 100 - bad.seen.length);
    assert.equal(good1.seen.length + good2.seen.length, 100 - bad.seen.length);
    assert.ok(responses.slice(-80).every((r) => r.status === 200), 'once open, every request goes to the good instances');

    assert.deepEqual(events, [[bad.url, 'closed', 'open']]);
    assert.equal(instanceAt(gateway, bad.url).circuit, 'open');
    assert.equal(instanceAt(gateway, good1.url).circuit, 'closed');
  });

  test('the error rate decides: an instance failing 3 of 10 stays in, one failing 7 of 10 opens at its first check past volumeThreshold', LIMIT, async (t) => {
    // Successes count as much as failures: a breaker that missed them would see 100% errors and open both.
    const flaky = (name: string, failuresPerTen: number) =>
      startUpstream(t, (req, res) => {
        const n = Number(/\/(\d+)$/.exec(req.url ?? '')?.[1] ?? 0);
        if (n % 10 < failuresPerTen) {
          res.writeHead(500, { 'content-length': '4' });
          res.end('fail');
        } else echo(name)(req, res);
      });
    const mild = await flaky('mild', 3);
    const bad = await flaky('bad', 7);
    const mildGw = await startGateway(t, config([mild.url], { volumeThreshold: 10 }));
    const badGw = await startGateway(t, config([bad.url], { volumeThreshold: 10 }));
    const mildEvents = recordCircuitEvents(mildGw.gateway);
    const badEvents = recordCircuitEvents(badGw.gateway);
    let callsWhenOpened = 0;
    badGw.gateway.on('circuit:state', (inst) => {
      if (inst.circuit === 'open' && callsWhenOpened === 0) callsWhenOpened = bad.seen.length;
    });

    const mildAnswers = await sendMany(mildGw.url, 60);
    assert.equal(mild.seen.length, 60, 'every request reached the instance failing 30%');
    assert.equal(count(mildAnswers, 500), 18);
    assert.deepEqual(mildEvents, []);
    assert.equal(instanceAt(mildGw.gateway, mild.url).circuit, 'closed');

    const badAnswers = await sendMany(badGw.url, 60);
    // Requests 0-6 fail and 7-9 succeed; failures are checked once the window holds volumeThreshold
    // calls, so the first check is request 10's failure: 8 of 11 failed (73% > 50%), open.
    assert.deepEqual(badEvents[0], [bad.url, 'closed', 'open']);
    assert.equal(callsWhenOpened, 11);
    assert.ok(count(badAnswers, 500) >= 8);
  });

  test('after resetTimeout a single half-open probe goes through; its success closes the circuit and traffic returns', LIMIT, async (t) => {
    const RESET = 300;
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], { resetTimeout: RESET }));
    const events = recordCircuitEvents(gateway);
    const inst = instanceAt(gateway, bad.url);

    await sendMany(url, VOLUME * 3 + 3);
    assert.equal(inst.circuit, 'open');

    // It recovers, and holds the probe's answer until the test has looked at who got what.
    bad.state.mode = 'hold';
    const held = bad.held;
    await waitFor(() => inst.circuit === 'half-open', RESET + 2000, 'the circuit to turn half-open');
    const seenBefore = bad.seen.length;

    // Twelve concurrent requests: one is the probe, the others go elsewhere while it runs.
    const done: number[] = [];
    const inflight = Array.from({ length: 12 }, (_, i) => send(`${url}/api/c/${i}`).then((r) => (done.push(r.status), r)));
    await waitFor(() => done.length === 11, 5000, 'the eleven non-probe requests to finish');
    assert.equal(held.length, 1, 'exactly one probe reached the half-open instance');
    assert.equal(bad.seen.length - seenBefore, 1);
    assert.ok(done.every((s) => s === 200));

    held[0]!.writeHead(200, { 'content-type': 'text/plain' });
    held[0]!.end('bad recovered');
    const all = await Promise.all(inflight);
    assert.ok(all.some((r) => r.body === 'bad recovered'), 'the probe answer reached its client');
    await waitFor(() => inst.circuit === 'closed', 2000, 'the circuit to close');

    assert.deepEqual(events, [
      [bad.url, 'closed', 'open'],
      [bad.url, 'open', 'half-open'],
      [bad.url, 'half-open', 'closed'],
    ]);

    // Closed again: it takes its share.
    const after = bad.seen.length;
    bad.state.mode = 'ok';
    const responses = await sendMany(url, 30);
    assert.ok(responses.every((r) => r.status === 200));
    assert.ok(bad.seen.length - after >= 5, `the recovered instance got ${bad.seen.length - after} of 30`);
  });

  test('a half-open probe that fails opens the circuit again', LIMIT, async (t) => {
    const RESET = 200;
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], { resetTimeout: RESET }));
    const events = recordCircuitEvents(gateway);
    const inst = instanceAt(gateway, bad.url);

    await sendMany(url, VOLUME * 3 + 3);
    assert.equal(inst.circuit, 'open');
    await waitFor(() => inst.circuit === 'half-open', RESET + 2000, 'the circuit to turn half-open');
    const seenBefore = bad.seen.length;
    // Requests until one is the probe (round-robin gets there within a few), then more: the
    // failed probe opened the circuit again, so none of those reach the instance.
    for (let i = 0; i < 10 && bad.seen.length === seenBefore; i++) await send(`${url}/api/probe/${i}`);
    assert.equal(bad.seen.length - seenBefore, 1, 'the half-open instance got a probe');
    assert.equal(inst.circuit, 'open');
    const responses = await sendMany(url, 10);
    assert.ok(responses.every((r) => r.status === 200));
    assert.equal(bad.seen.length - seenBefore, 1, 'nothing but the probe reached it');
    assert.deepEqual(
      events.map((e) => e[2]),
      ['open', 'half-open', 'open'],
    );
  });

  test('a half-open probe whose client hangs up proves nothing: the circuit does not close on it, and a later probe still can', LIMIT, async (t) => {
    const RESET = 200;
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], { resetTimeout: RESET }));
    const events = recordCircuitEvents(gateway);
    const inst = instanceAt(gateway, bad.url);

    await sendMany(url, VOLUME * 3 + 3);
    assert.equal(inst.circuit, 'open');
    // Still broken, now by hanging: the probe gets no answer at all.
    bad.state.mode = 'hold';
    await waitFor(() => inst.circuit === 'half-open', RESET + 2000, 'the circuit to turn half-open');

    // Requests one at a time until one is the probe (held by the instance).
    let probe: ClientRequest | null = null;
    for (let i = 0; i < 10 && probe === null; i++) {
      const req = httpRequest(`${url}/api/probe/${i}`, { agent: false });
      let answered = false;
      req.on('response', (res) => res.resume().on('end', () => (answered = true)));
      req.on('error', () => {
        // the probe's client is destroyed on purpose below
      });
      req.end();
      await waitFor(() => answered || bad.held.length === 1, 5000, `request ${i} to be answered or held`);
      if (bad.held.length === 1) probe = req;
    }
    assert.ok(probe, 'a probe reached the half-open instance');
    // The probe's client gives up; the gateway aborts the upstream request.
    probe.destroy();
    await waitFor(() => bad.held[0]!.destroyed, 3000, 'the probe to be aborted upstream');
    await sleep(50);
    assert.notEqual(inst.circuit, 'closed', 'an aborted probe closed the circuit of a hanging instance');
    assert.ok(!events.some((e) => e[0] === bad.url && e[2] === 'closed'), JSON.stringify(events));

    // Once the instance really recovers, a probe that succeeds closes the circuit.
    bad.state.mode = 'ok';
    await waitFor(
      async () => {
        await send(`${url}/api/again`);
        return inst.circuit === 'closed';
      },
      RESET * 3 + 3000,
      'a later probe to close the circuit',
    );
  });

  test('connect errors count as failures: a dead port opens its circuit', LIMIT, async (t) => {
    const deadUrl = `http://127.0.0.1:${await unusedPort()}`;
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([deadUrl, good1.url, good2.url], {}));
    const events = recordCircuitEvents(gateway);

    const responses = await sendMany(url, 60);
    const refused = count(responses, 502);
    assert.ok(refused >= VOLUME && refused <= VOLUME + 3, `${refused} requests went to the dead port`);
    assert.equal(count(responses, 200), 60 - refused);
    assert.ok(responses.slice(-40).every((r) => r.status === 200));
    assert.deepEqual(events, [[deadUrl, 'closed', 'open']]);
    assert.equal(instanceAt(gateway, deadUrl).circuit, 'open');
  });

  test('the breaker of a removed instance is shut down: no traffic, no events, no errors afterwards', LIMIT, async (t) => {
    const RESET = 150;
    const errors = trackProcessErrors(t);
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good1 = await switchUpstream(t, 'good1', 'ok');
    const good2 = await switchUpstream(t, 'good2', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good1.url, good2.url], { resetTimeout: RESET }));
    const gatewayErrors: Error[] = [];
    gateway.on('gateway:error', (err) => gatewayErrors.push(err));
    const events = recordCircuitEvents(gateway);
    const inst = instanceAt(gateway, bad.url);

    await sendMany(url, VOLUME * 3 + 3);
    assert.equal(inst.circuit, 'open');
    gateway.registry.removeInstance('api', inst.id);
    const eventsAtRemoval = events.length;
    const seenAtRemoval = bad.seen.length;

    // Its reset timer would turn it half-open after RESET: a shut-down breaker has no timer left.
    await sleep(RESET * 4);
    const responses = await sendMany(url, 20);
    assert.ok(responses.every((r) => r.status === 200));
    assert.deepEqual(events.slice(eventsAtRemoval), [], 'no circuit:state event for the removed instance');
    assert.equal(bad.seen.length, seenAtRemoval, 'the removed instance got no traffic');
    assert.deepEqual(gatewayErrors, []);
    assert.deepEqual(errors, []);

    // The same URL registered again is a new instance with a fresh, closed circuit.
    bad.state.mode = 'ok';
    const again = gateway.registry.upsertInstance('api', { url: bad.url, source: 'test' });
    assert.equal(again.circuit, 'closed');
    const more = await sendMany(url, 9);
    assert.ok(more.every((r) => r.status === 200));
    assert.ok(bad.seen.length > seenAtRemoval, 'the re-registered instance takes traffic');
  });

  test('panic: when every circuit is open, the breakers let traffic through instead of a certain 503', LIMIT, async (t) => {
    const a = await switchUpstream(t, 'a', 'fail');
    const b = await switchUpstream(t, 'b', 'fail');
    const { gateway, url } = await startGateway(t, config([a.url, b.url], {}));
    const events = recordCircuitEvents(gateway);

    const responses = await sendMany(url, 60);
    assert.deepEqual(
      events.map((e) => e[2]),
      ['open', 'open'],
      'both circuits opened',
    );
    assert.equal(instanceAt(gateway, a.url).circuit, 'open');
    assert.equal(instanceAt(gateway, b.url).circuit, 'open');
    // Below the panic threshold (0 of 2 usable) every instance is a candidate again: each request
    // reached an upstream and carried its answer, none was refused by the gateway.
    assert.equal(a.seen.length + b.seen.length, 60);
    assert.ok(responses.every((r) => r.status === 500 && / failed$/.test(r.body)), JSON.stringify(responses.slice(-3)));
    assert.ok(a.seen.length > 15 && b.seen.length > 15, `a saw ${a.seen.length}, b saw ${b.seen.length}`);
    assert.equal(gateway.registry.getService('api')!.panic, true);
  });

  test('panic from health: breakers stand aside, so a failing instance does not get its circuit opened meanwhile', LIMIT, async (t) => {
    const bad = await switchUpstream(t, 'bad', 'fail');
    const good = await switchUpstream(t, 'good', 'ok');
    const { gateway, url } = await startGateway(t, config([bad.url, good.url], {}));
    const events = recordCircuitEvents(gateway);
    // Both marked unhealthy (as failing health checks would): 0 of 2 usable is below the panic
    // threshold, so both take traffic.
    for (const inst of gateway.registry.getService('api')!.instances.values()) gateway.registry.setHealth(inst, 'unhealthy', 'test');
    const responses = await sendMany(url, 40);
    assert.equal(gateway.registry.getService('api')!.panic, true);
    assert.ok(bad.seen.length > VOLUME * 2, `the failing instance saw ${bad.seen.length} requests`);
    assert.equal(count(responses, 500), bad.seen.length);
    assert.deepEqual(events, [], 'no circuit changed state in panic');
    assert.equal(instanceAt(gateway, bad.url).circuit, 'closed');
  });
});

describe('circuit-breaker plugin: the counting window', () => {
  /** A window clock, stopped after the test. */
  const clockFor = (t: TestContext): WindowClock => {
    const clock = new WindowClock();
    t.after(() => clock.close());
    return clock;
  };

  const breakerOn = (window: CountingWindow, options: Record<string, unknown> = {}): CircuitBreaker<[boolean], void> =>
    new CircuitBreaker(
      async (fail: boolean) => {
        if (fail) throw new Error('failed');
      },
      { status: window, timeout: false, ...options },
    );

  test("counts every event into the current bucket and keeps no latency log (opossum's own Status logs one entry per call)", async (t) => {
    const clock = clockFor(t);
    const window = new CountingWindow({ rollingCountTimeout: 10_000, rollingCountBuckets: 10, clock });
    // An error rate can never be over 100%: the circuit stays closed and every call runs.
    const breaker = breakerOn(window, { errorThresholdPercentage: 100 });
    t.after(() => breaker.shutdown());
    for (let i = 0; i < 100; i++) await breaker.fire(i % 4 === 0).catch(() => {});
    assert.equal(window.stats.fires, 100);
    assert.equal(window.stats.successes, 75);
    assert.equal(window.stats.failures, 25);
    // The plugin's fast path for a closed circuit's success: the same two counts, no events.
    for (let i = 0; i < 5; i++) window.countSuccess();
    assert.equal(window.stats.fires, 105);
    assert.equal(window.stats.successes, 80);
    assert.deepEqual(
      window.window.map((bucket) => bucket.latencyTimes.length),
      window.window.map(() => 0),
    );
    // The control: opossum's own window, same calls.
    const own = new CircuitBreaker(async () => {}, { timeout: false, rollingPercentilesEnabled: false, enableSnapshots: false });
    t.after(() => own.shutdown());
    for (let i = 0; i < 100; i++) await own.fire();
    assert.equal(own.status.window[0]!.latencyTimes.length, 100);
  });

  test('its counts open the circuit as opossum decides: past volumeThreshold, at the error rate', async (t) => {
    const clock = clockFor(t);
    const breaker = breakerOn(new CountingWindow({ rollingCountTimeout: 10_000, rollingCountBuckets: 10, clock }), { errorThresholdPercentage: 50, volumeThreshold: 6 });
    t.after(() => breaker.shutdown());
    for (const fail of [false, false, false, true, true]) await breaker.fire(fail).catch(() => {});
    assert.equal(breaker.opened, false, 'below volumeThreshold');
    await breaker.fire(false);
    await breaker.fire(true).catch(() => {});
    assert.equal(breaker.opened, false, '3 of 7 failed');
    await breaker.fire(true).catch(() => {});
    assert.equal(breaker.opened, false, '4 of 8 failed: 50% is not over the threshold');
    await breaker.fire(true).catch(() => {});
    assert.equal(breaker.opened, true, '5 of 9 failed');
  });

  test('buckets turn on one shared timer per bucket length, stopped with its last window; counts always land in the current bucket', async (t) => {
    const clock = clockFor(t);
    const windows = [1, 2].map(() => new CountingWindow({ rollingCountTimeout: 100, rollingCountBuckets: 2, clock }));
    const other = new CountingWindow({ rollingCountTimeout: 1000, rollingCountBuckets: 10, clock });
    assert.equal(clock.running, 2, 'one timer for the 50 ms buckets, one for the 100 ms ones');
    const breakers = windows.map((window) => breakerOn(window));
    for (const breaker of breakers) await breaker.fire(false);
    assert.deepEqual(windows.map((window) => window.stats.fires), [1, 1]);
    // After the window's length, the counts are gone: the buckets turned.
    await waitFor(() => windows.every((window) => window.stats.fires === 0), 5000, 'the window to turn');
    // A count after a turn lands in the new current bucket.
    await breakers[0]!.fire(false);
    assert.equal(windows[0]!.window[0]!.fires, 1);
    // disable() and enable() put opossum's own listener last on the clock: counts must still
    // follow the bucket opossum made current.
    breakers[1]!.disable();
    breakers[1]!.enable();
    const before = windows[1]!.window[0]!;
    await waitFor(() => windows[1]!.window[0] !== before, 5000, 'a turn');
    windows[1]!.countSuccess();
    assert.equal(windows[1]!.window[0]!.fires, 1);
    for (const breaker of breakers) breaker.shutdown();
    assert.equal(clock.running, 1, "the 50 ms timer stopped with its last window");
    other.shutdown();
    assert.equal(clock.running, 0);
  });

  test('a window of one bucket counts into the bucket that opossum keeps, and opens the circuit', async (t) => {
    const clock = clockFor(t);
    const window = new CountingWindow({ rollingCountTimeout: 200, rollingCountBuckets: 1, clock });
    const breaker = breakerOn(window, { errorThresholdPercentage: 50, volumeThreshold: 4 });
    t.after(() => breaker.shutdown());
    const first = window.window[0]!;
    await waitFor(() => window.window[0] !== first, 5000, 'a turn');
    for (const fail of [false, true, true, true]) await breaker.fire(fail).catch(() => {});
    assert.equal(breaker.opened, true);
  });
});

describe('circuit breaker: what is not a failure', () => {
  test('4xx answers are the client\'s: an instance answering 404 to everything keeps its circuit closed', LIMIT, async (t) => {
    const notFound = await startUpstream(t, (_req, res) => void res.writeHead(404).end('no such thing'));
    const { gateway, url } = await startGateway(t, config([notFound.url], { volumeThreshold: 3 }));
    const events = recordCircuitEvents(gateway);
    const answers = await sendMany(url, 20);
    assert.ok(answers.every((a) => a.status === 404));
    assert.deepEqual(events, []);
    assert.equal(instanceAt(gateway, notFound.url).circuit, 'closed');
    assert.equal(notFound.seen.length, 20);
  });

  test('clients hanging up before a slow answer say nothing of the instance: eight of them leave the circuit closed', LIMIT, async (t) => {
    const slow = await switchUpstream(t, 'slow', 'hold');
    const { gateway, url } = await startGateway(t, config([slow.url], { volumeThreshold: 3 }));
    const events = recordCircuitEvents(gateway);
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const controller = new AbortController();
        const pending = fetch(`${url}/api/slow/${i}`, { signal: controller.signal }).catch(() => undefined);
        await waitFor(() => slow.held.length > i, 5000, 'the request to reach the instance');
        controller.abort();
        await pending;
      }),
    );
    await waitFor(() => gateway.inflight === 0, 5000, 'the aborted requests to end');
    for (const res of slow.held) res.end('too late');
    slow.state.mode = 'ok';
    assert.deepEqual(events, []);
    assert.equal(instanceAt(gateway, slow.url).circuit, 'closed');
    assert.equal((await send(`${url}/api/after`)).status, 200);
  });
});
