import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { ConsistentHashBalancer, POINTS_PER_WEIGHT } from '../../lib/balancers/consistent-hash.js';
import { keyReader } from '../../lib/balancers/hash-key.js';
import type { Gateway } from '../../lib/core/gateway.js';
import type { Instance } from '../../lib/registry/registry.js';
import { startGateway } from '../helpers.js';
import { fakeCtx, get, makeService, pickMany, specs, startNamedUpstreams, tally } from './fixtures.js';

const KEYS = Array.from({ length: 200 }, (_, i) => `user-${i}`);
const byHeader = (key: string) => fakeCtx({ headers: { 'x-user-id': key } });

/** Which instance id each key maps to. */
function owners(balancer: ConsistentHashBalancer, candidates: readonly Instance[], keys: readonly string[] = KEYS): Map<string, string> {
  return new Map(keys.map((k) => [k, balancer.pick(candidates, byHeader(k)).id]));
}

function hashService(count: number, weight: number | ((i: number) => number) = 1, reverse = false) {
  const list = specs(count, weight);
  return makeService({ balancer: 'consistent-hash', hashOn: 'header:x-user-id' }, reverse ? list.reverse() : list);
}

describe('consistent-hash (unit)', () => {
  test('the same key always maps to the same instance, and keys spread over every instance', () => {
    const { service, instances } = hashService(5);
    const ch = new ConsistentHashBalancer(service);
    const first = owners(ch, service.candidates());
    for (let round = 0; round < 3; round++) assert.deepEqual(owners(ch, service.candidates()), first);
    const spread = tally(owners(ch, service.candidates(), Array.from({ length: 5000 }, (_, i) => `k${i}`)).values());
    for (const inst of instances) {
      const share = ((spread.get(inst.id) ?? 0) * 100) / 5000;
      assert.ok(share > 10 && share < 30, `${inst.id} owns ${share}% of the keys (expected about 20%)`);
    }
  });

  test('the ring has weight x 100 points per instance, and weights 3:1 own about 75% / 25% of the keys', () => {
    const { service, instances } = hashService(2, (i) => (i === 0 ? 3 : 1));
    const ch = new ConsistentHashBalancer(service);
    ch.rebuild();
    assert.equal(ch.size, 4 * POINTS_PER_WEIGHT);
    const spread = tally(owners(ch, service.candidates(), Array.from({ length: 4000 }, (_, i) => `k${i}`)).values());
    const heavy = ((spread.get(instances[0]!.id) ?? 0) * 100) / 4000;
    assert.ok(Math.abs(heavy - 75) <= 7, `weight 3 owns ${heavy}%`);
  });

  test('the ring depends only on the instances: another registry, instances listed in reverse, maps keys identically', () => {
    const one = hashService(5);
    const two = hashService(5, 1, true);
    assert.notEqual(one.instances[0]!.id, two.instances[0]!.id);
    const a = owners(new ConsistentHashBalancer(one.service), one.service.candidates());
    const b = owners(new ConsistentHashBalancer(two.service), two.service.candidates());
    assert.deepEqual(b, a);
  });

  test('removing one of 5 instances moves only the keys it owned', () => {
    const { registry, service, instances } = hashService(5);
    const ch = new ConsistentHashBalancer(service);
    const keys = Array.from({ length: 1000 }, (_, i) => `k${i}`);
    const before = owners(ch, service.candidates(), keys);
    const gone = instances[2]!;
    const owned = [...before.values()].filter((id) => id === gone.id).length;
    assert.ok(owned > 50, `the removed instance owned only ${owned} keys`);
    registry.removeInstance('svc', gone.id);
    const after = owners(ch, service.candidates(), keys);
    for (const [key, id] of before) {
      if (id === gone.id) assert.notEqual(after.get(key), gone.id);
      else assert.equal(after.get(key), id, `key ${key} moved from ${id} to ${after.get(key)}`);
    }
  });

  test('adding an instance takes keys only for itself', () => {
    const { registry, service } = hashService(4);
    const ch = new ConsistentHashBalancer(service);
    const keys = Array.from({ length: 1000 }, (_, i) => `k${i}`);
    const before = owners(ch, service.candidates(), keys);
    const added = registry.upsertInstance('svc', { url: 'http://10.9.9.9:8080' });
    const after = owners(ch, service.candidates(), keys);
    let taken = 0;
    for (const [key, id] of before) {
      if (after.get(key) === added.id) taken++;
      else assert.equal(after.get(key), id, `key ${key} moved between two old instances`);
    }
    assert.ok(taken > 50, `the new instance took only ${taken} keys`);
  });

  test('a weight change rebuilds the ring', () => {
    const { registry, service, instances } = hashService(2);
    const ch = new ConsistentHashBalancer(service);
    const keys = Array.from({ length: 2000 }, (_, i) => `k${i}`);
    const share = () => ([...owners(ch, service.candidates(), keys).values()].filter((id) => id === instances[0]!.id).length * 100) / keys.length;
    assert.ok(Math.abs(share() - 50) < 12);
    registry.upsertInstance('svc', { url: instances[0]!.url, weight: 9 });
    const after = share();
    assert.ok(Math.abs(after - 90) < 6, `after weight 9:1 the first owns ${after}%`);
    assert.equal(ch.size, 10 * POINTS_PER_WEIGHT);
  });

  test('an unhealthy owner: its keys walk on to the next instance on the ring (where they would go without it), and come back', () => {
    const { registry, service, instances } = hashService(5);
    const ch = new ConsistentHashBalancer(service);
    const before = owners(ch, service.candidates());
    const sick = instances[1]!;
    // the ring without `sick` says where each key's walk must end
    const without = makeService(
      { balancer: 'consistent-hash', hashOn: 'header:x-user-id' },
      instances.filter((i) => i !== sick).map((i) => ({ url: i.url, weight: i.weight })),
    );
    const next = owners(new ConsistentHashBalancer(without.service), without.service.candidates());
    registry.setHealth(sick, 'unhealthy', 'test');
    const during = owners(ch, service.candidates());
    let moved = 0;
    for (const [key, id] of before) {
      if (id === sick.id) moved++;
      assert.equal(during.get(key), next.get(key), `key ${key}`);
    }
    assert.ok(moved > 0, 'the unhealthy instance owned no key');
    registry.setHealth(sick, 'healthy', 'test');
    assert.deepEqual(owners(ch, service.candidates()), before);
  });

  test('a retry walks past the instances already tried, in ring order', () => {
    const { service, instances } = hashService(4);
    const ch = new ConsistentHashBalancer(service);
    const candidates = service.candidates();
    const tried = instances[0]!;
    const without = makeService(
      { balancer: 'consistent-hash', hashOn: 'header:x-user-id' },
      instances.slice(1).map((i) => ({ url: i.url })),
    );
    const next = owners(new ConsistentHashBalancer(without.service), without.service.candidates());
    for (const key of KEYS) assert.equal(ch.pick(candidates, byHeader(key), new Set([tried])).id, next.get(key));
    // everything tried: still an answer rather than a throw
    assert.ok(instances.includes(ch.pick(candidates, byHeader('k'), new Set(instances))));
  });

  test('a request without the key falls back to round-robin', () => {
    const { service, instances } = hashService(3);
    const ch = new ConsistentHashBalancer(service);
    const picks = pickMany(ch, service.candidates(), 30, fakeCtx());
    assert.deepEqual(picks, Array.from({ length: 30 }, (_, i) => instances[i % 3]!.id));
  });
});

