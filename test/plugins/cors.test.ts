import assert from 'node:assert/strict';
import { test } from 'node:test';
import { echo, sendPath, startGateway, startUpstream } from '../helpers.js';

test('cors: a preflight is answered by the gateway (the upstream sees nothing), actual requests get the headers, a foreign origin gets none', { timeout: 20_000 }, async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [
      {
        prefix: '/api',
        service: 'api',
        cors: { origins: ['https://app.example.com', 'https://*.preview.example.com'], methods: ['GET', 'POST'], exposeHeaders: ['x-request-id'], credentials: true, maxAge: '10m' },
        auth: { apiKeys: { keys: ['cors-test-key-123'] } },
      },
      { prefix: '/plain', service: 'api' },
    ],
  });
  const preflight = (origin: string) =>
    sendPath(url, '/api/items', { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } });

  const allowed = await preflight('https://app.example.com');
  assert.equal(allowed.status, 204, 'answered before authentication: a preflight carries no credentials');
  assert.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com');
  assert.equal(allowed.headers['access-control-allow-methods'], 'GET,POST');
  assert.equal(allowed.headers['access-control-allow-headers'], 'content-type');
  assert.equal(allowed.headers['access-control-allow-credentials'], 'true');
  assert.equal(allowed.headers['access-control-max-age'], '600');
  const pattern = await preflight('https://pr-42.preview.example.com');
  assert.equal(pattern.headers['access-control-allow-origin'], 'https://pr-42.preview.example.com');
  const foreign = await preflight('https://evil.example.net');
  assert.equal(foreign.status, 204);
  assert.equal(foreign.headers['access-control-allow-origin'], undefined, 'a foreign origin gets no CORS headers');
  assert.equal(upstream.seen.length, 0, 'no preflight reached the upstream');

  const actual = await sendPath(url, '/api/items', { method: 'POST', headers: { origin: 'https://app.example.com', 'x-api-key': 'cors-test-key-123' }, body: '{}' });
  assert.equal(actual.status, 200);
  assert.equal(actual.headers['access-control-allow-origin'], 'https://app.example.com');
  assert.equal(actual.headers['access-control-expose-headers'], 'x-request-id');
  assert.match(String(actual.headers.vary), /origin/i);
  const stranger = await sendPath(url, '/api/items', { headers: { origin: 'https://evil.example.net', 'x-api-key': 'cors-test-key-123' } });
  assert.equal(stranger.status, 200);
  assert.equal(stranger.headers['access-control-allow-origin'], undefined);
  assert.equal(upstream.seen.length, 2);

  const untouched = await sendPath(url, '/plain/x', { headers: { origin: 'https://app.example.com' } });
  assert.equal(untouched.headers['access-control-allow-origin'], undefined, 'a route without cors is left alone');
});
