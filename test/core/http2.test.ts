/**
 * HTTP/2 on the gateway's listener: h2c by prior knowledge and h2 over TLS by ALPN, beside
 * HTTP/1.1 on the same port, with node:http2 and curl as clients and real HTTP/1.1 instances.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect, constants, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { echo, selfSigned, send, startGateway, startUpstream, waitFor } from '../helpers.js';

const run = promisify(execFile);
const LIMIT = { timeout: 30_000 };

/** One request on a session: status, headers, body. */
function h2request(session: ClientHttp2Session, headers: Record<string, string>, body?: string): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    let data = '';
    let head: IncomingHttpHeaders = {};
    stream.setEncoding('utf8');
    stream.on('response', (h) => (head = h));
    stream.on('data', (chunk: string) => (data += chunk));
    stream.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: data }));
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

function h2session(t: TestContext, url: string, options: Parameters<typeof connect>[1] = {}): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = connect(url, options);
    t.after(() => session.destroy());
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

test('h2c by prior knowledge: GET and POST reach the HTTP/1.1 instance with the Host from :authority and no pseudo-headers; HTTP/1.1 still works on the port', LIMIT, async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { http2: true },
  });
  const session = await h2session(t, url);
  const get = await h2request(session, { ':path': '/api/items?page=2', 'x-client': 'h2' });
  assert.equal(get.status, 200);
  const seen = JSON.parse(get.body);
  assert.equal(seen.url, '/api/items?page=2');
  assert.equal(seen.headers.host, new URL(url).host);
  assert.equal(seen.headers['x-client'], 'h2');
  assert.equal(seen.headers['x-forwarded-proto'], 'http');
  assert.ok(!Object.keys(seen.headers).some((name) => name.startsWith(':')), 'no pseudo-header reached the instance');
  const post = await h2request(session, { ':path': '/api/items', ':method': 'POST', 'content-type': 'text/plain' }, 'a body over h2');
  assert.equal(JSON.parse(post.body).body, 'a body over h2');
  // The gateway's own answers keep their shape over h2.
  const missing = await h2request(session, { ':path': '/nowhere' });
  assert.equal(missing.status, 404);
  assert.equal(JSON.parse(missing.body).error, 'MESH_ERR_NO_ROUTE');
  // Many streams at once on one connection.
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => h2request(session, { ':path': `/api/n/${i}` })));
  assert.deepEqual(many.map((r) => JSON.parse(r.body).url), Array.from({ length: 50 }, (_, i) => `/api/n/${i}`));
  assert.equal((await send(`${url}/api/h1`)).status, 200);
  // curl, the way a user would try it.
  const { stdout } = await run('curl', ['-s', '-i', '--http2-prior-knowledge', `${url}/api/curl`]);
  assert.match(stdout, /^HTTP\/2 200/);
});

test('h2 over TLS by ALPN, HTTP/1.1 for clients that do not offer h2; off with listen.http2: false', LIMIT, async (t) => {
  const upstream = await startUpstream(t, echo('api'));
  const tls = await selfSigned(t);
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { tls: { cert: tls.cert, key: tls.key } },
  });
  const session = await h2session(t, url, { ca: tls.ca });
  assert.equal((session.socket as import('node:tls').TLSSocket).alpnProtocol, 'h2');
  const res = await h2request(session, { ':path': '/api/secure' });
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).headers['x-forwarded-proto'], 'https');
  const h2curl = await run('curl', ['-s', '-i', '--cacert', tls.cert, `${url}/api/curl`]);
  assert.match(h2curl.stdout, /^HTTP\/2 200/);
  const h1curl = await run('curl', ['-s', '-i', '--http1.1', '--cacert', tls.cert, `${url}/api/curl`]);
  assert.match(h1curl.stdout, /^HTTP\/1\.1 200/);

  const off = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { tls: { cert: tls.cert, key: tls.key }, http2: false },
  });
  const offCurl = await run('curl', ['-s', '-i', '--cacert', tls.cert, `${off.url}/api/curl`]);
  assert.match(offCurl.stdout, /^HTTP\/1\.1 200/);
});

test('hop-by-hop response headers are dropped before they could break HTTP/2; repeated headers stay', LIMIT, async (t) => {
  const upstream = await startUpstream(t, (_req, res) => {
    res.writeHead(200, ['Connection', 'x-private, keep-alive', 'Keep-Alive', 'timeout=5', 'X-Private', 'no', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Content-Type', 'text/plain']);
    res.end('ok');
  });
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { http2: true },
  });
  const session = await h2session(t, url);
  const res = await h2request(session, { ':path': '/api/x' });
  assert.equal(res.status, 200);
  assert.equal(res.body, 'ok');
  assert.equal(res.headers['x-private'], undefined);
  assert.equal(res.headers['keep-alive'], undefined);
  assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
});

