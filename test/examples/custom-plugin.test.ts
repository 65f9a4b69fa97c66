import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, createGateway, type GatewayConfigInput } from '../../lib/index.js';
import { maintenance } from '../../examples/custom-plugin.js';
import { ping } from '../../examples/ping-plugin.js';
import { accepts, send, spawnNode, startGateway, startUpstream, unusedPort, waitFor } from '../helpers.js';

const LIMIT = { timeout: 30_000 };
const EXAMPLE = fileURLToPath(new URL('../../examples/custom-plugin.ts', import.meta.url));
const CLI = fileURLToPath(new URL('../../lib/cli.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-plugin-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('the maintenance example answers 503 on routes in maintenance and names the owner on every answer of its service', LIMIT, async (t) => {
  const upstream = await startUpstream(t);
  const other = await startUpstream(t);
  const { url } = await startGateway(
    t,
    {
      services: {
        payments: { instances: [{ url: upstream.url }], owner: { team: 'payments', header: 'x-team' } },
        search: { instances: [{ url: other.url }] },
      },
      routes: [
        { prefix: '/payments', service: 'payments' },
        { prefix: '/refunds', service: 'payments', maintenance: { enabled: true, retryAfter: '2m', message: 'refunds are paused' } },
        { prefix: '/search', service: 'search', maintenance: { enabled: false } },
      ],
    },
    { setup: (gw) => gw.use(maintenance()) },
  );
  const open = await send(`${url}/payments/1`);
  assert.equal(open.status, 200);
  assert.equal(open.headers['x-team'], 'payments');
  const closed = await send(`${url}/refunds/1`);
  assert.equal(closed.status, 503);
  assert.deepEqual(closed.json(), { error: 'MAINTENANCE', message: 'refunds are paused', team: 'payments' });
  assert.equal(closed.headers['retry-after'], '120');
  assert.equal(closed.headers['x-team'], 'payments');
  const search = await send(`${url}/search/q`);
  assert.equal(search.status, 200);
  assert.equal(search.headers['x-team'], undefined);
  // The route in maintenance never reached the instance.
  assert.deepEqual(upstream.seen.map((s) => s.url), ['/payments/1']);
  assert.equal(other.seen.length, 1);
});

