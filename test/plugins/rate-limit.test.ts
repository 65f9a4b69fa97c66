/**
 * Per-route rate limits, end to end: real gateways and upstreams, and for the shared buckets a
 * real redis-server started by the test (killed mid-test to check the local fallback).
 */
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import type { GatewayConfigInput } from '../../lib/index.js';
import { send, sleep, startGateway, startUpstream, waitFor, type Upstream } from '../helpers.js';
import { startRedis } from '../redis-server.js';

type RateLimit = NonNullable<NonNullable<GatewayConfigInput['routes']>[number]['rateLimit']>;
type RouteExtra = Partial<NonNullable<GatewayConfigInput['routes']>[number]>;

/**
 * So slow a refill (one token per 100 s) that no token comes back during a test: the counts
 * below are exact whatever the machine's speed.
 */
const NO_REFILL = 0.01;

/** Service `a` behind `/api` with `rateLimit`, and `/open` without. */
async function limitedGateway(t: TestContext, rateLimit: RateLimit, options: { listen?: GatewayConfigInput['listen']; route?: RouteExtra; upstream?: Upstream } = {}) {
  const upstream = options.upstream ?? (await startUpstream(t));
  const { url, gateway } = await startGateway(t, {
    ...(options.listen ? { listen: options.listen } : {}),
    services: { a: { instances: [{ url: upstream.url }] } },
    routes: [
      { prefix: '/api', service: 'a', rateLimit, ...options.route },
      { prefix: '/open', service: 'a' },
    ],
  });
  return { upstream, url, gateway };
}

/** Sends `n` requests one after the other; returns their statuses. */
async function statuses(url: string, n: number, headers: Record<string, string> = {}): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await send(url, { headers })).status);
  return out;
}

const repeat = (value: number, n: number): number[] => Array.from({ length: n }, () => value);

