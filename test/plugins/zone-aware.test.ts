import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway } from '../../lib/index.js';
import { echo, send, seededRandom, startGateway, startUpstream, waitFor, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 30_000 };

interface Zoned extends Upstream {
  name: string;
  zone: string;
  traffic(): number;
}

/** Three instances in zone a and three in zone b, each answering `/health`. */
async function twoZones(t: TestContext): Promise<Zoned[]> {
  const names = ['a1', 'a2', 'a3', 'b1', 'b2', 'b3'];
  return Promise.all(
    names.map(async (name) => {
      const serve = echo(name);
      const upstream = await startUpstream(t, (req, res) => {
        if (req.url === '/health') return void res.end('ok');
        serve(req, res);
      });
      return Object.assign(upstream, { name, zone: name[0]!, traffic: () => upstream.seen.filter((s) => s.url !== '/health').length });
    }),
  );
}

async function zonedGateway(t: TestContext, ups: Zoned[], service: Record<string, unknown>): Promise<{ gateway: Gateway; url: string }> {
  return startGateway(
    t,
    {
      listen: { zone: 'a' },
      services: {
        api: {
          instances: ups.map((u) => ({ url: u.url, zone: u.zone })),
          healthCheck: { path: '/health', interval: 100, unhealthyThreshold: 1 },
          ...service,
        },
      },
      routes: [{ prefix: '/api', service: 'api' }],
    },
    { random: seededRandom(7) },
  );
}

/** Sends `n` requests and returns how many each instance took. */
async function spread(url: string, ups: Zoned[], n: number): Promise<Record<string, number>> {
  const before = ups.map((u) => u.traffic());
  for (let i = 0; i < n; i++) assert.equal((await send(`${url}/api/${i}`)).status, 200);
  return Object.fromEntries(ups.map((u, i) => [u.name, u.traffic() - before[i]!]));
}

const inZone = (got: Record<string, number>, zone: string): number =>
  Object.entries(got)
    .filter(([name]) => name.startsWith(zone))
    .reduce((sum, [, n]) => sum + n, 0);

/** Balancers that spread over every candidate (ewma favours the fastest, consistent-hash sticks to a key). */
const SPREADING = new Set(['round-robin', 'random', 'least-request']);

describe('zone-aware routing', () => {
  for (const balancer of ['round-robin', 'random', 'least-request', 'ewma', 'consistent-hash']) {
    test(`${balancer}: all traffic stays in the gateway's zone; with 2 of its 3 instances down, a third stays and the rest spills to b`, LIMIT, async (t) => {
      const ups = await twoZones(t);
      const { gateway, url } = await zonedGateway(t, ups, { zoneAware: true, balancer, ...(balancer === 'consistent-hash' ? { hashOn: 'path' } : {}) });

      const healthy = await spread(url, ups, 90);
      assert.equal(inZone(healthy, 'b'), 0, `nothing leaves zone a while it is healthy: ${JSON.stringify(healthy)}`);
      if (SPREADING.has(balancer)) assert.ok(['a1', 'a2', 'a3'].every((n) => healthy[n]! > 0), `the balancer spreads over zone a: ${JSON.stringify(healthy)}`);

      // Two of zone a die; their health checks notice.
      await ups[0]!.close();
      await ups[1]!.close();
      const service = gateway.registry.getService('api')!;
      await waitFor(() => [...service.instances.values()].filter((i) => i.health === 'unhealthy').length === 2, 3000, 'two instances marked unhealthy');

      // 1 of 3 usable (33% < minHealthyPercent 70): a request stays local with probability 1/3.
      const N = 600;
      const degraded = await spread(url, ups, N);
      const local = degraded.a3! / N;
      assert.ok(local > 0.25 && local < 0.42, `about a third stays in zone a: ${JSON.stringify(degraded)}`);
      assert.equal(inZone(degraded, 'a') + inZone(degraded, 'b'), N);
      if (SPREADING.has(balancer)) assert.ok(['b1', 'b2', 'b3'].every((n) => degraded[n]! > 0), `the spill spreads over zone b: ${JSON.stringify(degraded)}`);
    });
  }

  test('minHealthyPercent, no local instance left, and a service without zoneAware', LIMIT, async (t) => {
    const ups = await twoZones(t);
    // 2 of 3 local usable is 67%: above a threshold of 60, everything stays.
    const { gateway, url } = await zonedGateway(t, ups, { zoneAware: { minHealthyPercent: 60 } });
    const service = gateway.registry.getService('api')!;
    const inst = (name: string) => [...service.instances.values()].find((i) => i.url === ups.find((u) => u.name === name)!.url)!;
    await ups[0]!.close();
    await waitFor(() => inst('a1').health === 'unhealthy', 3000, 'a1 marked unhealthy');
    assert.equal(inZone(await spread(url, ups, 60), 'b'), 0, 'two of three (67%) is above minHealthyPercent 60');

    // No local instance usable: everything goes to b.
    await ups[1]!.close();
    await ups[2]!.close();
    await waitFor(() => inst('a2').health === 'unhealthy' && inst('a3').health === 'unhealthy', 3000, 'zone a down');
    assert.equal(inZone(await spread(url, ups, 30), 'b'), 30);
  });

  test('without zoneAware the zones do not matter', LIMIT, async (t) => {
    const ups = await twoZones(t);
    const { url } = await zonedGateway(t, ups, {});
    const got = await spread(url, ups, 60);
    assert.equal(inZone(got, 'b'), 30, `round-robin over all six: ${JSON.stringify(got)}`);
  });
});
