/**
 * Hardening, second round, the client's side: what an attacker sends that the gateway must refuse
 * or clean before it reaches an instance. Requests go over raw sockets where the attack is in the
 * bytes; every test checks what the client got and what the instance saw.
 */
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { SignJWT } from 'jose';
import { definePlugin, type GatewayConfigInput } from '../lib/index.js';
import { echo, rawExchange, send, startGateway, startUpstream, statusLines, type Upstream } from './helpers.js';

const LIMIT = { timeout: 20_000 };

/** An upstream that also counts TCP connections: a refused request must not even dial it. */
async function countingUpstream(t: TestContext): Promise<Upstream & { connections: () => number }> {
  const upstream = await startUpstream(t, echo('upstream'));
  let connections = 0;
  upstream.server.on('connection', () => connections++);
  return Object.assign(upstream, { connections: () => connections });
}

async function gateway(t: TestContext, upstream: Upstream, extra: Partial<GatewayConfigInput> = {}, route: Record<string, unknown> = {}) {
  const started = await startGateway(t, {
    services: { a: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'a', ...route }],
    ...extra,
  });
  return { ...started, port: Number(new URL(started.url).port) };
}

const jsonBody = (text: string): { error?: string } => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as { error?: string };

describe('Host', () => {
  for (const [what, hosts] of [
    ['two Host headers', ['a.example', 'b.example']],
    ['an unparseable IPv6 literal', ['[::1']],
    ['userinfo in the authority', ['good.example:80@evil.example']],
    ['two ports', ['a:80:81']],
    ['a port that is not a number', ['a:abc']],
    ['a port out of range', ['a:99999']],
    ['a tab inside', ['a\tb.example']],
    ['an empty value', ['']],
  ] as const) {
    test(`${what}: 400 MESH_ERR_BAD_HOST, the instance never dialled`, LIMIT, async (t) => {
      const upstream = await countingUpstream(t);
      const { port } = await gateway(t, upstream);
      const head = hosts.map((h) => `Host: ${h}\r\n`).join('');
      const { text } = await rawExchange(port, `GET /api/x HTTP/1.1\r\n${head}Connection: close\r\n\r\n`);
      assert.deepEqual(statusLines(text), [400], text);
      if (text.includes('\r\n\r\n{')) assert.equal(jsonBody(text).error, 'MESH_ERR_BAD_HOST');
      assert.equal(upstream.connections(), 0);
    });
  }

  test('valid authorities pass: a name, a name and a port, IPv4, bracketed IPv6', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gateway(t, upstream);
    for (const host of ['api.example', 'api.example:8080', '10.0.0.1:80', '[::1]:8080', 'x-y_z.example']) {
      const { text } = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      assert.deepEqual(statusLines(text), [200], `${host}: ${text}`);
    }
    assert.deepEqual(upstream.seen.map((s) => s.headers['x-forwarded-host']), ['api.example', 'api.example:8080', '10.0.0.1:80', '[::1]:8080', 'x-y_z.example']);
  });

  test('a dozen malformed requests open no circuit: the healthy instance is never counted against', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port, url, gateway: gw } = await gateway(t, upstream, {
      services: { a: { instances: [{ url: upstream.url }], circuitBreaker: { volumeThreshold: 3, errorThresholdPercentage: 50 } } },
    });
    for (let i = 0; i < 12; i++) {
      const { text } = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n`);
      assert.deepEqual(statusLines(text), [400]);
    }
    const instance = [...gw.registry.getService('a')!.instances.values()][0]!;
    assert.equal(instance.circuit, 'closed');
    assert.equal((await send(`${url}/api/ok`)).status, 200);
    assert.equal(upstream.seen.length, 1);
  });
});

describe('Transfer-Encoding', () => {
  test('HTTP/1.0 with chunked is faulty framing: refused with 400, the connection closed, and a request smuggled behind the body never runs', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gateway(t, upstream);
    const smuggled = 'GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
    const { text, closedByServer } = await rawExchange(
      port,
      `POST /api/first HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${smuggled}`,
    );
    assert.ok(closedByServer, 'the gateway closed the connection after the answer');
    assert.deepEqual(statusLines(text.replace(/HTTP\/1\.0/g, 'HTTP/1.1')), [400], text);
    assert.equal(upstream.connections(), 0, 'neither request reached the instance');
  });

  test('a coding other than chunked (gzip, chunked) is refused with 501 and never forwarded', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gateway(t, upstream);
    const { text } = await rawExchange(port, 'POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
    assert.deepEqual(statusLines(text), [501], text);
    assert.equal(jsonBody(text).error, 'MESH_ERR_NOT_IMPLEMENTED');
    assert.equal(upstream.connections(), 0);
  });
});

describe('header count', () => {
  test('more than listen.maxHeaders (100) lines is 431; at the limit, the gateway\'s own headers still reach the instance', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gateway(t, upstream);
    const padding = (n: number): string => Array.from({ length: n }, (_, i) => `X-Pad-${i}: ${i}\r\n`).join('');
    const refused = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\n${padding(1100)}Connection: close\r\n\r\n`);
    assert.deepEqual(statusLines(refused.text), [431], refused.text.slice(0, 200));
    assert.equal(upstream.connections(), 0);
    // Host + Connection + 98 = 100 lines: accepted, and every gateway header is there.
    const accepted = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\n${padding(98)}Connection: close\r\n\r\n`);
    assert.deepEqual(statusLines(accepted.text), [200]);
    const seen = upstream.seen[0]!.headers;
    for (const name of ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', 'traceparent']) assert.ok(seen[name] !== undefined, name);
    assert.equal(seen['x-pad-97'], '97');
  });
});

describe('path parameters', () => {
  async function protectedApi(t: TestContext, pathParameters?: 'reject' | 'allow') {
    const publicApi = await countingUpstream(t);
    const privateApi = await countingUpstream(t);
    const started = await startGateway(t, {
      ...(pathParameters ? { listen: { pathParameters } } : {}),
      services: { public: { instances: [{ url: publicApi.url }] }, private: { instances: [{ url: privateApi.url }] } },
      routes: [
        { prefix: '/api', service: 'public' },
        { prefix: '/api/private', service: 'private', stripPrefix: true, auth: { apiKeys: { keys: ['the-secret-key'] } } },
      ],
    });
    return { ...started, publicApi, privateApi };
  }

  test('refused by default: /api/private;x/data does not slip from the protected route to the public one', LIMIT, async (t) => {
    const { url, publicApi, privateApi } = await protectedApi(t);
    for (const path of ['/api/private;x/data', '/api/private;jsessionid=1', '/api;x/private/data']) {
      const res = await send(url + path);
      assert.equal(res.status, 400, path);
      assert.equal(res.json().error, 'MESH_ERR_BAD_PATH');
    }
    assert.equal(publicApi.seen.length + privateApi.seen.length, 0);
  });

  test('listen.pathParameters: allow routes on the path without them, so the protected route and its auth apply', LIMIT, async (t) => {
    const { url, publicApi, privateApi } = await protectedApi(t, 'allow');
    assert.equal((await send(`${url}/api/private;x/data`)).status, 401);
    const ok = await send(`${url}/api/private;x/data`, { headers: { 'x-api-key': 'the-secret-key' } });
    assert.equal(ok.status, 200);
    // Forwarded as sent, the route's prefix stripped with its parameters.
    assert.deepEqual(privateApi.seen.map((s) => s.url), ['/data']);
    assert.equal(publicApi.seen.length, 0);
  });
});

describe('forwarding headers from an untrusted peer', () => {
  const FORGED = { 'x-forwarded-for': '6.6.6.6', forwarded: 'for=6.6.6.6;proto=https', 'x-real-ip': '6.6.6.6' };

  test('trustProxy as CIDRs that do not include the peer: the client\'s X-Forwarded-For, Forwarded and X-Real-IP are dropped, as with false', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gateway(t, upstream, { listen: { trustProxy: ['10.0.0.0/8'] } });
    await send(`${url}/api/x`, { headers: FORGED });
    const seen = upstream.seen[0]!.headers;
    assert.equal(seen['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen.forwarded, undefined);
    assert.equal(seen['x-real-ip'], undefined);
  });

  test('a trusted peer\'s chain is kept and extended', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gateway(t, upstream, { listen: { trustProxy: ['127.0.0.0/8'] } });
    await send(`${url}/api/x`, { headers: FORGED });
    const seen = upstream.seen[0]!.headers;
    assert.equal(seen['x-forwarded-for'], '6.6.6.6, 127.0.0.1');
    assert.equal(seen.forwarded, 'for=6.6.6.6;proto=https');
    assert.equal(seen['x-real-ip'], '6.6.6.6');
  });

  test('underscore spellings of the headers the gateway owns never reach the instance (Rack, WSGI and CGI read them as dashes)', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const secret = 'a-secret-of-at-least-32-bytes-for-hs256!';
    const { port } = await gateway(t, upstream, {}, { auth: { jwt: { secret, algorithms: ['HS256'], forwardClaims: { sub: 'x-user-id' } } } });
    const token = await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1m').sign(new TextEncoder().encode(secret));
    const { text } = await rawExchange(
      port,
      [
        'GET /api/x HTTP/1.1',
        'Host: x',
        `Authorization: Bearer ${token}`,
        'X_User_Id: mallory',
        'x_forwarded_for: 6.6.6.6',
        'X_Real_IP: 6.6.6.6',
        'x_meshgate_route: /admin',
        'x_custom_thing: kept',
        'Connection: close',
        '',
        '',
      ].join('\r\n'),
    );
    assert.deepEqual(statusLines(text), [200], text);
    const raw = upstream.seen[0]!.rawHeaders;
    const names = raw.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const dropped of ['x_user_id', 'x_forwarded_for', 'x_real_ip', 'x_meshgate_route']) assert.ok(!names.includes(dropped), `${dropped} reached the instance`);
    assert.equal(upstream.seen[0]!.headers['x-user-id'], 'alice');
    assert.equal(upstream.seen[0]!.headers['x_custom_thing'], 'kept');
  });
});

describe('loops', () => {
  test('an instance that points back at the gateway: 508 at once, the request went round once', LIMIT, async (t) => {
    const seen: string[] = [];
    const { gateway: gw, url } = await startGateway(t, { services: { loop: {} }, routes: [{ prefix: '/loop', service: 'loop' }] }, {
      setup: (g) =>
        g.use(
          definePlugin({
            name: 'count',
            setup: (host) => void host.addMiddleware('onRequest', (ctx, next) => (seen.push(ctx.path), next())),
          }),
        ),
    });
    gw.registry.upsertInstance('loop', { url });
    const res = await send(`${url}/loop/x`);
    assert.equal(res.status, 508);
    assert.equal(res.json().error, 'MESH_ERR_LOOP');
    assert.equal(seen.length, 2, 'once from the client, once back from itself');
  });

  test('listen.via: a loop through two gateways of a fleet is 508 after one round, each gateway named in Via', LIMIT, async (t) => {
    const vias: string[] = [];
    const recorder = definePlugin({ name: 'via', setup: (host) => void host.addMiddleware('onRequest', (ctx, next) => (vias.push(String(ctx.get('via'))), next())) });
    const config = { listen: { via: true }, services: { next: {} }, routes: [{ prefix: '/loop', service: 'next' }] };
    const a = await startGateway(t, config, { setup: (g) => g.use(recorder) });
    const b = await startGateway(t, config);
    // A sends to B, B sends back to A: misregistered instances, as when a service registers the fleet's address.
    a.gateway.registry.upsertInstance('next', { url: b.url });
    b.gateway.registry.upsertInstance('next', { url: a.url });
    const res = await send(`${a.url}/loop/x`);
    assert.equal(res.status, 508);
    assert.deepEqual(vias, ['', `1.1 ${a.gateway.name}, 1.1 ${b.gateway.name}`]);
  });

  test('a registration through the admin API that points at the gateway\'s own listener is refused', LIMIT, async (t) => {
    const { gateway: gw, url, adminUrl } = await startGateway(t, { admin: {}, services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] });
    for (const target of [url, url.replace('127.0.0.1', 'localhost')]) {
      const res = await send(`${adminUrl}/services/api/instances`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: target }) });
      assert.equal(res.status, 400, target);
      assert.match(res.json().message, /own listener/);
    }
    assert.equal(gw.registry.getService('api')!.instances.size, 0);
  });
});
