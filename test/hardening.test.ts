/**
 * The proxy listener under attack: request smuggling, absolute-form and CONNECT targets, path
 * tricks, oversize heads and bodies, slowloris, and forged X-Forwarded-* / internal headers.
 * Attacks go over raw sockets where an HTTP client would refuse to send them; every test checks
 * what the upstream (and a second "other" server the attacker aims at) actually received.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import type { GatewayConfigInput } from '../lib/index.js';
import { echo, rawExchange, send, sendPath, sleep, startGateway, startUpstream, statusLines, type Upstream } from './helpers.js';

/** Fails a test that hangs instead of stalling the run (not a speed limit). */
const LIMIT = { timeout: 20_000 };

/** An upstream that also counts TCP connections (a refused request must not even dial it). */
async function countingUpstream(t: TestContext, handler = echo('upstream')): Promise<Upstream & { connections: () => number }> {
  const upstream = await startUpstream(t, handler);
  let connections = 0;
  upstream.server.on('connection', () => connections++);
  return Object.assign(upstream, { connections: () => connections });
}

/** Service `a` at `/api`, with `extra` merged into the config and route. */
async function gatewayFor(t: TestContext, upstream: Upstream, extra: { listen?: GatewayConfigInput['listen']; maxBodySize?: number | string } = {}) {
  const { url, gateway } = await startGateway(t, {
    ...(extra.listen ? { listen: extra.listen } : {}),
    services: { a: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'a', ...(extra.maxBodySize !== undefined ? { maxBodySize: extra.maxBodySize } : {}) }],
  });
  return { url, gateway, port: Number(new URL(url).port) };
}

/** A second server the attacker tries to reach through the gateway; counts connections. */
async function otherServer(t: TestContext): Promise<Upstream & { connections: () => number }> {
  return countingUpstream(t, echo('other'));
}

describe('request smuggling on a raw socket', () => {
  const smuggled = 'GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
  const attacks: Record<string, string> = {
    'CL.TE': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
    'TE.CL': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
    'duplicate conflicting Content-Length': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
    'Content-Length list': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, ${smuggled.length}\r\n\r\n${smuggled}`,
    'Transfer-Encoding: chunked, identity': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
    'Transfer-Encoding: identity + CL': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n${smuggled}`,
    'Transfer-Encoding: xchunked': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
    'two Transfer-Encoding headers': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${smuggled}`,
    'space before the colon': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: ${5 + smuggled.length}\r\n\r\n0\r\n\r\n${smuggled}`,
    'vertical tab before chunked': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: ${5 + smuggled.length}\r\n\r\n0\r\n\r\n${smuggled}`,
    'obs-fold Transfer-Encoding': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: ${5 + smuggled.length}\r\n\r\n0\r\n\r\n${smuggled}`,
    'bare LF line endings with CL+TE': `POST /api/a HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: ${3 + smuggled.length}\n\n0\n\n${smuggled}`,
  };

  for (const [name, attack] of Object.entries(attacks)) {
    test(`${name}: 400, connection closed, no smuggled request reaches the upstream`, LIMIT, async (t) => {
      const upstream = await countingUpstream(t);
      const { url, port } = await gatewayFor(t, upstream);
      const { text, closedByServer } = await rawExchange(port, attack);
      assert.deepEqual(statusLines(text), [400], `exactly one answer, a 400: ${JSON.stringify(text.slice(0, 200))}`);
      assert.ok(closedByServer, 'the gateway closes a connection whose framing it cannot trust');
      // A request after the attack: once it is answered, anything the attack made the gateway
      // forward would have been forwarded too.
      assert.equal((await send(`${url}/api/after`)).status, 200);
      await sleep(50);
      assert.deepEqual(
        upstream.seen.map((s) => s.url),
        ['/api/after'],
        'the upstream saw neither the attack nor the smuggled request',
      );
    });
  }

  test('a legitimate pipelined pair is still served (the checks above are not just "refuse everything")', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gatewayFor(t, upstream);
    const pair = 'POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /api/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
    const { text } = await rawExchange(port, pair);
    assert.deepEqual(statusLines(text), [200, 200]);
    assert.deepEqual(upstream.seen.map((s) => s.url).sort(), ['/api/a', '/api/b']);
  });
});

