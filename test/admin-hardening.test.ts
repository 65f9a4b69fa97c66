/**
 * The admin (control-plane) server as an attacker sees it: where it listens, which routes need
 * the token, and what a registration may point the gateway at (SSRF through registration),
 * how big it may be, and how fast registrations may come.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { createGateway, type GatewayConfigInput } from '../lib/index.js';
import { send, startGateway } from './helpers.js';

const TOKEN = 'admin-hardening-token';
const AUTH = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
const LIMIT = { timeout: 20_000 };

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

/** A gateway with the admin API and an empty service `a`. */
async function adminGateway(t: TestContext, admin: NonNullable<GatewayConfigInput['admin']> = {}) {
  withAdminTokenEnv(t, undefined);
  const { gateway, adminUrl } = await startGateway(t, { admin: { token: TOKEN, ...admin }, services: { a: {} } });
  assert.ok(adminUrl);
  return { gateway, adminUrl };
}

const register = (adminUrl: string, body: unknown, headers: Record<string, string> = AUTH) =>
  send(`${adminUrl}/services/a/instances`, { method: 'POST', headers, body: JSON.stringify(body) });

describe('admin: where it listens', () => {
  test('the admin server binds loopback (127.0.0.1) when admin.host is not given', LIMIT, async (t) => {
    withAdminTokenEnv(t, undefined);
    const gateway = createGateway({ logLevel: 'silent', listen: { host: '127.0.0.1', port: 0 }, admin: { port: 0, token: TOKEN } });
    t.after(() => gateway.close());
    assert.equal(gateway.config.admin?.host, '127.0.0.1');
    const info = await gateway.listen();
    assert.match(info.adminUrl ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((gateway.admin.server!.address() as AddressInfo).address, '127.0.0.1');
  });

  test('a non-loopback admin host without a token refuses to start and releases the proxy port', LIMIT, async (t) => {
    withAdminTokenEnv(t, undefined);
    const gateway = createGateway({ logLevel: 'silent', listen: { host: '127.0.0.1', port: 0 }, admin: { host: '0.0.0.0', port: 0 } });
    t.after(() => gateway.close());
    await assert.rejects(gateway.listen(), (err: Error & { code?: string; issues?: { path: string }[] }) => {
      assert.equal(err.code, 'MESH_ERR_CONFIG');
      assert.ok(err.issues?.some((i) => i.path === 'admin.token'), err.message);
      return true;
    });
    assert.equal(gateway.server, null);
    assert.equal(gateway.admin.server?.listening ?? false, false);
  });
});

describe('admin: the token', () => {
  test('every control-plane route needs the token; probes do not', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t);
    const id = 'existing-1';
    await gateway.registrar.register('a', { url: 'http://127.0.0.1:9', id, source: 'admin' });

    const routes: [string, string, string?][] = [
      ['GET', '/services'],
      ['GET', '/services/a'],
      ['POST', '/services/a/instances', JSON.stringify({ url: 'http://127.0.0.1:9/evil' })],
      ['PUT', `/services/a/instances/${id}/heartbeat`],
      ['DELETE', `/services/a/instances/${id}`],
      ['GET', '/events'],
      ['GET', '/nope'],
    ];
    const wrong: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong-token' },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}` },
      { authorization: TOKEN },
      { authorization: 'Bearer ' },
      { 'x-admin-token': TOKEN },
    ];
    for (const [method, path, body] of routes) {
      for (const headers of wrong) {
        const res = await send(`${adminUrl}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, ...(body ? { body } : {}) });
        assert.equal(res.status, 401, `${method} ${path} with ${JSON.stringify(headers)}: ${res.status} ${res.body}`);
        assert.equal(res.json().error, 'MESH_ERR_UNAUTHORIZED');
        assert.match(String(res.headers['www-authenticate']), /^Bearer/);
      }
    }
    // Nothing changed: the instance is still there, nothing new was registered.
    const instances = [...gateway.registry.requireService('a').instances.keys()];
    assert.deepEqual(instances, [id]);

    assert.equal((await send(`${adminUrl}/healthz`)).status, 200);
    assert.equal((await send(`${adminUrl}/readyz`)).status, 200);
    const ok = await send(`${adminUrl}/services`, { headers: AUTH });
    assert.equal(ok.status, 200, 'the right token works');
  });
});

describe('admin: what a registration may point at', () => {
  test('allowedNetworks [127.0.0.0/8]: addresses outside are 400 naming url, inside are accepted', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t, { allowedNetworks: ['127.0.0.0/8'] });
    const outside = [
      'http://10.1.2.3:80',
      'http://192.0.2.1:8080/x',
      'http://169.254.169.254/latest/meta-data/',
      'http://0.0.0.0:80',
      'http://167837955/', // 10.1.2.3 as one decimal number
      'http://0x0a010203/', // 10.1.2.3 in hex
      'http://[::1]:80',
      'http://[::ffff:10.1.2.3]:80',
      'https://[fd00::1]:443',
    ];
    for (const url of outside) {
      const res = await register(adminUrl, { url });
      assert.equal(res.status, 400, `${url}: ${res.status} ${res.body}`);
      const body = res.json();
      assert.equal(body.error, 'MESH_ERR_VALIDATION', url);
      assert.ok(body.fields.some((f: { path: string }) => f.path === 'url'), `${url}: ${res.body}`);
    }
    assert.equal(gateway.registry.requireService('a').instances.size, 0, 'nothing outside was registered');

    for (const url of ['http://127.0.0.1:3000', 'http://127.8.9.10:3000', 'http://2130706433:3001' /* 127.0.0.1 */]) {
      const res = await register(adminUrl, { url });
      assert.equal(res.status, 201, `${url}: ${res.body}`);
    }
    assert.equal(gateway.registry.requireService('a').instances.size, 3);
  });

  test('allowedNetworks: a hostname is checked by what it resolves to', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t, { allowedNetworks: ['127.0.0.0/8', '::1/128'] });
    const inside = await register(adminUrl, { url: 'http://localhost:3000' });
    assert.equal(inside.status, 201, `localhost resolves inside: ${inside.body}`);
    const unresolvable = await register(adminUrl, { url: 'http://no-such-host.invalid:3000' });
    assert.equal(unresolvable.status, 400, unresolvable.body);
    assert.ok(unresolvable.json().fields.some((f: { path: string }) => f.path === 'url'));
    assert.equal(gateway.registry.requireService('a').instances.size, 1);
  });

  test('a non-http URL is 400 naming url', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t);
    for (const url of ['file:///etc/passwd', 'ftp://127.0.0.1/', 'gopher://127.0.0.1:70/_x', 'javascript:alert(1)', 'redis://127.0.0.1:6379', '//127.0.0.1:80', '127.0.0.1:80', 'http://']) {
      const res = await register(adminUrl, { url });
      assert.equal(res.status, 400, `${url}: ${res.status} ${res.body}`);
      assert.ok(res.json().fields.some((f: { path: string }) => f.path === 'url'), `${url}: ${res.body}`);
    }
    assert.equal(gateway.registry.requireService('a').instances.size, 0);
  });

  test('metadata over 4 KiB is 400 naming metadata; just under passes', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t);
    const big = await register(adminUrl, { url: 'http://127.0.0.1:3000', metadata: { blob: 'x'.repeat(4097) } });
    assert.equal(big.status, 400, big.body);
    assert.ok(big.json().fields.some((f: { path: string }) => f.path === 'metadata'), big.body);
    const many = await register(adminUrl, { url: 'http://127.0.0.1:3000', metadata: Object.fromEntries(Array.from({ length: 600 }, (_, i) => [`k${i}`, i])) });
    assert.equal(many.status, 400, many.body);
    assert.equal(gateway.registry.requireService('a').instances.size, 0);

    // {"blob":"..."} is 11 bytes of JSON around the string.
    const fits = await register(adminUrl, { url: 'http://127.0.0.1:3000', metadata: { blob: 'x'.repeat(4096 - 11) } });
    assert.equal(fits.status, 201, fits.body);
  });

  test('registrationRate: 5: a burst of 20 registrations gets 429s, and only the accepted ones exist', LIMIT, async (t) => {
    const { gateway, adminUrl } = await adminGateway(t, { registrationRate: 5 });
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => register(adminUrl, { url: `http://127.0.0.1:${4000 + i}` })));
    const accepted = results.filter((r) => r.status === 201);
    const limited = results.filter((r) => r.status === 429);
    assert.equal(accepted.length + limited.length, 20, results.map((r) => r.status).join(','));
    assert.ok(accepted.length >= 5, `the burst allowance is honoured: ${accepted.length} accepted`);
    assert.ok(limited.length > 0, 'a burst of 20 at 5/s is limited');
    for (const r of limited) {
      assert.equal(r.json().error, 'MESH_ERR_RATE_LIMITED');
      assert.ok(Number(r.headers['retry-after']) >= 1);
    }
    assert.equal(gateway.registry.requireService('a').instances.size, accepted.length);
    // Heartbeats are not registrations: they still pass while registrations are limited.
    const id = accepted[0]!.json().id as string;
    const beat = await send(`${adminUrl}/services/a/instances/${encodeURIComponent(id)}/heartbeat`, { method: 'PUT', headers: AUTH });
    assert.equal(beat.status, 200, beat.body);
  });
});

describe('admin: input that cannot hurt it', () => {
  test('metadata nested 5,000 deep in a small body is 400, not a stack overflow', LIMIT, async (t) => {
    const { adminUrl, gateway } = await adminGateway(t);
    const deep = '{"a":'.repeat(5000) + '1' + '}'.repeat(5000);
    const res = await send(`${adminUrl}/services/a/instances`, { method: 'POST', headers: AUTH, body: `{"url":"http://127.0.0.1:1","metadata":${deep}}` });
    assert.equal(res.status, 400);
    assert.equal(res.json().error, 'MESH_ERR_BAD_JSON');
    assert.match(res.json().message, /nested more than 32 levels/);
    // Nesting that a metadata record can reasonably have still passes.
    const fine = await register(adminUrl, { url: 'http://127.0.0.1:2', metadata: { a: { b: { c: { d: 1 } } } } });
    assert.equal(fine.status, 201);
    assert.equal(gateway.registry.getService('a')!.instances.size, 1);
  });

  test('instance ids "." and ".." are refused: an instance that could never be addressed again is never registered', LIMIT, async (t) => {
    const { adminUrl, gateway } = await adminGateway(t);
    for (const id of ['.', '..']) {
      const res = await register(adminUrl, { url: 'http://127.0.0.1:1', id });
      assert.equal(res.status, 400, id);
      assert.match(res.json().message, /id: must not be "\." or "\.\."/);
    }
    // A dot inside an id is fine, and it can be deregistered at its URL.
    assert.equal((await register(adminUrl, { url: 'http://127.0.0.1:1', id: 'a.b' })).status, 201);
    assert.equal((await send(`${adminUrl}/services/a/instances/a.b`, { method: 'DELETE', headers: AUTH })).status, 204);
    assert.equal(gateway.registry.getService('a')!.instances.size, 0);
  });
});
