/**
 * A middleware in any stage may answer the request itself, the Koa way (`ctx.status` /
 * `ctx.body`) or by throwing a MeshError, and both work the same in the standalone listener and
 * mounted in a Koa app; headers plugins set (`ctx.set`, `mesh.responseHeaders`) reach the client.
 * Every case asserts what the client got and what the upstream saw.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, test, type TestContext } from 'node:test';
import Koa from 'koa';
import { MeshError, definePlugin, type GatewayPlugin, type Stage, type StageMiddleware } from '../../lib/index.js';
import { createTestGateway, listenApp, send, startGateway, startUpstream, within, type Upstream } from '../helpers.js';

const LIMIT = { timeout: 15_000 };
const STAGES: readonly Stage[] = ['onRequest', 'resolve', 'retry', 'select', 'guard'];

/** A plugin that adds `middleware` to `stage`. */
function answering<S extends Stage>(stage: S, middleware: StageMiddleware<S>): GatewayPlugin {
  return definePlugin({
    name: `answers-in-${stage}`,
    setup(gateway) {
      gateway.addMiddleware(stage, middleware);
    },
  });
}

const CONFIG = (upstream: Upstream) => ({
  services: { api: { instances: [{ url: upstream.url }], retries: { attempts: 1 } } },
  routes: [{ prefix: '/api', service: 'api' }],
});

type Mode = 'listen' | 'mounted';

/** The gateway with `plugin`, standalone or mounted in a Koa app (whose own routes answer 'host'); its base URL. */
async function gatewayWith(t: TestContext, mode: Mode, upstream: Upstream, plugin: GatewayPlugin): Promise<string> {
  if (mode === 'listen') {
    const { url } = await startGateway(t, CONFIG(upstream), { setup: (gw) => gw.use(plugin) });
    return url;
  }
  const gateway = createTestGateway(t, CONFIG(upstream));
  gateway.use(plugin);
  const app = new Koa();
  app.use(gateway.middleware());
  app.use((ctx) => {
    ctx.body = 'host';
  });
  return (await listenApp(t, app)).url;
}

for (const mode of ['listen', 'mounted'] as const) {
  describe(`answers from plugins (${mode})`, { concurrency: true }, () => {
    for (const stage of STAGES) {
      test(`${stage}: ctx.status and a JSON ctx.body, with ctx.set and mesh.responseHeaders headers; the upstream sees nothing`, LIMIT, async (t) => {
        const upstream = await startUpstream(t);
        const url = await gatewayWith(
          t,
          mode,
          upstream,
          answering(stage, (ctx) => {
            ctx.status = 503;
            ctx.body = { maintenance: true, stage };
            ctx.set('x-set-by', 'ctx.set');
            ctx.state.mesh.responseHeaders.push('x-fast-path', 'yes');
          }),
        );
        const res = await within(send(`${url}/api/x`), 5000, 'the answer');
        assert.equal(res.status, 503);
        assert.deepEqual(res.json(), { maintenance: true, stage });
        assert.match(String(res.headers['content-type']), /application\/json/);
        assert.equal(res.headers['x-set-by'], 'ctx.set');
        assert.equal(res.headers['x-fast-path'], 'yes');
        assert.equal(upstream.seen.length, 0);
      });

      test(`${stage}: a thrown MeshError answers { error, message } with its status and the headers set before it`, LIMIT, async (t) => {
        const upstream = await startUpstream(t);
        const url = await gatewayWith(
          t,
          mode,
          upstream,
          answering(stage, (ctx) => {
            ctx.set('retry-after', '30');
            throw new MeshError('MESH_ERR_MAINTENANCE', 503, `down for maintenance (${stage})`);
          }),
        );
        const res = await within(send(`${url}/api/x`), 5000, 'the answer');
        assert.equal(res.status, 503);
        assert.deepEqual(res.json(), { error: 'MESH_ERR_MAINTENANCE', message: `down for maintenance (${stage})` });
        assert.equal(res.headers['retry-after'], '30');
        assert.equal(upstream.seen.length, 0);
      });
    }

    test('a stream body and a text body are sent as Koa sends them', LIMIT, async (t) => {
      const upstream = await startUpstream(t);
      const url = await gatewayWith(
        t,
        mode,
        upstream,
        answering('select', (ctx) => {
          if (ctx.query.kind === 'text') ctx.body = 'plain words';
          else {
            ctx.type = 'text/csv';
            ctx.body = Readable.from(['a,b\n', '1,2\n']);
          }
        }),
      );
      const streamed = await within(send(`${url}/api/x`), 5000, 'the streamed answer');
      assert.equal(streamed.status, 200);
      assert.equal(streamed.body, 'a,b\n1,2\n');
      assert.match(String(streamed.headers['content-type']), /text\/csv/);
      const text = await send(`${url}/api/x?kind=text`);
      assert.equal(text.status, 200);
      assert.equal(text.body, 'plain words');
      assert.equal(text.headers['content-length'], '11');
      assert.equal(upstream.seen.length, 0);
    });

    test('a middleware that neither calls next() nor sets a body answers 404, as Koa does', LIMIT, async (t) => {
      const upstream = await startUpstream(t);
      const url = await gatewayWith(t, mode, upstream, answering('resolve', () => undefined));
      const res = await within(send(`${url}/api/x`), 5000, 'the answer');
      assert.equal(res.status, 404);
      assert.equal(res.body, 'Not Found');
      assert.equal(upstream.seen.length, 0);
    });

    test('onRequest: a body set after next() replaces the upstream answer, whose socket goes back to the pool', LIMIT, async (t) => {
      const upstream = await startUpstream(t);
      const url = await gatewayWith(
        t,
        mode,
        upstream,
        answering('onRequest', async (ctx, next) => {
          await next();
          const status = ctx.state.mesh.exchange?.statusCode;
          ctx.status = 200;
          ctx.body = { wrapped: status };
        }),
      );
      for (let i = 0; i < 3; i++) {
        const res = await within(send(`${url}/api/x`), 5000, 'the answer');
        assert.equal(res.status, 200);
        assert.deepEqual(res.json(), { wrapped: 200 });
      }
      assert.equal(upstream.seen.length, 3);
    });

    test('headers set with ctx.set after next() reach a proxied answer', LIMIT, async (t) => {
      const upstream = await startUpstream(t);
      const url = await gatewayWith(
        t,
        mode,
        upstream,
        answering('onRequest', async (ctx, next) => {
          await next();
          ctx.set('x-served-by', ctx.state.mesh.instance?.id ?? 'none');
        }),
      );
      const res = await send(`${url}/api/x`);
      assert.equal(res.status, 200);
      assert.equal(res.json().name, 'upstream');
      assert.equal(res.headers['x-served-by'], `127.0.0.1:${upstream.port}`);
    });
  });
}

