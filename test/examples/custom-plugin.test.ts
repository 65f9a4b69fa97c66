import assert from 'node:assert/strict';
import { test } from 'node:test';
import { servedBy } from '../../examples/custom-plugin.js';
import { send, startGateway, startUpstream } from '../helpers.js';

test('the custom plugin example names the instance that answered and counts per service', async (t) => {
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const { gateway, url } = await startGateway(
    t,
    {
      services: { svc: { instances: [{ url: a.url, id: 'a' }, { url: b.url, id: 'b' }] } },
      routes: [{ prefix: '/svc', service: 'svc' }],
    },
    { setup: (gw) => gw.use(servedBy({ header: 'x-backend' })) },
  );
  const served = [];
  for (let i = 0; i < 4; i++) {
    const res = await send(`${url}/svc/x`);
    assert.equal(res.status, 200);
    served.push(res.headers['x-backend']);
  }
  assert.deepEqual(served.sort(), ['a', 'a', 'b', 'b']);
  assert.equal(a.seen.length, 2);
  assert.equal(gateway.get<Map<string, number>>('requestCounts').get('svc'), 4);
});
