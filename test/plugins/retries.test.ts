import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway, GatewayConfigInput } from '../../lib/index.js';
import { echo, send, startGateway, startUpstream, unusedPort, waitFor, within, type Handler, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };

function config(urls: string[], retries: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): GatewayConfigInput {
  return {
    services: { api: { instances: urls.map((url) => ({ url })), retries: { attempts: 2, ...retries }, ...extra } },
    routes: [{ prefix: '/api', service: 'api' }],
  };
}

/** `request:retry` events as `{ attempt, reason }`. */
function recordRetries(gateway: Gateway): { attempt: number; reason: string }[] {
  const events: { attempt: number; reason: string }[] = [];
  gateway.on('request:retry', (_service, info) => events.push(info));
  return events;
}

/** Reads the whole request body, then calls `then` with it. */
function afterBody(then: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void): Handler {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => then(req, res, Buffer.concat(chunks)));
  };
}

const status503: Handler = afterBody((_req, res) => {
  res.writeHead(503, { 'content-type': 'text/plain' });
  res.end('unavailable');
});

/** Answers `{ name, sha256, length }` of the request body. */
function hasher(name: string): Handler {
  return afterBody((_req, res, body) => {
    const text = JSON.stringify({ name, sha256: createHash('sha256').update(body).digest('hex'), length: body.length });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
}

/** Holds every request unanswered; `aborted()` counts those whose connection the gateway dropped. */
async function hangingUpstream(t: TestContext): Promise<Upstream & { aborted(): number }> {
  let aborted = 0;
  const upstream = await startUpstream(t, (_req, res) => {
    res.on('close', () => {
      if (!res.writableFinished) aborted++;
    });
  });
  return Object.assign(upstream, { aborted: () => aborted });
}

interface LooseResponse {
  /** 0 when no response head arrived. */
  status: number;
  body: string;
  /** The whole response arrived. */
  complete: boolean;
  error?: string;
}

/** A request that never rejects: a response cut off mid-body resolves with `complete: false`. */
function sendLoose(url: string): Promise<LooseResponse> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', () => {
        // reported through res.complete on 'close'
      });
      res.on('close', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString(), complete: res.complete }));
    });
    req.on('error', (err) => resolve({ status: 0, body: '', complete: false, error: (err as NodeJS.ErrnoException).code ?? err.message }));
    req.end();
  });
}

