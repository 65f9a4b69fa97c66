/**
 * Hardening, second round, the instance's side: answers that are legal but unusual, or broken, sent
 * byte for byte by a raw TCP server. Each test checks what the client got, and whether the
 * instance was counted as failing.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { createServer, type Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { send, startGateway } from './helpers.js';

const LIMIT = { timeout: 20_000 };

/** A TCP server that answers each request with what `respond` writes (it may end or reset the socket). */
async function rawUpstream(t: TestContext, respond: (socket: Socket, request: string) => void): Promise<{ url: string; requests: string[] }> {
  const requests: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buffer = '';
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      while (buffer.includes('\r\n\r\n')) {
        const end = buffer.indexOf('\r\n\r\n') + 4;
        const head = buffer.slice(0, end);
        buffer = buffer.slice(end);
        requests.push(head);
        respond(socket, head);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, requests };
}

/** A gateway for one raw instance, with a breaker that would open after 3 failures, recording upstream outcomes. */
async function gatewayFor(t: TestContext, url: string) {
  const started = await startGateway(t, {
    services: { a: { instances: [{ url }], circuitBreaker: { volumeThreshold: 3, errorThresholdPercentage: 50 } } },
    routes: [{ prefix: '/api', service: 'a' }],
  });
  const outcomes: (number | string)[] = [];
  started.gateway.on('upstream:response', (_inst, info) => outcomes.push(info.error ?? info.status));
  return { ...started, outcomes };
}

/** A GET with node:http on a keep-alive agent-less socket; resolves with status, headers, body, or the error. */
function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', (err) => resolve({ error: (err as NodeJS.ErrnoException).code ?? err.message }));
      res.on('aborted', () => resolve({ error: 'aborted' }));
    });
    req.on('error', (err) => resolve({ error: (err as NodeJS.ErrnoException).code ?? err.message }));
    req.end();
  });
}

describe('answers an instance may legally send', () => {
  test('a 304 with Content-Length reaches the client whole, and the instance is not counted as failing', LIMIT, async (t) => {
    const upstream = await rawUpstream(t, (socket) => socket.write('HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'));
    const { url, outcomes, gateway } = await gatewayFor(t, upstream.url);
    for (let i = 0; i < 5; i++) {
      const res = await get(`${url}/api/x`, { 'if-none-match': '"v1"' });
      assert.ok('status' in res, JSON.stringify(res));
      assert.equal(res.status, 304);
      assert.equal(res.headers.etag, '"v1"');
      assert.equal(res.body, '');
    }
    assert.deepEqual(outcomes, [304, 304, 304, 304, 304]);
    assert.equal([...gateway.registry.getService('a')!.instances.values()][0]!.circuit, 'closed');
  });

  test('Transfer-Encoding: gzip, chunked from an instance keeps its coding on the way to the client', LIMIT, async (t) => {
    const gzipped = Buffer.from('1f8b0800000000000003cb48cdc9c9070086a61036050000000', 'hex').subarray(0, 25);
    const upstream = await rawUpstream(t, (socket) => {
      socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${gzipped.length.toString(16)}\r\n`);
      socket.write(gzipped);
      socket.write('\r\n0\r\n\r\n');
    });
    const { url } = await gatewayFor(t, upstream.url);
    const res = await get(`${url}/api/x`);
    assert.ok('status' in res, JSON.stringify(res));
    assert.equal(res.status, 200);
    assert.equal(res.headers['transfer-encoding'], 'gzip, chunked');
  });
});

describe('answers that cannot be passed on', () => {
  test('a status outside 100-599 is a 502, counted against the instance, never relayed', LIMIT, async (t) => {
    const upstream = await rawUpstream(t, (socket) => socket.write('HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok'));
    const { url, outcomes } = await gatewayFor(t, upstream.url);
    const res = await send(`${url}/api/x`);
    assert.equal(res.status, 502);
    assert.equal(res.json().error, 'MESH_ERR_UPSTREAM_PROTOCOL');
    assert.deepEqual(outcomes, ['MESH_ERR_UPSTREAM_PROTOCOL']);
  });

  test('a body that is not chunked at the end of its codings (Transfer-Encoding: gzip) is a 502', LIMIT, async (t) => {
    const upstream = await rawUpstream(t, (socket) => {
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabc');
      socket.end();
    });
    const { url } = await gatewayFor(t, upstream.url);
    const res = await send(`${url}/api/x`);
    assert.equal(res.status, 502);
    assert.equal(res.json().error, 'MESH_ERR_UPSTREAM_PROTOCOL');
  });

  test('a close-delimited body cut by a reset reaches the client cut (no final chunk), while an orderly close is complete', LIMIT, async (t) => {
    const cut = await rawUpstream(t, (socket) => {
      socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nfirst part of the body;');
      setTimeout(() => socket.resetAndDestroy(), 50);
    });
    const whole = await rawUpstream(t, (socket) => {
      socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nthe whole body');
      setTimeout(() => socket.end(), 50);
    });
    const cutGateway = await gatewayFor(t, cut.url);
    const wholeGateway = await gatewayFor(t, whole.url);
    const ok = await get(`${wholeGateway.url}/api/x`);
    assert.ok('status' in ok, JSON.stringify(ok));
    assert.equal(ok.body, 'the whole body');
    const broken = await get(`${cutGateway.url}/api/x`);
    assert.ok('error' in broken, `a cut body was delivered as complete: ${JSON.stringify(broken)}`);
  });
});