test('a rapid-reset flood (CVE-2023-44487) closes that connection with ENHANCE_YOUR_CALM, never reaches the instance, and the gateway serves the next client', LIMIT, async (t) => {
  const upstream = await startUpstream(t, (_req, res) => setTimeout(() => res.end('slow'), 50));
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { http2: { maxConcurrentStreams: 100, maxResetsPerSecond: 50 } },
  });
  const attacker = await h2session(t, url);
  assert.equal(attacker.remoteSettings.maxConcurrentStreams, 100);
  const goaway = new Promise<number>((resolve) => attacker.once('goaway', (code) => resolve(code)));
  attacker.on('error', () => {});
  let sent = 0;
  // HEADERS then RST_STREAM, again and again, as fast as the client can write them.
  for (let i = 0; i < 2000 && !attacker.destroyed && !attacker.closed; i++) {
    try {
      const stream = attacker.request({ ':path': `/api/flood/${i}` });
      stream.on('error', () => {});
      stream.close(constants.NGHTTP2_CANCEL);
      sent++;
    } catch {
      break;
    }
    if (i % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(await goaway, constants.NGHTTP2_ENHANCE_YOUR_CALM);
  assert.ok(sent > 100, `${sent} streams sent`);
  // Each stream was reset in the same read as its HEADERS: none was proxied.
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok(upstream.seen.length <= 5, `${upstream.seen.length} of ${sent} reset streams reached the instance`);
  const next = await h2session(t, url);
  assert.equal((await h2request(next, { ':path': '/api/after' })).body, 'slow');
});

test('close() sends HTTP/2 clients a GOAWAY and lets their streams under way finish', LIMIT, async (t) => {
  const upstream = await startUpstream(t, (_req, res) => setTimeout(() => res.end('finished'), 300));
  const { url, gateway } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api' }],
    listen: { http2: true },
    drainTimeout: 5000,
  });
  const session = await h2session(t, url);
  const goaway = new Promise<void>((resolve) => session.once('goaway', () => resolve()));
  const pending = h2request(session, { ':path': '/api/slow' });
  await waitFor(() => upstream.seen.length === 1, 5000, 'the request reached the instance');
  const closing = gateway.close();
  await goaway;
  assert.equal((await pending).body, 'finished');
  await closing;
});