describe('retries plugin: what is retried', () => {
  test('a GET answered 503 is retried on the other instance; the client sees only the 200', LIMIT, async (t) => {
    const a = await startUpstream(t, status503);
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);

    for (let i = 0; i < 10; i++) {
      const res = await send(`${url}/api/r/${i}`);
      assert.equal(res.status, 200);
      assert.equal(res.json().name, 'b');
    }
    assert.ok(a.seen.length >= 1, 'the failing instance was tried');
    // Every request that went to `a` first went to `b` once more, never to `a` again.
    assert.equal(b.seen.length, 10);
    assert.equal(retries.length, a.seen.length);
    assert.ok(retries.every((r) => r.attempt === 2 && r.reason === 'status 503'), JSON.stringify(retries));
  });

  test('the retry goes to an instance not tried yet, even when the balancer favours the one that failed', LIMIT, async (t) => {
    const a = await startUpstream(t, status503);
    const b = await startUpstream(t, echo('b'));
    // Weight 20 to 1: left to itself, round-robin would send the retry back to `a`.
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: a.url, weight: 20 }, { url: b.url, weight: 1 }], retries: { attempts: 2 } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const retries = recordRetries(gateway);
    for (let i = 0; i < 10; i++) {
      const res = await send(`${url}/api/w/${i}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().name, 'b');
    }
    assert.equal(b.seen.length, 10);
    assert.equal(a.seen.length, retries.length, 'one try on `a` per request at most');
    assert.ok(a.seen.length >= 1);
  });

  test('a GET is retried on a connect failure', LIMIT, async (t) => {
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([dead, b.url]));
    const retries = recordRetries(gateway);

    for (let i = 0; i < 6; i++) {
      const res = await send(`${url}/api/c/${i}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().name, 'b');
    }
    assert.ok(retries.length >= 1);
    assert.ok(retries.every((r) => r.reason === 'MESH_ERR_UPSTREAM_CONNECT'), JSON.stringify(retries));
  });

  test('a GET is retried when the connection is reset before a response', LIMIT, async (t) => {
    const a = await startUpstream(t, (req) => req.socket.destroy());
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);

    for (let i = 0; i < 6; i++) {
      const res = await send(`${url}/api/reset/${i}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().name, 'b');
    }
    assert.ok(a.seen.length >= 1);
    assert.ok(retries.length >= 1);
    assert.ok(retries.every((r) => r.reason === 'MESH_ERR_UPSTREAM_RESET'), JSON.stringify(retries));
  });

  test('a PUT with a small body answered 503 is replayed to the other instance with the full body', LIMIT, async (t) => {
    const a = await startUpstream(t, status503);
    const b = await startUpstream(t, hasher('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);
    const body = randomBytes(10 * 1024);
    const sha256 = createHash('sha256').update(body).digest('hex');

    for (let i = 0; i < 4; i++) {
      const res = await send(`${url}/api/put/${i}`, { method: 'PUT', body, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { name: 'b', sha256, length: body.length });
    }
    assert.ok(a.seen.length >= 1);
    assert.equal(retries.length, a.seen.length);
  });
});

describe('retries plugin: what is never retried', () => {
  test('a POST whose body reached an instance that answered 503 is not retried: the client gets the 503', LIMIT, async (t) => {
    const a = await startUpstream(t, status503);
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);

    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send(`${url}/api/p/${i}`, { method: 'POST', body: 'x'.repeat(1000) })).status);
    const failed = statuses.filter((s) => s === 503).length;
    assert.ok(failed >= 1, 'some POSTs went to the failing instance');
    assert.equal(failed, a.seen.length);
    // `b` saw only the POSTs it answered itself.
    assert.equal(b.seen.length, statuses.filter((s) => s === 200).length);
    assert.equal(failed + b.seen.length, 6);
    assert.deepEqual(retries, []);
  });

  test('a POST whose body reached an instance that then reset the connection is not retried: the client gets 502', LIMIT, async (t) => {
    const a = await startUpstream(t, afterBody((req) => req.socket.destroy()));
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);

    const results: { status: number; error?: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await send(`${url}/api/p/${i}`, { method: 'POST', body: 'y'.repeat(1000) });
      results.push({ status: res.status, error: res.status === 502 ? res.json().error : undefined });
    }
    const failed = results.filter((r) => r.status === 502);
    assert.ok(failed.length >= 1);
    assert.ok(failed.every((r) => r.error === 'MESH_ERR_UPSTREAM_RESET'), JSON.stringify(failed));
    assert.equal(failed.length, a.seen.length, 'each failed POST reached `a` exactly once');
    assert.equal(b.seen.length, results.filter((r) => r.status === 200).length);
    assert.deepEqual(retries, []);
  });

  test('a POST is retried when the first instance refuses the connection, with its full body', LIMIT, async (t) => {
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const b = await startUpstream(t, hasher('b'));
    const { gateway, url } = await startGateway(t, config([dead, b.url]));
    const retries = recordRetries(gateway);
    const body = randomBytes(48 * 1024);
    const sha256 = createHash('sha256').update(body).digest('hex');

    for (let i = 0; i < 4; i++) {
      const res = await send(`${url}/api/upload/${i}`, { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(res.status, 200, res.body);
      assert.deepEqual(res.json(), { name: 'b', sha256, length: body.length });
    }
    assert.equal(b.seen.length, 4);
    assert.ok(retries.length >= 1, 'at least one POST met the dead instance first');
    assert.ok(retries.every((r) => r.reason === 'MESH_ERR_UPSTREAM_CONNECT'));
  });

  test('a body too big to buffer (100 KiB, or chunked) is still retried on a connect failure: it was never read', LIMIT, async (t) => {
    // The plugin's own contract (makeReplayable): "A larger or chunked body streams once, so such
    // a request is only retried when its body was never read (a connect failure)."
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const b = await startUpstream(t, hasher('b'));
    const { gateway, url } = await startGateway(t, config([dead, b.url]));
    const retries = recordRetries(gateway);
    const body = randomBytes(100 * 1024);
    const sha256 = createHash('sha256').update(body).digest('hex');

    const chunked = (): Promise<{ status: number; body: string }> =>
      new Promise((resolve, reject) => {
        const req = httpRequest(`${url}/api/chunked`, { method: 'POST', agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
        });
        req.on('error', reject);
        req.write(body.subarray(0, 50 * 1024));
        req.end(body.subarray(50 * 1024));
      });

    for (let i = 0; i < 2; i++) {
      const sized = await send(`${url}/api/big/${i}`, { method: 'POST', body });
      assert.equal(sized.status, 200, `with Content-Length: ${sized.body}`);
      assert.deepEqual(JSON.parse(sized.body), { name: 'b', sha256, length: body.length });
      const streamed = await chunked();
      assert.equal(streamed.status, 200, `chunked: ${streamed.body}`);
      assert.deepEqual(JSON.parse(streamed.body), { name: 'b', sha256, length: body.length });
    }
    assert.ok(retries.length >= 1);
  });

  test('a body larger than maxReplayBody streams once: a PUT of 100 KiB answered 503 is not retried', LIMIT, async (t) => {
    const a = await startUpstream(t, status503);
    const b = await startUpstream(t, hasher('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);
    const body = randomBytes(100 * 1024);

    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await send(`${url}/api/big/${i}`, { method: 'PUT', body })).status);
    const failed = statuses.filter((s) => s === 503).length;
    assert.ok(failed >= 1);
    assert.equal(failed, a.seen.length);
    assert.equal(b.seen.length, statuses.filter((s) => s === 200).length);
    assert.deepEqual(retries, []);
  });

  test('never retried after response bytes reached the client: a response cut mid-body stays broken', LIMIT, async (t) => {
    const a = await startUpstream(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000' });
      res.write('z'.repeat(100));
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url]));
    const retries = recordRetries(gateway);

    const results: LooseResponse[] = [];
    for (let i = 0; i < 6; i++) results.push(await within(sendLoose(`${url}/api/cut/${i}`), 5000, `request ${i}`));
    const broken = results.filter((r) => !r.complete);
    assert.ok(broken.length >= 1, 'some requests went to the instance that breaks off');
    // The client saw the upstream's head and part of its body, then the connection dropped.
    for (const r of broken) {
      assert.equal(r.status, 200, JSON.stringify(r));
      assert.ok(r.body.length > 0 && r.body.length < 1000 && /^z+$/.test(r.body), JSON.stringify(r));
    }
    assert.equal(broken.length, a.seen.length);
    assert.equal(b.seen.length, results.filter((r) => r.complete).length, 'the other instance saw none of the broken requests');
    assert.deepEqual(retries, []);
  });

  test('an upstream that breaks off right after its head and first bytes: the request still ends, never retried', LIMIT, async (t) => {
    const a = await startUpstream(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000' });
      res.write('z'.repeat(100), () => res.socket?.destroy());
    });
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url], {}, { timeout: 3000 }));
    const retries = recordRetries(gateway);

    const results: LooseResponse[] = [];
    for (let i = 0; i < 6; i++) results.push(await within(sendLoose(`${url}/api/cut/${i}`), 5000, `request ${i}`));
    const failed = results.filter((r) => !r.complete || r.status !== 200);
    assert.ok(failed.length >= 1);
    assert.equal(failed.length, a.seen.length);
    assert.equal(b.seen.length, results.length - failed.length);
    assert.deepEqual(retries, []);
  });
});

describe('retries plugin: deadlines', () => {
  test('per-try timeout: the first instance hangs, the retry on the second answers 200', LIMIT, async (t) => {
    const a = await hangingUpstream(t);
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, config([a.url, b.url], { perTryTimeout: 100 }, { timeout: 5000 }));
    const retries = recordRetries(gateway);

    for (let i = 0; i < 4; i++) {
      const res = await send(`${url}/api/slow/${i}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().name, 'b');
    }
    assert.ok(a.seen.length >= 1);
    assert.equal(retries.length, a.seen.length);
    assert.ok(retries.every((r) => r.reason === 'MESH_ERR_UPSTREAM_TIMEOUT'), JSON.stringify(retries));
    // The tries that timed out were aborted, not left hanging on the upstream.
    await waitFor(() => a.aborted() === a.seen.length, 2000, 'the timed-out tries to be aborted');
  });

  test('total timeout: when every instance hangs the client gets 504 and every upstream request is aborted', LIMIT, async (t) => {
    const a = await hangingUpstream(t);
    const b = await hangingUpstream(t);
    const { url } = await startGateway(t, config([a.url, b.url], { perTryTimeout: 200 }, { timeout: 300 }));

    const res = await send(`${url}/api/hang`);
    assert.equal(res.status, 504);
    assert.equal(res.json().error, 'MESH_ERR_UPSTREAM_TIMEOUT');
    const reached = a.seen.length + b.seen.length;
    assert.ok(reached >= 1 && reached <= 2, `${reached} tries`);
    await waitFor(() => a.aborted() + b.aborted() === reached, 2000, 'every upstream request to be aborted');
  });
});

