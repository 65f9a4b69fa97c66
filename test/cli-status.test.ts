import assert from 'node:assert/strict';
import { test } from 'node:test';
import { echo, meshgateCli, startGateway, startUpstream, waitFor } from './helpers.js';

const TOKEN = 'status-test-token';

test('meshgate status --admin: an aligned table of services and instances, JSON with --json, redrawn with --watch; the token is needed', { timeout: 60_000 }, async (t) => {
  const good = await startUpstream(t, echo('good'));
  const sick = await startUpstream(t, (req, res) => res.writeHead(req.url === '/health' ? 500 : 200).end());
  const { gateway, adminUrl } = await startGateway(t, {
    admin: { port: 0, token: TOKEN },
    services: {
      api: { instances: [{ url: good.url, id: 'good-1', metadata: { version: 'v2' } }, { url: sick.url, id: 'sick-1' }], healthCheck: { path: '/health', interval: '100ms', unhealthyThreshold: 1 } },
      empty: {},
    },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  await waitFor(() => gateway.registry.getInstance('api', 'sick-1')?.health === 'unhealthy', 5000, 'the sick instance to be unhealthy');

  const table = await meshgateCli(t, ['status', '--admin', adminUrl!, '--token', TOKEN]);
  assert.equal((await table.exited).code, 0, table.stderr());
  const lines = table.stdout().trimEnd().split('\n');
  assert.match(lines[0]!, /^SERVICE\s+INSTANCE\s+URL\s+HEALTH\s+CIRCUIT\s+INFLIGHT\s+WEIGHT\s+ZONE\s+VERSION\s+SOURCE/);
  const good1 = lines.find((l) => l.includes('good-1'))!;
  const sick1 = lines.find((l) => l.includes('sick-1'))!;
  assert.match(good1, /^api\s+good-1\s+http:\/\/127\.0\.0\.1:\d+\s+healthy\s+closed\s+0\s+1\s+v2\s+static/);
  assert.match(sick1, /\sunhealthy\s/);
  assert.equal(lines[0]!.indexOf('HEALTH'), good1.indexOf('healthy'), 'columns line up');
  assert.match(lines.find((l) => l.startsWith('empty'))!, /no instances/);
  assert.doesNotMatch(table.stdout(), /\u001b\[/, 'no colours when stdout is not a terminal');

  const json = await meshgateCli(t, ['status', '--admin', adminUrl!, '--token', TOKEN, '--json']);
  assert.equal((await json.exited).code, 0);
  const parsed = JSON.parse(json.stdout()) as { services: { name: string; instances: { id: string; health: string }[] }[] };
  assert.deepEqual(parsed.services.find((s) => s.name === 'api')!.instances.map((i) => [i.id, i.health]).sort(), [['good-1', 'healthy'], ['sick-1', 'unhealthy']]);

  const watch = await meshgateCli(t, ['status', '--admin', adminUrl!, '--token', TOKEN, '--watch']);
  await waitFor(() => (watch.stdout().match(/^SERVICE/gm) ?? []).length >= 2, 10_000, 'two frames');
  watch.child.kill('SIGINT');
  assert.equal((await watch.exited).code, 0);

  const refused = await meshgateCli(t, ['status', '--admin', adminUrl!]);
  assert.equal((await refused.exited).code, 1);
  assert.match(refused.stderr(), /needs the admin token/);
});
