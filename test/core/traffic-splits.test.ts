import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { registerInstance, type GatewayConfigInput } from '../../lib/index.js';
import { echo, send, seededRandom, sendPath, startGateway, startUpstream, waitFor, type Upstream } from '../helpers.js';
import { startRedis } from '../redis-server.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 30_000 };

async function versions(t: TestContext): Promise<{ v1: Upstream; v2: Upstream }> {
  return { v1: await startUpstream(t, echo('v1')), v2: await startUpstream(t, echo('v2')) };
}

function split(v1: Upstream, v2: Upstream, weights: [number, number], extra: Record<string, unknown> = {}): GatewayConfigInput {
  return {
    services: { 'users-v1': { instances: [{ url: v1.url }] }, 'users-v2': { instances: [{ url: v2.url }] } },
    routes: [
      {
        prefix: '/users',
        backends: [
          { service: 'users-v1', weight: weights[0] },
          { service: 'users-v2', weight: weights[1] },
        ],
        ...extra,
      },
    ],
  };
}

/** Which version answered each of `n` requests, as counts. */
async function tally(url: string, n: number, headers: (i: number) => Record<string, string> = () => ({})): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const res = await sendPath(url, `/users/${i}`, { headers: headers(i) });
    assert.equal(res.status, 200, res.body);
    const name = res.json().name as string;
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

describe('weighted splits', () => {
  test('a 95/5 split over 2,000 requests lands within statistical bounds; weight 0 takes a backend out', LIMIT, async (t) => {
    const { v1, v2 } = await versions(t);
    const { url, adminUrl } = await startGateway(t, { ...split(v1, v2, [95, 5]), admin: { port: 0 }, metrics: true }, { random: seededRandom(42) });
    const counts = await tally(url, 2000);
    // Binomial(2000, 0.05): mean 100, sd 9.7; four and a half sd either side.
    assert.ok(counts.v2! >= 56 && counts.v2! <= 144, `v2 got ${counts.v2} of 2000 (expected about 100)`);
    assert.equal(counts.v1! + counts.v2!, 2000);
    const metrics = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metrics, new RegExp(`meshgate_backend_requests_total\\{route="/users",backend="users-v2"\\} ${counts.v2}`));
    assert.match(metrics, new RegExp(`meshgate_requests_total\\{route="/users",service="users-v2",method="GET",code="200"\\} ${counts.v2}`));

    const { url: off } = await startGateway(t, split(v1, v2, [100, 0]));
    assert.deepEqual(await tally(off, 200), { v1: 200 });
  });

  test('stickyOn: a user never changes backend while the weights stay; a weight change moves only the share it must, one way', LIMIT, async (t) => {
    const { v1, v2 } = await versions(t);
    const sticky = { stickyOn: 'header:x-user-id' };
    const { url: at5 } = await startGateway(t, split(v1, v2, [95, 5], sticky));
    const { url: at20 } = await startGateway(t, split(v1, v2, [80, 20], sticky));
    const USERS = 1000;
    const placement = async (url: string): Promise<string[]> => {
      const where: string[] = [];
      for (let u = 0; u < USERS; u++) {
        const seen = new Set<string>();
        for (let r = 0; r < 3; r++) seen.add((await sendPath(url, `/users/${u}/${r}`, { headers: { 'x-user-id': `user-${u}` } })).json().name);
        assert.equal(seen.size, 1, `user-${u} moved between backends: ${[...seen].join(', ')}`);
        where.push([...seen][0]!);
      }
      return where;
    };
    const before = await placement(at5);
    const after = await placement(at20);
    const onV2 = (list: string[]): number => list.filter((v) => v === 'v2').length;
    assert.ok(onV2(before) >= 25 && onV2(before) <= 80, `about 5% of users on v2 at 95/5: ${onV2(before)}`);
    const moved = before.filter((v, u) => v !== after[u]);
    assert.ok(
      moved.every((v) => v === 'v1'),
      'raising v2 moves users from v1 to v2, never back',
    );
    // 15% of the users must move; rendezvous hashing moves those and no others.
    assert.ok(moved.length >= 110 && moved.length <= 190, `${moved.length} of ${USERS} users moved (expected about 150)`);
    assert.equal(onV2(after), onV2(before) + moved.length);
  });

  test('retryOtherBackends: a retry goes to the other backend when the first one fails', LIMIT, async (t) => {
    const v2 = await startUpstream(t, echo('v2'));
    const { url } = await startGateway(t, {
      services: {
        'users-v1': { instances: [{ url: 'http://127.0.0.1:9' }], retries: { attempts: 1 } },
        'users-v2': { instances: [{ url: v2.url }] },
      },
      routes: [{ prefix: '/users', backends: [{ service: 'users-v1', weight: 100 }, { service: 'users-v2', weight: 0 }, { service: 'users-v2', weight: 1 }], retryOtherBackends: true }],
    }, { random: () => 0 });
    const res = await sendPath(url, '/users/1', { method: 'POST', body: 'x' });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().name, 'v2');
  });
});

