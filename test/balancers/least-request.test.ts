import assert from 'node:assert/strict';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { describe, test } from 'node:test';
import { LeastRequestBalancer } from '../../lib/balancers/least-request.js';
import type { Instance, Service } from '../../lib/registry/registry.js';
import { echo, seededRandom, startGateway, startUpstream, unusedPort, waitFor, type Handler } from '../helpers.js';
import { drive, driveInWorker, get, makeService, pickMany, specs, startNamedUpstreams, tally } from './fixtures.js';

/** An upstream that answers after `ms`. */
const delayed = (ms: number) => (name: string): Handler => {
  const answer = echo(name);
  return (req, res) => void setTimeout(() => answer(req, res), ms);
};

function share(picks: readonly string[], inst: Instance): number {
  return ((tally(picks).get(inst.id) ?? 0) * 100) / picks.length;
}

describe('least-request (unit)', () => {
  test('of two instances with equal weights, the one with fewer requests in flight always wins', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(2));
    const [a, b] = instances as [Instance, Instance];
    const lr = new LeastRequestBalancer(service, seededRandom(1));
    a.inflight = 3;
    b.inflight = 2;
    assert.equal(share(pickMany(lr, service.candidates(), 200), b), 100);
    b.inflight = 4;
    assert.equal(share(pickMany(lr, service.candidates(), 200), a), 100);
  });

  test('ties are broken at random', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(2));
    const picks = pickMany(new LeastRequestBalancer(service, seededRandom(2)), service.candidates(), 2000);
    const s = share(picks, instances[0]!);
    assert.ok(s > 45 && s < 55, `a got ${s}%`);
  });

  test('power of two choices over 5 instances: shares 40/30/20/10/0 by load rank (the busiest never wins)', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(5));
    instances.forEach((inst, rank) => (inst.inflight = [0, 1, 2, 3, 9][rank]!));
    const picks = pickMany(new LeastRequestBalancer(service, seededRandom(3)), service.candidates(), 8000);
    // rank r wins when drawn (2/n) against a busier one ((n-1-r)/(n-1)): 2(n-1-r)/(n(n-1))
    const expected = [40, 30, 20, 10, 0];
    instances.forEach((inst, r) => {
      const s = share(picks, inst);
      assert.ok(Math.abs(s - expected[r]!) <= 3, `rank ${r}: ${s.toFixed(1)}%, expected ${expected[r]}%`);
    });
    assert.equal(share(picks, instances[4]!), 0);
  });

  test('effective weight = weight / (active + 1): weight 2 with one in flight ties weight 1 idle', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(2, (i) => (i === 0 ? 2 : 1)));
    const [heavy, light] = instances as [Instance, Instance];
    const lr = new LeastRequestBalancer(service, seededRandom(4));
    heavy.inflight = 0; // 2/1 vs 1/1
    assert.equal(share(pickMany(lr, service.candidates(), 200), heavy), 100);
    heavy.inflight = 1; // 2/2 vs 1/1: a tie
    const tie = share(pickMany(lr, service.candidates(), 2000), heavy);
    assert.ok(tie > 45 && tie < 55, `tie gave ${tie}%`);
    heavy.inflight = 2; // 2/3 vs 1/1
    assert.equal(share(pickMany(lr, service.candidates(), 200), light), 100);
  });

  test('bias is the exponent on (active + 1): weight 4 with one in flight vs weight 1 idle', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(2, (i) => (i === 0 ? 4 : 1)));
    const [heavy, light] = instances as [Instance, Instance];
    heavy.inflight = 1;
    const withBias = (bias: number): LeastRequestBalancer => new LeastRequestBalancer(service, seededRandom(5), bias);
    assert.equal(share(pickMany(withBias(1), service.candidates(), 200), heavy), 100); // 4/2 > 1
    const tie = share(pickMany(withBias(2), service.candidates(), 2000), heavy); // 4/4 = 1
    assert.ok(tie > 45 && tie < 55, `bias 2 gave ${tie}%`);
    assert.equal(share(pickMany(withBias(3), service.candidates(), 200), light), 100); // 4/8 < 1
  });

  test('a retry avoids the instances already tried, even when they are the least loaded', () => {
    const { service, instances } = makeService({ balancer: 'least-request' }, specs(4));
    const [a, b] = instances as [Instance, Instance, Instance, Instance];
    instances.forEach((inst, i) => (inst.inflight = i * 2));
    const lr = new LeastRequestBalancer(service, seededRandom(6));
    const picks = Array.from({ length: 500 }, () => lr.pick(service.candidates(), undefined, new Set([a, b])));
    assert.ok(!picks.includes(a) && !picks.includes(b));
    assert.ok(instances.includes(lr.pick(service.candidates(), undefined, new Set(instances))));
  });
});

