import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import Koa from 'koa';
import { createGateway, definePlugin, type Instance, type MeshError, type RemovalReason } from '../lib/index.js';
import { createTestGateway, echo, listenApp, send, startGateway, startUpstream, unusedPort, waitFor, within } from './helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };

describe('mount mode', () => {
  test('matching paths are proxied, others fall through to the host app, host headers survive', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (req, res) => {
      const body = JSON.stringify({ name: 'upstream', url: req.url });
      res.writeHead(200, [
        'content-type', 'application/json',
        'content-length', String(Buffer.byteLength(body)),
        'set-cookie', 'a=1; Path=/',
        'set-cookie', 'b=2; Path=/',
      ]);
      res.end(body);
    });
    const deadPort = await unusedPort();
    const gateway = createTestGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] }, dead: { instances: [{ url: `http://127.0.0.1:${deadPort}` }] } },
      routes: [
        { prefix: '/api', service: 'api', stripPrefix: true },
        { prefix: '/dead', service: 'dead' },
      ],
    });
    const app = new Koa();
    app.use(async (ctx, next) => {
      ctx.set('x-host', '1');
      ctx.cookies.set('host1', 'h1', { httpOnly: false });
      ctx.cookies.set('host2', 'h2', { httpOnly: false });
      await next();
    });
    app.use(gateway.middleware());
    app.use((ctx) => {
      ctx.body = `host app: ${ctx.method} ${ctx.path}`;
    });
    const { url } = await listenApp(t, app);

    const proxied = await send(`${url}/api/users?id=7`);
    assert.equal(proxied.status, 200);
    assert.equal(proxied.json().name, 'upstream');
    assert.equal(proxied.json().url, '/users?id=7');
    assert.equal(proxied.headers['x-host'], '1');
    // The host app's headers and the upstream's repeated ones all arrive.
    const cookieNames = (cookies: string[] | undefined): string[] => (cookies ?? []).map((c) => c.split('=')[0]!).sort();
    assert.deepEqual(cookieNames(proxied.headers['set-cookie']), ['a', 'b', 'host1', 'host2']);
    assert.ok(proxied.headers['set-cookie']!.includes('a=1; Path=/'));
    assert.equal(upstream.seen.length, 1);

    const local = await send(`${url}/about`);
    assert.equal(local.status, 200);
    assert.equal(local.body, 'host app: GET /about');
    assert.equal(local.headers['x-host'], '1');
    // Segment boundary: /apix is not /api.
    const near = await send(`${url}/apix`);
    assert.equal(near.body, 'host app: GET /apix');
    assert.equal(upstream.seen.length, 1);

    // A matched route whose upstream fails is answered by the gateway, not the host app.
    const failed = await send(`${url}/dead/x`);
    assert.equal(failed.status, 502);
    assert.equal(failed.json().error, 'MESH_ERR_UPSTREAM_CONNECT');
    assert.equal(failed.headers['x-host'], '1');
    assert.deepEqual(cookieNames(failed.headers['set-cookie']), ['host1', 'host2']);
  });
});

