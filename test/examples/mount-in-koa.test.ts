import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { buildApp } from '../../examples/mount-in-koa.js';
import { send, startUpstream } from '../helpers.js';

test('the mount-in-koa example proxies /api, keeps the host routes, and forwards parsed JSON bodies', async (t) => {
  const upstream = await startUpstream(t);
  const { app, gateway } = buildApp(upstream.url);
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    server.close();
    await gateway.close();
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // Mounting started it: ready before the first request.
  await gateway.ready();
  assert.equal(gateway.isReady, true);

  const proxied = await send(`${base}/api/users/1`);
  assert.equal(proxied.status, 200);
  assert.equal(proxied.json().url, '/users/1');
  assert.equal(proxied.headers['x-host-app'], 'yes');

  const own = await send(`${base}/hello`);
  assert.deepEqual(own.json(), { from: 'the host app', path: '/hello' });
  assert.equal(upstream.seen.length, 1, 'the host route never reached the upstream');

  const body = JSON.stringify({ name: 'ada', tags: ['x'] });
  const posted = await send(`${base}/api/users`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  assert.equal(posted.status, 200);
  assert.deepEqual(JSON.parse(posted.json().body), { name: 'ada', tags: ['x'] });
  assert.equal(upstream.seen.at(-1)!.headers['content-length'], String(Buffer.byteLength(posted.json().body)));
});
