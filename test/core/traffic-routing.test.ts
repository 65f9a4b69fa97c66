import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { GatewayConfigInput } from '../../lib/index.js';
import { validateConfig } from '../../lib/index.js';
import { echo, send, sendPath, spawnNode, startGateway, startUpstream, type Upstream } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** One echo upstream per service name; the service answers with its name. */
async function services(t: TestContext, names: string[]): Promise<Record<string, Upstream>> {
  const entries = await Promise.all(names.map(async (name) => [name, await startUpstream(t, echo(name))] as const));
  return Object.fromEntries(entries);
}

function servicesConfig(ups: Record<string, Upstream>): GatewayConfigInput['services'] {
  return Object.fromEntries(Object.entries(ups).map(([name, up]) => [name, { instances: [{ url: up.url }] }]));
}

describe('route matching', () => {
  test('every match kind, alone and combined, and the precedence between them', async (t) => {
    const ups = await services(t, ['exact', 'api', 'apiget', 'regex', 'shop', 'wild', 'canary', 'beta', 'nobeta', 'search', 'searchall', 'curl']);
    const { url } = await startGateway(t, {
      services: servicesConfig(ups),
      routes: [
        { name: 'exact', path: '/exact', service: 'exact' },
        { name: 'api', prefix: '/api', service: 'api' },
        { name: 'api-get', prefix: '/api', methods: ['GET', 'HEAD'], service: 'apiget' },
        { name: 'regex', pathRegex: '^/api/v[0-9]+/users$', service: 'regex' },
        { name: 'shop', prefix: '/api', hosts: ['shop.example.com'], service: 'shop' },
        { name: 'wild', prefix: '/api', hosts: ['*.example.com'], service: 'wild' },
        { name: 'canary', prefix: '/api', headers: { 'X-Canary': '1' }, service: 'canary' },
        { name: 'beta', prefix: '/beta', headers: { 'x-beta': { present: true } }, service: 'beta' },
        { name: 'no-beta', prefix: '/beta', headers: { 'x-beta': { present: false } }, service: 'nobeta' },
        { name: 'search', prefix: '/search', query: { q: { regex: '^[a-z]+$' } }, service: 'search' },
        { name: 'search-all', prefix: '/search', service: 'searchall' },
        { name: 'curl', prefix: '/ua', headers: { 'user-agent': { regex: '^curl/' } }, service: 'curl' },
      ],
    });
    const who = async (path: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<string> => {
      const res = await sendPath(url, path, options);
      if (res.status !== 200) return `${res.status} ${res.status === 404 ? res.json().error : ''}`.trim();
      // A HEAD answer has no body: the instance that saw it says.
      if (options.method === 'HEAD') return Object.entries(ups).find(([, up]) => up.seen.some((r) => r.method === 'HEAD'))?.[0] ?? 'none';
      return res.json().name;
    };
    const cases: [string, Promise<string>, string][] = [
      ['an exact path', who('/exact'), 'exact'],
      ['an exact path does not match below it', who('/exact/more'), '404 MESH_ERR_NO_ROUTE'],
      ['a prefix, for a method the more specific route does not take', who('/api/x', { method: 'POST' }), 'api'],
      ['more conditions (methods) rank first on the same prefix', who('/api/x'), 'apiget'],
      ['HEAD is in the list', who('/api/x', { method: 'HEAD' }), 'apiget'],
      ['equal conditions: config order (api-get before canary)', who('/api/x', { headers: { 'x-canary': '1' } }), 'apiget'],
      ['a header condition, when the method route does not match', who('/api/x', { method: 'DELETE', headers: { 'x-canary': '1' } }), 'canary'],
      ['a header with another value does not match', who('/api/x', { method: 'DELETE', headers: { 'x-canary': '2' } }), 'api'],
      ['a regex ranks before a prefix', who('/api/v2/users'), 'regex'],
      ['the regex is anchored', who('/api/v2/users/1'), 'apiget'],
      ['an exact host ranks first', who('/api/v2/users', { headers: { host: 'shop.example.com' } }), 'shop'],
      ['hosts: case-insensitive, the port ignored', who('/api/x', { headers: { host: 'SHOP.Example.com:8443' } }), 'shop'],
      ['a wildcard host, one label', who('/api/x', { headers: { host: 'a.example.com' } }), 'wild'],
      ['a wildcard host, two labels', who('/api/x', { headers: { host: 'a.b.example.com' } }), 'wild'],
      ['a wildcard does not match its bare suffix', who('/api/x', { headers: { host: 'example.com' } }), 'apiget'],
      ['a host route falls through to routes for any host when its path does not match', who('/beta', { headers: { host: 'shop.example.com' } }), 'nobeta'],
      ['header present', who('/beta', { headers: { 'x-beta': 'yes' } }), 'beta'],
      ['header absent', who('/beta'), 'nobeta'],
      ['query regex', who('/search?q=abc'), 'search'],
      ['query regex not met', who('/search?q=ABC'), 'searchall'],
      ['query parameter absent', who('/search'), 'searchall'],
      ['header regex', who('/ua', { headers: { 'user-agent': 'curl/8.5' } }), 'curl'],
      ['header regex not met, no other route', who('/ua', { headers: { 'user-agent': 'Mozilla/5.0' } }), '404 MESH_ERR_NO_ROUTE'],
      ['nothing matches', who('/nothing'), '404 MESH_ERR_NO_ROUTE'],
    ];
    const got = await Promise.all(cases.map(async ([what, answer, expected]) => [what, await answer, expected] as const));
    assert.deepEqual(
      got.filter(([, answer, expected]) => answer !== expected),
      [],
    );
  });

  test('bad match conditions are refused with the path of each', () => {
    const services = { api: {} };
    assert.throws(
      () =>
        validateConfig({
          services,
          routes: [
            { pathRegex: '(a+)+$', service: 'api' },
            { prefix: '/a', path: '/b', service: 'api' },
            { prefix: '/c', hosts: ['shop.example.com:8080'], service: 'api' },
            { prefix: '/d', headers: { 'x-a': { regex: '([' } }, service: 'api' },
            { prefix: '/e', query: { q: { regex: '(x*)*y' } }, service: 'api' },
            { prefix: '/f', methods: ['GE T'], service: 'api' },
            { prefix: '/g', service: 'api', backends: [{ service: 'api' }] },
            { prefix: '/h' },
            { path: '/i', stripPrefix: true, service: 'api' },
          ],
        }),
      (err: Error & { issues?: { path: string; message: string }[] }) => {
        const paths = (err.issues ?? []).map((i) => `${i.path}: ${i.message}`);
        const expect = (path: string, message: RegExp): void => assert.ok(paths.some((p) => p.startsWith(`${path}:`) && message.test(p)), `no issue at ${path} ${message}; got:\n${paths.join('\n')}`);
        expect('routes[0].pathRegex', /backtrack exponentially/);
        expect('routes[1].path', /one of prefix, path and pathRegex/);
        expect('routes[2].hosts[0]', /without a port/);
        expect('routes[3].headers.x-a.regex', /not a valid regular expression/);
        expect('routes[4].query.q.regex', /backtrack exponentially/);
        expect('routes[5].methods[0]', /HTTP method/);
        expect('routes[6].backends', /one of service, backends and redirect/);
        expect('routes[7].service', /needs a service, backends or a redirect/);
        expect('routes[8].stripPrefix', /needs a prefix/);
        return true;
      },
    );
  });

  test('meshgate validate warns about a route that can never match, and still exits 0', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'meshgate-routes-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'meshgate.yaml');
    await writeFile(
      file,
      [
        'services: { api: { instances: [{ url: "http://127.0.0.1:9" }] } }',
        'routes:',
        '  - { name: any-beta, prefix: /x, headers: { x-beta: { present: true } }, service: api }',
        '  - { name: beta-1, prefix: /x, headers: { x-beta: "1" }, service: api }',
        '  - { name: gets, prefix: /x, methods: [GET], service: api }',
        '',
      ].join('\n'),
    );
    const run = await spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'validate', file], { cwd: ROOT });
    const { code } = await run.exited;
    assert.equal(code, 0, run.stderr());
    assert.match(run.stderr(), /warning: routes\[1\] \("beta-1"\) can never match: routes\[0\] \("any-beta"\) ranks before it/);
    assert.doesNotMatch(run.stderr(), /routes\[2\]/, 'a route with other conditions is reachable');
  });

  test('GET /routes lists the compiled table: conditions, backends with their weights and shares, edits, plugins', async (t) => {
    const { adminUrl } = await startGateway(t, {
      admin: { port: 0 },
      services: { 'users-v1': {}, 'users-v2': {} },
      routes: [
        { prefix: '/users', hosts: ['*.example.com'], methods: ['get'], headers: { 'x-canary': { present: false } }, backends: [{ service: 'users-v1', weight: 95 }, { service: 'users-v2', weight: 5, subset: { version: 'v2' } }], stickyOn: 'cookie:uid', fault: { abort: { percent: 1 } } },
        { name: 'old', path: '/legacy', redirect: { path: '/users', status: 301 } },
      ],
    });
    const res = await send(`${adminUrl}/routes`);
    assert.equal(res.status, 200);
    const [users, old] = res.json().routes;
    assert.deepEqual(users.match, { prefix: '/users', methods: ['GET'], hosts: ['*.example.com'], headers: { 'x-canary': { present: false } } });
    assert.equal(users.name, '/users host=*.example.com method=GET header=x-canary');
    assert.deepEqual(users.backends, [
      { name: 'users-v1', service: 'users-v1', weight: 95, percent: 95 },
      { name: 'users-v2{version=v2}', service: 'users-v2', weight: 5, percent: 5, subset: { version: 'v2' }, fallback: false },
    ]);
    assert.equal(users.stickyOn, 'cookie:uid');
    assert.deepEqual(users.plugins, ['fault']);
    assert.deepEqual(old, { index: 1, name: 'old', match: { path: '/legacy' }, backends: [], redirect: { path: '/users', status: 301 }, plugins: [] });
  });
});
