import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EwmaBalancer } from '../../lib/balancers/ewma.js';
import type { Instance } from '../../lib/registry/registry.js';
import { echo, seededRandom, startGateway, startUpstream, unusedPort, type Handler } from '../helpers.js';
import { drive, driveInWorker, makeService, pickMany, specs, tally } from './fixtures.js';

/** An EWMA balancer on a clock the test moves. */
function clocked(options: { defaultRtt?: number; decay?: number; seed?: number } = {}) {
  let now = 1_000;
  const ewma = new EwmaBalancer({ defaultRtt: options.defaultRtt, decay: options.decay, random: seededRandom(options.seed ?? 1), now: () => now });
  return {
    ewma,
    at(t: number) {
      now = 1_000 + t;
      return ewma;
    },
  };
}

function near(actual: number, expected: number, tolerance = 1e-6): void {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${actual} is not ${expected} (±${tolerance})`);
}

const share = (picks: readonly string[], inst: Instance): number => ((tally(picks).get(inst.id) ?? 0) * 100) / picks.length;

describe('ewma (unit)', () => {
  test('an instance without samples costs the default RTT (30 ms) times (in-flight + 1)', () => {
    const { instances } = makeService({ balancer: 'ewma' }, specs(1));
    const inst = instances[0]!;
    const { ewma } = clocked();
    near(ewma.cost(inst), 30);
    inst.inflight = 2;
    near(ewma.cost(inst), 90);
    near(clocked({ defaultRtt: 50 }).ewma.cost(inst), 150);
  });

  test('peak: a slow sample raises the estimate at once, then it decays with time (1/e per decay constant of 10 s)', () => {
    const { instances } = makeService({ balancer: 'ewma' }, specs(1));
    const inst = instances[0]!;
    const clock = clocked();
    clock.at(0).observe(inst, 10, false);
    near(clock.at(0).cost(inst), 10);
    clock.at(1).observe(inst, 100, false);
    near(clock.at(1).cost(inst), 100);
    near(clock.at(1 + 10_000).cost(inst), 100 / Math.E, 1e-9);
    near(clock.at(1 + 20_000).cost(inst), 100 / Math.E ** 2, 1e-9);
    assert.ok(clock.at(1 + 60_000).cost(inst) < 0.3, 'an idle instance decays toward zero so it gets tried again');
  });

  test('peak: fast samples right after a slow one barely move it; fast samples over time bring it down toward them', () => {
    const { instances } = makeService({ balancer: 'ewma' }, specs(1));
    const inst = instances[0]!;
    const clock = clocked();
    clock.at(0).observe(inst, 150, false);
    clock.at(1).observe(inst, 10, false);
    assert.ok(clock.at(1).cost(inst) > 149, `one fast sample 1 ms after the peak took it to ${clock.at(1).cost(inst)}`);
    let previous = clock.at(1).cost(inst);
    for (let s = 1; s <= 30; s++) {
      clock.at(s * 1000).observe(inst, 10, false);
      const cost = clock.at(s * 1000).cost(inst);
      assert.ok(cost < previous, `sample ${s}: ${cost} did not come down from ${previous}`);
      assert.ok(cost > 10, `sample ${s}: ${cost} went below the samples`);
      previous = cost;
    }
    // 30 samples 1 s apart with a 10 s decay: 10 + 140 e^-3 ≈ 17
    near(previous, 10 + 140 * Math.exp(-3), 0.5);
  });

  test('the decay constant is an option: 1 s decays as fast per second as 10 s does per 10 seconds', () => {
    const { instances } = makeService({ balancer: 'ewma' }, specs(1));
    const inst = instances[0]!;
    const clock = clocked({ decay: 1000 });
    clock.at(0).observe(inst, 80, false);
    near(clock.at(1000).cost(inst), 80 / Math.E, 1e-9);
  });

  test('a failed attempt counts as at least 10 default RTTs, however fast it failed', () => {
    const { instances } = makeService({ balancer: 'ewma' }, specs(2));
    const [refused, slowFailure] = instances as [Instance, Instance];
    const clock = clocked();
    clock.at(0).observe(refused, 1, true);
    clock.at(0).observe(slowFailure, 900, true);
    near(clock.at(0).cost(refused), 300);
    near(clock.at(0).cost(slowFailure), 900);
  });

  test('power of two choices on cost: the cheaper of two wins, and in-flight requests count', () => {
    const { service, instances } = makeService({ balancer: 'ewma' }, specs(2));
    const [a, b] = instances as [Instance, Instance];
    const clock = clocked();
    clock.at(0).observe(a, 10, false);
    clock.at(0).observe(b, 50, false);
    assert.equal(share(pickMany(clock.at(0), service.candidates(), 200), a), 100);
    a.inflight = 5; // 10 x 6 = 60 > 50
    assert.equal(share(pickMany(clock.at(0), service.candidates(), 200), b), 100);
  });

  test('over 5 instances the costliest is never picked and the cheapest most often', () => {
    const { service, instances } = makeService({ balancer: 'ewma' }, specs(5));
    const clock = clocked({ seed: 3 });
    instances.forEach((inst, i) => clock.at(0).observe(inst, 10 * (i + 1), false));
    const picks = pickMany(clock.at(0), service.candidates(), 8000);
    [40, 30, 20, 10, 0].forEach((expected, i) => {
      const s = share(picks, instances[i]!);
      assert.ok(Math.abs(s - expected) <= 3, `instance ${i}: ${s.toFixed(1)}%, expected ${expected}%`);
    });
  });

  test('a retry avoids the instances already tried, even the cheapest', () => {
    const { service, instances } = makeService({ balancer: 'ewma' }, specs(3));
    const [a, b, c] = instances as [Instance, Instance, Instance];
    const clock = clocked();
    clock.at(0).observe(a, 1, false);
    clock.at(0).observe(b, 500, false);
    clock.at(0).observe(c, 900, false);
    for (let i = 0; i < 50; i++) assert.equal(clock.at(0).pick(service.candidates(), undefined, new Set([a])), b);
    assert.ok(instances.includes(clock.at(0).pick(service.candidates(), undefined, new Set(instances))));
  });
});

describe('ewma (through a gateway)', () => {
  const config = (urls: readonly string[]) => ({
    services: { api: { balancer: 'ewma', instances: urls.map((url) => ({ url })) } },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  const delayed = (ms: number, handler: Handler): Handler => (req, res) => void setTimeout(() => handler(req, res), ms);

  test('prefers the faster instance: after warm-up over 80% go to it when the other takes 150 ms', async (t) => {
    const fast = await startUpstream(t, echo('fast'));
    const slow = await startUpstream(t, delayed(150, echo('slow')));
    const { url } = await startGateway(t, config([slow.url, fast.url]), { random: seededRandom(5) });
    await driveInWorker(`${url}/api/x`, 20, 4); // warm-up: both get sampled
    const [fastBefore, slowBefore] = [fast.seen.length, slow.seen.length];
    const statuses = await driveInWorker(`${url}/api/x`, 200, 4);
    assert.ok(statuses.every((s) => s === 200));
    const toFast = ((fast.seen.length - fastBefore) * 100) / 200;
    assert.ok(toFast > 80, `fast got ${toFast.toFixed(1)}% after warm-up (slow ${slow.seen.length - slowBefore} after, ${slowBefore} in warm-up)`);
  });

  // In both tests the healthy instance answers slower than the default RTT (30 ms), so the broken
  // one, still unsampled, is tried first: what its failure is counted as decides what happens next.
  test('a refused connection does not look fast: a dead instance is tried once, then avoided', async (t) => {
    const live = await startUpstream(t, delayed(40, echo('live')));
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const { url } = await startGateway(t, config([live.url, dead]), { random: seededRandom(6) });
    const results = await drive(`${url}/api/x`, 50, 1);
    const failed = results.filter((r) => r.status === 502).length;
    assert.ok(failed >= 1, 'the dead instance was never tried');
    assert.ok(failed <= 3, `${failed} of 50 requests went to the dead instance`);
  });

  test('a quick 500 counts as a failure: an instance answering 500 at once loses to a slower healthy one', async (t) => {
    const broken = await startUpstream(t, (_req, res) => res.writeHead(500).end());
    const healthy = await startUpstream(t, delayed(40, echo('healthy')));
    const { url } = await startGateway(t, config([broken.url, healthy.url]), { random: seededRandom(7) });
    const results = await drive(`${url}/api/x`, 50, 1);
    const errors = results.filter((r) => r.status === 500).length;
    assert.ok(errors >= 1, 'the instance answering 500 was never tried');
    assert.ok(errors <= 3, `${errors} of 50 requests went to the instance answering 500`);
  });
});
