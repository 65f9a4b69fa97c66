/**
 * Per-route authentication, attacked end to end: real gateways, real upstreams, tokens signed by
 * jose in the test, a JWKS served by a real local HTTP server. Every refusal is also checked on
 * the upstream's side: a 401 means the upstream saw nothing.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, type JWTPayload } from 'jose';
import { createGateway, type GatewayConfigInput, type MeshError } from '../../lib/index.js';
import { send, startGateway, startUpstream, type Upstream } from '../helpers.js';

const SECRET = 'test-hmac-secret-that-is-long-enough-0123456789';
const OTHER_SECRET = 'another-hmac-secret-nobody-configured-9876543210';
const API_KEY = 'k3y-for-the-tests-0001';
const now = (): number => Math.floor(Date.now() / 1000);

const b64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A token signed with an HMAC secret. */
function hmacToken(payload: JWTPayload, options: { secret?: string; alg?: string } = {}): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: options.alg ?? 'HS256', typ: 'JWT' })
    .sign(new TextEncoder().encode(options.secret ?? SECRET));
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

/** Every value the upstream received for `name` (raw, so duplicates show). */
function rawValues(upstream: Upstream, index: number, name: string): string[] {
  const raw = upstream.seen[index]!.rawHeaders;
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
}

/** One service `a` behind `/api` (with `auth`) and `/open` (without). */
async function authGateway(t: TestContext, auth: NonNullable<NonNullable<GatewayConfigInput['routes']>[number]['auth']>) {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, {
    services: { a: { instances: [{ url: upstream.url }] } },
    routes: [
      { prefix: '/api', service: 'a', auth },
      { prefix: '/open', service: 'a' },
    ],
  });
  return { upstream, url };
}

/** Asserts a 401 JSON answer and that the upstream's count of requests did not move. */
async function assertRefused(res: Awaited<ReturnType<typeof send>>, upstream: Upstream, before: number, what: string): Promise<void> {
  assert.equal(res.status, 401, `${what}: expected 401, got ${res.status} ${res.body}`);
  assert.equal(res.json().error, 'MESH_ERR_UNAUTHORIZED', what);
  assert.equal(upstream.seen.length, before, `${what}: the upstream must see nothing`);
}

