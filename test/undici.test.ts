import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as undici from 'undici';
import { Pool, headerNameToString, undiciSource } from '../lib/upstream/undici.js';
import { echo, scriptResult, startUpstream } from './helpers.js';

test("a gateway with the standard stack runs on undici's own modules, never its index, and its pools are whole undici Pools", { timeout: 20_000 }, async (t) => {
  const upstream = await startUpstream(t, echo('upstream'));
  // In a fresh process: this one loaded undici's index for the tests' own clients.
  const script = `
    import { createRequire } from 'node:module';
    import { get } from 'node:http';
    import { createGateway } from ${JSON.stringify(new URL('../lib/index.ts', import.meta.url).href)};
    import { undiciSource } from ${JSON.stringify(new URL('../lib/upstream/undici.ts', import.meta.url).href)};
    const gateway = createGateway({
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: 't' },
      logLevel: 'silent',
      routes: [{ prefix: '/', service: 'api' }],
      services: { api: { balancer: 'least-request', instances: [{ url: ${JSON.stringify(upstream.url)} }], circuitBreaker: {}, healthCheck: { path: '/health', interval: '100ms' }, retries: { attempts: 2 } } },
    });
    await gateway.listen();
    const proxied = await new Promise((resolve, reject) => get('http://127.0.0.1:' + gateway.server.address().port + '/proxied', (res) => { res.resume(); resolve(res.statusCode); }).on('error', reject));
    // What a plugin may do with a pool: undici's request API, which undici's index mixes in.
    const [instance] = gateway.registry.getService('api').instances.values();
    const direct = await gateway.poolFor(instance).request({ path: '/direct', method: 'GET' });
    await direct.body.dump();
    // A health check probe, made with the same API.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const undici = Object.keys(createRequire(import.meta.url).cache).filter((path) => path.includes('/node_modules/undici/')).map((path) => path.slice(path.lastIndexOf('/node_modules/undici/') + 21));
    await gateway.close();
    process.stdout.write(JSON.stringify({ proxied, direct: direct.statusCode, source: undiciSource, undici }));
  `;
  const result = await scriptResult<{ proxied: number; direct: number; source: string; undici: string[] }>(t, script);
  assert.equal(result.proxied, 200);
  assert.equal(result.direct, 200);
  const paths = upstream.seen.map((req) => req.url);
  assert.equal(paths.filter((path) => path === '/proxied').length, 1);
  assert.equal(paths.filter((path) => path === '/direct').length, 1);
  assert.ok(paths.includes('/health'), `no health check reached the upstream: ${paths.join(', ')}`);
  assert.equal(result.source, 'modules');
  assert.ok(result.undici.includes('lib/dispatcher/pool.js'), `undici's Pool module was not loaded: ${result.undici.join(', ')}`);
  assert.ok(!result.undici.includes('index.js'), "undici's index was loaded");
});

test("the parts are undici's own: its Pool class and its header name lookup", () => {
  assert.equal(undiciSource, 'modules');
  assert.equal(Pool, undici.Pool);
  for (const name of ['Content-Type', 'content-length', 'DATE', 'Set-Cookie', 'X-Request-Id', 'x-custom-header', 'Server-Timing', 'ETag']) {
    const buffer = Buffer.from(name, 'latin1');
    assert.equal(headerNameToString(buffer), undici.util.headerNameToString(buffer), name);
    assert.equal(headerNameToString(buffer), name.toLowerCase(), name);
  }
});