test('listen: a plugin answers a 200 /ping on a path no route matches', LIMIT, async (t) => {
  const upstream = await startUpstream(t);
  const ping = answering('onRequest', (ctx, next) => {
    if (ctx.path !== '/ping') return next();
    ctx.body = 'pong';
  });
  const { url } = await startGateway(t, CONFIG(upstream), { setup: (gw) => gw.use(ping) });
  const res = await within(send(`${url}/ping`), 5000, 'the ping');
  assert.equal(res.status, 200);
  assert.equal(res.body, 'pong');
  const other = await send(`${url}/elsewhere`);
  assert.equal(other.status, 404);
  assert.equal(other.json().error, 'MESH_ERR_NO_ROUTE');
  assert.equal(upstream.seen.length, 0);
});

test('mounted: the host app\'s middleware sees a plugin\'s answer before Koa writes it', LIMIT, async (t) => {
  const upstream = await startUpstream(t);
  const gateway = createTestGateway(t, CONFIG(upstream));
  gateway.use(
    answering('resolve', (ctx) => {
      ctx.status = 451;
      ctx.body = { blocked: true };
    }),
  );
  const app = new Koa();
  app.use(async (ctx, next) => {
    await next();
    ctx.set('x-host-saw', String(ctx.status));
  });
  app.use(gateway.middleware());
  const { url } = await listenApp(t, app);
  const res = await send(`${url}/api/x`);
  assert.equal(res.status, 451);
  assert.deepEqual(res.json(), { blocked: true });
  assert.equal(res.headers['x-host-saw'], '451');
  assert.equal(upstream.seen.length, 0);
});

test('retries: an answer from a later stage is not retried as a failure, and the first attempt\'s held answer is dropped for a retry-stage answer', LIMIT, async (t) => {
  let calls = 0;
  const upstream = await startUpstream(t, (_req, res) => {
    calls++;
    res.writeHead(503).end('busy');
  });
  const { url } = await startGateway(
    t,
    { services: { api: { instances: [{ url: upstream.url }], retries: { attempts: 2 } } }, routes: [{ prefix: '/api', service: 'api' }] },
    {
      setup: (gw) =>
        gw.use(
          definePlugin({
            name: 'fallback',
            setup(gateway) {
              // After the attempts, a 503 becomes the plugin's own answer (a fallback).
              gateway.addMiddleware('resolve', async (ctx, next) => {
                await next();
                if (ctx.state.mesh.exchange?.statusCode === 503) {
                  ctx.status = 200;
                  ctx.body = 'fallback';
                }
              });
            },
          }),
        ),
    },
  );
  const res = await within(send(`${url}/api/x`), 5000, 'the answer');
  assert.equal(res.status, 200);
  assert.equal(res.body, 'fallback');
  // One instance: the retry has nowhere else to go, so one attempt reached it.
  assert.equal(calls, 1);
});

test('a thrown MeshError whose plugin headers Node will not send (CR/LF) still reaches the client, without them', LIMIT, async (t) => {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, CONFIG(upstream), {
    setup: (gw) =>
      gw.use(
        answering('onRequest', (ctx) => {
          ctx.state.mesh.responseHeaders.push('x-injected', 'a\r\nset-cookie: evil=1');
          throw new MeshError('MESH_ERR_TEAPOT', 418, 'no tea');
        }),
      ),
  });
  const res = await send(`${url}/api/x`);
  assert.equal(res.status, 418);
  assert.deepEqual(res.json(), { error: 'MESH_ERR_TEAPOT', message: 'no tea' });
  assert.equal(res.headers['x-injected'], undefined);
  assert.equal(res.headers['set-cookie'], undefined);
  assert.equal(upstream.seen.length, 0);
});