describe('request targets that are not origin-form', () => {
  test('absolute-form GET http://other/api/x is never proxied to the other host', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const other = await otherServer(t);
    const { port } = await gatewayFor(t, upstream);
    for (const target of [`http://127.0.0.1:${other.port}/api/x`, `http://other-host/api/x`, `https://127.0.0.1:${other.port}/api/x`]) {
      const { text } = await rawExchange(port, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${other.port}\r\nConnection: close\r\n\r\n`);
      const [status] = statusLines(text);
      assert.ok(status === 400 || status === 200, `${target}: ${JSON.stringify(text.slice(0, 120))}`);
      // Routed as a path at most: the upstream never sees a request aimed at another host.
      for (const seen of upstream.seen) assert.ok(seen.url.startsWith('/'), `upstream saw ${seen.url}`);
    }
    assert.equal(other.connections(), 0, 'nothing connected to the other server');
    assert.equal(other.seen.length, 0);
  });

  test('CONNECT is refused with 405 and nothing is tunnelled', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const other = await otherServer(t);
    const { port } = await gatewayFor(t, upstream);
    const { text } = await rawExchange(port, `CONNECT 127.0.0.1:${other.port} HTTP/1.1\r\nHost: 127.0.0.1:${other.port}\r\n\r\nGET /api/x HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.deepEqual(statusLines(text), [405], JSON.stringify(text.slice(0, 200)));
    assert.match(text, /MESH_ERR_METHOD_NOT_ALLOWED/);
    assert.equal(other.connections(), 0);
    assert.equal(upstream.connections(), 0);
    assert.equal(upstream.seen.length, 0);
  });
});

describe('path normalization never escapes a route prefix', () => {
  async function twoRoutes(t: TestContext) {
    const a = await startUpstream(t, echo('a'));
    const b = await startUpstream(t, echo('b'));
    const c = await startUpstream(t, echo('c'));
    const { url } = await startGateway(t, {
      services: { a: { instances: [{ url: a.url }] }, b: { instances: [{ url: b.url }] }, c: { instances: [{ url: c.url }] } },
      routes: [
        { prefix: '/api', service: 'a', stripPrefix: true },
        { prefix: '/admin', service: 'b' },
        { prefix: '/pub', service: 'c' },
      ],
    });
    return { a, b, c, url };
  }

  const dotSegment = (path: string): boolean => path.split('?')[0]!.split('/').some((s) => s === '.' || s === '..');

  test('dot segments in every spelling resolve inside the gateway; A never sees "..", B only sees /admin paths', LIMIT, async (t) => {
    const { a, b, c, url } = await twoRoutes(t);
    // [request target, who may see it, the path they see] (null: nobody; a 404 or 400)
    const cases: [string, 'a' | 'b' | null, string | null][] = [
      ['/api/../admin/x', 'b', '/admin/x'],
      ['/api/%2e%2e/admin/x', 'b', '/admin/x'],
      ['/api/%2E%2e/admin/x', 'b', '/admin/x'],
      ['/api/.%2e/admin/x', 'b', '/admin/x'],
      ['/api/%2e./admin/x', 'b', '/admin/x'],
      ['/api/./%2e/../admin/x', 'b', '/admin/x'],
      ['/api/a/../b', 'a', '/b'],
      ['/api/a/%2e%2e/b', 'a', '/b'],
      ['/api/a/./b/%2e/c', 'a', '/a/b/c'],
      ['/api/x/..', 'a', '/'],
      ['/api/a/%2E%2e/', 'a', '/'],
      ['/api//../x', 'a', '/x'],
      ['/api/x?q=../../admin', 'a', '/x?q=../../admin'],
      ['/api/..', null, null],
      ['/api/%2e%2e/%2e%2e/etc/passwd', null, null],
      ['/api/a/%2e%2e/%2e%2e/%2e%2e/%2e%2e/pub-not', null, null],
      ['/pub/../../../admin/x', 'b', '/admin/x'],
    ];
    for (const [target, who, path] of cases) {
      const before = { a: a.seen.length, b: b.seen.length, c: c.seen.length };
      const res = await sendPath(url, target);
      const newA = a.seen.slice(before.a).map((s) => s.url);
      const newB = b.seen.slice(before.b).map((s) => s.url);
      const newC = c.seen.slice(before.c).map((s) => s.url);
      for (const seen of newA) assert.ok(!dotSegment(seen) && !seen.split('?')[0]!.includes('/..') && seen.startsWith('/'), `${target}: A saw ${seen}`);
      for (const seen of newB) assert.ok(seen === '/admin' || seen.startsWith('/admin/'), `${target}: B saw ${seen}`);
      assert.deepEqual(newC, [], `${target}: C saw ${newC}`);
      if (who === null) {
        assert.ok(res.status === 404 || res.status === 400, `${target}: ${res.status}`);
        assert.deepEqual([...newA, ...newB], [], `${target}: nobody sees it`);
      } else {
        assert.equal(res.status, 200, `${target}: ${res.status} ${res.body}`);
        assert.deepEqual(who === 'a' ? newA : newB, [path], target);
        assert.deepEqual(who === 'a' ? newB : newA, [], target);
      }
    }
  });

  test('encoded slashes and backslashes (%2f, %2F, %5c, %5C) answer 400 and reach nobody', LIMIT, async (t) => {
    const { a, b, c, url } = await twoRoutes(t);
    for (const target of ['/api/%2fadmin', '/api/..%2fadmin/x', '/api/%2e%2e%2fadmin/x', '/api/%2F..%2F..%2Fadmin', '/api/%5c..%5cadmin', '/api/..%5Cadmin/x', '/api/%2e%2e%5cadmin']) {
      const res = await sendPath(url, target);
      assert.equal(res.status, 400, `${target}: ${res.status} ${res.body}`);
      assert.equal(res.json().error, 'MESH_ERR_BAD_PATH', target);
    }
    assert.equal(a.seen.length + b.seen.length + c.seen.length, 0);
  });

  test('a raw backslash cannot carry ".." past a prefix either (rejected like %5c, or taken as a separator)', LIMIT, async (t) => {
    const { a, b, c, url } = await twoRoutes(t);
    // Many upstreams (IIS, ASP.NET, some Java and Python stacks) read "\" as "/": to them
    // "/pub/..\admin/x" is "/admin/x", outside the /pub prefix the gateway exposes.
    const escapes = /(?:^|[\\/])\.\.(?:[\\/]|$)/;
    for (const target of ['/pub/..\\admin/x', '/pub/x\\..\\..\\admin', '/api/..\\admin/x', '/api/\\..\\x']) {
      const res = await sendPath(url, target);
      for (const up of [a, c]) {
        for (const s of up.seen) assert.ok(!escapes.test(s.url.split('?')[0]!), `${target}: answered ${res.status}, the upstream saw ${s.url}`);
      }
      assert.ok(res.status === 400 || res.status === 404 || res.status === 200, `${target}: ${res.status}`);
    }
    for (const s of b.seen) assert.ok(s.url.startsWith('/admin'), `B saw ${s.url}`);
  });
});

describe('size limits', () => {
  test('a 70 KB header is answered 431 and the upstream sees nothing', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gatewayFor(t, upstream);
    const { text } = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70 * 1024)}\r\n\r\n`);
    assert.deepEqual(statusLines(text), [431], JSON.stringify(text.slice(0, 120)));
    assert.equal(upstream.connections(), 0);
    assert.equal(upstream.seen.length, 0);
  });

  test('many headers adding up to 70 KB are 431 too', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gatewayFor(t, upstream);
    const headers = Array.from({ length: 700 }, (_, i) => `X-H${i}: ${'b'.repeat(100)}\r\n`).join('');
    const { text } = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\n${headers}\r\n`);
    assert.deepEqual(statusLines(text), [431]);
    assert.equal(upstream.seen.length, 0);
  });

  test('a Content-Length over maxBodySize is 413 before the upstream is even dialed', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gatewayFor(t, upstream, { maxBodySize: '4kb' });
    const { text } = await rawExchange(port, `POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: ${1024 * 1024}\r\n\r\n${'z'.repeat(8192)}`);
    assert.deepEqual(statusLines(text), [413], JSON.stringify(text.slice(0, 200)));
    assert.match(text, /MESH_ERR_PAYLOAD_TOO_LARGE/);
    assert.equal(upstream.connections(), 0, 'no connection to the upstream at all');
    assert.equal(upstream.seen.length, 0);
  });

  test('a body within maxBodySize passes whole (the limit is not "refuse all bodies")', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gatewayFor(t, upstream, { maxBodySize: '4kb' });
    const res = await send(`${url}/api/x`, { method: 'POST', body: 'y'.repeat(4096) });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().body.length, 4096);
  });

  test('a chunked body growing past maxBodySize is cut (413 or a closed connection); the upstream never gets it whole', LIMIT, async (t) => {
    const limit = 4096;
    const received: { bytes: number; ended: boolean }[] = [];
    const upstream = await countingUpstream(t, (req: IncomingMessage, res: ServerResponse) => {
      const record = { bytes: 0, ended: false };
      received.push(record);
      req.on('data', (c: Buffer) => (record.bytes += c.length));
      req.on('end', () => {
        record.ended = true;
        res.end('ok');
      });
      req.on('error', () => {});
    });
    const { port } = await gatewayFor(t, upstream, { maxBodySize: limit });

    const total = 64 * 1024;
    const result = await new Promise<{ text: string }>((resolve) => {
      const socket: Socket = connect(port, '127.0.0.1');
      const chunks: Buffer[] = [];
      let sent = 0;
      socket.on('connect', () => {
        socket.write('POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
        const pump = (): void => {
          if (socket.destroyed || sent >= total) {
            if (!socket.destroyed) socket.write('0\r\n\r\n');
            return;
          }
          sent += 1024;
          socket.write(`400\r\n${'c'.repeat(1024)}\r\n`, () => setTimeout(pump, 2));
        };
        pump();
      });
      socket.setTimeout(5000, () => socket.destroy());
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', () => {});
      socket.on('close', () => resolve({ text: Buffer.concat(chunks).toString('latin1') }));
    });
    const statuses = statusLines(result.text);
    assert.ok(statuses.length === 0 || (statuses.length === 1 && statuses[0] === 413), `answer: ${JSON.stringify(result.text.slice(0, 200))}`);
    await sleep(100);
    for (const r of received) {
      assert.ok(r.bytes <= limit, `the upstream received ${r.bytes} bytes, limit ${limit}`);
      assert.equal(r.ended, false, 'a truncated body must never look complete to the upstream');
    }
  });
});