describe('subsets', () => {
  test('instances registered through the admin API and through Redis are routed by their metadata; an empty subset is 503 unless fallback', LIMIT, async (t) => {
    const redis = await startRedis(t);
    const ups = { a1: await startUpstream(t, echo('v1-admin')), b1: await startUpstream(t, echo('v2-admin')), a2: await startUpstream(t, echo('v1-redis')), b2: await startUpstream(t, echo('v2-redis')) };
    const { gateway, url, adminUrl } = await startGateway(t, {
      admin: { port: 0 },
      discovery: { redis: { url: redis.url } },
      services: { users: {} },
      routes: [
        { name: 'split', prefix: '/users', backends: [{ service: 'users', subset: { version: 'v1' } }, { service: 'users', subset: { version: 'v2' } }] },
        { name: 'beta', prefix: '/beta', backends: [{ service: 'users', subset: { version: 'v3' } }] },
        { name: 'beta-or-any', prefix: '/maybe', backends: [{ service: 'users', subset: { version: 'v3' }, fallback: true }] },
      ],
    });
    // Two through the admin API, two through Redis.
    for (const [up, version] of [[ups.a1, 'v1'], [ups.b1, 'v2']] as const) {
      const res = await send(`${adminUrl}/services/users/instances`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: up.url, metadata: { version } }) });
      assert.equal(res.status, 201, res.body);
    }
    for (const [up, version] of [[ups.a2, 'v1'], [ups.b2, 'v2']] as const) {
      const reg = await registerInstance({ registry: redis.url, service: 'users', url: up.url, ttl: '5s', metadata: { version } });
      t.after(() => reg.close());
    }
    await waitFor(() => gateway.registry.getService('users')!.instances.size === 4, 3000, 'four instances');

    const counts = await tally(url, 200);
    assert.deepEqual(Object.keys(counts).sort(), ['v1-admin', 'v1-redis', 'v2-admin', 'v2-redis']);
    const v1 = counts['v1-admin']! + counts['v1-redis']!;
    assert.ok(v1 > 60 && v1 < 140, `an even split between the subsets: ${JSON.stringify(counts)}`);

    const none = await sendPath(url, '/beta/x');
    assert.equal(none.status, 503);
    assert.equal(none.json().error, 'MESH_ERR_NO_HEALTHY_INSTANCE');
    assert.match(none.json().message, /subset version=v3/);
    assert.equal((await sendPath(url, '/maybe/x')).status, 200, 'fallback: the rest of the service');

    // The v2 instances go unhealthy: the v2 subset is empty, and its share is 503, never v1's instances.
    const service = gateway.registry.getService('users')!;
    for (const inst of service.instances.values()) if (inst.metadata.version === 'v2') gateway.registry.setHealth(inst, 'unhealthy', 'test');
    const statuses = new Map<number, number>();
    for (let i = 0; i < 100; i++) {
      const res = await sendPath(url, `/users/${i}`);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      if (res.status === 200) assert.match(res.json().name, /^v1-/);
    }
    assert.ok((statuses.get(503) ?? 0) > 20, `the v2 half gets 503: ${JSON.stringify([...statuses])}`);
  });
});
