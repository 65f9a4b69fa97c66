import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { LeastRequestBalancer } from '../../lib/balancers/least-request.js';
import { RandomBalancer } from '../../lib/balancers/random.js';
import { RoundRobinBalancer } from '../../lib/balancers/round-robin.js';
import { SLOW_START_FLOOR, weightFunction } from '../../lib/balancers/weights.js';
import type { Instance } from '../../lib/registry/registry.js';
import { seededRandom, startGateway } from '../helpers.js';
import { drive, get, makeService, pickMany, specs, startNamedUpstreams, tally } from './fixtures.js';

const HOUR = 3_600_000;

/** An old instance `a` (ready an hour ago) and one `b` that became ready at `t0`. */
function oldAndNew(policy: { balancer?: string; slowStart?: string }, weights: [number, number] = [1, 1]) {
  const made = makeService(policy, specs(2, (i) => weights[i]!));
  const [a, b] = made.instances as [Instance, Instance];
  const t0 = Date.now();
  a.readySince = t0 - HOUR;
  b.readySince = t0;
  return { ...made, a, b, t0 };
}

const count = (picks: readonly string[], inst: Instance): number => tally(picks).get(inst.id) ?? 0;

describe('slow start (unit)', () => {
  test('weightFunction ramps linearly over the window from a 10% floor', () => {
    const { service, b, t0 } = oldAndNew({ slowStart: '10s' }, [1, 4]);
    const at = (ms: number) => weightFunction(service, () => t0 + ms)(b);
    assert.equal(SLOW_START_FLOOR, 0.1);
    assert.equal(at(0), 0.4); // 10% of 4
    assert.equal(at(500), 0.4); // 5% of the window is still under the floor
    assert.equal(at(2_500), 1);
    assert.equal(at(5_000), 2);
    assert.equal(at(10_000), 4);
    assert.equal(at(HOUR), 4);
  });

  test('without slowStart the weight is the configured weight from the first moment', () => {
    const { service, b, t0 } = oldAndNew({}, [1, 4]);
    assert.equal(weightFunction(service, () => t0)(b), 4);
  });

  test('round-robin: a new instance gets 10% of its weight share at first, more halfway, all of it after the window', () => {
    const { service, a, b, t0 } = oldAndNew({ slowStart: '10s' });
    let now = t0;
    const rr = new RoundRobinBalancer(service, () => now);
    // weights 1 : 0.1 -> b gets 1 pick in 11
    const start = pickMany(rr, service.candidates(), 1100);
    assert.ok(Math.abs(count(start, b) - 100) <= 1, `at first b got ${count(start, b)} of 1100`);
    now = t0 + 5_000; // 1 : 0.5 -> 1 in 3
    const half = pickMany(rr, service.candidates(), 1200);
    assert.ok(Math.abs(count(half, b) - 400) <= 1, `halfway b got ${count(half, b)} of 1200`);
    now = t0 + 10_000; // 1 : 1 -> an exact rotation again
    const after = pickMany(rr, service.candidates(), 100);
    assert.equal(count(after, a), 50);
    assert.equal(count(after, b), 50);
    for (let i = 1; i < after.length; i++) assert.notEqual(after[i], after[i - 1], 'equal weights alternate');
  });

  test('round-robin: the ramp scales the configured weight (3 and 3: the new one starts at 0.3)', () => {
    const { service, b, t0 } = oldAndNew({ slowStart: '10s' }, [3, 3]);
    const rr = new RoundRobinBalancer(service, () => t0);
    const picks = pickMany(rr, service.candidates(), 1100);
    assert.ok(Math.abs(count(picks, b) - 100) <= 1, `b got ${count(picks, b)} of 1100`);
  });

  test('least-request: the new instance weighs 10% of its weight, so it wins only against 10+ requests in flight', () => {
    const { service, a, b } = oldAndNew({ balancer: 'least-request', slowStart: '1h' });
    const lr = new LeastRequestBalancer(service, seededRandom(1));
    assert.equal(count(pickMany(lr, service.candidates(), 200), a), 200); // 1/1 vs 0.1/1
    a.inflight = 9; // 1/10 vs 0.1/1: a tie
    const tie = count(pickMany(lr, service.candidates(), 2000), b);
    assert.ok(tie > 900 && tie < 1100, `the tie gave b ${tie} of 2000`);
    a.inflight = 10; // 1/11 vs 0.1/1
    assert.equal(count(pickMany(lr, service.candidates(), 200), b), 200);
    // after the window: equal again
    a.inflight = 0;
    b.readySince -= 2 * HOUR;
    const after = count(pickMany(lr, service.candidates(), 2000), b);
    assert.ok(after > 900 && after < 1100, `after the window b got ${after} of 2000`);
  });

  test('random: whatever the ramp did, the new instance gets its full share once the window has passed', () => {
    // slow start is specified for round-robin and least-request; random must at least not keep a
    // ramped-down weight after the window (with or without a ramp, b's share is then 50%)
    const { service, b } = oldAndNew({ balancer: 'random', slowStart: '10s' });
    const rnd = new RandomBalancer(service, seededRandom(2));
    pickMany(rnd, service.candidates(), 100); // traffic during the window
    b.readySince -= 2 * HOUR; // the window has passed; the candidate list is unchanged
    const after = count(pickMany(rnd, service.candidates(), 4000), b);
    assert.ok(after > 1800 && after < 2200, `after the window b got ${after} of 4000 (50% expected)`);
  });

  test('an instance that turns healthy again starts its ramp over', () => {
    const { registry, service, a } = oldAndNew({ slowStart: '10s' });
    const before = Date.now();
    registry.setHealth(a, 'unhealthy', 'test');
    registry.setHealth(a, 'healthy', 'test');
    assert.ok(a.readySince >= before);
    assert.equal(weightFunction(service, () => a.readySince + 2_000)(a), 0.2);
  });
});

