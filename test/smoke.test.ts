import assert from 'node:assert/strict';
import { test } from 'node:test';
import { send, startGateway, startUpstream } from './helpers.js';

test('a request through the gateway reaches the upstream and comes back', async (t) => {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
  });
  const res = await send(`${url}/api/hello?x=1`);
  assert.equal(res.status, 200);
  assert.equal(res.json().url, '/hello?x=1');
  assert.equal(upstream.seen.length, 1);
});
