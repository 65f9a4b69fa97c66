import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { echo, keepAliveLoad, logLines, meshgateCli, send, sendPath, startUpstream, tempDir, unusedPort, waitFor, type ChildRun } from '../helpers.js';
import { redisCli, startRedisCluster, startSentinelGroup } from '../redis-server.js';

const LIMIT = { timeout: 120_000 };

/** A gateway process from a local file whose `discovery.redis` is `redis`; resolves once it listens. */
async function gateway(t: TestContext, dir: string, name: string, redis: Record<string, unknown>, body: string): Promise<{ url: string; admin: string; run: ChildRun }> {
  const [port, adminPort] = [await unusedPort(), await unusedPort()];
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, `listen: { host: 127.0.0.1, port: ${port} }\nadmin: { host: 127.0.0.1, port: ${adminPort} }\ndiscovery: { redis: ${JSON.stringify({ prefix: 'topo:', configCache: false, ...redis })} }\n${body}`);
  const run = await meshgateCli(t, ['start', '--config', file], {}, 'SIGTERM');
  await waitFor(() => logLines(run, /listening/).length > 0, 20_000, `${name} to listen`);
  return { url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`, run };
}

/** Runs a fleet command against `target`; resolves with its exit code and output. */
async function fleetCli(t: TestContext, target: string, ...args: string[]): Promise<{ code: number | null; out: string }> {
  const run = await meshgateCli(t, [...args, '--redis', target, '--prefix', 'topo:', '--wait', '20s']);
  const { code } = await run.exited;
  return { code, out: run.stdout() + run.stderr() };
}

const version = async (admin: string): Promise<string> => (await send(`${admin}/config`)).json().version;

describe('Redis as it is run for real', () => {
  test('Sentinel: the master fails over under load while a config change is in flight; no request fails and every gateway runs the new version', LIMIT, async (t) => {
    const dir = await tempDir(t, 'meshgate-topology-');
    const group = await startSentinelGroup(t, dir);
    const v1 = await startUpstream(t, echo('v1'));
    const v2 = await startUpstream(t, echo('v2'));
    const redis = { url: 'redis://127.0.0.1:6379', options: { sentinels: group.sentinelPorts.map((port) => ({ host: '127.0.0.1', port })), name: group.name } };
    const services = `services:\n  v1: { instances: [ { url: "${v1.url}" } ] }\n  v2: { instances: [ { url: "${v2.url}" } ] }\n`;
    const split = (w1: number, w2: number): string => `${services}routes:\n  - { name: api, prefix: /api, backends: [ { service: v1, weight: ${w1} }, { service: v2, weight: ${w2} } ] }\n`;
    const fleet = [await gateway(t, dir, 'a', redis, split(100, 0)), await gateway(t, dir, 'b', redis, split(100, 0))];

    const next = join(dir, 'next.yaml');
    await writeFile(next, split(0, 100));
    const traffic = keepAliveLoad(fleet.map((g) => g.url), '/api/x', 8);
    const before = await group.masterPort();
    await group.master.kill();
    const applied = await fleetCli(t, group.target, 'apply', '--config', next);
    assert.equal(applied.code, 0, applied.out);
    const stored = /stored version ([0-9a-f]{12})/.exec(applied.out)![1]!;
    for (const g of fleet) await waitFor(async () => (await version(g.admin)) === stored, 30_000, 'every gateway on the new version');
    const { ok, failed } = await traffic.stop();
    t.diagnostic(`${ok} requests through the failover, ${failed.length} failed`);
    assert.deepEqual(failed, []);
    assert.notEqual(await group.masterPort(), before, 'Sentinel promoted the replica');
    for (const g of fleet) assert.equal((await sendPath(g.url, '/api/x')).json().name, 'v2');
    // The registry writes to the new master too.
    const registered = await send(`${fleet[0]!.admin}/services/v1/instances`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: v2.url, id: 'after-failover' }) });
    assert.equal(registered.status, 201, registered.body);
    await waitFor(async () => (await send(`${fleet[1]!.admin}/services/v1`)).json().instances.some((i: { id: string }) => i.id === 'after-failover'), 5000, 'the other gateway to see it');
  });

  test('Cluster: registrations, heartbeats, the fleet config and shared rate limits work with keys spread over three masters', LIMIT, async (t) => {
    const dir = await tempDir(t, 'meshgate-topology-');
    const cluster = await startRedisCluster(t, dir);
    const upstreams = [await startUpstream(t, echo('alpha')), await startUpstream(t, echo('beta')), await startUpstream(t, echo('gamma'))];
    const names = ['alpha', 'beta', 'gamma'];
    const redis = { url: cluster.urls[0], cluster: cluster.urls };
    const body = `services:\n${names.map((n) => `  ${n}: {}\n`).join('')}routes:\n${names.map((n) => `  - { prefix: /${n}, service: ${n}, rateLimit: { rps: 0.001, burst: 10, redis: true } }\n`).join('')}`;
    const fleet = [await gateway(t, dir, 'a', redis, body), await gateway(t, dir, 'b', redis, body)];

    // Sidecars register over the cluster with 1 s leases: only heartbeats keep them.
    for (const [i, name] of names.entries()) {
      const sidecar = await meshgateCli(t, ['register', '--registry', cluster.target, '--prefix', 'topo:', '--service', name, '--url', upstreams[i]!.url, '--ttl', '1s'], {}, 'SIGTERM');
      await waitFor(() => sidecar.stderr().includes('registered'), 15_000, `${name} to register`);
    }
    for (const g of fleet) for (const name of names) await waitFor(async () => (await sendPath(g.url, `/${name}/x`)).status === 200, 10_000, `${name} routed`);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    for (const g of fleet) for (const name of names) assert.equal((await sendPath(g.url, `/${name}/x`)).json().name, name, 'heartbeats kept every lease past its ttl');

    // The keys really are spread over the masters.
    const holding = [];
    for (const node of cluster.nodes) holding.push(Number((await redisCli(['-p', String(node.port), 'dbsize'])).trim()));
    assert.ok(holding.filter((n) => n > 0).length >= 2, `keys per master: ${holding.join(', ')}`);

    // Shared buckets: 10 per route across both gateways (8 requests already spent some).
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await sendPath(fleet[i % 2]!.url, '/alpha/x')).status);
    assert.ok(statuses.includes(429), `the fleet shares alpha's 10 tokens: ${statuses.join(', ')}`);

    // The fleet config over the cluster.
    const next = join(dir, 'next.yaml');
    await writeFile(next, `${body}  - { prefix: /all, service: beta }\n`);
    const applied = await fleetCli(t, cluster.target, 'apply', '--config', next);
    assert.equal(applied.code, 0, applied.out);
    const stored = /stored version ([0-9a-f]{12})/.exec(applied.out)![1]!;
    for (const g of fleet) {
      assert.equal(await version(g.admin), stored);
      assert.equal((await sendPath(g.url, '/all/x')).json().name, 'beta');
    }
    const status = await fleetCli(t, cluster.target, 'status', '--json');
    assert.equal(JSON.parse(status.out.slice(0, status.out.lastIndexOf('}') + 1)).gateways.length, 2, status.out);
  });
});
