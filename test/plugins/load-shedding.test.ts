import assert from 'node:assert/strict';
import { Agent, request as httpRequest } from 'node:http';
import { describe, test } from 'node:test';
import { send, sleep, startGateway, startUpstream, waitFor } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 30_000 };

/** Keeps the event loop busy `busyMs` out of every `everyMs`, as a CPU-bound burst would, until stopped. */
function blockEventLoop(busyMs: number, everyMs: number): () => void {
  const timer = setInterval(() => {
    const until = performance.now() + busyMs;
    while (performance.now() < until);
  }, everyMs);
  return () => clearInterval(timer);
}

describe('load shedding (overload)', () => {
  test('while the event loop lags past maxEventLoopDelay, new requests get 503 with Retry-After, the admin port still answers, and shedding ends with the lag', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { url, adminUrl } = await startGateway(t, {
      admin: { port: 0 },
      overload: { maxEventLoopDelay: '40ms', window: '1s', retryAfter: 2 },
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    // Calm first (the process's own start may lag the loop for a window).
    await waitFor(async () => (await send(`${url}/api/calm`)).status === 200, 5000, 'a calm gateway');

    const unblock = blockEventLoop(80, 100);
    t.after(unblock);
    let shed: Awaited<ReturnType<typeof send>> | undefined;
    await waitFor(
      async () => {
        const res = await send(`${url}/api/busy`);
        if (res.status === 503) shed = res;
        return shed !== undefined;
      },
      5000,
      'a shed request',
    );
    assert.equal(shed!.json().error, 'MESH_ERR_OVERLOADED');
    assert.equal(shed!.headers['retry-after'], '2');
    const reachedBefore = upstream.seen.length;
    // Probes go to the admin port, a server of its own: never shed.
    for (let i = 0; i < 5; i++) {
      assert.equal((await send(`${adminUrl}/healthz`)).status, 200);
      assert.equal((await send(`${adminUrl}/readyz`)).status, 200);
    }
    // Every window of 1 s holds about ten blocks of 80 ms, whatever the phase of the blocks
    // against the gateway's windows (a window of 100 ms may fall between two blocks on a loaded
    // machine), so shedding holds for as long as the lag does.
    const during = await Promise.all(Array.from({ length: 10 }, (_, i) => send(`${url}/api/during/${i}`)));
    assert.deepEqual(
      during.map((r) => r.status),
      Array(10).fill(503),
    );
    assert.equal(upstream.seen.length, reachedBefore, 'a shed request never reaches the instance');

    unblock();
    await waitFor(async () => (await send(`${url}/api/again`)).status === 200, 5000, 'shedding to end');
    await sleep(300);
    const after = await Promise.all(Array.from({ length: 10 }, (_, i) => send(`${url}/api/after/${i}`)));
    assert.deepEqual(
      after.map((r) => r.status),
      Array(10).fill(200),
    );
  });

  test('maxInflight: past it, new requests get 503 at once while the admitted ones finish', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (req, res) => {
      req.resume();
      setTimeout(() => res.end('slow'), 500);
    });
    const { url } = await startGateway(t, {
      overload: { maxInflight: 4 },
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const agent = new Agent({ keepAlive: false, maxSockets: Infinity });
    const statuses = await Promise.all(
      Array.from(
        { length: 12 },
        (_, i) =>
          new Promise<number>((resolve, reject) => {
            httpRequest(`${url}/api/${i}`, { agent }, (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode!));
            })
              .on('error', reject)
              .end();
          }),
      ),
    );
    assert.equal(statuses.filter((s) => s === 200).length, 4);
    assert.equal(statuses.filter((s) => s === 503).length, 8);
    assert.equal(upstream.seen.length, 4);
  });
});
