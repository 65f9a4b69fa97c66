import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway } from '../../lib/index.js';
import { echo, send, sleep, startGateway, startUpstream, waitFor, type Upstream } from '../helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 30_000 };
const TTL = 600;

/** An instance registered through the admin API, heartbeating every TTL/3 until `silence()`. */
interface Leased extends Upstream {
  id: string;
  silence(): void;
  resume(): void;
}

async function leased(t: TestContext, adminUrl: string, name: string): Promise<Leased> {
  const upstream = await startUpstream(t, echo(name));
  const registered = await send(`${adminUrl}/services/api/instances`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ url: upstream.url, ttl: TTL }),
  });
  assert.equal(registered.status, 201, registered.body);
  const id = registered.json().id as string;
  let beating = true;
  const timer = setInterval(() => {
    if (beating) void send(`${adminUrl}/services/api/instances/${encodeURIComponent(id)}/heartbeat`, { method: 'PUT' }).catch(() => {});
  }, TTL / 3);
  t.after(() => clearInterval(timer));
  return Object.assign(upstream, { id, silence: () => void (beating = false), resume: () => void (beating = true) });
}

async function fleet(t: TestContext, selfPreservation: boolean | { threshold?: number } | undefined): Promise<{ gateway: Gateway; url: string; adminUrl: string; instances: Leased[] }> {
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { port: 0 },
    metrics: true,
    ...(selfPreservation === undefined ? {} : { selfPreservation }),
    services: { api: {} },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  const instances = await Promise.all(['i1', 'i2', 'i3', 'i4'].map((name) => leased(t, adminUrl!, name)));
  return { gateway, url, adminUrl: adminUrl!, instances };
}

const count = (gateway: Gateway): number => gateway.registry.getService('api')!.instances.size;

describe('lease self-preservation', () => {
  test('when every instance goes silent at once the gateway keeps their leases and keeps routing; when heartbeats return, it expires normally again', LIMIT, async (t) => {
    const { gateway, url, adminUrl, instances } = await fleet(t, { threshold: 50 });
    const events: unknown[] = [];
    gateway.on('service:preserved', (_service, state) => events.push(state));

    // The gateway stops hearing from all of them (its network, not four instances, failed).
    for (const inst of instances) inst.silence();
    await sleep(TTL * 3);
    assert.equal(count(gateway), 4, 'no lease expired');
    assert.equal(events.length, 1);
    const statuses = await Promise.all(Array.from({ length: 8 }, (_, i) => send(`${url}/api/${i}`)));
    assert.deepEqual(
      statuses.map((r) => r.status),
      Array(8).fill(200),
    );
    const ready = await send(`${adminUrl}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(Object.keys(ready.json().selfPreservation), ['api']);
    assert.equal(ready.json().selfPreservation.api.silent, 4);
    assert.match((await send(`${adminUrl}/metrics`)).body, /^meshgate_self_preservation\{service="api"\} 1$/m);

    // Heartbeats come back for three; the fourth really died. Preservation ends, and the dead one expires.
    for (const inst of instances.slice(0, 3)) inst.resume();
    await waitFor(() => events.length === 2, TTL * 3, 'self-preservation to end');
    assert.equal(events[1], null);
    assert.equal((await send(`${adminUrl}/readyz`)).json().selfPreservation, undefined);
    await waitFor(() => count(gateway) === 3, TTL * 4, 'the silent instance to expire');
    assert.ok(!gateway.registry.getInstance('api', instances[3]!.id));
    assert.match((await send(`${adminUrl}/metrics`)).body, /^meshgate_self_preservation\{service="api"\} 0$/m);
  });

  test('one instance going silent alone still expires', LIMIT, async (t) => {
    const { gateway, instances } = await fleet(t, true);
    instances[0]!.silence();
    await waitFor(() => count(gateway) === 3, TTL * 4, 'the silent instance to expire');
    assert.equal(gateway.leases.preserved.size, 0);
  });

  test('off by default: every silent lease expires on time', LIMIT, async (t) => {
    const { gateway, url, instances } = await fleet(t, undefined);
    for (const inst of instances) inst.silence();
    await waitFor(() => count(gateway) === 0, TTL * 4, 'every lease to expire');
    assert.equal((await send(`${url}/api/x`)).status, 503);
  });
});
