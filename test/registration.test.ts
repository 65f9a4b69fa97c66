import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { registerInstance, type Gateway, type Instance, type RemovalReason } from '../lib/index.js';
import { echo, send, sleep, spawnNode, startGateway, startUpstream, unusedPort, waitFor, type ChildRun } from './helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 25_000 };
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TOKEN = 'registration-token';

/** A gateway with a token-protected admin API and an `api` service that starts empty. */
async function registry(t: TestContext): Promise<{ gateway: Gateway; url: string; adminUrl: string }> {
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { token: TOKEN },
    services: { api: {} },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  assert.ok(adminUrl);
  return { gateway, url, adminUrl };
}

function instances(gateway: Gateway): Instance[] {
  return [...gateway.registry.getService('api')!.instances.values()];
}

function recordRemovals(gateway: Gateway): { id: string; reason: RemovalReason; at: number }[] {
  const removed: { id: string; reason: RemovalReason; at: number }[] = [];
  gateway.on('instance:removed', (inst, reason) => removed.push({ id: inst.id, reason, at: Date.now() }));
  return removed;
}

/** True once a GET through the gateway is answered by the upstream named `name`. */
async function routesTo(url: string, name: string): Promise<boolean> {
  const res = await send(`${url}/api/probe`);
  return res.status === 200 && (res.json() as { name?: string }).name === name;
}

describe('registerInstance', () => {
  test('registers the instance, and heartbeats keep it past several TTLs', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('registered'));
    const { gateway, url, adminUrl } = await registry(t);
    const removed = recordRemovals(gateway);
    const beats: number[] = [];
    gateway.on('instance:heartbeat', () => beats.push(Date.now()));
    const errors: Error[] = [];

    const reg = await registerInstance({ registry: adminUrl, service: 'api', url: upstream.url, ttl: '600ms', token: TOKEN, onError: (e) => errors.push(e) });
    t.after(() => reg.close());
    assert.equal(reg.id, `127.0.0.1:${upstream.port}`);
    const inst = gateway.registry.getInstance('api', reg.id);
    assert.ok(inst, 'registered before registerInstance resolved');
    assert.equal(inst.ttl, 600);
    assert.equal(inst.source, 'admin');
    assert.ok(await routesTo(url, 'registered'));

    // Four TTLs later it is still there: heartbeats (every ttl/3) renewed its lease.
    await sleep(2400);
    assert.deepEqual(removed, []);
    assert.equal(gateway.registry.getInstance('api', reg.id), inst);
    assert.ok(beats.length >= 6, `${beats.length} heartbeats in 2.4 s`);
    assert.ok(Date.now() - inst.lastHeartbeat! < 600, 'the lease is fresh');
    assert.ok(await routesTo(url, 'registered'));
    assert.deepEqual(errors, []);
  });

  test('registers again within about one heartbeat when the instance was deleted behind its back', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('registered'));
    const { gateway, url, adminUrl } = await registry(t);
    const reregistered: string[] = [];
    const reg = await registerInstance({ registry: adminUrl, service: 'api', url: upstream.url, ttl: '600ms', token: TOKEN, onReregister: (id) => reregistered.push(id) });
    t.after(() => reg.close());

    const del = await send(`${adminUrl}/services/api/instances/${encodeURIComponent(reg.id)}`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(del.status, 204);
    assert.equal(instances(gateway).length, 0);
    assert.equal((await send(`${url}/api/gone`)).status, 503);

    // The next heartbeat (ttl/3 = 200 ms) gets a 404 and registers again.
    await waitFor(() => instances(gateway).length === 1, 200 + 1000, 'the instance to be registered again');
    // The client learns of it when the registration's answer arrives, a moment later.
    await waitFor(() => reregistered.length === 1, 1000, 'onReregister');
    assert.deepEqual(reregistered, [reg.id]);
    assert.equal(instances(gateway)[0]!.id, reg.id);
    assert.ok(await routesTo(url, 'registered'));
  });

  test('close() deregisters at once, stops heartbeats, and is idempotent', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('registered'));
    const { gateway, url, adminUrl } = await registry(t);
    const removed = recordRemovals(gateway);
    const reg = await registerInstance({ registry: adminUrl, service: 'api', url: upstream.url, ttl: '600ms', token: TOKEN });
    await sleep(250); // at least one heartbeat went out
    assert.equal(instances(gateway).length, 1);

    await reg.close();
    assert.equal(instances(gateway).length, 0, 'gone when close() resolves');
    assert.deepEqual(
      removed.map((r) => r.reason),
      ['deregistered'],
    );
    assert.equal((await send(`${url}/api/after`)).status, 503);
    await reg.close();

    // No heartbeat comes back to register it again.
    await sleep(800);
    assert.equal(instances(gateway).length, 0);
  });

  test('a registry that refuses the registration makes registerInstance reject', LIMIT, async (t) => {
    const { adminUrl } = await registry(t);
    await assert.rejects(
      registerInstance({ registry: adminUrl, service: 'api', url: 'http://127.0.0.1:1', ttl: '1s', token: 'wrong' }),
      (err: Error & { code?: string; status?: number }) => err.code === 'MESH_ERR_REGISTRATION' && err.status === 401,
    );
    await assert.rejects(
      registerInstance({ registry: adminUrl, service: 'ghost', url: 'http://127.0.0.1:1', ttl: '1s', token: TOKEN }),
      (err: Error & { status?: number }) => err.status === 404,
    );
  });
});

