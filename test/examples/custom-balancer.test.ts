import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, test, type TestContext } from 'node:test';
import { ZONE_LOCAL, zoneLocalBalancer } from '../../examples/custom-balancer.js';
import { ConfigError, PluginError } from '../../lib/errors.js';
import { createGateway } from '../../lib/index.js';
import { seededRandom, startGateway } from '../helpers.js';
import { drive, fakeCtx, startNamedUpstreams, tally } from '../balancers/fixtures.js';

/** Upstreams a1, a2 in zone `a` and b1 in zone `b`, behind a gateway in zone `a`. */
async function zonedGateway(t: TestContext) {
  const up = await startNamedUpstreams(t, ['a1', 'a2', 'b1']);
  const { url, gateway } = await startGateway(
    t,
    {
      services: {
        api: {
          balancer: ZONE_LOCAL,
          instances: [
            { url: up.a1!.url, zone: 'a' },
            { url: up.b1!.url, zone: 'b' },
            { url: up.a2!.url, zone: 'a' },
          ],
        },
      },
      routes: [{ prefix: '/api', service: 'api' }],
    },
    { random: seededRandom(1), setup: (gw) => gw.use(zoneLocalBalancer({ zone: 'a' })) },
  );
  const service = gateway.registry.getService('api')!;
  const inst = (name: string) => service.instances.get(`127.0.0.1:${up[name]!.port}`)!;
  return { up, url, gateway, service, inst };
}

const names = (results: readonly { name: string }[]) => Object.fromEntries(tally(results.map((r) => r.name)));

describe('examples/custom-balancer: zone-local', () => {
  test('keeps every request in the gateway’s zone, spread over its instances', async (t) => {
    const { up, url } = await zonedGateway(t);
    const results = await drive(`${url}/api/x`, 60, 4);
    assert.ok(results.every((r) => r.status === 200));
    assert.equal(up.b1!.seen.length, 0);
    assert.ok(up.a1!.seen.length >= 15 && up.a2!.seen.length >= 15, JSON.stringify(names(results)));
  });

  test('fails over to the other zone when no local instance is healthy, and comes back', async (t) => {
    const { url, gateway, inst } = await zonedGateway(t);
    gateway.registry.setHealth(inst('a1'), 'unhealthy', 'test');
    assert.deepEqual(names(await drive(`${url}/api/x`, 20, 2)), { a2: 20 });
    // two of three unhealthy would be panic mode (below panicThreshold 50%): take the local one out for good instead
    gateway.registry.removeInstance('api', inst('a2').id);
    assert.deepEqual(names(await drive(`${url}/api/x`, 20, 2)), { b1: 20 });
    gateway.registry.setHealth(inst('a1'), 'healthy', 'test');
    assert.deepEqual(names(await drive(`${url}/api/x`, 20, 2)), { a1: 20 });
  });

  test('a retry stays local while a local instance is untried, then leaves the zone', async (t) => {
    const { gateway, service, inst } = await zonedGateway(t);
    const balancer = gateway.balancerFor(service);
    const candidates = service.candidates();
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick(candidates, fakeCtx(), new Set([inst('a1')])), inst('a2'));
    for (let i = 0; i < 20; i++) assert.equal(balancer.pick(candidates, fakeCtx(), new Set([inst('a1'), inst('a2')])), inst('b1'));
    assert.ok(candidates.includes(balancer.pick(candidates, fakeCtx(), new Set(candidates))));
  });

  test('the plugin is what defines the name: without it, balancer: zone-local fails at ready()', async (t) => {
    const gateway = createGateway({ logLevel: 'silent', services: { api: { balancer: ZONE_LOCAL } } });
    t.after(() => gateway.close());
    await assert.rejects(gateway.ready(), (err: unknown) => err instanceof ConfigError && err.issues[0]?.path === 'services.api.balancer');
  });

  test('the options are checked in the factory', () => {
    assert.throws(() => zoneLocalBalancer({ zone: '' }), PluginError);
    assert.throws(() => zoneLocalBalancer(undefined as never), PluginError);
  });

  test('running the file directly starts the demo, shows the failover and exits 0', async () => {
    const file = fileURLToPath(new URL('../../examples/custom-balancer.ts', import.meta.url));
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(process.execPath, ['--import', 'tsx', file], { timeout: 30_000 }, (_err, stdout, stderr) =>
        resolve({ code: child.exitCode, stdout, stderr }),
      );
    });
    assert.equal(code, 0, stderr);
    const lines = stdout.trim().split('\n');
    assert.match(lines[1]!, /both zones healthy: +\{"api-eu-1":10\}$/);
    assert.match(lines[2]!, /eu-1 unhealthy: +\{"api-eu-2":10\}$/);
    assert.match(lines[3]!, /eu-1 healthy again: +\{"api-eu-1":10\}$/);
  });
});
