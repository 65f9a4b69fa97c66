import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fencedBlocks, meshgateCli, send, spawnNode, unusedPort, waitFor } from './helpers.js';
import { startRedis } from './redis-server.js';


const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('the `npm start` demo proxies to its instances and stops on SIGTERM', async (t) => {
  const [port, adminPort, a, b, c, v2] = [await unusedPort(), await unusedPort(), await unusedPort(), await unusedPort(), await unusedPort(), await unusedPort()];
  assert.equal(new Set([port, adminPort, a, b, c, v2]).size, 6, 'picked the same port twice');
  const run = await spawnNode(t, ['--import', 'tsx', 'examples/standalone/demo.ts'], {
    cwd: ROOT,
    env: {
      PORT: String(port),
      ADMIN_PORT: String(adminPort),
      DEMO_PORT_A: String(a),
      DEMO_PORT_B: String(b),
      DEMO_PORT_C: String(c),
      DEMO_PORT_V2: String(v2),
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
  const ports = await Promise.all([0, 1, 2, 3, 4, 5].map(() => unusedPort()));
  const [port, adminPort, a, b, c, v2] = ports as [number, number, number, number, number, number];
  const { spawn } = await import('node:child_process');
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), ADMIN_PORT: String(adminPort), DEMO_PORT_A: String(a), DEMO_PORT_B: String(b), DEMO_PORT_C: String(c), DEMO_PORT_V2: String(v2) };
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
  for (const p of [a, b, c, v2]) assert.equal(await listening(p), true, `demo instance on ${p}`);
  npm.kill('SIGTERM');
  await exited;
  await waitFor(async () => !(await Promise.all(ports.map(listening))).some(Boolean), 10_000, 'every port of the demo to close');
});

test("README's canary release walkthrough, step by step with the demo and a Redis: header for testers, 0 to 5 to 100 percent live, rollback", { timeout: 120_000 }, async (t) => {
  const readme = await import('node:fs/promises').then((fs) => fs.readFile(new URL('../README.md', import.meta.url), 'utf8'));
  const walkthrough = readme.slice(readme.indexOf('### Canary release'), readme.indexOf('## Failure handling'));
  // The steps README tells a newcomer to take, in its words.
  for (const step of ['DEMO_REDIS=redis://127.0.0.1:6390 npm start', "curl -H 'x-canary: 1' localhost:8080/shop/hello", 'curl localhost:9901/routes']) {
    assert.ok(walkthrough.includes(step), `the walkthrough says ${step}`);
  }
  // Its meshgate commands, in order, as a shell would split them, against the test's own Redis.
  const commands = [...walkthrough.matchAll(/^\$ npx meshgate (.*?)(?:\s+#.*)?$/gm)].map((m) => [...m[1]!.matchAll(/'[^']*'|\S+/g)].map((w) => w[0].replace(/^'|'$/g, '')));
  assert.deepEqual(
    commands.map((c) => c.slice(0, c[0] === 'shift' ? 7 : 1).join(' ')),
    ['apply', 'shift --route shop --backend demo{version=v1} --weight 95', 'shift --route shop --backend demo{version=v2} --weight 5', 'status', 'shift --route shop --backend demo{version=v2} --weight 100', 'shift --route shop --backend demo{version=v1} --weight 0', 'rollback'],
  );
  const redis = await startRedis(t);
  const meshgate = async (args: string[]): Promise<string> => {
    const run = await meshgateCli(t, args.map((a) => a.replace('redis://127.0.0.1:6390', redis.url)));
    const { code } = await run.exited;
    assert.equal(code, 0, `meshgate ${args.join(' ')}: ${run.stdout()}${run.stderr()}`);
    return run.stdout();
  };

  const [port, adminPort, a, b, c, v2] = await Promise.all([0, 1, 2, 3, 4, 5].map(() => unusedPort()));
  const demo = await spawnNode(t, ['--import', 'tsx', 'examples/standalone/demo.ts'], {
    cwd: ROOT,
    env: { PORT: String(port), ADMIN_PORT: String(adminPort), DEMO_PORT_A: String(a), DEMO_PORT_B: String(b), DEMO_PORT_C: String(c), DEMO_PORT_V2: String(v2), MESHGATE_ADMIN_TOKEN: undefined, DEMO_REDIS: redis.url },
  });
  t.after(() => demo.child.kill('SIGTERM'));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => (await send(`${url}/demo/hello`).catch(() => ({ status: 0 }))).status === 200, 15_000, `the demo; stderr:\n${demo.stderr()}`);
  const versionOf = async (headers: Record<string, string> = {}): Promise<string> => {
    const res = await send(`${url}/shop/hello`, { headers });
    assert.equal(res.status, 200, res.body);
    return res.json().instance === 'demo-v2' ? 'v2' : 'v1';
  };
  const share = async (): Promise<number> => {
    let onV2 = 0;
    for (let user = 0; user < 400; user++) if ((await versionOf({ cookie: `user=${user}` })) === 'v2') onV2++;
    return onV2 / 400;
  };
  const percents = async (): Promise<number[]> =>
    (await send(`http://127.0.0.1:${adminPort}/routes`)).json().routes.find((r: { name: string }) => r.name === 'shop').backends.map((x: { percent: number }) => x.percent);

  // Step 1: v2 is deployed at weight 0; only testers with the header reach it.
  assert.equal(await share(), 0);
  assert.equal(await versionOf({ 'x-canary': '1' }), 'v2');

  // Step 2: the fleet's first version, then 5% of the users, each always on the same version; no restart.
  for (const command of commands.slice(0, 3)) await meshgate(command);
  assert.deepEqual(await percents(), [95, 5]);
  const five = await share();
  assert.ok(five > 0.01 && five < 0.1, `about 5% of users on v2: ${five}`);
  for (let user = 0; user < 20; user++) {
    const first = await versionOf({ cookie: `user=${user}` });
    assert.equal(await versionOf({ cookie: `user=${user}` }), first, 'a user stays on one version');
  }
  assert.match(await meshgate(commands[3]!), /demo|meshgate-/);

  // Step 3: everyone on v2; then the rollback goes back one version.
  for (const command of commands.slice(4, 6)) await meshgate(command);
  assert.deepEqual(await percents(), [0, 100]);
  assert.equal(await share(), 1);
  await meshgate(commands[6]!);
  assert.deepEqual(await percents(), [48.72, 51.28], 'one version back: v1 95, v2 100');
  assert.equal(demo.child.exitCode, null, 'the demo ran through every step');
});
