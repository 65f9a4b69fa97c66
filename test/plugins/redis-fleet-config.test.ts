import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { echo, logLines, meshgateCli, send, sendPath, startUpstream, tempDir, unusedPort, waitFor, type ChildRun } from '../helpers.js';
import { startRedis } from '../redis-server.js';

const PREFIX = 'fleet-test:';

/** One gateway of the fleet: its local file (ports, Redis) and the process running it. */
interface Member {
  url: string;
  admin: string;
  file: string;
  run: ChildRun;
}

test('a fleet on one Redis: apply reaches three gateways within 1 s, status shows one version, shift moves a canary, a refusal is reported, and gateways started while Redis is down serve their cache or file and converge', { timeout: 180_000 }, async (t) => {
  const data = await tempDir(t, 'meshgate-fleet-');
  const redis = await startRedis(t, { args: ['--appendonly', 'yes', '--dir', data] });
  const v1 = await startUpstream(t, echo('v1'));
  const v2 = await startUpstream(t, echo('v2'));
  const [withCa, withoutCa] = [await tempDir(t, 'meshgate-fleet-'), await tempDir(t, 'meshgate-fleet-')];
  await writeFile(join(withCa, 'ca.pem'), 'only present on some hosts\n');

  const services = `
services:
  users-v1: { instances: [ { url: "${v1.url}" } ] }
  users-v2: { instances: [ { url: "${v2.url}" } ] }`;
  const start = async (dir: string, name: string, cache: string | false = `${name}.cache.json`): Promise<Member> => {
    const [port, adminPort] = [await unusedPort(), await unusedPort()];
    const file = join(dir, `${name}.yaml`);
    await writeFile(
      file,
      `listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
discovery: { redis: { url: "${redis.url}", prefix: "${PREFIX}", configCache: ${JSON.stringify(cache)} } }
${services}
routes:
  - { name: users, prefix: /users, backends: [ { service: users-v1, weight: 100 }, { service: users-v2, weight: 0 } ] }
`,
    );
    const run = await meshgateCli(t, ['start', '--config', file], {}, 'SIGTERM');
    await waitFor(() => logLines(run, /listening/).length > 0, 20_000, `${name} to listen`);
    return { url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`, file, run };
  };
  const cli = async (...args: string[]): Promise<{ code: number | null; out: string; err: string }> => {
    const run = await meshgateCli(t, [...args, '--redis', redis.url, '--prefix', PREFIX]);
    const { code } = await run.exited;
    return { code, out: run.stdout(), err: run.stderr() };
  };
  const version = async (m: Member): Promise<string> => (await send(`${m.admin}/config`)).json().version;
  const names = async (m: Member, path: string, n = 6): Promise<Set<string>> => {
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const res = await sendPath(m.url, path);
      seen.add(res.status === 200 ? res.json().name : String(res.status));
    }
    return seen;
  };

  const fleet = [await start(withCa, 'a'), await start(withoutCa, 'b'), await start(withCa, 'c')];
  const local = await version(fleet[0]!);
  for (const m of fleet) assert.equal(await version(m), local, 'three gateways, one file content: one version');

  // 1. apply: a 50/50 split and a new route, to every gateway.
  const fleetFile = join(withCa, 'fleet.yaml');
  await writeFile(
    fleetFile,
    `${services}
routes:
  - { name: users, prefix: /users, backends: [ { service: users-v1, weight: 50 }, { service: users-v2, weight: 50 } ] }
  - { prefix: /v2-only, service: users-v2 }
`,
  );
  const applied = await cli('apply', '--config', fleetFile);
  assert.equal(applied.code, 0, applied.err + applied.out);
  const stored = /stored version ([0-9a-f]{12})/.exec(applied.out)![1]!;
  const delays = [...applied.out.matchAll(/runs [0-9a-f]{12}, applied (\d+) ms after it was stored/g)].map((m) => Number(m[1]));
  t.diagnostic(`apply: time from storing to applied, per gateway: ${delays.join(', ')} ms`);
  assert.equal(delays.length, 3, `${applied.out}\n${applied.err}\n${fleet.map((m) => m.run.stderr()).join("\n")}`);
  for (const ms of delays) assert.ok(ms < 1000, `a gateway took ${ms} ms`);
  for (const m of fleet) {
    assert.equal(await version(m), stored);
    assert.deepEqual(await names(m, '/v2-only/x', 2), new Set(['v2']));
    assert.deepEqual(await names(m, '/users/x', 20), new Set(['v1', 'v2']));
  }

  // 2. status: one version everywhere.
  const status = await cli('status', '--json');
  assert.equal(status.code, 0, status.err);
  const report = JSON.parse(status.out) as { version: string; gateways: { version: string; source: string; ready: boolean }[] };
  assert.equal(report.version, stored);
  assert.equal(report.gateways.length, 3);
  for (const g of report.gateways) assert.deepEqual([g.version, g.source, g.ready], [stored, 'fleet', true]);
  const table = await cli('status');
  assert.match(table.out, new RegExp(`fleet config: ${stored}`));
  assert.equal(table.out.split('\n').filter((line) => line.includes(` ${stored} `) && line.includes('fleet')).length, 3, table.out);

  // 3. shift: the canary to 100 %.
  assert.equal((await cli('shift', '--route', 'users', '--backend', 'users-v1', '--weight', '0')).code, 0);
  const shifted = await cli('shift', '--route', 'users', '--backend', 'users-v2', '--weight', '100');
  assert.equal(shifted.code, 0, shifted.err);
  assert.match(shifted.out, /users-v2 weight 50 -> 100; now users-v1 0 \(0%\), users-v2 100 \(100%\)/, JSON.stringify(shifted));
  for (const m of fleet) assert.deepEqual(await names(m, '/users/x'), new Set(['v2']));
  const afterShift = (await cli('status', '--json')).out;
  const shiftedVersion = (JSON.parse(afterShift) as { version: string }).version;

  // 4. A version one gateway refuses (a file only some hosts have) is reported, not half-applied.
  await writeFile(fleetFile, `${services}\n  secure: { instances: [ { url: "${v1.url}" } ], tls: { ca: ca.pem } }\nroutes:\n  - { prefix: /users, service: users-v1 }\n`);
  const partial = await cli('apply', '--config', fleetFile);
  assert.equal(partial.code, 1, partial.out);
  assert.match(partial.out, /REFUSED it, still runs [0-9a-f]{12}: [\s\S]*services\.secure\.tls\.ca: cannot read/);
  assert.equal(await version(fleet[1]!), shiftedVersion, 'the gateway that refused runs what it ran');
  assert.deepEqual(await names(fleet[1]!, '/users/x'), new Set(['v2']));
  assert.match((await cli('status')).out, /refused [0-9a-f]{12}: /);
  const back = await cli('rollback');
  assert.equal(back.code, 0, back.out + back.err);
  assert.match(back.out, new RegExp(`rolled back to ${shiftedVersion}`));
  for (const m of fleet) assert.equal(await version(m), shiftedVersion);

  // 5. Redis down: a restarted gateway starts from its cached fleet config; a new one without a cache from its file.
  fleet[2]!.run.child.kill('SIGTERM');
  await fleet[2]!.run.exited;
  await redis.kill();
  const restarted = await start(withCa, 'c');
  assert.equal(logLines(restarted.run, /serving the fleet config cached in/).length, 1, restarted.run.stderr());
  assert.equal(await version(restarted), shiftedVersion);
  assert.deepEqual(await names(restarted, '/users/x'), new Set(['v2']));
  const fresh = await start(withCa, 'd', false);
  assert.equal(logLines(fresh.run, /no cached fleet config: serving the local file/).length, 1, fresh.run.stderr());
  assert.equal(await version(fresh), local);
  assert.deepEqual(await names(fresh, '/users/x'), new Set(['v1']));
  await mkdir(data, { recursive: true });
  await redis.restart();
  await waitFor(async () => (await version(fresh)) === shiftedVersion, 15_000, 'the new gateway to converge once Redis is back');
  assert.deepEqual(await names(fresh, '/users/x'), new Set(['v2']));
});

test('a fleet version that needs a restart (accessLog on) is refused by a running gateway and reported; a gateway that starts afterwards starts from it', { timeout: 90_000 }, async (t) => {
  const redis = await startRedis(t);
  const api = await startUpstream(t, echo('api'));
  const dir = await tempDir(t, 'meshgate-fleet-');
  const [port, adminPort] = [await unusedPort(), await unusedPort()];
  const file = join(dir, 'gw.yaml');
  const services = `services:\n  api: { instances: [ { url: "${api.url}" } ] }\n`;
  await writeFile(file, `listen: { host: 127.0.0.1, port: ${port} }\nadmin: { host: 127.0.0.1, port: ${adminPort} }\ndiscovery: { redis: { url: "${redis.url}", prefix: "${PREFIX}", configCache: false } }\n${services}routes:\n  - { prefix: /api, service: api }\n`);
  const start = async (): Promise<ChildRun> => {
    const run = await meshgateCli(t, ['start', '--config', file], {}, 'SIGTERM');
    await waitFor(() => logLines(run, /listening/).length > 0, 20_000, 'the gateway to listen');
    return run;
  };
  const first = await start();
  const fleetFile = join(dir, 'fleet.yaml');
  await writeFile(fleetFile, `accessLog: true\n${services}routes:\n  - { prefix: /api, service: api }\n  - { prefix: /logged, service: api }\n`);
  const run = await meshgateCli(t, ['apply', '--config', fleetFile, '--redis', redis.url, '--prefix', PREFIX]);
  assert.equal((await run.exited).code, 1, run.stdout());
  assert.match(run.stdout(), /REFUSED it, still runs [0-9a-f]{12}: [\s\S]*accessLog: cannot change in a reload \(needs a restart\)/);
  assert.equal((await sendPath(`http://127.0.0.1:${port}`, '/logged/x')).status, 404, 'not half-applied');

  first.child.kill('SIGTERM');
  await first.exited;
  const second = await start();
  assert.equal(logLines(second, /starting from the fleet config/).length, 1, second.stderr());
  assert.equal((await sendPath(`http://127.0.0.1:${port}`, '/logged/x')).status, 200);
  await waitFor(() => second.stdout().includes('"path":"/logged/x"'), 5000, 'the access log the fleet config turned on');
});