describe('plugin API', () => {
  const ROUTES = (url: string) => ({
    services: { api: { instances: [{ url, id: 'a' }] } },
    routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
  });

  test('stages run in the documented order whatever order plugins add them in, with mesh state filled in', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      res.writeHead(201, { 'content-type': 'text/plain' });
      res.end('created');
    });
    const order: string[] = [];
    const snapshots: Record<string, { route: string | null; service: string | null; instance: string | null; attempt: number; candidates: number; status: number | null }> = {};
    const record = (stage: string) => async (ctx: Koa.Context, next: () => Promise<void>) => {
      const mesh = ctx.state.mesh;
      snapshots[stage] = {
        route: mesh.route?.prefix ?? null,
        service: mesh.service?.name ?? null,
        instance: mesh.instance?.id ?? null,
        attempt: mesh.attempt,
        candidates: mesh.candidates.length,
        status: null,
      };
      order.push(`${stage}:in`);
      await next();
      order.push(`${stage}:out`);
      snapshots[stage]!.status = mesh.exchange?.statusCode ?? null;
    };
    // Deliberately registered inner stages first, spread over two plugins.
    const inner = definePlugin({
      name: 'inner',
      setup(gw) {
        gw.addMiddleware('guard', record('guard'));
        gw.addMiddleware('select', record('select'));
      },
    });
    const outer = definePlugin({
      name: 'outer',
      setup(gw) {
        gw.addMiddleware('retry', record('retry'));
        gw.addMiddleware('resolve', record('resolve'));
        gw.addMiddleware('onRequest', record('onRequest'));
      },
    });
    const { url } = await startGateway(t, ROUTES(upstream.url), {
      setup: (gw) => {
        gw.use(inner);
        gw.use(outer);
      },
    });
    const res = await send(`${url}/api/thing`);
    assert.equal(res.status, 201);
    assert.equal(res.body, 'created');
    assert.deepEqual(order, [
      'onRequest:in',
      'resolve:in',
      'retry:in',
      'select:in',
      'guard:in',
      'guard:out',
      'select:out',
      'retry:out',
      'resolve:out',
      'onRequest:out',
    ]);
    // onRequest: the route is matched before it (per-route plugins read it), the service is not resolved yet.
    assert.equal(snapshots.onRequest!.route, '/api');
    assert.equal(snapshots.onRequest!.service, null);
    assert.equal(snapshots.onRequest!.instance, null);
    // resolve: route and service known, no attempt yet.
    assert.equal(snapshots.resolve!.route, '/api');
    assert.equal(snapshots.resolve!.service, 'api');
    assert.equal(snapshots.resolve!.instance, null);
    assert.equal(snapshots.resolve!.attempt, 0);
    // select: an attempt with its candidates, the balancer has not picked yet.
    assert.equal(snapshots.select!.attempt, 1);
    assert.equal(snapshots.select!.candidates, 1);
    assert.equal(snapshots.select!.instance, null);
    // guard: the instance is chosen.
    assert.equal(snapshots.guard!.instance, 'a');
    assert.equal(snapshots.guard!.service, 'api');
    // Everything from guard outwards saw the upstream's status after next().
    for (const stage of ['guard', 'select', 'retry', 'resolve', 'onRequest']) assert.equal(snapshots[stage]!.status, 201, stage);
  });

  test('a plugin with a missing dependency makes ready() reject with MESH_ERR_PLUGIN_DEPENDENCY', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const gateway = createTestGateway(t, ROUTES(upstream.url));
    let ran = false;
    gateway.use(
      definePlugin({
        name: 'needs-auth',
        dependencies: ['auth'],
        setup() {
          ran = true;
        },
      }),
    );
    await assert.rejects(gateway.ready(), (err: MeshError) => {
      assert.equal(err.code, 'MESH_ERR_PLUGIN_DEPENDENCY');
      assert.match(err.message, /auth/);
      return true;
    });
    assert.equal(ran, false);
  });

  test('a plugin with a missing dependency makes listen() reject with MESH_ERR_PLUGIN_DEPENDENCY and nothing listens', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const gateway = createTestGateway(t, { ...ROUTES(upstream.url), listen: { host: '127.0.0.1', port: 0 } });
    gateway.use(definePlugin({ name: 'needs-auth', dependencies: ['auth'], setup() {} }));
    await assert.rejects(gateway.listen(), { code: 'MESH_ERR_PLUGIN_DEPENDENCY' });
    assert.equal(gateway.server, null);
  });

  test('a dependency registered before its dependent is accepted', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const setups: string[] = [];
    const { url } = await startGateway(t, ROUTES(upstream.url), {
      setup: (gw) => {
        gw.use(definePlugin({ name: 'auth', setup: () => void setups.push('auth') }));
        gw.use(definePlugin({ name: 'needs-auth', dependencies: ['auth'], setup: () => void setups.push('needs-auth') }));
      },
    });
    assert.deepEqual(setups, ['auth', 'needs-auth']);
    assert.equal((await send(`${url}/api/x`)).status, 200);
  });

  test('decorate shares a value between plugins; a duplicate key throws; get of a missing key throws', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const cache = new Map<string, string>([['k', 'v']]);
    let seenByConsumer: unknown = null;
    let duplicate: unknown = null;
    let missing: unknown = null;
    const provider = definePlugin({ name: 'provider', setup: (gw) => void gw.decorate('cache', cache) });
    const consumer = definePlugin({
      name: 'consumer',
      dependencies: ['provider'],
      setup(gw) {
        seenByConsumer = gw.get('cache');
        try {
          gw.decorate('cache', new Map());
        } catch (err) {
          duplicate = err;
        }
        try {
          gw.get('nope');
        } catch (err) {
          missing = err;
        }
      },
    });
    const { gateway } = await startGateway(t, ROUTES(upstream.url), {
      setup: (gw) => {
        gw.use(provider);
        gw.use(consumer);
      },
    });
    assert.equal(seenByConsumer, cache);
    assert.ok(duplicate instanceof Error, 'a duplicate decorate did not throw');
    assert.equal((duplicate as MeshError).code, 'MESH_ERR_DECORATOR_DUPLICATE');
    assert.ok(missing instanceof Error, 'get of a missing key did not throw');
    assert.equal((missing as MeshError).code, 'MESH_ERR_DECORATOR_MISSING');
    // The first value stays.
    assert.equal(gateway.get('cache'), cache);
    assert.throws(() => gateway.decorate('cache', 1), { code: 'MESH_ERR_DECORATOR_DUPLICATE' });
    assert.throws(() => gateway.get('missing'), { code: 'MESH_ERR_DECORATOR_MISSING' });
  });

  test('onClose hooks run in reverse registration order; close() is idempotent', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const calls: string[] = [];
    let closingEvents = 0;
    const { gateway, url } = await startGateway(t, ROUTES(upstream.url), {
      setup: (gw) => {
        gw.use(
          definePlugin({
            name: 'hooks',
            setup(g) {
              g.onClose(() => void calls.push('first'));
              g.onClose(async () => {
                await new Promise((resolve) => setTimeout(resolve, 10));
                calls.push('second');
              });
              g.onClose(() => void calls.push('third'));
            },
          }),
        );
        gw.on('gateway:closing', () => closingEvents++);
      },
    });
    assert.equal((await send(`${url}/api/x`)).status, 200);
    const a = gateway.close();
    const b = gateway.close();
    await Promise.all([a, b]);
    await gateway.close();
    assert.deepEqual(calls, ['third', 'second', 'first']);
    assert.equal(closingEvents, 1);
    assert.equal(gateway.isReady, false);
    await assert.rejects(send(`${url}/api/x`), { code: 'ECONNREFUSED' });
  });

  test('a guard middleware sees the upstream status after next()', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      res.writeHead(418, { 'content-type': 'text/plain' });
      res.end('teapot');
    });
    const statuses: number[] = [];
    const { url } = await startGateway(t, ROUTES(upstream.url), {
      setup: (gw) =>
        gw.use(
          definePlugin({
            name: 'watcher',
            setup(g) {
              g.addMiddleware('guard', async (ctx, next) => {
                await next();
                statuses.push(ctx.state.mesh.exchange!.statusCode);
              });
            },
          }),
        ),
    });
    const res = await send(`${url}/api/tea`);
    assert.equal(res.status, 418);
    assert.equal(res.body, 'teapot');
    assert.deepEqual(statuses, [418]);
  });

  test('next() of the retry and select stages rejects, never throws, when there is no instance to pick', LIMIT, async (t) => {
    // A service with no instances: the core fails the attempt at the pick. A middleware that
    // chains on next()'s promise instead of awaiting it must still see that failure.
    const seen: string[] = [];
    const { url } = await startGateway(
      t,
      { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] },
      {
        setup: (gw) =>
          gw.use(
            definePlugin({
              name: 'chains-on-next',
              setup(g) {
                for (const stage of ['retry', 'select'] as const) {
                  g.addMiddleware(stage, (ctx, next) =>
                    next().catch((err: MeshError) => {
                      seen.push(`${stage}:${err.code}`);
                      throw err;
                    }),
                  );
                }
              },
            }),
          ),
      },
    );
    const res = await send(`${url}/api/x`);
    assert.equal(res.status, 503);
    assert.equal(JSON.parse(res.body).error, 'MESH_ERR_NO_HEALTHY_INSTANCE');
    assert.deepEqual(seen, ['select:MESH_ERR_NO_HEALTHY_INSTANCE', 'retry:MESH_ERR_NO_HEALTHY_INSTANCE']);
  });

  /**
   * Two upstreams: `failing` answers 503, `healthy` 200. A retry-stage middleware calls next()
   * again on a 503. Returns what the client got and what each attempt saw.
   */
  async function retryOnce(t: TestContext, weights: { failing: number; healthy: number }) {
    const failing = await startUpstream(t, (_req, res) => {
      res.writeHead(503, { 'content-type': 'text/plain', 'x-from': 'failing' });
      res.end('failing instance body');
    });
    const healthy = await startUpstream(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'x-from': 'healthy' });
      res.end('healthy instance body');
    });
    const attempts: { attempt: number; instance: string; status: number }[] = [];
    const { gateway, url } = await startGateway(
      t,
      {
        services: {
          api: {
            instances: [
              { url: failing.url, id: 'failing', weight: weights.failing },
              { url: healthy.url, id: 'healthy', weight: weights.healthy },
            ],
          },
        },
        routes: [{ prefix: '/api', service: 'api' }],
      },
      {
        setup: (gw) =>
          gw.use(
            definePlugin({
              name: 'retry-once',
              setup(g) {
                g.addMiddleware('retry', async (ctx, next) => {
                  const mesh = ctx.state.mesh;
                  await next();
                  attempts.push({ attempt: mesh.attempt, instance: mesh.instance!.id, status: mesh.exchange!.statusCode });
                  if (mesh.exchange!.statusCode === 503) {
                    await next();
                    attempts.push({ attempt: mesh.attempt, instance: mesh.instance!.id, status: mesh.exchange!.statusCode });
                  }
                });
              },
            }),
          ),
      },
    );
    const res = await send(`${url}/api/r`);
    // The discarded first answer must free its slot.
    await waitFor(
      () => gateway.registry.getInstance('api', 'failing')!.inflight === 0 && gateway.registry.getInstance('api', 'healthy')!.inflight === 0,
      5000,
      'inflight back to 0 on both instances',
    );
    return { res, attempts, failing, healthy };
  }

  test('a retry middleware may call next() again: the second attempt goes to the other instance and the client never sees the first answer', LIMIT, async (t) => {
    const { res, attempts, failing, healthy } = await retryOnce(t, { failing: 1, healthy: 1 });
    assert.equal(res.status, 200);
    assert.equal(res.body, 'healthy instance body');
    assert.equal(res.headers['x-from'], 'healthy');
    assert.ok(!res.body.includes('failing'));
    assert.deepEqual(attempts, [
      { attempt: 1, instance: 'failing', status: 503 },
      { attempt: 2, instance: 'healthy', status: 200 },
    ]);
    assert.equal(failing.seen.length, 1);
    assert.equal(healthy.seen.length, 1);
  });

  test('a retry avoids the instance already tried even when the balancer would pick it again (weights 3:1)', LIMIT, async (t) => {
    // Smooth weighted round-robin over 3:1 picks failing, failing, healthy, failing: only the
    // "already tried" exclusion sends the second attempt to healthy.
    const { res, attempts, failing, healthy } = await retryOnce(t, { failing: 3, healthy: 1 });
    assert.equal(res.status, 200);
    assert.equal(res.body, 'healthy instance body');
    assert.deepEqual(
      attempts.map((a) => a.instance),
      ['failing', 'healthy'],
    );
    assert.equal(failing.seen.length, 1);
    assert.equal(healthy.seen.length, 1);
  });
});

