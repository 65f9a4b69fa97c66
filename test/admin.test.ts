import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { describe, test, type TestContext } from 'node:test';
import { createGateway, type Gateway } from '../lib/index.js';
import { ConfigError } from '../lib/errors.js';
import { send, startGateway, startUpstream, waitFor } from './helpers.js';

/** Sets (or unsets) MESHGATE_ADMIN_TOKEN for one test and restores it afterwards. */
function withAdminTokenEnv(t: TestContext, value: string | undefined): void {
  const saved = process.env.MESHGATE_ADMIN_TOKEN;
  if (value === undefined) delete process.env.MESHGATE_ADMIN_TOKEN;
  else process.env.MESHGATE_ADMIN_TOKEN = value;
  t.after(() => {
    if (saved === undefined) delete process.env.MESHGATE_ADMIN_TOKEN;
    else process.env.MESHGATE_ADMIN_TOKEN = saved;
  });
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

describe('admin server: probes', () => {
  test('GET /healthz answers 200 without a token', async (t) => {
    withAdminTokenEnv(t, undefined);
    const { adminUrl } = await startGateway(t, { admin: { token: 'secret' } });
    assert.ok(adminUrl);
    const res = await send(`${adminUrl}/healthz`);
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /application\/json/);
    assert.deepEqual(res.json(), { status: 'ok' });
    // A wrong token on a public path changes nothing.
    assert.equal((await send(`${adminUrl}/healthz`, { headers: bearer('wrong') })).status, 200);
  });

  test('GET /readyz answers 200 while running and 503 once close() has begun', async (t) => {
    withAdminTokenEnv(t, undefined);
    // The upstream holds its answer until the test releases it, so close() stays in its drain.
    const held: ServerResponse[] = [];
    const upstream = await startUpstream(t, (_req, res) => {
      held.push(res);
    });
    const { gateway, url, adminUrl } = await startGateway(t, {
      admin: { token: 'secret' },
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const ready = await send(`${adminUrl}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.json(), { status: 'ready' });
    assert.equal(gateway.isReady, true);

    const slow = send(`${url}/api/slow`);
    await waitFor(() => held.length === 1, 5000, 'the upstream to receive the slow request');
    const closing = gateway.close();
    assert.equal(gateway.isReady, false);
    const draining = await send(`${adminUrl}/readyz`);
    assert.equal(draining.status, 503);
    assert.deepEqual(draining.json(), { status: 'not ready' });
    // The liveness probe is not readiness: the process is alive while it drains.
    assert.equal((await send(`${adminUrl}/healthz`)).status, 200);

    held[0]!.writeHead(200, { 'content-type': 'text/plain' }).end('done');
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.body, 'done');
    await closing;
  });
});

describe('admin server: auth', () => {
  test('an unknown admin route answers 404 JSON with the right token', async (t) => {
    withAdminTokenEnv(t, undefined);
    const { adminUrl } = await startGateway(t, { admin: { token: 'secret' } });
    const res = await send(`${adminUrl}/nope`, { headers: bearer('secret') });
    assert.equal(res.status, 404);
    assert.match(String(res.headers['content-type']), /application\/json/);
    const body = res.json();
    assert.equal(body.error, 'MESH_ERR_NOT_FOUND');
    assert.equal(typeof body.message, 'string');
    // The auth scheme is case-insensitive (RFC 9110).
    assert.equal((await send(`${adminUrl}/nope`, { headers: { authorization: 'bearer secret' } })).status, 404);
  });

  test('a protected path answers 401 JSON with WWW-Authenticate: Bearer without the right token', async (t) => {
    withAdminTokenEnv(t, undefined);
    const { adminUrl } = await startGateway(t, { admin: { token: 'secret' } });
    const cases: [string, Record<string, string>][] = [
      ['no token', {}],
      ['wrong token', bearer('secreT')],
      ['a prefix of the token', bearer('secre')],
      ['the token as Basic', { authorization: 'Basic secret' }],
      ['the bare token', { authorization: 'secret' }],
    ];
    for (const [what, headers] of cases) {
      const res = await send(`${adminUrl}/nope`, { headers });
      assert.equal(res.status, 401, what);
      assert.match(String(res.headers['www-authenticate']), /^Bearer\b/, what);
      assert.match(String(res.headers['content-type']), /application\/json/, what);
      assert.equal(res.json().error, 'MESH_ERR_UNAUTHORIZED', what);
    }
    // Every method, not only GET.
    const post = await send(`${adminUrl}/services/api/instances`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(post.status, 401);
  });

  test('the control-plane routes need the token too', async (t) => {
    withAdminTokenEnv(t, undefined);
    const { adminUrl } = await startGateway(t, { admin: { token: 'secret' }, services: { api: {} } });
    for (const path of ['/services', '/services/api']) {
      const anonymous = await send(`${adminUrl}${path}`);
      assert.equal(anonymous.status, 401, path);
      assert.match(String(anonymous.headers['www-authenticate']), /^Bearer\b/, path);
      assert.equal((await send(`${adminUrl}${path}`, { headers: bearer('wrong') })).status, 401, path);
      assert.equal((await send(`${adminUrl}${path}`, { headers: bearer('secret') })).status, 200, path);
    }
    const register = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: 'http://127.0.0.1:1' }) };
    assert.equal((await send(`${adminUrl}/services/api/instances`, register)).status, 401);
    const before = await send(`${adminUrl}/services/api`, { headers: bearer('secret') });
    assert.deepEqual(before.json().instances, [], 'a refused registration must not reach the registry');
    const accepted = await send(`${adminUrl}/services/api/instances`, { ...register, headers: { ...register.headers, ...bearer('secret') } });
    assert.equal(accepted.status, 201);
    const after = await send(`${adminUrl}/services/api`, { headers: bearer('secret') });
    assert.equal(after.json().instances.length, 1);
  });

  test('without admin.token, the token comes from MESHGATE_ADMIN_TOKEN', async (t) => {
    withAdminTokenEnv(t, 'from-env');
    const { adminUrl } = await startGateway(t, { admin: {} });
    const anonymous = await send(`${adminUrl}/nope`);
    assert.equal(anonymous.status, 401);
    assert.match(String(anonymous.headers['www-authenticate']), /^Bearer\b/);
    assert.equal((await send(`${adminUrl}/nope`, { headers: bearer('wrong') })).status, 401);
    assert.equal((await send(`${adminUrl}/nope`, { headers: bearer('from-env') })).status, 404);
  });

  test('admin.token wins over MESHGATE_ADMIN_TOKEN', async (t) => {
    withAdminTokenEnv(t, 'from-env');
    const { adminUrl } = await startGateway(t, { admin: { token: 'from-config' } });
    assert.equal((await send(`${adminUrl}/nope`, { headers: bearer('from-env') })).status, 401);
    assert.equal((await send(`${adminUrl}/nope`, { headers: bearer('from-config') })).status, 404);
  });

  test('on loopback without any token the admin API is open', async (t) => {
    withAdminTokenEnv(t, undefined);
    const { adminUrl } = await startGateway(t, { admin: {} });
    assert.equal((await send(`${adminUrl}/nope`)).status, 404);
  });
});

describe('admin server: listening beyond loopback', () => {
  function gatewayWithAdminOn(t: TestContext, host: string): Gateway {
    const gateway = createGateway({ logLevel: 'silent', listen: { host: '127.0.0.1', port: 0 }, admin: { host, port: 0 } });
    t.after(() => gateway.close());
    return gateway;
  }

  function assertNeedsToken(err: unknown): true {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.code, 'MESH_ERR_CONFIG');
    assert.ok(err.issues.some((i) => i.path === 'admin.token'), JSON.stringify(err.issues));
    assert.match(err.message, /admin\.token/);
    return true;
  }

  test('0.0.0.0 without any token fails with MESH_ERR_CONFIG naming admin.token', async (t) => {
    withAdminTokenEnv(t, undefined);
    const gateway = gatewayWithAdminOn(t, '0.0.0.0');
    await assert.rejects(gateway.listen(), assertNeedsToken);
  });

  test('0.0.0.0 with MESHGATE_ADMIN_TOKEN set listens and asks for the token', async (t) => {
    withAdminTokenEnv(t, 'from-env');
    const gateway = gatewayWithAdminOn(t, '0.0.0.0');
    const info = await gateway.listen();
    assert.ok(info.adminUrl);
    assert.equal((await send(`${info.adminUrl}/nope`)).status, 401);
    assert.equal((await send(`${info.adminUrl}/nope`, { headers: bearer('from-env') })).status, 404);
  });

  test('a refused admin listen leaves no proxy port bound', async (t) => {
    withAdminTokenEnv(t, undefined);
    const gateway = gatewayWithAdminOn(t, '0.0.0.0');
    await assert.rejects(gateway.listen(), assertNeedsToken);
    // listen() failed: a caller that now exits or retries must not find the proxy still
    // holding its port (and keeping the process alive).
    assert.notEqual(gateway.server?.listening, true, 'the proxy server is still listening after listen() rejected');
  });

  test('a host name that merely starts with "127." is not taken for loopback', async (t) => {
    withAdminTokenEnv(t, undefined);
    // .invalid never resolves (RFC 2606); only the name's first label looks like loopback.
    const gateway = gatewayWithAdminOn(t, '127.admin.invalid');
    await assert.rejects(gateway.listen(), assertNeedsToken);
  });
});