describe('slowloris', () => {
  test('headers sent byte by byte slower than headersTimeout (500ms): the connection is closed within a few seconds', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { port } = await gatewayFor(t, upstream, { listen: { headersTimeout: 500 } });
    const head = `GET /api/x HTTP/1.1\r\nHost: x\r\nX-Slow: ${'s'.repeat(400)}`;
    const deadline = 5000; // ten times the configured timeout: a protection, not a speed check
    const outcome = await new Promise<{ closed: boolean; text: string }>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      let i = 0;
      let text = '';
      const drip = setInterval(() => {
        if (!socket.destroyed && i < head.length) socket.write(head[i++]!);
      }, 100);
      const giveUp = setTimeout(() => {
        clearInterval(drip);
        socket.destroy();
        resolve({ closed: false, text });
      }, deadline);
      socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
      socket.on('error', () => {});
      socket.on('close', () => {
        clearInterval(drip);
        clearTimeout(giveUp);
        resolve({ closed: true, text });
      });
    });
    assert.ok(outcome.closed, `the slow connection was still open after ${deadline}ms (headersTimeout 500ms)`);
    const statuses = statusLines(outcome.text);
    assert.ok(statuses.length === 0 || statuses[0] === 408, JSON.stringify(outcome.text));
    assert.equal(upstream.seen.length, 0);
  });
});