describe('auth: HS256 JWTs', () => {
  const jwt = { secret: SECRET, algorithms: ['HS256' as const], clockTolerance: '5s', forwardClaims: { sub: 'x-user-id' } };

  test('a valid token passes and the upstream sees its subject', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() + 60 });
    const res = await send(`${url}/api/me`, { headers: bearer(token) });
    assert.equal(res.status, 200, res.body);
    assert.equal(upstream.seen.length, 1);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), ['alice']);
  });

  test('an expired token (beyond clockTolerance) is 401 with WWW-Authenticate error="invalid_token"', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() - 60 });
    const res = await send(`${url}/api/me`, { headers: bearer(token) });
    await assertRefused(res, upstream, 0, 'expired');
    const challenge = String(res.headers['www-authenticate']);
    assert.match(challenge, /^Bearer\b/);
    assert.match(challenge, /error="invalid_token"/);
  });

  test('a token expired within clockTolerance still passes (the tolerance is applied, not ignored)', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt: { ...jwt, clockTolerance: '2m' } });
    const token = await hmacToken({ sub: 'alice', exp: now() - 30 });
    const res = await send(`${url}/api/me`, { headers: bearer(token) });
    assert.equal(res.status, 200, res.body);
    assert.equal(upstream.seen.length, 1);
  });

  test('a missing token is 401 with a Bearer challenge', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const res = await send(`${url}/api/me`);
    await assertRefused(res, upstream, 0, 'missing');
    assert.match(String(res.headers['www-authenticate']), /^Bearer\b/);
  });

  test('a token signed with another secret is 401', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() + 60 }, { secret: OTHER_SECRET });
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(token) }), upstream, 0, 'wrong signature');
  });

  test('a token with a tampered payload (signature of another payload) is 401', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() + 60 });
    const [head, , signature] = token.split('.');
    const forged = `${head}.${b64url({ sub: 'admin', exp: now() + 60 })}.${signature}`;
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(forged) }), upstream, 0, 'tampered payload');
  });

  test('an unsecured "alg: none" token is 401, with or without a signature part', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const payload = b64url({ sub: 'admin', exp: now() + 60 });
    for (const alg of ['none', 'None', 'NONE']) {
      const head = b64url({ alg, typ: 'JWT' });
      for (const token of [`${head}.${payload}.`, `${head}.${payload}`]) {
        await assertRefused(await send(`${url}/api/me`, { headers: bearer(token) }), upstream, 0, `alg ${alg}: ${token}`);
      }
    }
  });

  test('a token signed with an algorithm outside the allow-list (HS512, only HS256 allowed) is 401', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() + 60 }, { alg: 'HS512' });
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(token) }), upstream, 0, 'HS512');
  });

  test('nbf in the future (beyond clockTolerance) is 401', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', nbf: now() + 600, exp: now() + 1200 });
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(token) }), upstream, 0, 'nbf');
  });

  test('issuer and audience are checked', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt: { ...jwt, issuer: 'https://issuer.test', audience: 'meshgate' } });
    const good = await hmacToken({ sub: 'alice', iss: 'https://issuer.test', aud: 'meshgate', exp: now() + 60 });
    assert.equal((await send(`${url}/api/me`, { headers: bearer(good) })).status, 200);
    assert.equal(upstream.seen.length, 1);
    const cases: [string, JWTPayload][] = [
      ['wrong issuer', { sub: 'alice', iss: 'https://evil.test', aud: 'meshgate', exp: now() + 60 }],
      ['no issuer', { sub: 'alice', aud: 'meshgate', exp: now() + 60 }],
      ['wrong audience', { sub: 'alice', iss: 'https://issuer.test', aud: 'someone-else', exp: now() + 60 }],
      ['no audience', { sub: 'alice', iss: 'https://issuer.test', exp: now() + 60 }],
    ];
    for (const [what, payload] of cases) {
      await assertRefused(await send(`${url}/api/me`, { headers: bearer(await hmacToken(payload)) }), upstream, 1, what);
    }
    // The claim's name is quoted in error_description: the quotes are escaped (RFC 9110 quoted-string).
    const wrong = await send(`${url}/api/me`, { headers: bearer(await hmacToken(cases[0]![1])) });
    assert.equal(wrong.headers['www-authenticate'], 'Bearer realm="meshgate", error="invalid_token", error_description="claim \\"iss\\" check failed"');
  });

  test('forwardClaims: the upstream sees the subject, never the x-user-id the client sent', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ sub: 'alice', exp: now() + 60 });
    const res = await send(`${url}/api/me`, { headers: { ...bearer(token), 'x-user-id': ['admin', 'root'], 'X-User-Id': 'root2' } });
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), ['alice']);
  });

  test('forwardClaims: a token without the claim forwards no claim header, and the client\'s is still removed', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const token = await hmacToken({ exp: now() + 60 });
    const res = await send(`${url}/api/me`, { headers: { ...bearer(token), 'x-user-id': 'admin' } });
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), []);
  });

  test('a route without auth is unaffected (no token needed, headers pass as sent)', async (t) => {
    const { upstream, url } = await authGateway(t, { jwt });
    const res = await send(`${url}/open/x`, { headers: { 'x-user-id': 'whoever' } });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['www-authenticate'], undefined);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), ['whoever']);
  });
});