/** An HTTP/2 instance (h2c, or h2 over TLS with `tls`): echoes what it saw as JSON, with a trailer. */
async function startH2Instance(t: TestContext, name: string, tls?: { cert: string; key: string }): Promise<{ url: string; close: () => void; seen: number }> {
  const { createServer, createSecureServer } = await import('node:http2');
  const handler = (req: import('node:http2').Http2ServerRequest, res: import('node:http2').Http2ServerResponse): void => {
    state.seen++;
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      if (req.url.includes('reset')) return res.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      if (req.url.includes('hang')) return;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.addTrailers({ 'x-checksum': `sum-${body.length}` });
      res.end(JSON.stringify({ name, version: req.httpVersion, url: req.url, headers: req.headers, body, trailers: req.trailers }));
    });
  };
  const server = tls ? createSecureServer({ cert: await readFile(tls.cert), key: await readFile(tls.key) }, handler) : createServer(handler);
  const sessions = new Set<import('node:http2').ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const state = {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`,
    seen: 0,
    close: (): void => {
      for (const s of sessions) s.destroy();
      server.close();
    },
  };
  t.after(() => state.close());
  return state;
}

test('protocol: h2c and h2 to the instances: the request as HTTP/2, bodies and trailers both ways, to HTTP/2 and HTTP/1.1 clients alike', LIMIT, async (t) => {
  const tls = await selfSigned(t);
  const [plain, secure] = [await startH2Instance(t, 'plain'), await startH2Instance(t, 'secure', tls)];
  const { url } = await startGateway(t, {
    services: {
      plain: { protocol: 'h2c', instances: [{ url: plain.url }] },
      secure: { protocol: 'h2', instances: [{ url: secure.url }], tls: { ca: tls.cert } },
    },
    routes: [
      { prefix: '/plain', service: 'plain' },
      { prefix: '/secure', service: 'secure' },
    ],
    listen: { http2: true },
  });
  const session = await h2session(t, url);
  for (const prefix of ['/plain', '/secure']) {
    const trailers = new Promise<IncomingHttpHeaders>((resolve) => {
      const stream = session.request({ ':path': `${prefix}/items?q=1`, ':method': 'POST' });
      stream.on('trailers', resolve);
      stream.resume();
      stream.end('twelve bytes');
    });
    assert.equal((await trailers)['x-checksum'], 'sum-12', `${prefix}: the instance's trailer reached the h2 client`);
    const res = await h2request(session, { ':path': `${prefix}/items?q=1`, ':method': 'POST' }, 'twelve bytes');
    const seen = JSON.parse(res.body);
    assert.equal(seen.version, '2.0');
    assert.equal(seen.url, `${prefix}/items?q=1`);
    assert.equal(seen.body, 'twelve bytes');
    assert.equal(seen.headers[':authority'], new URL(url).host);
    assert.equal(seen.headers.te, 'trailers');
    assert.deepEqual(seen.trailers, {}, 'no trailers from the client, none made up');
    // An HTTP/1.1 client gets the same answer from the HTTP/2 instance.
    const h1 = await send(`${url}${prefix}/h1`, { method: 'POST', body: 'from h1' });
    assert.equal(h1.json().body, 'from h1');
    assert.equal(h1.json().version, '2.0');

    // The client's trailers reach the instance after the body, from an HTTP/2 client and from a
    // chunked HTTP/1.1 one; fields trailers may not carry are left out.
    const fromH2 = await new Promise<string>((resolve, reject) => {
      const stream = session.request({ ':path': `${prefix}/trailers`, ':method': 'POST' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-client-sum': 'h2-5', 'content-type': 'text/evil' }));
      let data = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => (data += chunk));
      stream.on('end', () => resolve(data));
      stream.on('error', reject);
      stream.end('hello');
    });
    assert.equal(JSON.parse(fromH2).body, 'hello');
    assert.deepEqual(JSON.parse(fromH2).trailers, { 'x-client-sum': 'h2-5' });
    const fromH1 = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(`${url}${prefix}/trailers`, { method: 'POST', headers: { 'transfer-encoding': 'chunked', trailer: 'x-client-sum' } }, (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (data += chunk));
        res.on('end', () => resolve(data));
      });
      req.on('error', reject);
      req.write('chunked ');
      req.addTrailers({ 'x-client-sum': 'h1-8', authorization: 'Bearer not-in-trailers' });
      req.end('body');
    });
    assert.equal(JSON.parse(fromH1).body, 'chunked body');
    assert.deepEqual(JSON.parse(fromH1).trailers, { 'x-client-sum': 'h1-8' });
  }
});

test("a client's trailers keep to its headers' rules: no field the gateway sets or a route removes, and no more than listen.maxHeaders (431, not the instance's fault)", LIMIT, async (t) => {
  const instance = await startH2Instance(t, 'plain');
  const { url, gateway } = await startGateway(t, {
    services: { plain: { protocol: 'h2c', instances: [{ url: instance.url }], outlierDetection: { consecutive5xx: 1, maxEjectionPercent: 100 } } },
    routes: [{ prefix: '/plain', service: 'plain', requestHeaders: { remove: ['x-internal-user'], set: { 'x-tenant': 'acme' } } }],
    listen: { http2: true, maxHeaders: 20 },
  });
  const session = await h2session(t, url);
  const post = (trailers: Record<string, string>): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const stream = session.request({ ':path': '/plain/upload', ':method': 'POST' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers(trailers));
      let status = 0;
      let body = '';
      stream.on('response', (h) => (status = Number(h[':status'])));
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => (body += chunk));
      stream.on('end', () => resolve({ status, body }));
      stream.on('error', reject);
      stream.end('body');
    });
  const forged = await post({
    'x-client-sum': 'ok',
    'x-forwarded-client-cert': 'By=spiffe://evil;URI=spiffe://admin',
    'x-forwarded-for': '10.0.0.1',
    forwarded: 'for=10.0.0.1',
    'x-meshgate-internal': '1',
    'x-internal-user': 'root',
    'x-tenant': 'other',
    x_forwarded_for: '10.0.0.2',
  });
  assert.equal(forged.status, 200);
  assert.deepEqual(JSON.parse(forged.body).trailers, { 'x-client-sum': 'ok' });
  const many = Object.fromEntries(Array.from({ length: 25 }, (_, i) => [`x-t${i}`, String(i)]));
  const refused = await post(many);
  assert.equal(refused.status, 431);
  assert.equal(JSON.parse(refused.body).error, 'MESH_ERR_HEADERS_TOO_MANY');
  // The client's fault: the instance is not ejected, and serves the next request.
  assert.equal((await post({ 'x-client-sum': 'again' })).status, 200);
  assert.equal(gateway.registry.getService('plain')!.instances.values().next().value!.ejectedUntil, 0);
});