test('the maintenance example from a plugins: module: its sections are validated at their paths, and applied per route', LIMIT, async (t) => {
  const dir = await tempDir(t);
  const upstream = await startUpstream(t);
  const port = await unusedPort();
  const good = join(dir, 'good.yaml');
  await writeFile(
    good,
    [
      'logLevel: silent',
      `listen: { host: 127.0.0.1, port: ${port} }`,
      'services:',
      `  api: { instances: [ { url: "${upstream.url}" } ], owner: { team: core } }`,
      'routes:',
      '  - { prefix: /api, service: api }',
      '  - { prefix: /old, service: api, maintenance: { enabled: true, status: 410, message: gone } }',
      'plugins:',
      `  - { module: "${EXAMPLE}" }`,
      '',
    ].join('\n'),
  );
  const valid = await spawnNode(t, ['--import', 'tsx', CLI, 'validate', good], { cwd: ROOT });
  assert.equal((await valid.exited).code, 0, valid.stderr());
  assert.match(valid.stdout(), /valid \(1 service, 2 routes\)/);

  const bad = join(dir, 'bad.yaml');
  await writeFile(
    bad,
    [
      'services:',
      '  api: { owner: { team: "", colour: blue } }',
      'routes:',
      '  - { prefix: /api, service: api }',
      '  - { prefix: /b, service: api, maintenance: { enabled: yes please } }',
      '  - { prefix: /c, service: api, maintenance: { enabled: true, status: "503" } }',
      '  - { prefix: /d, service: api, maintenanse: { enabled: true } }',
      'plugins:',
      `  - { module: "${EXAMPLE}" }`,
      '',
    ].join('\n'),
  );
  const invalid = await spawnNode(t, ['--import', 'tsx', CLI, 'validate', bad], { cwd: ROOT });
  assert.equal((await invalid.exited).code, 1);
  const text = invalid.stderr();
  assert.match(text, new RegExp(`invalid config in ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.match(text, /routes\[1\]\.maintenance\.enabled: expected boolean, got string/);
  assert.match(text, /routes\[2\]\.maintenance\.status: expected number, got string/);
  assert.match(text, /routes\[3\]\.maintenanse: unknown field/);
  assert.match(text, /services\.api\.owner\.team: /);
  assert.match(text, /services\.api\.owner\.colour: unknown field/);

  // The same file runs: the gateway answers per route as configured.
  const started = await spawnNode(t, ['--import', 'tsx', CLI, 'start', '--config', good], { cwd: ROOT, killSignal: 'SIGTERM' });
  await waitFor(() => accepts(port), 20_000, `the gateway to listen; stderr:\n${started.stderr()}`);
  const url = `http://127.0.0.1:${port}`;
  const ok = await send(`${url}/api/x`);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers['x-owner'], 'core');
  const gone = await send(`${url}/old/x`);
  assert.equal(gone.status, 410);
  assert.equal(gone.json().message, 'gone');
  assert.equal(upstream.seen.length, 1);
});

test('a custom plugin\'s bad section fails the gateway at start with every path, in code as in YAML', LIMIT, async (t) => {
  // Wrong on purpose, so not of the config's type.
  const config: unknown = {
    logLevel: 'silent',
    services: { api: { owner: { team: 7 } } },
    routes: [{ prefix: '/api', service: 'api', maintenance: { status: 200 } }],
  };
  const gateway = createGateway(config as GatewayConfigInput);
  gateway.use(maintenance());
  t.after(() => gateway.close());
  await assert.rejects(gateway.ready(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    const paths = err.issues.map((i) => i.path).sort();
    assert.deepEqual(paths, ['routes[0].maintenance.enabled', 'routes[0].maintenance.status', 'services.api.owner.team']);
    return true;
  });
});

test('a section of a plugin nobody registered is an unknown field when the gateway starts', LIMIT, async (t) => {
  const gateway = createGateway({ logLevel: 'silent', services: { api: {} }, routes: [{ prefix: '/api', service: 'api', maintenance: { enabled: true, status: 503, message: 'x' } }] });
  t.after(() => gateway.close());
  await assert.rejects(gateway.ready(), (err: unknown) => err instanceof ConfigError && err.issues.some((i) => i.path === 'routes[0].maintenance' && i.message === 'unknown field'));
});

test('the ping example answers from the gateway itself, from a section declared with a hand-written Standard Schema', LIMIT, async (t) => {
  const upstream = await startUpstream(t);
  const { gateway, url } = await startGateway(
    t,
    { ping: { path: '/healthz' }, services: { api: { instances: [{ url: upstream.url }] }, later: {} }, routes: [{ prefix: '/api', service: 'api' }] },
    { setup: (gw) => gw.use(ping()) },
  );
  const degraded = await send(`${url}/healthz`);
  assert.equal(degraded.status, 503);
  assert.deepEqual(degraded.json(), { status: 'degraded', services: { api: 1, later: 0 } });
  gateway.registry.upsertInstance('later', { url: upstream.url, id: 'late' });
  await waitFor(async () => (await send(`${url}/healthz`)).status === 200, 2000, 'ping to say ok');
  assert.equal(upstream.seen.length, 0);

  const bad = createGateway({ logLevel: 'silent', ping: { path: 'ping', extra: 1 } });
  bad.use(ping());
  t.after(() => bad.close());
  await assert.rejects(bad.ready(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.deepEqual(err.issues.map((i) => `${i.path}: ${i.message}`).sort(), ['ping.extra: unknown field', 'ping.path: expected a path starting with "/"']);
    return true;
  });
});
