import assert from 'node:assert/strict';
import { request } from 'node:http';
import { describe, test } from 'node:test';
import { echo, send, sendPath, startGateway, startUpstream, waitFor } from './helpers.js';

const TOKEN = 'config-admin-token';
const auth = { authorization: `Bearer ${TOKEN}` };
const LIMIT = { timeout: 60_000 };

/** A JSON request to the admin API with the token. */
async function call(url: string, method: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Record<string, unknown> }> {
  const res = await send(url, { method, headers: { ...auth, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, json: res.body === '' ? null : res.json(), headers: res.headers };
}

describe('admin API: /config', () => {
  test('GET /config shows the running document with its version and appliedAt, secrets redacted, ${ENV} references kept', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const { adminUrl } = await startGateway(t, {
      admin: { port: 0, token: TOKEN },
      discovery: undefined,
      services: { api: { instances: [{ url: a.url }] } },
      routes: [
        { prefix: '/api', service: 'api', auth: { jwt: { secret: 'a-very-secret-hmac-key', algorithms: ['HS256'] }, apiKeys: { keys: ['key-one-123456', '${SOME_KEY:-default-key-1}'] } } },
      ],
    });
    const res = await call(`${adminUrl}/config`, 'GET');
    assert.equal(res.status, 200);
    assert.match(res.json.version, /^[0-9a-f]{12}$/);
    assert.equal(res.headers.etag, `"${res.json.version}"`);
    assert.ok(Date.now() - Date.parse(res.json.appliedAt) < 60_000);
    const text = JSON.stringify(res.json.config);
    assert.ok(!text.includes('a-very-secret-hmac-key') && !text.includes('key-one-123456') && !text.includes(TOKEN), text);
    assert.equal(res.json.config.routes[0].auth.jwt.secret, '[redacted]');
    assert.deepEqual(res.json.config.routes[0].auth.apiKeys.keys, ['[redacted]', '${SOME_KEY:-default-key-1}']);
    assert.equal(res.json.config.admin.token, '[redacted]');
    assert.equal((await send(`${adminUrl}/config`)).status, 401, 'the token protects it');
  });

  test('PUT /config applies a whole document: 200 with the new version, 400 with every bad path, 409 on a stale If-Match; POST /config/validate is a dry run', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const b = await startUpstream(t, echo('b'));
    const { url, adminUrl } = await startGateway(t, { admin: { port: 0, token: TOKEN }, services: { api: { instances: [{ url: a.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    const events: string[] = [];
    const stream = request(`${adminUrl}/events`, { headers: auth }, (res) => res.setEncoding('utf8').on('data', (chunk: string) => events.push(chunk)));
    stream.end();
    t.after(() => stream.destroy());
    await waitFor(() => events.length > 0, 2000, 'the event stream');

    const first = (await call(`${adminUrl}/config`, 'GET')).json.version;
    const next = { services: { api: { instances: [{ url: a.url }] }, other: { instances: [{ url: b.url }] } }, routes: [{ prefix: '/api', service: 'api' }, { prefix: '/b', service: 'other' }] };

    const dry = await call(`${adminUrl}/config/validate`, 'POST', next);
    assert.equal(dry.status, 200);
    assert.equal(dry.json.valid, true);
    assert.notEqual(dry.json.version, first);
    assert.equal((await sendPath(url, '/b/x')).status, 404, 'a dry run applies nothing');
    assert.equal((await call(`${adminUrl}/config`, 'GET')).json.version, first);

    const bad = { services: { api: { instances: [{ url: 'ftp://x' }], timeout: 'soon' } }, routes: [{ prefix: '/api', service: 'ghost' }] };
    for (const [method, path] of [['POST', '/config/validate'], ['PUT', '/config']] as const) {
      const res = await call(`${adminUrl}${path}`, method, bad);
      assert.equal(res.status, 400, `${method} ${path}`);
      assert.equal(res.json.error, 'MESH_ERR_CONFIG');
      const paths = res.json.fields.map((f: { path: string }) => f.path);
      for (const p of ['services.api.instances[0].url', 'services.api.timeout', 'routes[0].service']) assert.ok(paths.includes(p), `${p} in ${paths.join(', ')}`);
    }
    assert.equal((await call(`${adminUrl}/config`, 'GET')).json.version, first, 'the refused document changed nothing');

    const stale = await call(`${adminUrl}/config`, 'PUT', next, { 'if-match': '"000000000000"' });
    assert.equal(stale.status, 409);
    assert.equal(stale.json.error, 'MESH_ERR_CONFIG_CONFLICT');
    assert.equal(stale.json.version, first);

    const put = await call(`${adminUrl}/config`, 'PUT', next, { 'if-match': `"${first}"` });
    assert.equal(put.status, 200, JSON.stringify(put.json));
    assert.equal(put.json.version, dry.json.version);
    assert.equal(put.json.previous, first);
    assert.equal((await sendPath(url, '/b/x')).json().name, 'b');
    const now = await call(`${adminUrl}/config`, 'GET');
    assert.equal(now.json.version, put.json.version);
    assert.equal(now.json.config.admin.token, '[redacted]', 'the running admin section was kept');

    const moved = await call(`${adminUrl}/config`, 'PUT', { ...next, listen: { port: 1 } });
    assert.equal(moved.status, 400);
    assert.match(moved.json.message, /listen: cannot change in a reload \(needs a restart\)/);

    await waitFor(() => events.join('').includes('event: config:rejected'), 2000, 'the rejection event');
    const text = events.join('');
    assert.match(text, new RegExp(`event: config:applied\\ndata: \\{"origin":"admin","version":"${put.json.version}"`));
    assert.match(text, /event: config:rejected\ndata: .*routes\[0\]\.service/);
    const metrics = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metrics, /meshgate_config_reloads_total\{origin="admin",result="applied"\} 1\n/);
    assert.match(metrics, /meshgate_config_reloads_total\{origin="admin",result="rejected"\} 2\n/);
  });
});

describe('admin API: /config round trips', () => {
  test('a document read with GET and sent back keeps its secrets ("[redacted]" is never a key); two writes with one If-Match: one wins, the other is 409', { timeout: 30_000 }, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const { url, adminUrl } = await startGateway(t, {
      admin: { port: 0, token: TOKEN },
      services: { api: { instances: [{ url: a.url }] } },
      routes: [{ prefix: '/api', service: 'api', auth: { apiKeys: { keys: [{ name: 'ci', key: 'the-real-key-123' }] } } }],
    });
    const read = (await call(`${adminUrl}/config`, 'GET')).json;
    const document = read.config;
    document.routes.push({ prefix: '/more', service: 'api' });
    const put = await call(`${adminUrl}/config`, 'PUT', document, { 'if-match': `"${read.version}"` });
    assert.equal(put.status, 200, JSON.stringify(put.json));
    assert.equal((await sendPath(url, '/api/x', { headers: { 'x-api-key': '[redacted]' } })).status, 401, '"[redacted]" did not become a key');
    assert.equal((await sendPath(url, '/api/x', { headers: { 'x-api-key': 'the-real-key-123' } })).status, 200, 'the real key was kept');

    const invented = structuredClone(document);
    invented.routes.push({ prefix: '/new', service: 'api', auth: { apiKeys: { keys: ['[redacted]'] } } });
    const refused = await call(`${adminUrl}/config`, 'PUT', invented);
    assert.equal(refused.status, 400);
    assert.deepEqual(refused.json.fields.map((f: { path: string }) => f.path), ['routes[2].auth.apiKeys.keys[0]']);

    const current = (await call(`${adminUrl}/config`, 'GET')).json.version;
    const [one, two] = await Promise.all(
      ['/first', '/second'].map((prefix) => call(`${adminUrl}/config`, 'PUT', { ...document, routes: [...document.routes, { prefix, service: 'api' }] }, { 'if-match': `"${current}"` })),
    );
    assert.deepEqual([one!.status, two!.status].sort(), [200, 409], `${one!.status} ${two!.status}`);
  });
});