describe('registry events', () => {
  test('instance:added / instance:removed fire, and traffic follows the registry at run time', LIMIT, async (t) => {
    const a = await startUpstream(t, echo('a'));
    const b = await startUpstream(t, echo('b'));
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: a.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const added: Instance[] = [];
    const removed: [Instance, RemovalReason][] = [];
    gateway.on('instance:added', (inst) => added.push(inst));
    gateway.on('instance:removed', (inst, reason) => removed.push([inst, reason]));

    const names = async (n: number): Promise<string[]> => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) {
        const res = await send(`${url}/api/x`);
        assert.equal(res.status, 200);
        out.push(res.json().name);
      }
      return out;
    };
    assert.deepEqual(await names(2), ['a', 'a']);

    const inst = gateway.registry.upsertInstance('api', { url: b.url, id: 'b' });
    assert.equal(added.length, 1);
    assert.equal(added[0], inst);
    assert.equal(added[0]!.id, 'b');
    assert.equal(added[0]!.url, b.url);
    assert.equal(added[0]!.service, 'api');
    const mixed = await names(4);
    assert.equal(mixed.filter((n) => n === 'b').length, 2, `b got ${mixed.join(',')}`);
    assert.equal(b.seen.length, 2);

    const gone = gateway.registry.removeInstance('api', 'b');
    assert.equal(gone, inst);
    assert.equal(removed.length, 1);
    assert.equal(removed[0]![0], inst);
    assert.equal(removed[0]![1], 'deregistered');
    assert.deepEqual(await names(4), ['a', 'a', 'a', 'a']);
    assert.equal(b.seen.length, 2);
  });
});

