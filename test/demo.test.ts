import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fencedBlocks, send, spawnNode, unusedPort, waitFor } from './helpers.js';


const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('the `npm start` demo proxies to its instances and stops on SIGTERM', async (t) => {
  const [port, adminPort, a, b, c] = [await unusedPort(), await unusedPort(), await unusedPort(), await unusedPort(), await unusedPort()];
  assert.equal(new Set([port, adminPort, a, b, c]).size, 5, 'picked the same port twice');
  const run = await spawnNode(t, ['--import', 'tsx', 'examples/standalone/demo.ts'], {
    cwd: ROOT,
    env: {
      PORT: String(port),
      ADMIN_PORT: String(adminPort),
      DEMO_PORT_A: String(a),
      DEMO_PORT_B: String(b),
      DEMO_PORT_C: String(c),
      MESHGATE_ADMIN_TOKEN: undefined,
    },
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      try {
        return (await send(`${url}/demo/hello`)).status === 200;
      } catch {
        return false;
      }
    },
    15_000,
    `the demo gateway on ${url}; stderr:\n${run.stderr()}`,
  );

  const instances: string[] = [];
  for (let i = 0; i < 4; i++) {
    const res = await send(`${url}/demo/hello`);
    assert.equal(res.status, 200);
    const body = res.json();
    assert.match(body.instance, /^demo-[abc]$/);
    assert.equal(body.path, '/hello', 'stripPrefix: the instance sees the path without /demo');
    instances.push(body.instance);
  }
  assert.ok(new Set(instances).size >= 2, `every answer came from one instance: ${instances.join(', ')}`);

  // The demo's promises in its banner hold: unknown paths answer 404 JSON, the admin probes answer.
  const nowhere = await send(`${url}/nowhere`);
  assert.equal(nowhere.status, 404);
  assert.equal(nowhere.json().error, 'MESH_ERR_NO_ROUTE');
  assert.equal((await send(`http://127.0.0.1:${adminPort}/healthz`)).status, 200);
  assert.match(run.stdout(), new RegExp(`curl ${url}/demo/hello`));

  // README's "npm start prints what to try": each curl answers as README says it does.
  const curls = fencedBlocks('README.md', ['sh'])
    .flatMap(({ text }) => text.split('\n'))
    .filter((line) => line.startsWith('curl '));
  assert.ok(curls.length >= 3, curls.join('\n'));
  for (const line of curls) {
    const [, target, claim = ''] = /^curl (?:-i )?(\S+)\s*#?\s*(.*)$/.exec(line)!;
    const address = target!.replace('localhost:8080', `127.0.0.1:${port}`).replace('localhost:9901', `127.0.0.1:${adminPort}`);
    const res = await send(`http://${address}`);
    assert.equal(res.status, 200, line);
    if (claim.startsWith('{"instance"')) assert.match(res.json().instance, /^demo-[abc]$/, line);
    if (claim.startsWith('Server-Timing')) assert.match(String(res.headers['server-timing']), /^gateway;dur=[\d.]+, upstream;dur=[\d.]+$/, line);
    if (/Prometheus/.test(claim)) assert.match(res.body, /^# HELP meshgate_/m, line);
  }

  run.child.kill('SIGTERM');
  const { code, signal } = await run.exited;
  assert.equal(signal, null);
  assert.equal(code, 0, run.stderr());
});

test('stopping `npm start` (SIGTERM to npm) stops the gateway and the demo instances: no orphans', async (t) => {
  const ports = await Promise.all([0, 1, 2, 3, 4].map(() => unusedPort()));
  const [port, adminPort, a, b, c] = ports as [number, number, number, number, number];
  const { spawn } = await import('node:child_process');
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), ADMIN_PORT: String(adminPort), DEMO_PORT_A: String(a), DEMO_PORT_B: String(b), DEMO_PORT_C: String(c) };
  delete env.NODE_TEST_CONTEXT;
  delete env.MESHGATE_ADMIN_TOKEN;
  const npm = spawn('npm', ['start', '--silent'], { cwd: ROOT, env, stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (npm.exitCode === null) npm.kill('SIGKILL');
  });
  const listening = async (p: number): Promise<boolean> => {
    try {
      await send(`http://127.0.0.1:${p}/`);
      return true;
    } catch {
      return false;
    }
  };
  await waitFor(() => listening(port), 20_000, 'npm start to serve');
  for (const p of [a, b, c]) assert.equal(await listening(p), true, `demo instance on ${p}`);
  npm.kill('SIGTERM');
  await exited;
  await waitFor(async () => !(await Promise.all(ports.map(listening))).some(Boolean), 10_000, 'every port of the demo to close');
});
