import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { clientAddress, compileTrust, peerTrusted } from '../../lib/http/net.js';
import { send, startGateway, startUpstream } from '../helpers.js';

describe('clientAddress with trustProxy as CIDRs', () => {
  const trust = compileTrust(['10.0.0.0/8', '127.0.0.1']);

  test('a peer outside the list is the client, whatever X-Forwarded-For says', () => {
    assert.equal(clientAddress('6.6.6.6', '1.2.3.4', trust), '6.6.6.6');
    assert.equal(peerTrusted(trust, '6.6.6.6'), false);
  });

  test('behind trusted proxies, the right-most address that is not one of them', () => {
    assert.equal(clientAddress('127.0.0.1', '1.2.3.4, 10.0.0.7', trust), '1.2.3.4');
    assert.equal(clientAddress('10.1.1.1', '5.5.5.5, 1.2.3.4, 10.0.0.7', trust), '1.2.3.4');
    assert.equal(peerTrusted(trust, '::ffff:127.0.0.1'), true);
  });
});

test('a rate limit keyed by IP: spoofed X-Forwarded-For from an untrusted peer all draw from the peer\'s one bucket', { timeout: 15_000 }, async (t) => {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, {
    // The peer (127.0.0.1) is not in the list: its X-Forwarded-For is not believed.
    listen: { trustProxy: ['10.0.0.0/8'] },
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api', rateLimit: { rps: 0.1, burst: 3 } }],
  });
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) statuses.push((await send(`${url}/api/x`, { headers: { 'x-forwarded-for': `9.9.9.${i}` } })).status);
  assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429]);
});
