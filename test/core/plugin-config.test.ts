/**
 * The plugin contract: plugins declare their config sections (any Standard Schema), the config
 * is checked against them, `prepare` turns options into what requests read, and a plugin reads
 * the request's own snapshot through its scope.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import Koa from 'koa';
import { z } from 'zod';
import { validateConfig as validateCore } from '../../lib/config/load.js';
import { CORE_KEYS } from '../../lib/config/schema.js';
import {
  ConfigError,
  MeshError,
  PluginError,
  createGateway,
  definePlugin,
  validateConfig,
  type GatewayConfigInput,
  type StandardSchemaV1,
} from '../../lib/index.js';
import { listenApp, send, startGateway, startUpstream, waitFor } from '../helpers.js';

const LIMIT = { timeout: 20_000 };

/** A plugin with a section at every level, recording what its scope hands out per request. */
function recorder(seen: unknown[], prepared: string[] = []) {
  return definePlugin({
    name: 'recorder',
    config: {
      global: { key: 'recorder', schema: z.strictObject({ tag: z.string() }) },
      service: { key: 'limits', schema: z.strictObject({ max: z.number().int().positive() }) },
      route: {
        key: 'label',
        schema: z.strictObject({ text: z.string().min(1) }),
        prepare: (options, context) => {
          prepared.push(context.path);
          return { upper: options.text.toUpperCase(), route: context.route?.prefix };
        },
      },
    },
    setup(gateway, scope) {
      gateway.addMiddleware('onRequest', (ctx, next) => {
        // Typed: upper is a string, max a number, tag a string.
        seen.push({ label: scope.route(ctx)?.upper, route: scope.route(ctx)?.route, max: scope.service(ctx)?.max, tag: scope.global(ctx)?.tag });
        return next();
      });
      gateway.decorate('recorderRoutes', scope.routes().map(({ route, options }) => `${route.prefix}=${options.upper}`));
      gateway.decorate('recorderServices', scope.services().map(({ name, options }) => `${name}=${options.max}`));
    },
  });
}