describe('forwarding headers the client must not control', () => {
  /** Every value the upstream saw for `name` on request `index`. */
  const values = (upstream: Upstream, index: number, name: string): string[] => {
    const raw = upstream.seen[index]!.rawHeaders;
    const out: string[] = [];
    for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
    return out;
  };
  const forged = {
    'x-forwarded-for': '6.6.6.6',
    'X-Forwarded-Proto': 'https',
    'x-forwarded-host': 'evil.example',
    host: 'gw.example',
  };

  test('without trustProxy a client-sent X-Forwarded-For is replaced by the socket address', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gatewayFor(t, upstream);
    assert.equal((await send(`${url}/api/x`, { headers: { ...forged, 'X-Forwarded-For': ['7.7.7.7', '8.8.8.8'] } })).status, 200);
    assert.deepEqual(values(upstream, 0, 'x-forwarded-for'), ['127.0.0.1']);
  });

  test('with trustProxy: 1 the client chain is kept and the socket address appended', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gatewayFor(t, upstream, { listen: { trustProxy: 1 } });
    assert.equal((await send(`${url}/api/x`, { headers: forged })).status, 200);
    assert.deepEqual(values(upstream, 0, 'x-forwarded-for'), ['6.6.6.6, 127.0.0.1']);
  });

  test('client-sent X-Forwarded-Proto and X-Forwarded-Host are overwritten', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gatewayFor(t, upstream, { listen: { trustProxy: true } });
    assert.equal((await send(`${url}/api/x`, { headers: forged })).status, 200);
    assert.deepEqual(values(upstream, 0, 'x-forwarded-proto'), ['http']);
    assert.deepEqual(values(upstream, 0, 'x-forwarded-host'), ['gw.example']);
  });

  test('no x-meshgate-* header from the client reaches the upstream, in any case or through Connection', LIMIT, async (t) => {
    const upstream = await countingUpstream(t);
    const { url } = await gatewayFor(t, upstream);
    const res = await send(`${url}/api/x`, {
      headers: {
        'x-meshgate-route': 'admin',
        'X-MeshGate-Instance': 'internal',
        'X-MESHGATE-AUTHENTICATED': 'true',
        'x-meshgate-': 'empty-suffix',
        'x-normal': 'kept',
      },
    });
    assert.equal(res.status, 200);
    const names = upstream.seen[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assert.deepEqual(names.filter((n) => n.startsWith('x-meshgate-')), []);
    assert.deepEqual(values(upstream, 0, 'x-normal'), ['kept']);
  });
});
