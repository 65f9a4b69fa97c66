import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { send, spawnNode, unusedPort, waitFor } from './helpers.js';

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

  run.child.kill('SIGTERM');
  const { code, signal } = await run.exited;
  assert.equal(signal, null);
  assert.equal(code, 0, run.stderr());
});