describe('plugin sections', () => {
  test('a plugin reads its route, service and global sections per request, prepared once', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const seen: unknown[] = [];
    const prepared: string[] = [];
    const { gateway, url } = await startGateway(
      t,
      {
        recorder: { tag: 'v1' },
        services: { a: { instances: [{ url: upstream.url }], limits: { max: 3 } }, b: { instances: [{ url: upstream.url }] } },
        routes: [
          { prefix: '/a', service: 'a', label: { text: 'first' } },
          { prefix: '/b', service: 'b' },
        ],
      },
      { setup: (gw) => gw.use(recorder(seen, prepared)) },
    );
    for (const path of ['/a/1', '/b/1', '/a/2']) assert.equal((await send(url + path)).status, 200);
    assert.deepEqual(seen, [
      { label: 'FIRST', route: '/a', max: 3, tag: 'v1' },
      { label: undefined, route: undefined, max: undefined, tag: 'v1' },
      { label: 'FIRST', route: '/a', max: 3, tag: 'v1' },
    ]);
    assert.deepEqual(prepared, ['routes[0].label']);
    assert.deepEqual(gateway.get('recorderRoutes'), ['/a=FIRST']);
    assert.deepEqual(gateway.get('recorderServices'), ['a=3']);
    assert.match(gateway.snapshot.version, /^[0-9a-f]{12}$/);
  });

  test('sections are checked with the core\'s fields, every problem at its path', () => {
    const config = {
      listen: { port: 'eighty' },
      recorder: { tag: 1 },
      services: { a: { limits: { max: 0, min: 1 } } },
      routes: [{ prefix: '/a', service: 'a', label: { text: '' }, lable: {} }],
    };
    let error: unknown;
    try {
      validateConfig(config, { plugins: [recorder([])], env: {} });
    } catch (err) {
      error = err;
    }
    assert.ok(error instanceof ConfigError);
    assert.deepEqual(error.issues.map((i) => i.path).sort(), [
      'listen.port',
      'recorder.tag',
      'routes[0].label.text',
      'routes[0].lable',
      'services.a.limits.max',
      'services.a.limits.min',
    ]);
    assert.equal(error.issues.find((i) => i.path === 'routes[0].lable')?.message, 'unknown field');
    assert.equal(error.issues.find((i) => i.path === 'services.a.limits.min')?.message, 'unknown field');
  });

  test('the built-in sections are declared by their plugins, not by the core schema', () => {
    for (const key of ['circuitBreaker', 'healthCheck', 'retries', 'dns']) assert.equal(CORE_KEYS.service.has(key), false, key);
    for (const key of ['auth', 'rateLimit']) assert.equal(CORE_KEYS.route.has(key), false, key);
    for (const key of ['accessLog', 'metrics', 'tracing']) assert.equal(CORE_KEYS.global.has(key), false, key);
    // Without the plugins' declarations, their sections are unknown to the core...
    const raw = { services: { a: { circuitBreaker: {} } }, routes: [{ prefix: '/a', service: 'a', rateLimit: { rps: 1 } }], discovery: { redis: { url: 'redis://x' } } };
    assert.throws(
      () => validateCore(raw, { env: {} }),
      (err: unknown) =>
        err instanceof ConfigError &&
        ['services.a.circuitBreaker', 'routes[0].rateLimit', 'discovery.redis'].every((path) => err.issues.some((i) => i.path === path && i.message === 'unknown field')),
    );
    // ...and with them (what validateConfig from meshgate adds), they parse with their defaults.
    const config = validateConfig(raw, { env: {} });
    assert.equal(config.services.a!.circuitBreaker?.resetTimeout, 10_000);
    assert.equal(config.routes[0]!.rateLimit?.key, 'ip');
    assert.equal(config.discovery?.redis?.prefix, 'meshgate:');
  });

  test('a section in any Standard Schema: a hand-written one validates, an asynchronous one is refused with a clear message', () => {
    const even: StandardSchemaV1<unknown, number> = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: (value) => (typeof value === 'number' && value % 2 === 0 ? { value } : { issues: [{ message: 'expected an even number', path: [{ key: 'n' }] }] }),
      },
    };
    const owner = { name: 'even', config: { global: { key: 'even', schema: even } } };
    assert.equal(validateConfig({ even: 4 }, { plugins: [owner], env: {} }).even, 4);
    assert.throws(
      () => validateConfig({ even: 3 }, { plugins: [owner], env: {} }),
      (err: unknown) => err instanceof ConfigError && err.issues[0]?.path === 'even.n' && err.issues[0].message === 'expected an even number',
    );
    const later: StandardSchemaV1<unknown, number> = { '~standard': { version: 1, vendor: 'test', validate: async (value) => ({ value: value as number }) } };
    assert.throws(
      () => validateConfig({ later: 1 }, { plugins: [{ name: 'later', config: { global: { key: 'later', schema: later } } }], env: {} }),
      (err: unknown) => err instanceof ConfigError && /asynchronous schema/.test(err.issues[0]!.message),
    );
  });

  test('a key two plugins declare, or one the core owns, is refused naming the plugins', () => {
    const schema = z.object({});
    assert.throws(
      () => validateConfig({}, { plugins: [{ name: 'one', config: { route: { key: 'auth', schema } } }] }),
      (err: unknown) => err instanceof PluginError && /plugin "one" declares the route section "auth", which plugin "auth" declares too/.test(err.message),
    );
    assert.throws(
      () => validateConfig({}, { plugins: [{ name: 'two', config: { service: { key: 'timeout', schema } } }] }),
      (err: unknown) => err instanceof PluginError && /which is the core's/.test(err.message),
    );
  });

  test('prepare refuses a config with the section\'s path; a plain error is reported there too', LIMIT, async (t) => {
    const strict = definePlugin({
      name: 'strict',
      config: {
        route: {
          key: 'strict',
          schema: z.strictObject({ pattern: z.string() }),
          prepare: (options) => new RegExp(options.pattern),
        },
      },
      setup() {},
    });
    const gateway = createGateway({ logLevel: 'silent', services: { a: {} }, routes: [{ prefix: '/ok', service: 'a', strict: { pattern: 'x+' } }, { prefix: '/bad', service: 'a', strict: { pattern: '(' } }] });
    gateway.use(strict);
    t.after(() => gateway.close());
    await assert.rejects(gateway.ready(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.issues.length, 1);
      assert.equal(err.issues[0]!.path, 'routes[1].strict');
      assert.match(err.issues[0]!.message, /Invalid regular expression/);
      return true;
    });
  });
});

