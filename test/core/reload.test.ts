import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { describe, test } from 'node:test';
import { ConfigError, type GatewayConfigInput } from '../../lib/index.js';
import { echo, send, sendPath, sleep, startGateway, startUpstream, waitFor } from '../helpers.js';

const LIMIT = { timeout: 60_000 };

/** The gateway's document with `changes` over it. */
function edited(document: unknown, changes: Partial<GatewayConfigInput>): GatewayConfigInput {
  return { ...(document as GatewayConfigInput), ...changes };
}

describe('reloading the config', () => {
  test('a reload changes routes, services and weights at once; unchanged instances keep their state', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: a.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assert.equal((await sendPath(url, '/api/x')).json().name, 'a');
    assert.equal((await sendPath(url, '/new')).status, 404);
    const first = gateway.snapshot.version;
    const instance = gateway.registry.getInstance('api', [...gateway.registry.requireService('api').instances.keys()][0]!)!;

    const applied: unknown[] = [];
    gateway.on('config:applied', (info) => applied.push(info));
    const snapshot = await gateway.reload(
      edited(gateway.document, {
        services: { api: { instances: [{ url: a.url }] }, other: { instances: [{ url: b.url }] } },
        routes: [
          { prefix: '/api', service: 'api' },
          { prefix: '/new', service: 'other' },
        ],
      }),
    );
    assert.notEqual(snapshot.version, first);
    assert.equal(gateway.snapshot.version, snapshot.version);
    assert.deepEqual(applied, [{ origin: 'api', version: snapshot.version, proposed: snapshot.version, previous: first }]);
    assert.equal((await sendPath(url, '/new/x')).json().name, 'b');
    assert.equal(gateway.registry.getInstance('api', instance.id), instance, 'an instance the reload kept is the same object, with its state');

    // Weights move live.
    await gateway.reload(
      edited(gateway.document, {
        routes: [{ prefix: '/api', backends: [{ service: 'api', weight: 0 }, { service: 'other', weight: 100 }] }],
      }),
    );
    for (let i = 0; i < 10; i++) assert.equal((await sendPath(url, '/api/x')).json().name, 'b');
    assert.equal((await sendPath(url, '/new/x')).status, 404, 'a route the reload removed is gone');
  });

  test('an invalid config is refused with every bad path; the running config and its version stay', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const { gateway, url } = await startGateway(t, { services: { api: { instances: [{ url: a.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    const version = gateway.snapshot.version;
    const rejected: { issues: readonly { path: string }[] }[] = [];
    gateway.on('config:rejected', (info) => rejected.push(info));
    await assert.rejects(
      gateway.reload(edited(gateway.document, { routes: [{ prefix: '/api', service: 'nope' }, { prefix: 'bad', service: 'api', timeout: 'soon' } as never] })),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        const paths = err.issues.map((i) => i.path);
        assert.ok(paths.includes('routes[0].service'), paths.join(', '));
        assert.ok(paths.some((p) => p.startsWith('routes[1]')), paths.join(', '));
        return true;
      },
    );
    assert.equal(gateway.snapshot.version, version);
    assert.equal(rejected.length, 1);
    assert.equal((await sendPath(url, '/api/x')).status, 200);

    await assert.rejects(gateway.reload(edited(gateway.document, { listen: { host: '127.0.0.1', port: 1 } })), /listen: cannot change in a reload \(needs a restart\)/);
    assert.equal(gateway.snapshot.version, version);
  });

  test('a reload that turns a plugin on starts it: retries and rate limits added live work', LIMIT, async (t) => {
    const down = await startUpstream(t, (_req, res) => res.writeHead(503).end());
    const ok = await startUpstream(t, echo('ok'));
    const instances = [{ url: down.url }, { url: ok.url }];
    const { gateway, url } = await startGateway(t, { services: { api: { instances } }, routes: [{ prefix: '/api', service: 'api' }] });
    const before: number[] = [];
    for (let i = 0; i < 4; i++) before.push((await sendPath(url, '/api/x')).status);
    assert.ok(before.includes(503), 'no retries yet');
    assert.equal(gateway.hasPlugin('retries'), false);
    await gateway.reload(
      edited(gateway.document, {
        services: { api: { instances, retries: { attempts: 2, minRetryConcurrency: 10 } } },
        routes: [{ prefix: '/api', service: 'api', rateLimit: { rps: 1, burst: 4 } }],
      }),
    );
    assert.ok(gateway.hasPlugin('retries') && gateway.hasPlugin('rate-limit'));
    const after: number[] = [];
    for (let i = 0; i < 6; i++) after.push((await sendPath(url, '/api/x')).status);
    assert.deepEqual(after.slice(0, 4), [200, 200, 200, 200], 'the 503s are retried on the other instance');
    assert.equal(after[5], 429, 'the burst of 4 is spent');
  });

  test('an open circuit stays open across a reload that changes other things', LIMIT, async (t) => {
    const bad = await startUpstream(t, (_req, res) => res.writeHead(500).end());
    const good = [await startUpstream(t, echo('g1')), await startUpstream(t, echo('g2'))];
    const { gateway, url } = await startGateway(t, {
      services: {
        api: {
          instances: [{ url: bad.url }, ...good.map((g) => ({ url: g.url }))],
          circuitBreaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeout: '1m' },
        },
      },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const instance = [...gateway.registry.requireService('api').instances.values()].find((i) => i.url === bad.url)!;
    for (let i = 0; i < 12 && instance.circuit !== 'open'; i++) await sendPath(url, '/api/x');
    assert.equal(instance.circuit, 'open');
    const seen = bad.seen.length;
    await gateway.reload(
      edited(gateway.document, {
        services: {
          api: {
            instances: [{ url: bad.url }, ...good.map((g) => ({ url: g.url }))],
            circuitBreaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeout: '1m' },
            timeout: '5s',
          },
        },
        routes: [{ prefix: '/api', service: 'api' }, { prefix: '/v2', service: 'api' }],
      }),
    );
    assert.equal(instance.circuit, 'open', 'the reload kept the circuit open');
    for (let i = 0; i < 10; i++) assert.equal((await sendPath(url, '/v2/x')).status, 200);
    assert.equal(bad.seen.length, seen, 'the instance whose circuit is open got no request after the reload');
  });

  test('a removed service finishes its requests in flight; a removed static instance leaves the registry', LIMIT, async (t) => {
    let release: (() => void) | null = null;
    const slow = await startUpstream(t, (_req, res: ServerResponse) => {
      release = () => res.writeHead(200, { 'content-type': 'text/plain' }).end('slow done');
    });
    const a = await startUpstream(t, echo('a'));
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, {
      services: { slow: { instances: [{ url: slow.url }] }, api: { instances: [{ url: a.url }, { url: b.url }] } },
      routes: [
        { prefix: '/slow', service: 'slow' },
        { prefix: '/api', service: 'api' },
      ],
    });
    const inFlight = sendPath(url, '/slow/x');
    await waitFor(() => release !== null, 2000, 'the slow request to arrive');
    await gateway.reload(edited(gateway.document, { services: { api: { instances: [{ url: a.url }] } }, routes: [{ prefix: '/api', service: 'api' }] }));
    assert.equal(gateway.registry.getService('slow'), undefined);
    assert.equal(gateway.registry.requireService('api').instances.size, 1);
    await sleep(50);
    release!();
    const answer = await inFlight;
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'slow done');
    assert.equal((await sendPath(url, '/slow/x')).status, 404);
    for (let i = 0; i < 4; i++) assert.equal((await sendPath(url, '/api/x')).json().name, 'a');
  });

  test('GET /routes and requests agree on the version after a reload', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const { gateway, adminUrl } = await startGateway(t, { admin: { port: 0 }, services: { api: { instances: [{ url: a.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    const next = await gateway.reload(edited(gateway.document, { routes: [{ prefix: '/api', service: 'api', name: 'renamed' }] }));
    const routes = (await send(`${adminUrl}/routes`)).json();
    assert.equal(routes.version, next.version);
    assert.equal(routes.routes[0].name, 'renamed');
  });
});

test('a plugin a reload starts whose setup fails is taken back whole: the reload is refused, its middleware and hooks are gone, its close hooks ran, and the next reload starts it afresh', { timeout: 30_000 }, async (t) => {
  const { Gateway, definePlugin } = await import('../../lib/index.js');
  const { z } = await import('zod');
  const api = await startUpstream(t, echo('api'));
  let attempts = 0;
  let closed = 0;
  const flaky = (): ReturnType<typeof definePlugin> =>
    definePlugin({
      name: 'flaky',
      config: { route: { key: 'flaky', schema: z.object({}) } },
      setup(gateway) {
        gateway.addMiddleware('onRequest', (ctx, next) => {
          ctx.set('x-flaky', 'on');
          return next();
        });
        gateway.onClose(() => void closed++);
        if (attempts++ === 0) throw new Error('boom');
      },
    });
  const catalogue = {
    plugins: (config: { routes: { flaky?: unknown }[] }) => (config.routes.some((r) => r.flaky !== undefined) ? [flaky()] : []),
    rank: () => 0,
  };
  const gateway = new Gateway(
    { logLevel: 'silent', listen: { host: '127.0.0.1', port: 0 }, services: { api: { instances: [{ url: api.url }] } }, routes: [{ prefix: '/api', service: 'api' }] },
    { sections: [flaky()], builtins: catalogue as never },
  );
  const { staticDiscovery } = await import('../../plugins/static-discovery/index.js');
  gateway.use(staticDiscovery());
  const { url } = await gateway.listen();
  t.after(() => gateway.close());
  const version = gateway.snapshot.version;
  const withFlaky = edited(gateway.document, { routes: [{ prefix: '/api', service: 'api', flaky: {} } as never] });

  await assert.rejects(gateway.reload(withFlaky), /plugin flaky could not start: boom/);
  assert.equal(gateway.snapshot.version, version);
  assert.equal(closed, 1, 'what the failed setup started was closed');
  assert.equal(gateway.hasPlugin('flaky'), false);
  assert.equal((await sendPath(url, '/api/x')).headers['x-flaky'], undefined, 'its middleware is gone');

  await gateway.reload(withFlaky);
  assert.equal(gateway.hasPlugin('flaky'), true);
  assert.equal((await sendPath(url, '/api/x')).headers['x-flaky'], 'on');
});