describe('request:end', () => {
  test('fires once per handled request with the status the client saw, whoever answered it; a throwing listener changes nothing', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url === '/api/hang') return; // never answers: the client gives up first
      res.writeHead(req.url === '/api/teapot' ? 418 : 200, { 'content-length': '2' });
      res.end('ok');
    });
    const ended: { path: string; status: number; error: string | null }[] = [];
    const errors: Error[] = [];
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] }, empty: {} },
      routes: [
        { prefix: '/api', service: 'api' },
        { prefix: '/empty', service: 'empty' },
        { prefix: '/guarded', service: 'api' },
      ],
    }, {
      setup: (gw) =>
        gw.use(
          definePlugin({
            name: 'bouncer',
            setup: (g) => {
              // Answers /guarded itself, before the proxy: the observers must still hear of it.
              g.addMiddleware('onRequest', (ctx, next) => {
                if (ctx.state.mesh.route?.prefix !== '/guarded') return next();
                ctx.res.writeHead(403, { 'content-length': '0' }).end();
              });
            },
          }),
        ),
    });
    gateway.on('gateway:error', (err) => errors.push(err));
    gateway.on('request:end', () => {
      throw new Error('observer bug');
    });
    const timings: boolean[] = [];
    gateway.on('request:end', (ctx, status) => {
      const mesh = ctx.state.mesh;
      ended.push({ path: mesh.path, status, error: mesh.error?.code ?? null });
      // One reading of the clock for every observer, taken when the request ended.
      timings.push(mesh.endedAt >= mesh.startedAt && mesh.endedAt <= performance.now());
    });

    assert.equal((await send(`${url}/api/a`)).status, 200);
    assert.equal((await send(`${url}/api/teapot`)).status, 418);
    assert.equal((await send(`${url}/nowhere`)).status, 404);
    assert.equal((await send(`${url}/empty/x`)).status, 503);
    assert.equal((await send(`${url}/guarded/x`)).status, 403);
    const aborted = new AbortController();
    const hanging = fetch(`${url}/api/hang`, { signal: aborted.signal }).catch(() => 'aborted');
    await waitFor(() => upstream.seen.some((r) => r.url === '/api/hang'), 5000, 'the upstream to get /api/hang');
    aborted.abort();
    assert.equal(await hanging, 'aborted');
    await waitFor(() => ended.length === 6, 5000, 'six request:end events');

    assert.deepEqual(ended, [
      { path: '/api/a', status: 200, error: null },
      { path: '/api/teapot', status: 418, error: null },
      { path: '/nowhere', status: 404, error: 'MESH_ERR_NO_ROUTE' },
      { path: '/empty/x', status: 503, error: 'MESH_ERR_NO_HEALTHY_INSTANCE' },
      { path: '/guarded/x', status: 403, error: null },
      { path: '/api/hang', status: 499, error: 'MESH_ERR_CLIENT_ABORTED' },
    ]);
    assert.deepEqual(timings, [true, true, true, true, true, true]);
    // The first listener threw every time: reported, never in the client's way.
    assert.equal(errors.length, 6);
    assert.ok(errors.every((e) => e.message === 'observer bug'));
  });
});