describe('plugin host', () => {
  test('use() registers plugins; stage middleware has its own name, and use(stage, fn) says so', () => {
    const gateway = createGateway({ logLevel: 'silent' });
    assert.throws(
      () => (gateway.use as unknown as (stage: string, fn: unknown) => unknown).call(gateway, 'guard', () => undefined),
      (err: unknown) => err instanceof PluginError && /addMiddleware\("guard", fn\)/.test(err.message),
    );
  });

  test('per-request variables: one plugin sets, another reads, typed, and the core\'s state has no field for them', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { url } = await startGateway(
      t,
      { services: { a: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/a', service: 'a' }] },
      {
        setup: (gw) =>
          gw
            .use(
              definePlugin({
                name: 'tenant',
                setup: (g) =>
                  void g.addMiddleware('onRequest', (ctx, next) => {
                    ctx.state.mesh.set('principal', { kind: 'test', id: 'tester', subject: String(ctx.get('x-tenant')), claims: {} });
                    return next();
                  }),
              }),
            )
            .use(
              definePlugin({
                name: 'reader',
                dependencies: ['tenant'],
                setup: (g) =>
                  void g.addMiddleware('resolve', (ctx, next) => {
                    ctx.state.mesh.setUpstreamHeader('x-seen-principal', ctx.state.mesh.get('principal')?.subject ?? 'none');
                    assert.equal('principal' in ctx.state.mesh, false);
                    return next();
                  }),
              }),
            ),
      },
    );
    await send(`${url}/a/x`, { headers: { 'x-tenant': 'acme' } });
    assert.equal(upstream.seen[0]!.headers['x-seen-principal'], 'acme');
  });

  test('mounted in Koa, the gateway starts when middleware() is called: health checks run and /readyz is ready before any request', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const gateway = createGateway({
      logLevel: 'silent',
      admin: { host: '127.0.0.1', port: 0 },
      services: { a: { instances: [{ url: upstream.url }], healthCheck: { path: '/health', interval: '100ms' } } },
      routes: [{ prefix: '/a', service: 'a' }],
    });
    t.after(() => gateway.close());
    const app = new Koa();
    app.use(gateway.middleware());
    await listenApp(t, app);
    await waitFor(() => upstream.seen.some((s) => s.url === '/health'), 5000, 'a health check');
    const admin = await gateway.admin.listen();
    const ready = await send(`${admin.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(upstream.seen.filter((s) => s.url !== '/health').length, 0);
  });

  test('a plugin module: a named export is a factory, several functions are an error that lists them', LIMIT, async (t: TestContext) => {
    const dir = await mkdtemp(join(tmpdir(), 'meshgate-module-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'named.mjs'), `export function servedBy(opts) { return { name: 'served-by', setup(g) { g.addMiddleware('onRequest', (ctx, next) => { ctx.state.mesh.responseHeaders.push('x-by', opts.by); return next(); }); } }; }\n`);
    await writeFile(join(dir, 'two.mjs'), `export function a() {}\nexport function b() {}\n`);
    const upstream = await startUpstream(t);
    const { url } = await startGateway(
      t,
      { services: { s: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/s', service: 's' }], plugins: [{ module: './named.mjs', options: { by: 'meshgate' } }] },
      { baseDir: dir },
    );
    assert.equal((await send(`${url}/s`)).headers['x-by'], 'meshgate');
    const two = createGateway({ logLevel: 'silent', plugins: [{ module: './two.mjs' }, { module: './missing.mjs' }] }, { baseDir: dir });
    t.after(() => two.close());
    await assert.rejects(two.ready(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.issues.map((i) => i.path), ['plugins[0].module', 'plugins[1].module']);
      assert.match(err.issues[0]!.message, /it exports a, b/);
      assert.match(err.issues[1]!.message, /cannot load/);
      return true;
    });
  });

  test('error codes come from one catalogue: status, access-log flag and metrics outcome', async () => {
    const { ERROR_CODES, errorCodeInfo } = await import('../../lib/index.js');
    assert.equal(ERROR_CODES.MESH_ERR_UPSTREAM_CONNECT.flag, 'UF');
    assert.equal(errorCodeInfo('MESH_ERR_UPSTREAM_TIMEOUT')?.outcome, 'timeout');
    assert.equal(errorCodeInfo('MESH_ERR_MADE_UP'), undefined);
    assert.equal(new MeshError('MESH_ERR_NO_ROUTE', 404, 'x').code, 'MESH_ERR_NO_ROUTE');
  });
});