describe('hash keys (hashOn)', () => {
  test('header:NAME reads the header case-insensitively; absent or empty is no key', () => {
    const read = keyReader('header:X-User-Id');
    assert.equal(read(fakeCtx({ headers: { 'x-user-id': '42' } })), '42');
    assert.equal(read(fakeCtx()), undefined);
    assert.equal(read(fakeCtx({ headers: { 'x-user-id': '' } })), undefined);
  });

  test('cookie:NAME finds the cookie among others; absent or empty is no key', () => {
    const read = keyReader('cookie:session');
    assert.equal(read(fakeCtx({ headers: { cookie: 'theme=dark; session=abc123; lang=en' } })), 'abc123');
    assert.equal(read(fakeCtx({ headers: { cookie: 'mysession=x; session2=y' } })), undefined);
    assert.equal(read(fakeCtx()), undefined);
    assert.equal(read(fakeCtx({ headers: { cookie: 'session=; theme=dark' } })), undefined);
  });

  test('query:NAME finds the parameter wherever it is; absent or empty is no key (like header and cookie)', () => {
    const read = keyReader('query:user');
    assert.equal(read(fakeCtx({ query: '?a=1&user=7&b=2' })), '7');
    assert.equal(read(fakeCtx({ query: '?user=a%20b' })), 'a b');
    assert.equal(read(fakeCtx({ query: '' })), undefined);
    assert.equal(read(fakeCtx({ query: '?other=1' })), undefined);
    assert.equal(read(fakeCtx({ query: '?user=' })), undefined);
  });

  test('ip reads the socket address; path reads the normalized path without the query', () => {
    assert.equal(keyReader('ip')(fakeCtx({ ip: '10.1.2.3' })), '10.1.2.3');
    assert.equal(keyReader('path')(fakeCtx({ path: '/api/items/9', query: '?x=1' })), '/api/items/9');
  });
});