describe('least-request (through a gateway)', () => {
  function config(urls: readonly string[]) {
    return {
      services: { api: { balancer: 'least-request', instances: urls.map((url) => ({ url })) } },
      routes: [{ prefix: '/api', service: 'api' }],
    };
  }
  const inflightOf = (service: Service): number[] => [...service.instances.values()].map((i) => i.inflight);

  test('over 90% of the traffic goes to the fast instance when the other takes 150 ms (8 concurrent clients)', async (t) => {
    const fast = await startUpstream(t, echo('fast'));
    const slow = await startUpstream(t, delayed(150)('slow'));
    const { url, gateway } = await startGateway(t, config([slow.url, fast.url]), { random: seededRandom(7) });
    const statuses = await driveInWorker(`${url}/api/x`, 240, 8);
    assert.ok(statuses.length === 240 && statuses.every((s) => s === 200));
    const toFast = (fast.seen.length * 100) / 240;
    assert.ok(toFast > 90, `fast got ${toFast.toFixed(1)}% (fast ${fast.seen.length}, slow ${slow.seen.length})`);
    assert.deepEqual(inflightOf(gateway.registry.getService('api')!), [0, 0]);
  });

  test('in-flight counts rise while requests run and drop back to 0 after they complete', async (t) => {
    const up = await startNamedUpstreams(t, ['a', 'b'], delayed(30));
    const { url, gateway } = await startGateway(t, config([up.a!.url, up.b!.url]), { random: seededRandom(8) });
    const service = gateway.registry.getService('api')!;
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, ...inflightOf(service))), 5);
    t.after(() => clearInterval(watch));
    await drive(`${url}/api/x`, 60, 6);
    clearInterval(watch);
    assert.ok(peak >= 2, `in-flight never rose above ${peak}`);
    assert.deepEqual(inflightOf(service), [0, 0]);
    // with in-flight counts balanced, the 6 clients split evenly-ish over the two instances
    assert.ok(up.a!.seen.length >= 20 && up.b!.seen.length >= 20, `a ${up.a!.seen.length}, b ${up.b!.seen.length}`);
  });

  test('in-flight drops back to 0 after a failed attempt (dead upstream answers 502)', async (t) => {
    const live = await startUpstream(t, echo('live'));
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const { url, gateway } = await startGateway(t, config([live.url, dead]), { random: seededRandom(9) });
    const results = await drive(`${url}/api/x`, 30, 3);
    const statuses = tally(results.map((r) => r.status));
    assert.ok((statuses.get(502) ?? 0) > 0, `the dead instance was never tried: ${JSON.stringify([...statuses])}`);
    assert.deepEqual(inflightOf(gateway.registry.getService('api')!), [0, 0]);
  });

  /** Starts a GET the test will abort; `headers` resolves when the response headers arrive. */
  function openRequest(url: string): { req: ClientRequest; headers: Promise<void> } {
    const req = httpRequest(url, { agent: false });
    req.on('error', () => {
      // the test destroys this request on purpose
    });
    const headers = new Promise<void>((resolve) => req.on('response', (res) => (res.on('error', () => {}), resolve())));
    req.end();
    return { req, headers };
  }

  test('in-flight drops back to 0 when the client aborts before the upstream answered', async (t) => {
    const hang = await startUpstream(t, () => {
      // never answers; the upstream's close() destroys the socket at teardown
    });
    const { url, gateway } = await startGateway(t, config([hang.url]));
    const inst = [...gateway.registry.getService('api')!.instances.values()][0]!;
    const { req } = openRequest(`${url}/api/x`);
    await waitFor(() => hang.seen.length === 1 && inst.inflight === 1, 5000, 'the request to reach the upstream');
    req.destroy();
    await waitFor(() => inst.inflight === 0, 5000, 'in-flight to drop to 0 after the client abort');
  });

  test('in-flight drops back to 0 when the client aborts in the middle of the response body', async (t) => {
    const stall = await startUpstream(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk'); // and never ends
    });
    const { url, gateway } = await startGateway(t, config([stall.url]));
    const inst = [...gateway.registry.getService('api')!.instances.values()][0]!;
    const { req, headers } = openRequest(`${url}/api/x`);
    await headers;
    assert.equal(inst.inflight, 1);
    req.destroy();
    await waitFor(() => inst.inflight === 0, 5000, 'in-flight to drop to 0 after the client abort');
  });

  test('the requests in flight steer the next ones: a held request keeps new ones off its instance', async (t) => {
    let release: (() => void) | null = null;
    const held = await startUpstream(t, (req, res) => {
      release = () => echo('held')(req, res);
    });
    const other = await startUpstream(t, echo('other'));
    const { url, gateway } = await startGateway(t, config([held.url, other.url]), { random: seededRandom(10) });
    const service = gateway.registry.getService('api')!;
    const heldInst = service.instances.get(`127.0.0.1:${held.port}`)!;
    // the first requests tie at 0 and are split at random; hold the first one that lands on `held`
    const pending: Promise<unknown>[] = [];
    while (held.seen.length === 0) {
      pending.push(get(`${url}/api/x`));
      await waitFor(() => held.seen.length + other.seen.length === pending.length, 5000, 'the request to arrive');
    }
    assert.equal(heldInst.inflight, 1);
    const before = other.seen.length;
    for (let i = 0; i < 20; i++) assert.equal((await get(`${url}/api/x`)).name, 'other');
    assert.equal(other.seen.length, before + 20);
    release!();
    await Promise.all(pending);
    await waitFor(() => heldInst.inflight === 0, 5000, 'the held request to finish');
  });
});