describe('meshgate register (sidecar)', () => {
  /** Starts `meshgate register` for `upstreamUrl` and waits until the gateway routes to it. */
  async function sidecar(t: TestContext, adminUrl: string, url: string, upstreamUrl: string, name: string): Promise<ChildRun> {
    const run = await spawnNode(
      t,
      ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', adminUrl, '--token', TOKEN, '--service', 'api', '--url', upstreamUrl, '--ttl', '1s'],
      { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined } },
    );
    await waitFor(async () => run.child.exitCode === null && (await routesTo(url, name)), 15_000, `the gateway to route to the sidecar's instance (stderr: ${run.stderr()})`);
    // Registered, and the sidecar has said so: its signal handlers are in place from that line on.
    await waitFor(() => /registered in "api"/.test(run.stderr()), 5000, 'the sidecar to report its registration');
    return run;
  }

  test('SIGTERM deregisters at once and exits 0', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('sidecar'));
    const { gateway, url, adminUrl } = await registry(t);
    const removed = recordRemovals(gateway);
    const run = await sidecar(t, adminUrl, url, upstream.url, 'sidecar');

    run.child.kill('SIGTERM');
    const { code, signal } = await run.exited;
    assert.equal(code, 0, run.stderr());
    assert.equal(signal, null);
    assert.equal(instances(gateway).length, 0, 'deregistered before the process exited');
    assert.deepEqual(
      removed.map((r) => r.reason),
      ['deregistered'],
    );
    assert.equal((await send(`${url}/api/after`)).status, 503);
  });

  test('SIGKILL leaves the lease to run out: the instance is gone within TTL + 1 s', LIMIT, async (t) => {
    const TTL = 1000;
    const upstream = await startUpstream(t, echo('killed'));
    const { gateway, url, adminUrl } = await registry(t);
    const removed = recordRemovals(gateway);
    const run = await sidecar(t, adminUrl, url, upstream.url, 'killed');

    run.child.kill('SIGKILL');
    const killedAt = Date.now();
    await run.exited;
    // Nobody said goodbye: the instance stays until its lease runs out.
    assert.equal(instances(gateway).length, 1);
    await waitFor(() => removed.length === 1, TTL + 1000, 'the lease to expire');
    assert.equal(removed[0]!.reason, 'expired');
    assert.ok(removed[0]!.at - killedAt <= TTL + 1000);
    assert.equal((await send(`${url}/api/after`)).status, 503);
  });

  test('started before its gateway, it says so on one line per try, then registers when the gateway comes up; a wrong token fails at once', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('early'));
    const adminPort = await unusedPort();
    const adminUrl = `http://127.0.0.1:${adminPort}`;
    const run = await spawnNode(
      t,
      ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', adminUrl, '--token', TOKEN, '--service', 'api', '--url', upstream.url, '--ttl', '1s'],
      { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined } },
    );
    await waitFor(() => (run.stderr().match(/trying again in/g) ?? []).length >= 2, 10_000, `the sidecar to retry; stderr: ${run.stderr()}`);
    assert.match(run.stderr(), new RegExp(`meshgate register: cannot reach ${adminUrl} \\(ECONNREFUSED\\)`));
    assert.doesNotMatch(run.stderr(), /^\s+at /m, 'no stack trace');
    assert.equal(run.child.exitCode, null, 'the sidecar is still trying');
    const { gateway, url } = await startGateway(t, { admin: { token: TOKEN, port: adminPort }, services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    await waitFor(async () => await routesTo(url, 'early'), 10_000, `the gateway to route to the sidecar's instance; stderr: ${run.stderr()}`);
    await waitFor(() => /registered in "api"/.test(run.stderr()), 5000, 'the sidecar to report its registration');
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, 0, run.stderr());
    assert.equal(instances(gateway).length, 0);

    const refused = await spawnNode(
      t,
      ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', adminUrl, '--token', 'wrong', '--service', 'api', '--url', upstream.url],
      { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined } },
    );
    assert.equal((await refused.exited).code, 1);
    assert.match(refused.stderr(), /registration of .* failed: 401/);
    assert.doesNotMatch(refused.stderr(), /trying again/);
  });

  test('SIGTERM while still waiting for the gateway exits 0 at once', LIMIT, async (t) => {
    const adminUrl = `http://127.0.0.1:${await unusedPort()}`;
    const run = await spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'register', '--registry', adminUrl, '--service', 'api', '--url', 'http://127.0.0.1:1'], {
      cwd: ROOT,
      env: { MESHGATE_ADMIN_TOKEN: undefined },
    });
    await waitFor(() => /trying again in/.test(run.stderr()), 10_000, `the sidecar to retry; stderr: ${run.stderr()}`);
    run.child.kill('SIGTERM');
    assert.deepEqual(await run.exited, { code: 0, signal: null });
  });
});
