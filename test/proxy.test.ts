import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { bodyParser } from '@koa/bodyparser';
import Koa from 'koa';
import {
  createTestGateway,
  echo,
  listenApp,
  send,
  sendPath,
  startGateway,
  startUpstream,
  trackProcessErrors,
  unusedPort,
  waitFor,
} from './helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 20_000 };

const MiB = 1024 * 1024;

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Upstream handler: hashes the request body and answers what it saw. */
function hashBody(req: IncomingMessage, res: ServerResponse): void {
  const hash = createHash('sha256');
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  req.on('end', () => {
    const body = JSON.stringify({
      sha256: hash.digest('hex'),
      bytes,
      contentLength: req.headers['content-length'] ?? null,
      transferEncoding: req.headers['transfer-encoding'] ?? null,
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}

/** Writes `data` to a response or request in `chunkSize` pieces, honouring backpressure. */
function writeChunks(stream: { write(chunk: Buffer): boolean; end(): unknown; once(event: 'drain', fn: () => void): unknown; destroyed: boolean }, data: Buffer, chunkSize: number): void {
  let offset = 0;
  const pump = (): void => {
    while (offset < data.length) {
      if (stream.destroyed) return;
      const chunk = data.subarray(offset, offset + chunkSize);
      offset += chunk.length;
      if (!stream.write(chunk)) {
        stream.once('drain', pump);
        return;
      }
    }
    stream.end();
  };
  pump();
}

/** A POST whose body is written in chunks; resolves with the response. */
function upload(
  url: string,
  data: Buffer,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    writeChunks(req, data, 64 * 1024);
  });
}

/** A GET whose response body is hashed as it streams in. */
function download(url: string): Promise<{ status: number; sha256: string; bytes: number; headers: IncomingMessage['headers'] }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        hash.update(c);
        bytes += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode!, sha256: hash.digest('hex'), bytes, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Tracks how an upstream response ended: `closedEarly` is set when its connection closed before
 * the upstream finished answering (the gateway aborted the upstream request).
 */
function watchResponse(res: ServerResponse): { closedEarly: boolean; closed: boolean } {
  const state = { closedEarly: false, closed: false };
  res.on('close', () => {
    state.closed = true;
    state.closedEarly = !res.writableFinished;
  });
  return state;
}

/** Writes `request` on a fresh socket and resolves with everything the server sent until it closed. */
function rawExchange(baseUrl: string, request: string): Promise<string> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
    socket.write(request);
  });
}

describe('streaming bodies', () => {
  test('a 5 MiB chunked upload reaches the upstream intact', LIMIT, async (t) => {
    const upstream = await startUpstream(t, hashBody);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const data = randomBytes(5 * MiB);
    // No content-length: node sends the body with chunked transfer-encoding.
    const res = await upload(`${url}/api/upload`, data, { 'content-type': 'application/octet-stream' });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body);
    assert.equal(seen.bytes, data.length);
    assert.equal(seen.sha256, sha256(data));
    assert.equal(seen.contentLength, null);
    assert.equal(seen.transferEncoding, 'chunked');
    assert.equal(upstream.seen.length, 1);
    assert.equal(upstream.seen[0]!.method, 'POST');
  });

  test('a 5 MiB upload with content-length reaches the upstream intact, with its length', LIMIT, async (t) => {
    const upstream = await startUpstream(t, hashBody);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const data = randomBytes(5 * MiB);
    const res = await upload(`${url}/api/upload`, data, {
      'content-type': 'application/octet-stream',
      'content-length': String(data.length),
    });
    assert.equal(res.status, 200);
    const seen = JSON.parse(res.body);
    assert.equal(seen.bytes, data.length);
    assert.equal(seen.sha256, sha256(data));
    assert.equal(seen.contentLength, String(data.length));
    assert.equal(seen.transferEncoding, null);
  });

  test('a 5 MiB download comes back intact (chunked and with content-length)', LIMIT, async (t) => {
    const data = randomBytes(5 * MiB);
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url === '/sized') res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
      else res.writeHead(200, { 'content-type': 'application/octet-stream' });
      writeChunks(res, data, 64 * 1024);
    });
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    const chunked = await download(`${url}/api/chunked`);
    assert.equal(chunked.status, 200);
    assert.equal(chunked.bytes, data.length);
    assert.equal(chunked.sha256, sha256(data));
    assert.equal(chunked.headers['transfer-encoding'], 'chunked');

    const sized = await download(`${url}/api/sized`);
    assert.equal(sized.status, 200);
    assert.equal(sized.bytes, data.length);
    assert.equal(sized.sha256, sha256(data));
    assert.equal(sized.headers['content-length'], String(data.length));
    assert.deepEqual(
      upstream.seen.map((s) => s.url),
      ['/chunked', '/sized'],
    );
  });
});