describe('auth: RS256 with a PEM public key', () => {
  test('an RS256 token passes; an HS256 token forged with the public key as HMAC secret is 401', async (t) => {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { modulusLength: 2048 });
    const pem = await exportSPKI(publicKey);
    const { upstream, url } = await authGateway(t, { jwt: { publicKey: pem, algorithms: ['RS256'], forwardClaims: { sub: 'x-user-id' } } });

    const good = await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'RS256' }).setExpirationTime('1m').sign(privateKey);
    const res = await send(`${url}/api/me`, { headers: bearer(good) });
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), ['alice']);

    // The classic algorithm confusion: the attacker knows the public key and uses its PEM text as an HMAC secret.
    for (const secret of [pem, pem.trim(), `${pem.trim()}\n`]) {
      for (const alg of ['HS256', 'HS384', 'HS512']) {
        const forged = await hmacToken({ sub: 'admin', exp: now() + 60 }, { secret, alg });
        await assertRefused(await send(`${url}/api/me`, { headers: bearer(forged) }), upstream, 1, `${alg} forged with the public key`);
      }
    }
    // Another RSA key pair's token is refused too.
    const other = await generateKeyPair('RS256', { modulusLength: 2048 });
    const foreign = await new SignJWT({ sub: 'admin' }).setProtectedHeader({ alg: 'RS256' }).setExpirationTime('1m').sign(other.privateKey);
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(foreign) }), upstream, 1, 'foreign RSA key');
  });
});

