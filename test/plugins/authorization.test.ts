import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { SignJWT, type JWTPayload } from 'jose';
import pino from 'pino';
import { accessLog } from '../../plugins/access-log/index.js';
import { echo, send, sendPath, startGateway, startUpstream, waitFor } from '../helpers.js';

const SECRET = 'authorization-test-secret-0123456789';
const CI_KEY = 'ci-bot-key-0123456789';
const PLAIN_KEY = 'plain-key-0123456789';

function token(payload: JWTPayload): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(new TextEncoder().encode(SECRET));
}

test('authorization: a policy matrix over real requests; the upstream never sees a denied one; audit mode logs without denying', { timeout: 30_000 }, async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const logs: string[] = [];
  const logger = pino({ level: 'warn' }, new Writable({ write: (chunk, _enc, done) => (logs.push(String(chunk)), done()) }));
  const access: Record<string, unknown>[] = [];
  const auth = { jwt: { secret: SECRET, algorithms: ['HS256' as const] }, apiKeys: { keys: [{ name: 'ci-bot', key: CI_KEY }, PLAIN_KEY] } };
  const { url, adminUrl } = await startGateway(
    t,
    {
      admin: { port: 0 },
      metrics: true,
      listen: { trustProxy: ['127.0.0.1'] },
      services: { api: { instances: [{ url: upstream.url }] } },
      authorization: { rules: [{ name: 'no-admin', action: 'deny', when: { paths: ['/admin', '/admin/**'] } }] },
      routes: [
        {
          prefix: '/orders',
          service: 'api',
          auth,
          authorization: {
            rules: [
              { name: 'quarantine', action: 'deny', when: { sourceIps: ['10.6.6.0/24'] } },
              { name: 'writers', action: 'allow', when: { methods: ['POST'], claims: { scope: 'orders:write' } } },
              { name: 'readers', action: 'allow', when: { methods: ['GET', 'HEAD'], principals: ['*'] } },
              { name: 'ci', action: 'allow', when: { principals: ['ci-bot'] } },
            ],
          },
        },
        { prefix: '/admin', service: 'api' },
        { prefix: '/open', service: 'api' },
        { prefix: '/audited', service: 'api', auth, authorization: { mode: 'audit', rules: [{ name: 'only-ops', action: 'allow', when: { principals: ['ops-*'] } }] } },
      ],
    },
    { logger, setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void access.push(...chunk.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)) } })) },
  );
  const writer = `Bearer ${await token({ sub: 'alice', scope: 'orders:read orders:write' })}`;
  const reader = `Bearer ${await token({ sub: 'bob', scope: 'orders:read' })}`;
  const call = async (method: string, path: string, headers: Record<string, string> = {}): Promise<number> => (await sendPath(url, path, { method, headers })).status;

  const cases: [string, string, Record<string, string>, number, string][] = [
    ['POST', '/orders', { authorization: writer }, 200, 'allowed by scope'],
    ['POST', '/orders', { authorization: reader }, 403, 'no orders:write scope'],
    ['GET', '/orders/7', { authorization: reader }, 200, 'any principal may read'],
    ['DELETE', '/orders/7', { authorization: reader }, 403, 'a method no rule allows'],
    ['POST', '/orders', { 'x-api-key': CI_KEY }, 200, 'an API key by its name'],
    ['POST', '/orders', { 'x-api-key': PLAIN_KEY }, 403, 'key-2 is not ci-bot'],
    ['POST', '/orders', { authorization: writer, 'x-forwarded-for': '10.6.6.7' }, 403, 'deny by CIDR beats allow'],
    ['GET', '/orders/7', { authorization: reader, 'x-forwarded-for': '10.7.0.1' }, 200, 'another network'],
    ['GET', '/admin/users', {}, 403, 'the global deny'],
    ['GET', '/admin', {}, 403, 'the global deny, exact'],
    ['GET', '/orders/../admin/users', { authorization: writer }, 403, 'a dot segment cannot slip past the deny'],
    ['GET', '/open/x', {}, 200, 'no allow rules: allowed'],
    ['GET', '/audited/x', { authorization: reader }, 200, 'audit mode denies nothing'],
  ];
  for (const [method, path, headers, status, why] of cases) {
    const before = upstream.seen.length;
    assert.equal(await call(method, path, headers), status, `${method} ${path}: ${why}`);
    assert.equal(upstream.seen.length - before, status === 200 ? 1 : 0, `${method} ${path}: the upstream saw ${status === 200 ? 'it' : 'nothing'}`);
  }

  const denied = await sendPath(url, '/orders', { method: 'POST', headers: { authorization: reader } });
  assert.deepEqual(denied.json(), { error: 'MESH_ERR_FORBIDDEN', message: 'this request is not allowed' }, 'the answer names no rule');

  await waitFor(() => logs.some((l) => l.includes('audit: would deny')), 2000, 'the audit line');
  const audit = JSON.parse(logs.find((l) => l.includes('audit: would deny'))!) as Record<string, unknown>;
  assert.equal(audit.rule, 'no allow rule matched');
  assert.equal(audit.principal, 'bob');

  await waitFor(() => access.length >= cases.length + 1, 2000, 'the access log');
  const quarantined = access.find((l) => l.path === '/orders' && (l.authorization as { rule?: string } | undefined)?.rule === 'quarantine');
  assert.ok(quarantined, 'the access log names the rule that denied');
  assert.equal(quarantined.flags, 'RBAC');
  assert.equal(quarantined.status, 403);
  assert.equal(quarantined.principal, 'alice');
  const ci = access.find((l) => l.principal === 'ci-bot');
  assert.deepEqual(ci?.authorization, { rule: 'ci', action: 'allow', enforced: true });

  const metrics = (await send(`${adminUrl}/metrics`)).body.split('\n').filter((l) => l.startsWith('meshgate_authorization')).join('\n') + '\n';
  assert.match(metrics, /meshgate_authorization_decisions_total\{route="\/orders",action="deny"\} 5\n/);
  assert.match(metrics, /meshgate_authorization_decisions_total\{route="\/admin",action="deny"\} 3\n/, "the dot-segment request was judged as /admin");
  assert.match(metrics, /meshgate_authorization_decisions_total\{route="\/audited",action="audit_deny"\} 1\n/);
});

test('authorization: bad rules are refused with their paths', async () => {
  const { validateConfig, createGateway } = await import('../../lib/index.js');
  assert.throws(
    () =>
      validateConfig({
        services: { api: {} },
        authorization: { mode: 'sometimes', rules: [{ action: 'maybe' }] },
        routes: [{ prefix: '/a', service: 'api', authorization: { rules: [{ action: 'allow', when: { paths: ['admin'], colour: 'red' } }] } }],
      }),
    (err: Error) => {
      for (const path of ['authorization.mode', 'authorization.rules[0].action', 'routes[0].authorization.rules[0].when.paths[0]', 'routes[0].authorization.rules[0].when']) assert.ok(err.message.includes(path), `${path} in ${err.message}`);
      return true;
    },
  );
  const gateway = createGateway({ logLevel: 'silent', services: { api: {} }, routes: [{ prefix: '/a', service: 'api', authorization: { rules: [{ action: 'deny', when: { sourceIps: ['10.0.0.0/99'] } }] } }] });
  await assert.rejects(gateway.check(), /routes\[0\]\.authorization: .*bad prefix length/);
});