describe('headers', () => {
  test('hop-by-hop request headers, and those named in Connection, never reach the upstream', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/hop`, {
      method: 'POST',
      headers: {
        Connection: 'keep-alive, x-private, x-other-private',
        'Keep-Alive': 'timeout=99, max=7',
        'Proxy-Connection': 'keep-alive',
        'Proxy-Authorization': 'Basic Zm9vOmJhcg==',
        TE: 'trailers',
        Trailer: 'x-checksum',
        // The body is framed by chunked encoding (another coding would be refused: test/hardening-requests.test.ts).
        'Transfer-Encoding': 'chunked',
        Upgrade: 'h2c',
        'X-Private': 'secret',
        'X-Other-Private': 'secret too',
        'X-End-To-End': 'kept',
        Authorization: 'Bearer token',
        Cookie: 'session=abc',
      },
      body: 'hello',
    });
    assert.equal(res.status, 200);
    assert.equal(upstream.seen.length, 1);
    const seen = upstream.seen[0]!.headers;
    for (const name of ['keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'upgrade', 'x-private', 'x-other-private']) {
      assert.equal(seen[name], undefined, `${name} reached the upstream`);
    }
    // undici frames its own hop (its own Connection, and chunked or a content-length it computed),
    // never with the client's values; it would even refuse to send them.
    assert.ok(!String(seen.connection ?? '').includes('x-private'), `client Connection reached the upstream: ${seen.connection}`);
    assert.notEqual(seen['transfer-encoding'], 'gzip, chunked');
    assert.equal(seen['x-end-to-end'], 'kept');
    assert.equal(seen.authorization, 'Bearer token');
    assert.equal(seen.cookie, 'session=abc');
    assert.equal(res.json().body, 'hello');
  });

  test('hop-by-hop request headers on a bodiless GET never reach the upstream', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    // A raw socket: node's client refuses some of these headers on a GET (Trailer without chunked).
    const head = await rawExchange(
      url,
      [
        'GET /api/hop HTTP/1.1',
        `Host: ${new URL(url).host}`,
        'Connection: close, x-private',
        'Keep-Alive: timeout=99',
        'Proxy-Connection: keep-alive',
        'Proxy-Authorization: Basic Zm9vOmJhcg==',
        'TE: trailers',
        'Trailer: x-checksum',
        'Upgrade: h2c',
        'X-Private: secret',
        'Accept: application/json',
      ].join('\r\n') + '\r\n\r\n',
    );
    assert.match(head, /^HTTP\/1\.1 200 /);
    assert.equal(upstream.seen.length, 1);
    const raw = upstream.seen[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const name of ['keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'x-private']) {
      assert.ok(!raw.includes(name), `${name} reached the upstream (${raw.join(', ')})`);
    }
    assert.ok(!String(upstream.seen[0]!.headers.connection ?? '').includes('x-private'));
    assert.equal(upstream.seen[0]!.headers.accept, 'application/json');
  });

  test('hop-by-hop response headers never reach the client; end-to-end ones (repeated Set-Cookie too) do', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      res.writeHead(200, [
        'Connection', 'x-private-resp, keep-alive',
        'X-Private-Resp', 'secret',
        'Keep-Alive', 'timeout=99, max=7',
        'Proxy-Connection', 'keep-alive',
        'Proxy-Authenticate', 'Basic realm="upstream"',
        'Proxy-Authorization', 'Basic Zm9vOmJhcg==',
        'TE', 'trailers',
        'Trailer', 'x-checksum',
        // Plain chunked: other codings are passed on with the body (test/hardening-upstream.test.ts).
        'Transfer-Encoding', 'chunked',
        'Upgrade', 'h2c',
        'Set-Cookie', 'a=1; Path=/',
        'Set-Cookie', 'b=2; Path=/',
        'Cache-Control', 'no-store',
        'X-End-To-End', 'kept',
        'Content-Type', 'text/plain',
      ]);
      res.write('hello ');
      res.end('world');
    });
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/hop`);
    assert.equal(res.status, 200);
    assert.equal(res.body, 'hello world');
    const names = res.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const name of ['x-private-resp', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'upgrade']) {
      assert.ok(!names.includes(name), `${name} reached the client (${names.join(', ')})`);
    }
    // Node frames the gateway's own hop, so Connection / Keep-Alive / Transfer-Encoding may be
    // present, but with the gateway's values, never the upstream's.
    assert.ok(!String(res.headers.connection ?? '').includes('x-private-resp'), `upstream Connection reached the client: ${res.headers.connection}`);
    assert.notEqual(res.headers['keep-alive'], 'timeout=99, max=7');
    assert.notEqual(res.headers['transfer-encoding'], 'gzip, chunked');
    assert.equal(names.filter((n) => n === 'transfer-encoding').length <= 1, true);
    assert.deepEqual(res.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/']);
    assert.equal(res.headers['cache-control'], 'no-store');
    assert.equal(res.headers['x-end-to-end'], 'kept');
    assert.equal(res.headers['content-type'], 'text/plain');
  });

  test('response header names reach the client in lower case, as Envoy sends them; values and repeats are untouched', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      res.writeHead(200, ['Content-Type', 'text/plain; Charset=UTF-8', 'ETag', '"AbC"', 'X-Custom-Thing', 'Mixed Case Value', 'SET-COOKIE', 'a=1', 'Set-Cookie', 'b=2']);
      res.end('ok');
    });
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/case`);
    assert.equal(res.status, 200);
    const pairs: [string, string][] = [];
    for (let i = 0; i < res.rawHeaders.length; i += 2) pairs.push([res.rawHeaders[i]!, res.rawHeaders[i + 1]!]);
    const fromUpstream = pairs.filter(([name]) => ['content-type', 'etag', 'x-custom-thing', 'set-cookie'].includes(name.toLowerCase()));
    assert.deepEqual(fromUpstream, [
      ['content-type', 'text/plain; Charset=UTF-8'],
      ['etag', '"AbC"'],
      ['x-custom-thing', 'Mixed Case Value'],
      ['set-cookie', 'a=1'],
      ['set-cookie', 'b=2'],
    ]);
  });

  test('X-Forwarded-For is appended behind a trusted proxy, X-Forwarded-Proto/Host are set (client values overwritten), Host is kept', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      // The client here plays a trusted front proxy, so its X-Forwarded-For chain is kept.
      listen: { trustProxy: true },
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/fwd`, {
      headers: {
        Host: 'api.example.com',
        'X-Forwarded-For': '10.1.2.3',
        'X-Forwarded-Proto': 'https',
        'X-Forwarded-Host': 'evil.example',
      },
    });
    assert.equal(res.status, 200);
    const seen = upstream.seen[0]!.headers;
    assert.equal(seen.host, 'api.example.com');
    assert.equal(seen['x-forwarded-for'], '10.1.2.3, 127.0.0.1');
    assert.equal(seen['x-forwarded-proto'], 'http');
    assert.equal(seen['x-forwarded-host'], 'api.example.com');
    // Exactly one of each: the client's were replaced, not sent alongside.
    const raw = upstream.seen[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assert.equal(raw.filter((n) => n === 'x-forwarded-proto').length, 1);
    assert.equal(raw.filter((n) => n === 'x-forwarded-host').length, 1);
    assert.equal(raw.filter((n) => n === 'x-forwarded-for').length, 1);

    const plain = await send(`${url}/api/fwd`);
    assert.equal(plain.status, 200);
    const seen2 = upstream.seen[1]!.headers;
    assert.equal(seen2['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen2.host, new URL(url).host);
    assert.equal(seen2['x-forwarded-host'], new URL(url).host);
  });

  test('without trustProxy a client-sent X-Forwarded-For is replaced by the socket address', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/fwd`, { headers: { 'X-Forwarded-For': '10.1.2.3', 'X-Forwarded-Proto': 'https' } });
    assert.equal(res.status, 200);
    assert.equal(upstream.seen[0]!.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(upstream.seen[0]!.headers['x-forwarded-proto'], 'http');
  });

  test('Server-Timing carries gateway;dur= and upstream;dur= numbers, next to the upstream own entry', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      // The upstream takes a while before its headers: upstream;dur must include that time.
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'text/plain', 'server-timing': 'db;dur=5' });
        res.end('ok');
      }, 100).unref();
    });
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const res = await send(`${url}/api/timing`);
    assert.equal(res.status, 200);
    const timing = ([] as string[]).concat(res.headers['server-timing'] ?? []).join(', ');
    const gateway = /(?:^|,\s*)gateway;dur=(\d+(?:\.\d+)?)/.exec(timing);
    const up = /(?:^|,\s*)upstream;dur=(\d+(?:\.\d+)?)/.exec(timing);
    assert.ok(gateway, `no gateway;dur in ${timing}`);
    assert.ok(up, `no upstream;dur in ${timing}`);
    assert.ok(Number.isFinite(Number(gateway[1])) && Number(gateway[1]) >= 0);
    // A lower bound set by the upstream's own delay (not a speed threshold).
    assert.ok(Number(up[1]) >= 90, `upstream;dur=${up[1]} but the upstream waited 100 ms`);
    assert.match(timing, /db;dur=5/);
  });
});

describe('paths', () => {
  test('stripPrefix on and off, query string preserved', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [
        { prefix: '/api', service: 'api', stripPrefix: true },
        { prefix: '/raw', service: 'api', stripPrefix: false },
      ],
    });
    assert.equal((await sendPath(url, '/api/users/42?x=1&y=a%20b')).json().url, '/users/42?x=1&y=a%20b');
    assert.equal((await sendPath(url, '/api?x=1')).json().url, '/?x=1');
    assert.equal((await sendPath(url, '/raw/users/42?x=1&y=a%20b')).json().url, '/raw/users/42?x=1&y=a%20b');
    assert.deepEqual(
      upstream.seen.map((s) => s.url),
      ['/users/42?x=1&y=a%20b', '/?x=1', '/raw/users/42?x=1&y=a%20b'],
    );
  });

  test('an instance URL with a base path prefixes the forwarded path', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: `${upstream.url}/base` }] } },
      routes: [
        { prefix: '/api', service: 'api', stripPrefix: true },
        { prefix: '/raw', service: 'api' },
      ],
    });
    assert.equal((await sendPath(url, '/api/users?x=1')).status, 200);
    assert.equal((await sendPath(url, '/raw/users')).status, 200);
    assert.deepEqual(
      upstream.seen.map((s) => s.url),
      ['/base/users?x=1', '/base/raw/users'],
    );
  });

  test('dot segments are resolved before routing and forwarding', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    const res = await sendPath(url, '/api/a/../b');
    assert.equal(res.status, 200);
    assert.equal(res.json().url, '/b');
    const dotted = await sendPath(url, '/api/./c/%2e%2e/d?q=../x');
    assert.equal(dotted.status, 200);
    assert.equal(dotted.json().url, '/d?q=../x');
    // A dot segment cannot climb out of the route: /api/../secret is /secret, which no route serves.
    const escape = await sendPath(url, '/api/../secret');
    assert.equal(escape.status, 404);
    assert.equal(escape.json().error, 'MESH_ERR_NO_ROUTE');
    assert.deepEqual(
      upstream.seen.map((s) => s.url),
      ['/b', '/d?q=../x'],
    );
  });

  test('an encoded slash answers 400 JSON and the upstream sees nothing', LIMIT, async (t) => {
    const upstream = await startUpstream(t, echo('upstream'));
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    for (const path of ['/api/a%2fb', '/api/a%2Fb', '/api%2f..%2fsecret']) {
      const res = await sendPath(url, path);
      assert.equal(res.status, 400, path);
      assert.match(String(res.headers['content-type']), /^application\/json/);
      const body = res.json();
      assert.equal(typeof body.error, 'string');
      assert.match(body.error, /^MESH_ERR_/);
      assert.equal(typeof body.message, 'string');
    }
    assert.equal(upstream.seen.length, 0);
  });
});

describe('errors', () => {
  test('an attempt still waiting for a connection times out at its deadline, not when the connection comes', LIMIT, async (t) => {
    // One connection per origin: a slow request holds it, the next one waits in undici's queue.
    const held: import('node:http').ServerResponse[] = [];
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url?.startsWith('/slow')) held.push(res);
      else echo('up')(req, res);
    });
    const { url } = await startGateway(
      t,
      {
        services: { slow: { instances: [{ url: upstream.url }], timeout: '10s' }, quick: { instances: [{ url: upstream.url }], timeout: '150ms' } },
        routes: [
          { prefix: '/slow', service: 'slow' },
          { prefix: '/quick', service: 'quick' },
        ],
      },
      { pool: { connections: 1 } },
    );
    const order: string[] = [];
    const slow = send(`${url}/slow/1`).then((res) => void order.push(`slow ${res.status}`));
    await waitFor(() => held.length === 1, 5000, 'the slow request to hold the only connection');
    const quick = await send(`${url}/quick/1`);
    order.push(`quick ${quick.status}`);
    assert.equal(quick.status, 504);
    assert.equal(quick.json().error, 'MESH_ERR_UPSTREAM_TIMEOUT');
    // The slow answer is released only now: the quick one's 504 came while the connection was still taken.
    held[0]!.writeHead(200, { 'content-length': '2' }).end('ok');
    await slow;
    assert.deepEqual(order, ['quick 504', 'slow 200']);
    assert.equal(upstream.seen.filter((r) => r.url.startsWith('/quick')).length, 0, 'the timed-out request never reached the upstream');
  });

  const assertError = (res: { status: number; headers: IncomingMessage['headers']; json: () => any }, status: number, code: string): void => {
    assert.equal(res.status, status);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    const body = res.json();
    assert.equal(body.error, code);
    assert.equal(typeof body.message, 'string');
    assert.ok(body.message.length > 0);
  };

  test('a dead upstream answers 502 MESH_ERR_UPSTREAM_CONNECT', LIMIT, async (t) => {
    const port = await unusedPort();
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: `http://127.0.0.1:${port}` }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assertError(await send(`${url}/api/x`), 502, 'MESH_ERR_UPSTREAM_CONNECT');
  });

  test('an upstream that destroys the socket before answering gives 502 MESH_ERR_UPSTREAM_RESET', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (req) => req.socket.destroy());
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assertError(await send(`${url}/api/x`), 502, 'MESH_ERR_UPSTREAM_RESET');
    // A GET may be replayed once (the stale keep-alive socket case), never more.
    assert.ok(upstream.seen.length >= 1 && upstream.seen.length <= 2, `the upstream saw ${upstream.seen.length} requests`);
    // A streamed POST body cannot be replayed: exactly one attempt.
    const before = upstream.seen.length;
    assertError(await send(`${url}/api/x`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' }, body: 'payload' }), 502, 'MESH_ERR_UPSTREAM_RESET');
    assert.equal(upstream.seen.length - before, 1);
  });

  test('an upstream slower than services.x.timeout gives 504 and its request is aborted', LIMIT, async (t) => {
    let watch: { closedEarly: boolean; closed: boolean } | null = null;
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/api/slow') return echo('upstream')(req, res);
      watch = watchResponse(res);
      const timer = setTimeout(() => res.end('too late'), 2000);
      res.on('close', () => clearTimeout(timer));
    });
    const { gateway, url } = await startGateway(t, {
      services: { api: { timeout: '200ms', instances: [{ url: upstream.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assertError(await send(`${url}/api/slow`), 504, 'MESH_ERR_UPSTREAM_TIMEOUT');
    await waitFor(() => watch?.closed === true, 5000, 'the upstream request to close');
    assert.equal(watch!.closedEarly, true, 'the upstream answered before its request was aborted');
    await waitFor(() => gateway.registry.getInstance('api', 'a')!.inflight === 0, 5000, 'inflight back to 0');
    // The instance keeps serving requests that are fast enough.
    const next = await send(`${url}/api/fast`);
    assert.equal(next.status, 200);
    assert.equal(next.json().url, '/api/fast');
  });

  test('a service with no instances answers 503 MESH_ERR_NO_HEALTHY_INSTANCE', LIMIT, async (t) => {
    const { url } = await startGateway(t, {
      services: { api: {} },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assertError(await send(`${url}/api/x`), 503, 'MESH_ERR_NO_HEALTHY_INSTANCE');
  });

  test('a path no route matches answers 404 MESH_ERR_NO_ROUTE', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assertError(await send(`${url}/apix`), 404, 'MESH_ERR_NO_ROUTE');
    assertError(await send(`${url}/other/api`), 404, 'MESH_ERR_NO_ROUTE');
    assert.equal(upstream.seen.length, 0);
  });
});

describe('client aborts', () => {
  test('a client that goes away mid-download makes the gateway abort the upstream response', LIMIT, async (t) => {
    const errors = trackProcessErrors(t);
    let watch: { closedEarly: boolean; closed: boolean } | null = null;
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/stream') return echo('upstream')(req, res);
      watch = watchResponse(res);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      // Slow and endless: 16 KiB every 10 ms until the connection goes away.
      const chunk = randomBytes(16 * 1024);
      const timer = setInterval(() => res.write(chunk), 10);
      res.on('close', () => clearInterval(timer));
    });
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });

    const received = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${url}/api/stream`, { agent: false }, (res) => {
        let bytes = 0;
        res.on('error', () => {
          // expected: we destroy the socket ourselves
        });
        res.on('data', (c: Buffer) => {
          bytes += c.length;
          if (bytes >= 64 * 1024) {
            req.destroy();
            resolve(bytes);
          }
        });
      });
      req.on('error', (err) => {
        if (!req.destroyed) reject(err);
      });
      req.end();
    });
    assert.ok(received >= 64 * 1024);

    await waitFor(() => watch?.closed === true, 5000, 'the upstream response to close');
    assert.equal(watch!.closedEarly, true);
    await waitFor(() => gateway.registry.getInstance('api', 'a')!.inflight === 0, 5000, 'instance inflight back to 0');
    await waitFor(() => gateway.inflight === 0, 5000, 'gateway inflight back to 0');

    const next = await send(`${url}/api/next`);
    assert.equal(next.status, 200);
    assert.equal(next.json().url, '/next');
    assert.equal(gateway.registry.getInstance('api', 'a')!.inflight, 0);
    assert.deepEqual(errors, []);
  });

  test('a client that goes away mid-upload makes the gateway abort the upstream request', LIMIT, async (t) => {
    const errors = trackProcessErrors(t);
    let watch: { closedEarly: boolean; closed: boolean } | null = null;
    let upstreamBytes = 0;
    let upstreamEnded = false;
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/upload') return echo('upstream')(req, res);
      watch = watchResponse(res);
      req.on('data', (c: Buffer) => {
        upstreamBytes += c.length;
      });
      req.on('error', () => {
        // expected: the gateway aborts this request
      });
      req.on('end', () => {
        upstreamEnded = true;
        res.end('complete');
      });
    });
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });

    const declared = 2 * MiB;
    const half = randomBytes(declared / 2);
    const req = httpRequest(`${url}/api/upload`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(declared) },
    });
    req.on('error', () => {
      // expected: we destroy the request ourselves
    });
    req.on('response', (res) => res.resume());
    req.write(half);
    await waitFor(() => upstreamBytes > 0, 5000, 'the upstream to receive part of the body');
    req.destroy();

    await waitFor(() => watch?.closed === true, 5000, 'the upstream request to close');
    assert.equal(watch!.closedEarly, true);
    assert.equal(upstreamEnded, false, 'the upstream saw a complete body');
    assert.ok(upstreamBytes < declared);
    await waitFor(() => gateway.registry.getInstance('api', 'a')!.inflight === 0, 5000, 'instance inflight back to 0');
    await waitFor(() => gateway.inflight === 0, 5000, 'gateway inflight back to 0');

    const next = await send(`${url}/api/next`, { method: 'POST', body: 'small' });
    assert.equal(next.status, 200);
    assert.equal(next.json().body, 'small');
    assert.deepEqual(errors, []);
  });

  test('a client that goes away before the upstream answers makes the gateway abort the upstream request', LIMIT, async (t) => {
    const errors = trackProcessErrors(t);
    let watch: { closedEarly: boolean; closed: boolean } | null = null;
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url !== '/hold') return echo('upstream')(req, res);
      // Never answers on its own.
      watch = watchResponse(res);
    });
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url, id: 'a' }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    const req = httpRequest(`${url}/api/hold`, { agent: false });
    req.on('error', () => {
      // expected: we destroy it
    });
    req.end();
    await waitFor(() => watch !== null, 5000, 'the upstream to receive the request');
    req.destroy();
    await waitFor(() => watch!.closed, 5000, 'the upstream request to close');
    assert.equal(watch!.closedEarly, true);
    await waitFor(() => gateway.registry.getInstance('api', 'a')!.inflight === 0, 5000, 'instance inflight back to 0');
    assert.equal((await send(`${url}/api/next`)).status, 200);
    assert.deepEqual(errors, []);
  });
});

describe('bodiless responses', () => {
  test('HEAD, 204 and 304 pass through without a body, and the connection stays usable', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url === '/no-content') {
        res.writeHead(204, { 'x-kind': 'no-content' });
        res.end();
      } else if (req.url === '/not-modified') {
        res.writeHead(304, { etag: '"v1"', 'x-kind': 'not-modified' });
        res.end();
      } else {
        const body = 'the full body';
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), 'x-kind': 'full' });
        res.end(req.method === 'HEAD' ? undefined : body);
      }
    });
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    let connections = 0;
    gateway.server!.on('connection', () => connections++);
    // One keep-alive socket for all requests: a stray body byte would corrupt the next response.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    const request = (method: string, path: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; headers: IncomingMessage['headers']; body: string }>((resolve, reject) => {
        const req = httpRequest(`${url}${path}`, { method, agent, headers }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });

    const head = await request('HEAD', '/api/doc');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    assert.equal(head.headers['content-length'], String(Buffer.byteLength('the full body')));
    assert.equal(head.headers['x-kind'], 'full');

    const noContent = await request('GET', '/api/no-content');
    assert.equal(noContent.status, 204);
    assert.equal(noContent.body, '');
    assert.equal(noContent.headers['x-kind'], 'no-content');

    const notModified = await request('GET', '/api/not-modified', { 'if-none-match': '"v1"' });
    assert.equal(notModified.status, 304);
    assert.equal(notModified.body, '');
    assert.equal(notModified.headers.etag, '"v1"');

    const full = await request('GET', '/api/doc');
    assert.equal(full.status, 200);
    assert.equal(full.body, 'the full body');

    assert.equal(connections, 1);
    assert.deepEqual(
      upstream.seen.map((s) => [s.method, s.url]),
      [
        ['HEAD', '/doc'],
        ['GET', '/no-content'],
        ['GET', '/not-modified'],
        ['GET', '/doc'],
      ],
    );
    assert.equal(upstream.seen[2]!.headers['if-none-match'], '"v1"');
  });
});

describe('mount mode behind @koa/bodyparser', () => {
  async function mounted(t: TestContext) {
    const upstream = await startUpstream(t, echo('upstream'));
    const gateway = createTestGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
    });
    const app = new Koa();
    app.use(bodyParser());
    app.use(gateway.middleware());
    const { url } = await listenApp(t, app);
    return { upstream, url };
  }

  test('a JSON body the host app already parsed is forwarded with the same content and a correct length', LIMIT, async (t) => {
    const { upstream, url } = await mounted(t);
    const payload = { name: 'Zoë', tags: ['a', 'b'], nested: { n: 1.5, ok: true } };
    const body = JSON.stringify(payload);
    const res = await send(`${url}/api/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    assert.equal(res.status, 200);
    const seen = res.json();
    assert.equal(seen.url, '/items');
    assert.deepEqual(JSON.parse(seen.body), payload);
    assert.equal(upstream.seen[0]!.headers['content-length'], String(Buffer.byteLength(seen.body)));
    assert.equal(upstream.seen[0]!.headers['transfer-encoding'], undefined);
    assert.equal(upstream.seen[0]!.headers['content-type'], 'application/json');
  });

  test('a form-urlencoded body the host app already parsed is forwarded with the same content and a correct length', LIMIT, async (t) => {
    const { upstream, url } = await mounted(t);
    const body = 'name=Zo%C3%AB&city=New+York&empty=';
    const res = await send(`${url}/api/form`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
    assert.equal(res.status, 200);
    const seen = res.json();
    assert.deepEqual(Object.fromEntries(new URLSearchParams(seen.body)), { name: 'Zoë', city: 'New York', empty: '' });
    assert.equal(upstream.seen[0]!.headers['content-length'], String(Buffer.byteLength(seen.body)));
  });
});

test('sequential requests reuse one keep-alive connection to the upstream', LIMIT, async (t) => {
  const upstream = await startUpstream(t, echo('upstream'));
  let connections = 0;
  upstream.server.on('connection', () => connections++);
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
  });
  for (let i = 0; i < 5; i++) {
    const res = await send(`${url}/api/n/${i}`, i % 2 ? { method: 'POST', body: `body ${i}` } : {});
    assert.equal(res.status, 200);
  }
  assert.equal(upstream.seen.length, 5);
  assert.equal(connections, 1);
});
