import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RoundRobinBalancer } from '../../lib/balancers/round-robin.js';
import type { Instance } from '../../lib/registry/registry.js';
import { startGateway } from '../helpers.js';
import { drive, get, makeService, pickMany, specs, startNamedUpstreams, tally } from './fixtures.js';

/** Maps picked ids to the letters a, b, c, ... in instance order. */
function lettersOf(instances: readonly Instance[]): (ids: readonly string[]) => string {
  const letter = new Map(instances.map((inst, i) => [inst.id, String.fromCharCode(97 + i)]));
  return (ids) => ids.map((id) => letter.get(id)).join('');
}

describe('round-robin (unit)', () => {
  test('weights 3:1 give a a b a, cycle after cycle', () => {
    const { service, instances } = makeService({}, specs(2, (i) => (i === 0 ? 3 : 1)));
    const rr = new RoundRobinBalancer(service);
    const letters = lettersOf(instances);
    assert.equal(letters(pickMany(rr, service.candidates(), 12)), 'aaba'.repeat(3));
  });

  test('weights 5:1:1 give nginx’s smooth sequence a a b a c a a (never five a in a row)', () => {
    const { service, instances } = makeService({}, specs(3, (i) => (i === 0 ? 5 : 1)));
    const rr = new RoundRobinBalancer(service);
    assert.equal(lettersOf(instances)(pickMany(rr, service.candidates(), 14)), 'aabacaa'.repeat(2));
  });

  test('equal weights give an exact rotation in instance order', () => {
    const { service, instances } = makeService({}, specs(3));
    const rr = new RoundRobinBalancer(service);
    assert.equal(lettersOf(instances)(pickMany(rr, service.candidates(), 30)), 'abc'.repeat(10));
  });

  test('mixed weights 5:3:2 are exact over whole cycles', () => {
    const { service, instances } = makeService({}, specs(3, (i) => [5, 3, 2][i]!));
    const rr = new RoundRobinBalancer(service);
    const counts = tally(lettersOf(instances)(pickMany(rr, service.candidates(), 1000)));
    assert.deepEqual(Object.fromEntries(counts), { a: 500, b: 300, c: 200 });
  });

  test('a cycle too long to precompute (7001:3000) is still exact and smooth, picked step by step', () => {
    const { service, instances } = makeService({}, specs(2, (i) => (i === 0 ? 7001 : 3000)));
    const rr = new RoundRobinBalancer(service);
    const seq = lettersOf(instances)(pickMany(rr, service.candidates(), 10_001));
    assert.deepEqual(Object.fromEntries(tally(seq)), { a: 7001, b: 3000 });
    // smooth: the heavier one never runs more than ceil(7001 / 3000) = 3 picks in a row
    assert.equal(/aaaa/.test(seq), false);
    assert.equal(/bb/.test(seq), false);
  });

  test('a candidate list narrowed per request (a new array every time) still rotates exactly', () => {
    const { service, instances } = makeService({}, specs(4));
    const rr = new RoundRobinBalancer(service);
    // a select-stage plugin that drops the last instance hands the balancer a fresh array per request
    const narrowed = (): Instance[] => service.candidates().slice(0, 3);
    assert.equal(lettersOf(instances)(pickMany(rr, narrowed, 12)), 'abc'.repeat(4));
  });

  test('a retry avoids the instances already tried, and still answers when all were tried', () => {
    const { service, instances } = makeService({}, specs(3, (i) => (i === 0 ? 3 : 1)));
    const [a, b, c] = instances as [Instance, Instance, Instance];
    const rr = new RoundRobinBalancer(service);
    const candidates = service.candidates();
    for (let i = 0; i < 20; i++) assert.notEqual(rr.pick(candidates, undefined, new Set([a])), a);
    for (let i = 0; i < 20; i++) assert.equal(rr.pick(candidates, undefined, new Set([a, b])), c);
    assert.ok(instances.includes(rr.pick(candidates, undefined, new Set(instances))));
  });

  test('follows membership and health changes: a new instance joins the rotation, an unhealthy one leaves it', () => {
    const { registry, service, instances } = makeService({}, specs(2));
    const rr = new RoundRobinBalancer(service);
    const [a] = instances as [Instance, Instance];
    const c = registry.upsertInstance('svc', { url: 'http://10.0.9.9:8080' });
    const all = [...instances, c];
    assert.equal(lettersOf(all)(pickMany(rr, () => service.candidates(), 9)), 'abc'.repeat(3));
    registry.setHealth(a, 'unhealthy', 'test');
    assert.equal(lettersOf(all)(pickMany(rr, () => service.candidates(), 6)), 'bc'.repeat(3));
  });
});

describe('round-robin (through a gateway)', () => {
  test('weights 3:1: exactly 300/100 over 400 requests, in the pattern a a b a', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b']);
    const { url } = await startGateway(t, {
      services: { api: { balancer: 'round-robin', instances: [{ url: up.a!.url, weight: 3 }, { url: up.b!.url, weight: 1 }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const first: string[] = [];
    for (let i = 0; i < 8; i++) first.push((await get(`${url}/api/x`)).name);
    assert.equal(first.join(''), 'aabaaaba');
    const rest = await drive(`${url}/api/x`, 392, 8);
    assert.ok(rest.every((r) => r.status === 200));
    assert.equal(up.a!.seen.length, 300);
    assert.equal(up.b!.seen.length, 100);
  });

  test('equal weights: an exact rotation, and exact counts under concurrency', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b', 'c']);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: up.a!.url }, { url: up.b!.url }, { url: up.c!.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const order: string[] = [];
    for (let i = 0; i < 12; i++) order.push((await get(`${url}/api/x`)).name);
    assert.equal(order.join(''), 'abc'.repeat(4));
    await drive(`${url}/api/x`, 288, 8);
    assert.deepEqual([up.a!.seen.length, up.b!.seen.length, up.c!.seen.length], [100, 100, 100]);
  });

  test('an unhealthy instance leaves the rotation and rejoins when healthy', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b', 'c']);
    const { url, gateway } = await startGateway(t, {
      services: { api: { instances: [{ url: up.a!.url }, { url: up.b!.url }, { url: up.c!.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const b = gateway.registry.getService('api')!.instances.get(`127.0.0.1:${up.b!.port}`)!;
    gateway.registry.setHealth(b, 'unhealthy', 'test');
    const without = await drive(`${url}/api/x`, 20, 4);
    assert.deepEqual(Object.fromEntries(tally(without.map((r) => r.name))), { a: 10, c: 10 });
    gateway.registry.setHealth(b, 'healthy', 'test');
    const back = await drive(`${url}/api/x`, 30, 4);
    assert.deepEqual(Object.fromEntries(tally(back.map((r) => r.name))), { a: 10, b: 10, c: 10 });
  });
});
