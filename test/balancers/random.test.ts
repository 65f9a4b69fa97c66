import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RandomBalancer } from '../../lib/balancers/random.js';
import type { Instance } from '../../lib/registry/registry.js';
import { seededRandom, startGateway } from '../helpers.js';
import { drive, get, makeService, pickMany, specs, startNamedUpstreams, tally } from './fixtures.js';

/** Share of each instance (by index) over `n` picks, in percent. */
function shares(balancer: RandomBalancer, instances: readonly Instance[], candidates: readonly Instance[], n: number): number[] {
  const counts = tally(pickMany(balancer, candidates, n));
  return instances.map((inst) => ((counts.get(inst.id) ?? 0) * 100) / n);
}

function assertNear(actual: number, expected: number, tolerance: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what}: ${actual.toFixed(2)}% is not within ${expected}±${tolerance}%`);
}

describe('random (unit)', () => {
  test('weights 3:1: 75% / 25% within ±5 points over 4000 seeded picks', () => {
    const { service, instances } = makeService({ balancer: 'random' }, specs(2, (i) => (i === 0 ? 3 : 1)));
    const [a, b] = shares(new RandomBalancer(service, seededRandom(1)), instances, service.candidates(), 4000);
    assertNear(a!, 75, 5, 'a');
    assertNear(b!, 25, 5, 'b');
  });

  test('equal weights are uniform: 4 instances get 25% each within ±5 points', () => {
    const { service, instances } = makeService({ balancer: 'random' }, specs(4));
    const got = shares(new RandomBalancer(service, seededRandom(2)), instances, service.candidates(), 4000);
    got.forEach((share, i) => assertNear(share, 25, 5, `instance ${i}`));
  });

  test('mixed weights 1:2:3:4 follow the weights within ±1.5 points over 20000 picks (alias table)', () => {
    const { service, instances } = makeService({ balancer: 'random' }, specs(4, (i) => i + 1));
    const got = shares(new RandomBalancer(service, seededRandom(3)), instances, service.candidates(), 20_000);
    got.forEach((share, i) => assertNear(share, (i + 1) * 10, 1.5, `weight ${i + 1}`));
  });

  test('one heavy instance among many light ones: 100 vs ten of 1 gives 90.9% within ±1.5 points', () => {
    const { service, instances } = makeService({ balancer: 'random' }, specs(11, (i) => (i === 0 ? 100 : 1)));
    const got = shares(new RandomBalancer(service, seededRandom(4)), instances, service.candidates(), 20_000);
    assertNear(got[0]!, (100 / 110) * 100, 1.5, 'heavy');
    for (const share of got.slice(1)) assertNear(share, (1 / 110) * 100, 0.6, 'light');
  });

  test('the picks come from the injected random source: same seed, same sequence', () => {
    const { service } = makeService({ balancer: 'random' }, specs(5, (i) => i + 1));
    const run = (seed: number): string[] => pickMany(new RandomBalancer(service, seededRandom(seed)), service.candidates(), 50);
    assert.deepEqual(run(9), run(9));
    assert.notDeepEqual(run(9), run(10));
  });

  test('a retry avoids the instances already tried, and still answers when all were tried', () => {
    const { service, instances } = makeService({ balancer: 'random' }, specs(3, (i) => (i === 0 ? 50 : 1)));
    const [a, b, c] = instances as [Instance, Instance, Instance];
    const rnd = new RandomBalancer(service, seededRandom(5));
    const candidates = service.candidates();
    const picked = tally(Array.from({ length: 400 }, () => rnd.pick(candidates, undefined, new Set([a])).id));
    assert.equal(picked.has(a.id), false);
    assert.ok((picked.get(b.id) ?? 0) > 0 && (picked.get(c.id) ?? 0) > 0, 'both remaining instances are used');
    assert.ok(instances.includes(rnd.pick(candidates, undefined, new Set(instances))));
  });
});

describe('random (through a gateway)', () => {
  test('weights 3:1 with a seeded random: a gets 75% within ±8 points of 400 requests', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b']);
    const { url } = await startGateway(
      t,
      {
        services: { api: { balancer: 'random', instances: [{ url: up.a!.url, weight: 3 }, { url: up.b!.url, weight: 1 }] } },
        routes: [{ prefix: '/api', service: 'api' }],
      },
      { random: seededRandom(11) },
    );
    await drive(`${url}/api/x`, 400, 8);
    assert.equal(up.a!.seen.length + up.b!.seen.length, 400);
    assertNear((up.a!.seen.length * 100) / 400, 75, 8, 'a');
  });

  test('equal weights spread evenly: 3 instances get 100±25 of 300 requests', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b', 'c']);
    const { url } = await startGateway(
      t,
      {
        services: { api: { balancer: 'random', instances: [{ url: up.a!.url }, { url: up.b!.url }, { url: up.c!.url }] } },
        routes: [{ prefix: '/api', service: 'api' }],
      },
      { random: seededRandom(12) },
    );
    await drive(`${url}/api/x`, 300, 8);
    for (const name of ['a', 'b', 'c']) {
      const n = up[name]!.seen.length;
      assert.ok(n >= 75 && n <= 125, `${name} got ${n} of 300`);
    }
  });

  test('GatewayOptions.random reaches the balancer: two gateways with one seed route identically', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b', 'c']);
    const config = {
      services: { api: { balancer: 'random', instances: [{ url: up.a!.url }, { url: up.b!.url, weight: 2 }, { url: up.c!.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    };
    const sequence = async (seed: number): Promise<string> => {
      const { url } = await startGateway(t, config, { random: seededRandom(seed) });
      const names: string[] = [];
      for (let i = 0; i < 40; i++) names.push((await get(`${url}/api/x`)).name);
      return names.join('');
    };
    const first = await sequence(21);
    assert.equal(await sequence(21), first);
    assert.notEqual(await sequence(22), first);
  });
});
