import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { echo, keepAliveLoad, logLines, meshgateCli, send, sendPath, startUpstream, tempDir, unusedPort, waitFor, type ChildRun } from './helpers.js';

const LIMIT = { timeout: 120_000 };

/** `meshgate start` as a real process, with JSON log lines on stderr. */
function startCli(t: TestContext, file: string, ...flags: string[]): Promise<ChildRun> {
  return meshgateCli(t, ['start', '--config', file, ...flags]);
}

async function tempFile(t: TestContext, name: string): Promise<string> {
  return join(await tempDir(t, 'meshgate-reload-'), name);
}

describe('meshgate start: live reloads', () => {
  test('under load from 8 clients, 20 reloads in a row (routes, weights, policies) fail no request and reset no connection; an open circuit stays open', LIMIT, async (t) => {
    const [a, b, v2] = [await startUpstream(t, echo('a')), await startUpstream(t, echo('b')), await startUpstream(t, echo('v2'))];
    const bad = await startUpstream(t, (_req, res) => res.writeHead(500).end());
    const [port, adminPort] = [await unusedPort(), await unusedPort()];
    const file = await tempFile(t, 'meshgate.yaml');
    const config = (i: number): string => `
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
services:
  v1:
    instances: [ { url: "${a.url}" }, { url: "${b.url}" } ]
    balancer: ${i % 2 === 0 ? 'round-robin' : 'least-request'}
    timeout: ${5 + i}s
    retries: { attempts: ${1 + (i % 3)} }
  v2: { instances: [ { url: "${v2.url}" } ] }
  flaky:
    instances: [ { url: "${bad.url}" }, { url: "${a.url}" }, { url: "${b.url}" } ]
    circuitBreaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeout: 10m }
routes:
  - { name: api, prefix: /api, backends: [ { service: v1, weight: ${100 - 5 * i} }, { service: v2, weight: ${5 * i} } ] }
  - { prefix: /flaky, service: flaky }
  - { prefix: /extra-${i}, service: v2${i % 4 === 0 ? ', rateLimit: { rps: 1000 }' : ''} }
`;
    await writeFile(file, config(0));
    const run = await startCli(t, file, '--watch');
    const url = `http://127.0.0.1:${port}`;
    const admin = `http://127.0.0.1:${adminPort}`;
    await waitFor(() => logLines(run, /listening/).length > 0, 15_000, 'the gateway to listen');

    // Open the flaky service's circuit to the bad instance before the load starts.
    const badId = async (): Promise<{ id: string; circuit: string }> =>
      (await send(`${admin}/services/flaky`)).json().instances.find((i: { url: string }) => i.url === bad.url);
    for (let i = 0; i < 12 && (await badId()).circuit !== 'open'; i++) await sendPath(url, '/flaky/x');
    const before = await badId();
    assert.equal(before.circuit, 'open');
    const badSeen = bad.seen.length;

    const traffic = keepAliveLoad([url], '/api/x', 8);
    const versions = new Set<string>();
    for (let i = 1; i <= 20; i++) {
      await writeFile(file, config(i));
      await waitFor(() => logLines(run, /applied \(file\)/).length >= i, 10_000, `reload ${i} to apply`);
      versions.add(String(logLines(run, /applied \(file\)/)[i - 1]!.version));
    }
    const { ok, failed, by } = await traffic.stop();
    t.diagnostic(`${ok} requests over 20 reloads, ${failed.length} failed; by instance ${JSON.stringify(Object.fromEntries(by))}`);
    assert.deepEqual(failed, [], 'no request failed and no connection was reset');
    assert.ok(ok > 200, `the load ran (${ok} requests)`);
    assert.equal(versions.size, 20, 'each reload is a new version');
    assert.ok((by.get('v2') ?? 0) > 0, 'the weights moved traffic to v2');
    assert.equal(logLines(run, /refused/).length, 0, run.stderr());

    const after = await badId();
    assert.equal(after.id, before.id);
    assert.equal(after.circuit, 'open', 'the open circuit stayed open through 20 reloads');
    for (let i = 0; i < 6; i++) assert.equal((await sendPath(url, '/flaky/x')).status, 200);
    assert.equal(bad.seen.length, badSeen, 'the instance behind the open circuit got nothing');
    assert.equal((await sendPath(url, '/extra-20/x')).json().name, 'v2');
    assert.equal((await sendPath(url, '/extra-19/x')).status, 404);
  });

  test('SIGHUP reloads; an invalid, empty or half-written file is refused with its bad paths and the running config stays', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const [port, adminPort] = [await unusedPort(), await unusedPort()];
    const file = await tempFile(t, 'meshgate.yaml');
    const head = `listen: { host: 127.0.0.1, port: ${port} }\nadmin: { host: 127.0.0.1, port: ${adminPort} }\nservices:\n  api: { instances: [ { url: "${a.url}" } ] }\n`;
    await writeFile(file, `${head}routes:\n  - { prefix: /one, service: api }\n`);
    const run = await startCli(t, file);
    const url = `http://127.0.0.1:${port}`;
    await waitFor(() => logLines(run, /listening/).length > 0, 15_000, 'the gateway to listen');
    const version = (await send(`http://127.0.0.1:${adminPort}/config`)).json().version;

    await writeFile(file, `${head}routes:\n  - { prefix: /one, service: ghost, timeout: soon }\n  - { prefix: /two, service: api }\n`);
    run.child.kill('SIGHUP');
    await waitFor(() => logLines(run, /refused/).length >= 1, 10_000, 'the refusal');
    const refusal = logLines(run, /refused/)[0]!;
    assert.match(String(refusal.msg), /routes\[0\]\.service/);
    assert.match(String(refusal.msg), /routes\[0\]\.timeout/);
    assert.equal((await sendPath(url, '/one/x')).status, 200, 'the running config stayed');
    assert.equal((await sendPath(url, '/two/x')).status, 404);
    assert.equal((await send(`http://127.0.0.1:${adminPort}/config`)).json().version, version);

    await writeFile(file, '');
    run.child.kill('SIGHUP');
    await waitFor(() => logLines(run, /refused/).length >= 2, 10_000, 'the empty file refused');
    assert.match(String(logLines(run, /refused/)[1]!.msg), /empty/);
    await writeFile(file, `${head}routes:\n  - { prefix: /two, service: api`);
    run.child.kill('SIGHUP');
    await waitFor(() => logLines(run, /refused/).length >= 3, 10_000, 'the half-written file refused');
    assert.match(String(logLines(run, /refused/)[2]!.msg), /YAML syntax error/);
    assert.equal((await sendPath(url, '/one/x')).status, 200);

    await writeFile(file, `${head}routes:\n  - { prefix: /two, service: api }\n`);
    run.child.kill('SIGHUP');
    await waitFor(() => logLines(run, /applied \(file\)/).length >= 1, 10_000, 'the reload');
    assert.equal((await sendPath(url, '/two/x')).status, 200);
    assert.equal((await sendPath(url, '/one/x')).status, 404);
    assert.equal(run.child.exitCode, null, 'SIGHUP did not stop the gateway');

    await writeFile(file, `${head.replace(`port: ${port}`, `port: ${port + 1}`)}routes:\n  - { prefix: /two, service: api }\n`);
    run.child.kill('SIGHUP');
    await waitFor(() => logLines(run, /refused/).length >= 4, 10_000, 'the listen change refused');
    assert.match(String(logLines(run, /refused/)[3]!.msg), /listen: cannot change in a reload \(needs a restart\)/);
  });

  test('--watch: an editor that truncates, then writes, never leaves the gateway on an empty config', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const port = await unusedPort();
    const file = await tempFile(t, 'meshgate.yaml');
    const doc = (prefix: string): string => `listen: { host: 127.0.0.1, port: ${port} }\nservices:\n  api: { instances: [ { url: "${a.url}" } ] }\nroutes:\n  - { prefix: ${prefix}, service: api }\n`;
    await writeFile(file, doc('/one'));
    const run = await startCli(t, file, '--watch');
    const url = `http://127.0.0.1:${port}`;
    await waitFor(() => logLines(run, /watching/).length > 0 && logLines(run, /listening/).length > 0, 15_000, 'the gateway to listen');
    const traffic = keepAliveLoad([url], '/one/x', 2);
    // Truncate, then write in two pieces, as some editors do.
    await writeFile(file, '');
    await writeFile(file, doc('/one').slice(0, 40));
    await writeFile(file, `${doc('/one')}  - { prefix: /two, service: api }\n`);
    await waitFor(() => logLines(run, /applied \(file\)/).length >= 1, 10_000, 'the reload');
    const { failed } = await traffic.stop();
    assert.deepEqual(failed, []);
    assert.equal(logLines(run, /applied \(file\)/).length, 1, 'one reload for the settled file');
    assert.equal(logLines(run, /refused/).length, 0, 'the partial writes were never read');
    assert.equal((await sendPath(url, '/two/x')).status, 200);
  });
});