describe('auth: ES256 through a JWKS endpoint', () => {
  /** A JWKS server on 127.0.0.1:0 counting its hits. */
  async function jwksServer(t: TestContext, jwks: unknown): Promise<{ url: string; hits: () => number }> {
    let hits = 0;
    const sockets = new Set<Socket>();
    const server: Server = createServer((req, res) => {
      hits++;
      const body = JSON.stringify(jwks);
      res.writeHead(req.url === '/.well-known/jwks.json' ? 200 : 404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    server.on('connection', (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(
      () =>
        new Promise<void>((resolve) => {
          for (const s of sockets) s.destroy();
          server.close(() => resolve());
        }),
    );
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`, hits: () => hits };
  }

  test('ES256 tokens verify against the JWKS, which is fetched once and cached', async (t) => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'key-1', alg: 'ES256', use: 'sig' };
    const jwks = await jwksServer(t, { keys: [jwk] });
    const { upstream, url } = await authGateway(t, { jwt: { jwksUrl: jwks.url, algorithms: ['ES256'], forwardClaims: { sub: 'x-user-id' } } });

    const sign = (sub: string) => new SignJWT({ sub }).setProtectedHeader({ alg: 'ES256', kid: 'key-1' }).setExpirationTime('1m').sign(privateKey);
    for (let i = 0; i < 5; i++) {
      const res = await send(`${url}/api/me`, { headers: bearer(await sign(`user-${i}`)) });
      assert.equal(res.status, 200, res.body);
      assert.deepEqual(rawValues(upstream, i, 'x-user-id'), [`user-${i}`]);
    }
    assert.equal(jwks.hits(), 1, 'the JWKS is fetched once, then served from the cache');

    // A token from a key that is not in the set, under the same kid, is refused.
    const other = await generateKeyPair('ES256');
    const foreign = await new SignJWT({ sub: 'admin' }).setProtectedHeader({ alg: 'ES256', kid: 'key-1' }).setExpirationTime('1m').sign(other.privateKey);
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(foreign) }), upstream, 5, 'foreign ES256 key');
    // HMAC tokens are refused on an asymmetric-only route (no secret to check them with).
    const hs = await hmacToken({ sub: 'admin', exp: now() + 60 }, { secret: JSON.stringify(jwk) });
    await assertRefused(await send(`${url}/api/me`, { headers: bearer(hs) }), upstream, 5, 'HS256 on an ES256 route');
  });

  test('JWKS rotation: a key rotated at the endpoint is picked up after the cooldown; forged kids cost at most one fetch per cooldown', async (t) => {
    const first = await generateKeyPair('ES256');
    const second = await generateKeyPair('ES256');
    const set = { keys: [{ ...(await exportJWK(first.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] };
    const jwks = await jwksServer(t, set);
    const { upstream, url } = await authGateway(t, { jwt: { jwksUrl: jwks.url, algorithms: ['ES256'], jwksCooldown: 400 } });
    const sign = (key: Parameters<SignJWT["sign"]>[0], kid: string) => new SignJWT({ sub: kid }).setProtectedHeader({ alg: 'ES256', kid }).setExpirationTime('1m').sign(key);
    assert.equal((await send(`${url}/api/me`, { headers: bearer(await sign(first.privateKey, 'k1')) })).status, 200);
    assert.equal(jwks.hits(), 1);

    // Forged kids within the cooldown: refused, and the endpoint is not asked again.
    for (let i = 0; i < 20; i++) {
      const res = await send(`${url}/api/me`, { headers: bearer(await sign(second.privateKey, `forged-${i}`)) });
      assert.equal(res.status, 401);
    }
    assert.ok(jwks.hits() <= 2, `${jwks.hits()} fetches for 20 unknown kids`);

    // The endpoint rotates to k2; after the cooldown a k2 token triggers one fetch and passes.
    set.keys = [{ ...(await exportJWK(second.publicKey)), kid: 'k2', alg: 'ES256', use: 'sig' }];
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = jwks.hits();
    const rotated = await send(`${url}/api/me`, { headers: bearer(await sign(second.privateKey, 'k2')) });
    assert.equal(rotated.status, 200, rotated.body);
    assert.equal(jwks.hits(), before + 1);
    for (let i = 0; i < 5; i++) assert.equal((await send(`${url}/api/me`, { headers: bearer(await sign(second.privateKey, 'k2')) })).status, 200);
    assert.equal(jwks.hits(), before + 1, 'the rotated set is cached');
    assert.equal(upstream.seen.length, 7);
  });
});

describe('auth: API keys', () => {
  test('right key 200, wrong key 401, missing key 401; the client\'s x-user-id is removed', async (t) => {
    const { upstream, url } = await authGateway(t, {
      apiKeys: { keys: [API_KEY, 'second-key-0002'] },
      jwt: { secret: SECRET, algorithms: ['HS256'], forwardClaims: { sub: 'x-user-id' } },
    });
    const ok = await send(`${url}/api/x`, { headers: { 'x-api-key': API_KEY, 'x-user-id': 'admin' } });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(upstream.seen.length, 1);
    assert.deepEqual(rawValues(upstream, 0, 'x-user-id'), [], 'an API-key request forwards no client-chosen identity');

    assert.equal((await send(`${url}/api/x`, { headers: { 'x-api-key': 'second-key-0002' } })).status, 200);
    assert.equal(upstream.seen.length, 2);

    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': 'wrong-key-0000' } }), upstream, 2, 'wrong key');
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': `${API_KEY}x` } }), upstream, 2, 'key with a suffix');
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': API_KEY.slice(0, -1) } }), upstream, 2, 'key prefix');
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': '' } }), upstream, 2, 'empty key');
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': [API_KEY, API_KEY] } }), upstream, 2, 'key sent twice');
    await assertRefused(await send(`${url}/api/x`), upstream, 2, 'missing key');
    // A wrong key does not fall through to a forged JWT either.
    const forged = await hmacToken({ sub: 'admin', exp: now() + 60 }, { secret: OTHER_SECRET });
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': 'wrong-key-0000', ...bearer(forged) } }), upstream, 2, 'wrong key + forged JWT');
  });

  test('a custom header name is the only one read', async (t) => {
    const { upstream, url } = await authGateway(t, { apiKeys: { keys: [API_KEY], header: 'X-Service-Key' } });
    assert.equal((await send(`${url}/api/x`, { headers: { 'x-service-key': API_KEY } })).status, 200);
    assert.equal(upstream.seen.length, 1);
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-api-key': API_KEY } }), upstream, 1, 'default header name');
    await assertRefused(await send(`${url}/api/x`, { headers: { 'x-service-key': 'nope-nope-nope' } }), upstream, 1, 'wrong key');
    await assertRefused(await send(`${url}/api/x`), upstream, 1, 'missing');
  });
});

describe('auth: bad config fails at boot, naming the path', () => {
  const base = (jwt: Record<string, unknown>): GatewayConfigInput => ({
    logLevel: 'silent',
    services: { a: { instances: [{ url: 'http://127.0.0.1:9' }] } },
    routes: [{ prefix: '/api', service: 'a', auth: { jwt: jwt as never } }],
  });

  /** The ConfigError a config causes, whether at createGateway or at ready(). */
  async function configError(t: TestContext, config: GatewayConfigInput): Promise<MeshError & { issues: { path: string; message: string }[] }> {
    try {
      const gateway = createGateway(config);
      t.after(() => gateway.close());
      await gateway.ready();
    } catch (err) {
      return err as MeshError & { issues: { path: string; message: string }[] };
    }
    assert.fail('expected a config error');
  }

  test('HS256 without a secret', async (t) => {
    const err = await configError(t, base({ algorithms: ['HS256'] }));
    assert.equal(err.code, 'MESH_ERR_CONFIG');
    assert.ok(err.issues.some((i) => i.path === 'routes[0].auth.jwt.secret'), err.message);
  });

  test('RS256 without publicKey or jwksUrl', async (t) => {
    const err = await configError(t, base({ algorithms: ['RS256'] }));
    assert.equal(err.code, 'MESH_ERR_CONFIG');
    assert.ok(err.issues.some((i) => i.path === 'routes[0].auth.jwt.publicKey'), err.message);
  });

  test('algorithms: [none] (in any case)', async (t) => {
    for (const alg of ['none', 'None']) {
      const err = await configError(t, base({ secret: SECRET, algorithms: [alg] }));
      assert.equal(err.code, 'MESH_ERR_CONFIG');
      assert.ok(err.issues.some((i) => i.path === 'routes[0].auth.jwt.algorithms[0]'), err.message);
    }
  });

  test('publicKey that is not a PEM key', async (t) => {
    const err = await configError(t, base({ algorithms: ['RS256'], publicKey: '-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----' }));
    assert.equal(err.code, 'MESH_ERR_CONFIG');
    assert.ok(err.issues.some((i) => i.path === 'routes[0].auth.jwt.publicKey'), err.message);
  });
});

test('auth: named API keys validate; a bad entry is named by its path, never as "a duration"', async () => {
  const { validateConfig } = await import('../../lib/index.js');
  assert.doesNotThrow(() => validateConfig({ services: { api: {} }, routes: [{ prefix: '/a', service: 'api', auth: { apiKeys: { keys: [{ name: 'ci-bot', key: 'ci-bot-key-123' }, 'plain-key-123'] } } }] }));
  assert.throws(
    () => validateConfig({ services: { api: {} }, routes: [{ prefix: '/a', service: 'api', auth: { apiKeys: { keys: [{ name: 'ci' }, true] } } }] }),
    (err: Error) => {
      assert.doesNotMatch(err.message, /duration/);
      assert.match(err.message, /keys\[0\]\.key: expected string or number/);
      assert.match(err.message, /keys\[1\]: expected a key \(8 characters or more\) or \{ name, key \}/);
      return true;
    },
  );
  assert.throws(
    () => validateConfig({ services: { api: {} }, routes: [{ prefix: '/a', service: 'api', auth: { apiKeys: { keys: [{ name: 'ci-bot', key: 'k1-0123456' }, { name: 'ci-bot', key: 'k2-0123456' }] } } }] }),
    /keys\[1\]\.name: "ci-bot" names two keys/,
  );
});