describe('slow start (through a gateway)', () => {
  async function setup(t: TestContext, balancer: string) {
    const up = await startNamedUpstreams(t, ['a', 'b']);
    const { url, gateway } = await startGateway(
      t,
      {
        // a window of an hour keeps the new instance at the floor for the whole test, whatever the machine's speed
        services: { api: { balancer, slowStart: '1h', instances: [{ url: up.a!.url }] } },
        routes: [{ prefix: '/api', service: 'api' }],
      },
      { random: seededRandom(3) },
    );
    const a = gateway.registry.getService('api')!.instances.get(`127.0.0.1:${up.a!.port}`)!;
    a.readySince -= 2 * HOUR; // `a` has been serving for a while
    const b = gateway.registry.upsertInstance('api', { url: up.b!.url, source: 'admin' });
    return { up, url, b };
  }

  test('round-robin: a newly added instance gets 10% of its share (10 of 110), then its full share', async (t) => {
    const { up, url, b } = await setup(t, 'round-robin');
    await drive(`${url}/api/x`, 110, 4);
    assert.ok(Math.abs(up.b!.seen.length - 10) <= 1, `b saw ${up.b!.seen.length} of 110`);
    b.readySince -= 2 * HOUR; // the window has passed
    const after = await drive(`${url}/api/x`, 100, 4);
    const toB = after.filter((r) => r.name === 'b').length;
    assert.ok(Math.abs(toB - 50) <= 1, `after the window b got ${toB} of 100`);
  });

  test('least-request: an idle new instance loses every tie-free comparison at first, then shares evenly', async (t) => {
    const { up, url, b } = await setup(t, 'least-request');
    for (let i = 0; i < 40; i++) assert.equal((await get(`${url}/api/x`)).name, 'a');
    assert.equal(up.b!.seen.length, 0);
    b.readySince -= 2 * HOUR;
    const after = await drive(`${url}/api/x`, 100, 1);
    const toB = after.filter((r) => r.name === 'b').length;
    assert.ok(toB >= 30 && toB <= 70, `after the window b got ${toB} of 100`);
  });
});