describe('rate-limit: local token buckets', () => {
  test('rps 5 burst 5: the 6th immediate request is 429 with Retry-After, RateLimit-* headers and a JSON body', async (t) => {
    const { upstream, url } = await limitedGateway(t, { rps: 5, burst: 5 });
    // Sent together, so the refill (5 a second) cannot add a sixth token in between.
    const first = await Promise.all(Array.from({ length: 5 }, () => send(`${url}/api/x`)));
    assert.deepEqual(
      first.map((r) => r.status),
      repeat(200, 5),
    );
    for (const r of first) {
      assert.equal(r.headers['ratelimit-limit'], '5');
      assert.match(String(r.headers['ratelimit-remaining']), /^[0-4]$/);
      assert.equal(r.headers['ratelimit-policy'], '5;w=1');
    }
    const refused = await send(`${url}/api/x`);
    assert.equal(refused.status, 429, refused.body);
    assert.equal(upstream.seen.length, 5, 'the refused request never reached the upstream');
    const retryAfter = Number(refused.headers['retry-after']);
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After: ${refused.headers['retry-after']}`);
    assert.equal(refused.headers['ratelimit-limit'], '5');
    assert.equal(refused.headers['ratelimit-remaining'], '0');
    assert.match(String(refused.headers['ratelimit-reset']), /^[1-9]\d*$/);
    assert.equal(refused.headers['ratelimit-policy'], '5;w=1');
    assert.match(String(refused.headers['content-type']), /^application\/json/);
    assert.equal(refused.json().error, 'MESH_ERR_RATE_LIMITED');

    // Refill: after the time Retry-After names, a request passes again.
    await sleep(retryAfter * 1000 + 100);
    const again = await send(`${url}/api/x`);
    assert.equal(again.status, 200, again.body);
    assert.equal(upstream.seen.length, 6);
  });

  test('a route without rateLimit is not limited', async (t) => {
    const { url } = await limitedGateway(t, { rps: NO_REFILL, burst: 1 });
    assert.deepEqual(await statuses(`${url}/api/x`, 2), [200, 429]);
    const open = await send(`${url}/open/x`);
    assert.deepEqual(await statuses(`${url}/open/x`, 5), repeat(200, 5));
    assert.equal(open.headers['ratelimit-limit'], undefined);
  });

  test('key ip without trustProxy: a spoofed X-Forwarded-For does not get a new bucket', async (t) => {
    const { upstream, url } = await limitedGateway(t, { rps: NO_REFILL, burst: 2 });
    const results: number[] = [];
    for (const xff of ['1.1.1.1', '2.2.2.2', '3.3.3.3', '4.4.4.4', '1.1.1.1, 5.5.5.5']) {
      results.push((await send(`${url}/api/x`, { headers: { 'x-forwarded-for': xff } })).status);
    }
    assert.deepEqual(results, [200, 200, 429, 429, 429]);
    assert.equal(upstream.seen.length, 2);
  });

  test('key ip with listen.trustProxy: each client IP from X-Forwarded-For has its own bucket', async (t) => {
    const { upstream, url } = await limitedGateway(t, { rps: NO_REFILL, burst: 1 }, { listen: { trustProxy: true } });
    const at = (xff: string) => send(`${url}/api/x`, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status);
    assert.equal(await at('10.0.0.1'), 200);
    assert.equal(await at('10.0.0.1'), 429);
    assert.equal(await at('10.0.0.2'), 200);
    assert.equal(await at('10.0.0.2'), 429);
    assert.equal(await at('10.0.0.1'), 429, 'the first client is still limited');
    assert.equal(upstream.seen.length, 2);
  });

  test('key ip with trustProxy: 1: only the entry the trusted hop added counts, spoofed left entries do not', async (t) => {
    const { url } = await limitedGateway(t, { rps: NO_REFILL, burst: 1 }, { listen: { trustProxy: 1 } });
    const at = (xff: string) => send(`${url}/api/x`, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status);
    assert.equal(await at('6.6.6.6, 10.0.0.9'), 200);
    // Same client (10.0.0.9 as the proxy saw it), a different spoofed left-most entry: same bucket.
    assert.equal(await at('7.7.7.7, 10.0.0.9'), 429);
    assert.equal(await at('10.0.0.10'), 200);
  });

  test('key header:x-tenant: one bucket per tenant', async (t) => {
    const { upstream, url } = await limitedGateway(t, { rps: NO_REFILL, burst: 2, key: 'header:x-tenant' });
    assert.deepEqual(await statuses(`${url}/api/x`, 3, { 'x-tenant': 'acme' }), [200, 200, 429]);
    assert.deepEqual(await statuses(`${url}/api/x`, 3, { 'x-tenant': 'globex' }), [200, 200, 429]);
    assert.deepEqual(await statuses(`${url}/api/x`, 1, { 'X-Tenant': 'acme' }), [429]);
    assert.equal(upstream.seen.length, 4);
  });

  test('key jwt:sub: one bucket per authenticated subject', async (t) => {
    const secret = 'rate-limit-test-secret-0123456789abcdef';
    const { upstream, url } = await limitedGateway(
      t,
      { rps: NO_REFILL, burst: 2, key: 'jwt:sub' },
      { route: { auth: { jwt: { secret, algorithms: ['HS256'] } } } },
    );
    const token = (sub: string) =>
      new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1m').sign(new TextEncoder().encode(secret));
    const alice = { authorization: `Bearer ${await token('alice')}` };
    const bob = { authorization: `Bearer ${await token('bob')}` };
    assert.deepEqual(await statuses(`${url}/api/x`, 3, alice), [200, 200, 429]);
    assert.deepEqual(await statuses(`${url}/api/x`, 3, bob), [200, 200, 429]);
    // A fresh token for the same subject shares the subject's bucket.
    assert.deepEqual(await statuses(`${url}/api/x`, 1, { authorization: `Bearer ${await token('alice')}` }), [429]);
    assert.equal(upstream.seen.length, 4);
  });
});

describe('rate-limit: buckets shared through Redis', () => {
  test('two gateways share one bucket; with Redis killed both fall back to local limits, never a 5xx', { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t);
    const client = new Redis(redis.url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {}); // the server is killed on purpose below
    t.after(() => client.disconnect());

    const upstream = await startUpstream(t);
    const limit: RateLimit = { rps: NO_REFILL, burst: 4, key: 'header:x-tenant', redis: redis.url };
    const a = await limitedGateway(t, limit, { upstream });
    const b = await limitedGateway(t, limit, { upstream });

    // Each gateway is sharing once a request through it leaves its bucket in Redis
    // (a probe tenant per try, so the probes cost the real tenant nothing).
    let probe = 0;
    for (const gw of [a, b]) {
      await waitFor(async () => {
        const tenant = `probe-${probe++}`;
        assert.equal((await send(`${gw.url}/api/x`, { headers: { 'x-tenant': tenant } })).status, 200);
        return (await client.exists(`meshgate:rl:{/api}:h:${tenant}`)) === 1;
      }, 10_000, 'the rate limiter to use Redis');
    }

    const shared = { 'x-tenant': 'shared' };
    assert.deepEqual(await statuses(`${a.url}/api/x`, 2, shared), [200, 200]);
    assert.deepEqual(await statuses(`${b.url}/api/x`, 2, shared), [200, 200]);
    // Burst 4 is spent across both: each gateway alone would still have 2 tokens.
    assert.deepEqual(await statuses(`${a.url}/api/x`, 1, shared), [429]);
    assert.deepEqual(await statuses(`${b.url}/api/x`, 1, shared), [429]);

    await redis.kill();
    // Requests are still answered: each gateway's local bucket decides (burst 4 per gateway now).
    for (const gw of [a, b]) {
      const results = await statuses(`${gw.url}/api/x`, 6, { 'x-tenant': 'after-redis' });
      assert.ok(results.every((s) => s < 500), `no 5xx while Redis is down: ${results}`);
      assert.deepEqual(results, [200, 200, 200, 200, 429, 429]);
    }
  });
});