describe('request:end listeners', () => {
  test('a once() listener runs once, listeners see the gateway as this, and a throwing gateway:error listener leaves the in-flight count right', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('api'));
    const { gateway, url } = await startGateway(t, { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    let onceCalls = 0;
    let self: unknown = null;
    gateway.once('request:end', () => void onceCalls++);
    gateway.on('request:end', function (this: unknown) {
      self = this;
      throw new Error('observer bug');
    });
    gateway.on('gateway:error', () => {
      throw new Error('and the error listener too');
    });
    for (let i = 0; i < 3; i++) assert.equal((await send(`${url}/api/${i}`)).status, 200);
    assert.equal(onceCalls, 1);
    assert.equal(self, gateway);
    assert.equal(gateway.listenerCount('request:end'), 1);
    assert.equal(gateway.inflight, 0);
  });
});

describe('close()', () => {
  test('drains an in-flight request: the client gets the full answer, new connections are refused, close() waits', LIMIT, async (t) => {
    let answered = false;
    const body = 'slow but complete '.repeat(1000);
    const upstream = await startUpstream(t, (_req, res) => {
      const timer = setTimeout(() => {
        answered = true;
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(body);
      }, 500);
      res.on('close', () => clearTimeout(timer));
    });
    const hookSaw: { answered: boolean; inflight: number }[] = [];
    const { gateway, url } = await startGateway(
      t,
      { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] },
      { setup: (gw) => gw.use(definePlugin({ name: 'probe', setup: (g) => void g.onClose(() => void hookSaw.push({ answered, inflight: g.inflight })) })) },
    );
    const inflight = send(`${url}/api/slow`);
    await waitFor(() => upstream.seen.length === 1, 5000, 'the upstream to receive the request');
    let closed = false;
    const closing = gateway.close().then(() => {
      closed = true;
    });

    // A new connection after close() began is refused (or answered 503), never proxied.
    try {
      const late = await send(`${url}/api/late`);
      assert.equal(late.status, 503);
      assert.equal(late.json().error, 'MESH_ERR_CLOSING');
    } catch (err) {
      assert.equal((err as NodeJS.ErrnoException).code, 'ECONNREFUSED');
    }
    assert.equal(closed, false, 'close() resolved while a request was in flight');

    const res = await inflight;
    assert.equal(res.status, 200);
    assert.equal(res.body, body);
    await within(closing, 10_000, 'close()');
    assert.equal(closed, true);
    assert.deepEqual(hookSaw, [{ answered: true, inflight: 0 }]);
    assert.equal(upstream.seen.length, 1);
  });

  test('with drainTimeout, close() cuts off a request the upstream never answers', LIMIT, async (t) => {
    let upstreamClosed = false;
    const upstream = await startUpstream(t, (_req, res) => {
      res.on('close', () => {
        upstreamClosed = true;
      });
    });
    const { gateway, url } = await startGateway(t, {
      drainTimeout: '300ms',
      services: { api: { instances: [{ url: upstream.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const outcome = send(`${url}/api/forever`).then(
      (res) => ({ status: res.status, error: null as string | null }),
      (err: NodeJS.ErrnoException) => ({ status: 0, error: err.code ?? err.message }),
    );
    await waitFor(() => upstream.seen.length === 1, 5000, 'the upstream to receive the request');
    await within(gateway.close(), 10_000, 'close()');
    const result = await within(outcome, 5000, 'the cut-off request');
    assert.notEqual(result.status, 200);
    assert.equal(gateway.inflight, 0);
    await waitFor(() => upstreamClosed, 5000, 'the upstream request to be aborted');
    assert.equal(gateway.registry.getInstance('api', 'a')!.inflight, 0);
  });
});

test('round-robin with equal weights rotates exactly over three instances', LIMIT, async (t) => {
  const ups = await Promise.all(['a', 'b', 'c'].map((name) => startUpstream(t, echo(name))));
  const { url } = await startGateway(t, {
    services: { api: { balancer: 'round-robin', instances: ups.map((u) => ({ url: u.url })) } },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  const sequence: string[] = [];
  for (let i = 0; i < 30; i++) {
    const res = await send(`${url}/api/${i}`);
    assert.equal(res.status, 200);
    sequence.push(res.json().name);
  }
  assert.deepEqual(
    ups.map((u) => u.seen.length),
    [10, 10, 10],
  );
  // A rotation: every window of three holds each instance once.
  for (let i = 0; i + 3 <= sequence.length; i += 3) assert.deepEqual([...sequence.slice(i, i + 3)].sort(), ['a', 'b', 'c'], sequence.join(','));
});

test('createGateway with a bad config throws MESH_ERR_CONFIG listing every bad field by path', LIMIT, () => {
  let error: unknown;
  try {
    createGateway({
      logLevel: 'silent',
      listen: { port: 70000 },
      drainTimeout: 'soonish',
      services: {
        api: { timeout: 'later', instances: [{ url: 'http://127.0.0.1:1' }, { url: 'ftp://example.com' }] },
      },
      routes: [
        { prefix: 'api', service: 'api' },
        { prefix: '/users', service: 'users' },
      ],
    });
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof Error, 'createGateway did not throw');
  const config = error as MeshError & { issues: readonly { path: string; message: string }[] };
  assert.equal(config.code, 'MESH_ERR_CONFIG');
  const paths = config.issues.map((i) => i.path).sort();
  assert.deepEqual(paths, [
    'drainTimeout',
    'listen.port',
    'routes[0].prefix',
    'routes[1].service',
    'services.api.instances[1].url',
    'services.api.timeout',
  ]);
  for (const issue of config.issues) assert.ok(issue.message.length > 0);
  for (const path of paths) assert.ok(config.message.includes(path), `message does not name ${path}`);
});
