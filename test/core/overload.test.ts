import assert from 'node:assert/strict';
import { Agent, request as httpRequest } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { send, startGateway, startUpstream, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 30_000 };
const SLOW_MS = 1000;

/** An instance that answers every request after `SLOW_MS`; counts what it answered and the most it held at once. */
async function slowInstance(t: TestContext): Promise<Upstream & { answered(): number; mostAtOnce(): number }> {
  let answered = 0;
  let held = 0;
  let most = 0;
  const upstream = await startUpstream(t, (req, res) => {
    held++;
    most = Math.max(most, held);
    req.resume();
    setTimeout(() => {
      held--;
      answered++;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('done');
    }, SLOW_MS);
  });
  return Object.assign(upstream, { answered: () => answered, mostAtOnce: () => most });
}

interface Seen {
  status: number;
  body: string;
  retryAfter: string | undefined;
  /** How many requests the instance had answered when this answer arrived. */
  upstreamAnsweredBefore: number;
}

/** `n` GETs at once, each on its own connection. */
function burst(url: string, n: number, upstream: { answered(): number }): Promise<Seen[]> {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity });
  return Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<Seen>((resolve, reject) => {
          httpRequest(`${url}/api/${i}`, { agent }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({
                status: res.statusCode!,
                body: Buffer.concat(chunks).toString(),
                retryAfter: res.headers['retry-after'],
                upstreamAnsweredBefore: upstream.answered(),
              }),
            );
          })
            .on('error', reject)
            .end();
        }),
    ),
  );
}

describe('overload limits', () => {
  test('maxRequests: with 4x more clients than the limit and a 1 s upstream, the excess gets 503 UO at once and the admitted all succeed', LIMIT, async (t) => {
    const upstream = await slowInstance(t);
    const { url, adminUrl } = await startGateway(t, {
      admin: { port: 0 },
      metrics: true,
      services: { api: { instances: [{ url: upstream.url }], maxRequests: 8 } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const seen = await burst(url, 32, upstream);
    const ok = seen.filter((s) => s.status === 200);
    const refused = seen.filter((s) => s.status === 503);
    assert.equal(ok.length, 8, 'the admitted requests all succeed');
    assert.equal(refused.length, 24);
    for (const r of refused) {
      assert.equal(JSON.parse(r.body).error, 'MESH_ERR_OVERLOADED');
      assert.equal(r.retryAfter, '1');
      // Refused without waiting on the instance: it had answered nothing yet.
      assert.equal(r.upstreamAnsweredBefore, 0, 'a refusal arrived before the instance answered anything');
    }
    assert.equal(upstream.seen.length, 8, 'the instance saw only what was admitted');
    const metrics = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metrics, /meshgate_overloaded_total\{service="api",limit="maxRequests"\} 24/);
    assert.match(metrics, /meshgate_requests_total\{route="\/api",service="api",method="GET",code="503"\} 24/);

    // The limit counts requests in flight, not ever: once they are done, there is room again.
    assert.equal((await send(`${url}/api/after`)).status, 200);
  });

  test('maxConnections and maxPendingRequests: two connections, four waiting; the rest get 503 UO at once', LIMIT, async (t) => {
    const upstream = await slowInstance(t);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }], maxConnections: 2, maxPendingRequests: 4 } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const seen = await burst(url, 24, upstream);
    const ok = seen.filter((s) => s.status === 200);
    const refused = seen.filter((s) => s.status === 503);
    assert.equal(ok.length, 6, 'two on connections and four waiting are admitted, and all succeed');
    assert.equal(refused.length, 18);
    for (const r of refused) {
      assert.match(r.body, /maxPendingRequests 4/);
      assert.equal(r.upstreamAnsweredBefore, 0);
    }
    assert.equal(upstream.mostAtOnce(), 2, 'never more than maxConnections requests at the instance at once');
  });

  test('a sustained overload of refusals keeps memory bounded', LIMIT, async (t) => {
    const upstream = await slowInstance(t);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }], maxRequests: 4 } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const agent = new Agent({ keepAlive: true, maxSockets: 64 });
    t.after(() => agent.destroy());
    const fire = (): Promise<number> =>
      new Promise((resolve, reject) => {
        httpRequest(`${url}/api/x`, { agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        })
          .on('error', reject)
          .end();
      });
    const round = async (ms: number): Promise<number> => {
      const until = Date.now() + ms;
      let refused = 0;
      await Promise.all(
        Array.from({ length: 64 }, async () => {
          while (Date.now() < until) if ((await fire()) === 503) refused++;
        }),
      );
      return refused;
    };
    // A collection before each reading, so what is measured is what is kept, not garbage not yet collected.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    await round(1000); // warm up: pools, caches, JIT
    gc();
    const before = process.memoryUsage();
    const refused = (await round(2500)) + (await round(2500));
    gc();
    const after = process.memoryUsage();
    const mib = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);
    t.diagnostic(`${refused} refusals; heap ${mib(before.heapUsed)} -> ${mib(after.heapUsed)} MiB, RSS ${mib(before.rss)} -> ${mib(after.rss)} MiB`);
    assert.ok(refused > 1000, `the overload was real: ${refused} refusals`);
    // Not a speed limit: refusals hold nothing, so tens of thousands of them keep nothing alive.
    assert.ok(after.heapUsed - before.heapUsed < 8 * 2 ** 20, `the heap kept ${mib(after.heapUsed - before.heapUsed)} MiB over ${refused} refusals`);
  });
});