test('protocol: h2c failures: a reset stream is 502, a hang is 504, a dead instance is retried on the next one', LIMIT, async (t) => {
  const [a, b] = [await startH2Instance(t, 'a'), await startH2Instance(t, 'b')];
  const { url } = await startGateway(t, {
    services: { api: { protocol: 'h2c', instances: [{ url: a.url }, { url: b.url }], timeout: 500, retries: { attempts: 2 } } },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  const reset = await send(`${url}/api/reset`, { method: 'POST', body: 'x' });
  assert.equal(reset.status, 502);
  const hang = await send(`${url}/api/hang`, { method: 'POST', body: 'x' });
  assert.equal(hang.status, 504);
  a.close();
  for (let i = 0; i < 4; i++) {
    const res = await send(`${url}/api/after`);
    assert.equal(res.status, 200);
    assert.equal(res.json().name, 'b');
  }
});

test('an instance that breaks HTTP/2 rules cannot break the gateway: hop-by-hop trailers, repeated single-value headers, and a headers-only 204 is logged as 204', LIMIT, async (t) => {
  const upstream = await startUpstream(t, (req, res) => {
    if (req.url === '/api/empty') {
      res.writeHead(204);
      return res.end();
    }
    res.writeHead(200, ['Content-Type', 'text/plain', 'Content-Type', 'text/html', 'ETag', '"a"', 'ETag', '"b"', 'Trailer', 'x-sum, keep-alive']);
    res.addTrailers([['x-sum', '42'], ['keep-alive', 'timeout=5'], ['te', 'trailers']]);
    res.end('body');
  });
  const ended: { path: string; status: number }[] = [];
  const { url, gateway } = await startGateway(
    t,
    { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }], listen: { http2: true } },
    { setup: (gw) => gw.on('request:end', (ctx, status) => ended.push({ path: ctx.path, status })) },
  );
  const session = await h2session(t, url);
  const trailers = new Promise<IncomingHttpHeaders>((resolve) => {
    const stream = session.request({ ':path': '/api/x' });
    stream.on('trailers', resolve);
    stream.resume();
  });
  const res = await h2request(session, { ':path': '/api/x' });
  assert.equal(res.status, 200);
  assert.equal(res.body, 'body');
  assert.equal(res.headers['content-type'], 'text/plain', 'the first of a repeated single-value header');
  const got = await trailers;
  assert.equal(got['x-sum'], '42');
  assert.equal(got['keep-alive'], undefined);
  const empty = await h2request(session, { ':path': '/api/empty' });
  assert.equal(empty.status, 204);
  await waitFor(() => ended.some((e) => e.path === '/api/empty'), 5000, 'the 204 ended');
  assert.equal(ended.find((e) => e.path === '/api/empty')!.status, 204);
  for (const inst of gateway.registry.getService('api')!.instances.values()) assert.equal(inst.inflight, 0);
});

test(':authority wins over a Host header for routing, as for the instance; a repeated User-Agent to an HTTP/2 instance keeps its first value', LIMIT, async (t) => {
  const [pub, internal] = [await startH2Instance(t, 'public'), await startH2Instance(t, 'internal')];
  const { url } = await startGateway(t, {
    services: { pub: { protocol: 'h2c', instances: [{ url: pub.url }] }, internal: { protocol: 'h2c', instances: [{ url: internal.url }] } },
    routes: [
      { prefix: '/', hosts: ['public.example'], service: 'pub' },
      { prefix: '/', hosts: ['internal.example'], service: 'internal' },
    ],
    listen: { http2: true },
  });
  const session = await h2session(t, url);
  const res = await h2request(session, { ':path': '/x', ':authority': 'internal.example', host: 'public.example' });
  const seen = JSON.parse(res.body);
  assert.equal(seen.name, 'internal', 'routed by :authority');
  assert.equal(seen.headers[':authority'], 'internal.example');
  // HTTP/1.1 allows the repeat; node:http2 would refuse it.
  const h1 = await send(`${url}/y`, { headers: { host: 'public.example', 'user-agent': ['first', 'second'] } });
  assert.equal(h1.status, 200);
  assert.equal(h1.json().headers['user-agent'], 'first');
});