describe('retries plugin: retry budget', () => {
  for (const minRetryConcurrency of [3, 0]) {
    test(`a failing service under concurrent load sees at most 1.2x the requests + minRetryConcurrency (${minRetryConcurrency})`, LIMIT, async (t) => {
      const N = 200;
      // All three instances answer 503. The N first tries are held until all of them have
      // arrived, so the gateway really has N requests in flight (in one process, requests that
      // are answered at once barely overlap); retries are answered after a while, so they overlap
      // each other as they would against a slow, failing service.
      const firstTries: ServerResponse[] = [];
      let arrivals = 0;
      const failing: Handler = afterBody((_req, res) => {
        if (++arrivals <= N) {
          firstTries.push(res);
          if (firstTries.length === N) for (const held of firstTries) held.writeHead(503).end('unavailable');
          return;
        }
        setTimeout(() => res.writeHead(503).end('unavailable'), 400);
      });
      const upstreams = await Promise.all([0, 1, 2].map(() => startUpstream(t, failing)));
      const { gateway, url } = await startGateway(t, config(upstreams.map((u) => u.url), { attempts: 2, minRetryConcurrency }, { timeout: 10_000 }));
      const retries = recordRetries(gateway);

      const responses = await Promise.all(Array.from({ length: N }, (_, i) => send(`${url}/api/load/${i}`)));
      assert.ok(responses.every((r) => r.status === 503), 'every client got the upstream 503');
      const total = upstreams.reduce((sum, u) => sum + u.seen.length, 0);
      assert.equal(total, N + retries.length, 'one upstream request per client request plus one per retry');
      // Without a budget each request would be tried three times (3N).
      assert.ok(total <= 1.2 * N + minRetryConcurrency, `${total} upstream requests for ${N} client requests (${retries.length} retries)`);
      // The budget is 20% of the requests in flight, not zero.
      assert.ok(retries.length >= 0.2 * N, `only ${retries.length} retries`);
    });
  }
});