describe('consistent-hash (through a gateway)', () => {
  const NAMES = ['a', 'b', 'c', 'd', 'e'];

  async function hashGateway(
    t: TestContext,
    urls: readonly string[],
    hashOn = 'header:x-user-id',
  ): Promise<{ url: string; gateway: Gateway }> {
    return startGateway(t, {
      services: { api: { balancer: 'consistent-hash', hashOn, instances: urls.map((url) => ({ url })) } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
  }

  /** Which upstream answers each key, sent 8 at a time. */
  async function route(keys: readonly string[], request: (key: string) => Promise<{ name: string; status: number }>) {
    const out = new Map<string, string>();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < keys.length) {
          const key = keys[next++]!;
          const res = await request(key);
          assert.equal(res.status, 200);
          out.set(key, res.name);
        }
      }),
    );
    return out;
  }
  const byUserHeader = (url: string) => (key: string) => get(`${url}/api/x`, { 'x-user-id': key });

  test('header key: the same value always lands on the same upstream, and the values spread over all', async (t) => {
    const up = await startNamedUpstreams(t, NAMES.slice(0, 3));
    const { url } = await hashGateway(t, NAMES.slice(0, 3).map((n) => up[n]!.url));
    const keys = KEYS.slice(0, 60);
    const first = await route(keys, byUserHeader(url));
    for (let round = 0; round < 3; round++) assert.deepEqual(await route(keys, byUserHeader(url)), first);
    assert.deepEqual(new Set(first.values()), new Set(['a', 'b', 'c']));
  });

  test('two independent gateways with the same instances (listed in another order) map 200 keys identically', async (t) => {
    const up = await startNamedUpstreams(t, NAMES);
    const urls = NAMES.map((n) => up[n]!.url);
    const one = await hashGateway(t, urls);
    const two = await hashGateway(t, [...urls].reverse());
    const a = await route(KEYS, byUserHeader(one.url));
    const b = await route(KEYS, byUserHeader(two.url));
    assert.deepEqual(b, a);
    assert.equal(new Set(a.values()).size, 5);
  });

  test('removing one of 5 instances moves only the keys it owned', async (t) => {
    const up = await startNamedUpstreams(t, NAMES);
    const { url, gateway } = await hashGateway(t, NAMES.map((n) => up[n]!.url));
    const before = await route(KEYS, byUserHeader(url));
    const owned = [...before.values()].filter((n) => n === 'c').length;
    assert.ok(owned > 0, 'c owned no key');
    gateway.registry.removeInstance('api', `127.0.0.1:${up.c!.port}`);
    const after = await route(KEYS, byUserHeader(url));
    for (const [key, name] of before) {
      if (name === 'c') assert.notEqual(after.get(key), 'c');
      else assert.equal(after.get(key), name, `key ${key} moved from ${name} to ${after.get(key)}`);
    }
  });

  test('a request without the key falls back to round-robin over all instances', async (t) => {
    const up = await startNamedUpstreams(t, NAMES);
    const { url } = await hashGateway(t, NAMES.map((n) => up[n]!.url));
    for (let i = 0; i < 20; i++) assert.equal((await get(`${url}/api/x`)).status, 200);
    assert.deepEqual(NAMES.map((n) => up[n]!.seen.length), [4, 4, 4, 4, 4]);
  });

  test('an unhealthy owner sends its keys to the next instance on the ring; they return when it is healthy again', async (t) => {
    const up = await startNamedUpstreams(t, NAMES);
    const { url, gateway } = await hashGateway(t, NAMES.map((n) => up[n]!.url));
    // a second gateway without `b` shows where each key's walk past `b` must end
    const others = await hashGateway(t, NAMES.filter((n) => n !== 'b').map((n) => up[n]!.url));
    const before = await route(KEYS, byUserHeader(url));
    const next = await route(KEYS, byUserHeader(others.url));
    assert.ok([...before.values()].includes('b'), 'b owned no key');
    const b = gateway.registry.getService('api')!.instances.get(`127.0.0.1:${up.b!.port}`)!;
    gateway.registry.setHealth(b, 'unhealthy', 'test');
    const during = await route(KEYS, byUserHeader(url));
    for (const [key, name] of before) {
      assert.equal(during.get(key), name === 'b' ? next.get(key) : name, `key ${key} (owner ${name})`);
    }
    gateway.registry.setHealth(b, 'healthy', 'test');
    assert.deepEqual(await route(KEYS, byUserHeader(url)), before);
  });

  /** Each key sticks to one upstream over 3 rounds, and the keys use every upstream. */
  async function assertSticky(keys: readonly string[], request: (key: string) => Promise<{ name: string; status: number }>) {
    const first = await route(keys, request);
    for (let round = 0; round < 2; round++) assert.deepEqual(await route(keys, request), first);
    assert.deepEqual(new Set(first.values()), new Set(['a', 'b', 'c']), 'the keys did not spread over all upstreams');
  }

  test('hashOn cookie:NAME sticks by the cookie', async (t) => {
    const up = await startNamedUpstreams(t, NAMES.slice(0, 3));
    const { url } = await hashGateway(t, NAMES.slice(0, 3).map((n) => up[n]!.url), 'cookie:session');
    await assertSticky(KEYS.slice(0, 40), (key) => get(`${url}/api/x`, { cookie: `theme=dark; session=${key}` }));
  });

  test('hashOn query:NAME sticks by the parameter, whatever else the query holds', async (t) => {
    const up = await startNamedUpstreams(t, NAMES.slice(0, 3));
    const { url } = await hashGateway(t, NAMES.slice(0, 3).map((n) => up[n]!.url), 'query:user');
    let n = 0;
    await assertSticky(KEYS.slice(0, 40), (key) => get(`${url}/api/x?nonce=${n++}&user=${key}`));
  });

  test('hashOn ip sticks by the client address', async (t) => {
    const up = await startNamedUpstreams(t, NAMES.slice(0, 3));
    const { url } = await hashGateway(t, NAMES.slice(0, 3).map((n) => up[n]!.url), 'ip');
    // the whole 127.0.0.0/8 is loopback: each key is a client address to send from
    const addresses = Array.from({ length: 40 }, (_, i) => `127.0.0.${i + 2}`);
    await assertSticky(addresses, (address) => get(`${url}/api/x`, {}, address));
  });

  test('hashOn path sticks by the path, whatever the query', async (t) => {
    const up = await startNamedUpstreams(t, NAMES.slice(0, 3));
    const { url } = await hashGateway(t, NAMES.slice(0, 3).map((n) => up[n]!.url), 'path');
    let n = 0;
    await assertSticky(KEYS.slice(0, 40), (key) => get(`${url}/api/items/${key}?nonce=${n++}`));
  });
});
