/**
 * WebSocket through the gateway: real `ws` servers as instances, real `ws` clients, the gateway
 * in between on loopback. Each test asserts what the client and the instances saw.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import { connect as h2connect, constants, createServer as createHttp2Server, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import type { Writable } from 'node:stream';
import WebSocket, * as wsModule from 'ws';
import { WebSocketServer } from 'ws';
import Koa from 'koa';
import { createGateway, definePlugin } from '../../lib/index.js';
import { accessLog } from '../../plugins/access-log/index.js';
import { launchChromium } from '../browser.js';
import { rawExchange, selfSigned, send, startGateway, startUpstream, statusLines, trackProcessErrors, waitFor } from '../helpers.js';

const LIMIT = { timeout: 30_000 };

/** A WebSocket instance: echoes every message, says its name first, records handshakes. */
interface WsInstance {
  name: string;
  url: string;
  server: Server;
  wss: WebSocketServer;
  handshakes: IncomingMessage[];
  /** Open TCP sockets on the instance (handshakes, tunnels). */
  sockets: Set<Socket>;
  close(): Promise<void>;
}

async function startWsInstance(t: TestContext | null, name: string, options: { greet?: boolean; perMessageDeflate?: boolean } = {}): Promise<WsInstance> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`plain http from ${name}`);
  });
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  const wss = new WebSocketServer({ server, maxPayload: 4 * 1024 * 1024, perMessageDeflate: options.perMessageDeflate ?? false });
  const handshakes: IncomingMessage[] = [];
  wss.on('connection', (ws, req) => {
    handshakes.push(req);
    if (options.greet !== false) ws.send(`hello from ${name}`);
    ws.on('message', (data, binary) => ws.send(data, { binary }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | null = null;
  const instance: WsInstance = {
    name,
    url: `http://127.0.0.1:${port}`,
    server,
    wss,
    handshakes,
    sockets,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate();
        for (const socket of sockets) socket.destroy();
        wss.close();
        server.close(() => resolve());
      })),
  };
  t?.after(() => instance.close());
  return instance;
}

/** Opens a client WebSocket; resolves at `open` with the first message (the instance's greeting). */
function connect(url: string, options: WebSocket.ClientOptions = {}): Promise<{ ws: WebSocket; greeting: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.once('message', (data) => resolve({ ws, greeting: String(data) }));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`handshake answered ${res.statusCode}`), { status: res.statusCode, headers: res.headers })));
  });
}

/** The next message on `ws`. */
function nextMessage(ws: WebSocket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data) => resolve(data as Buffer));
    ws.once('close', () => reject(new Error('closed before a message')));
  });
}

/** Resolves with the close code once `ws` is closed. */
function closed(ws: WebSocket): Promise<number> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve(1006);
  return new Promise((resolve) => ws.once('close', (code) => resolve(code)));
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

function wsUrl(url: string, path: string): string {
  return url.replace(/^http/, 'ws') + path;
}

/** A host Koa app with the gateway mounted in it: `/chat` goes to a WebSocket instance, the rest is the host's ("host app"). */
async function mountedChat(t: TestContext): Promise<{ gateway: ReturnType<typeof createGateway>; app: Koa }> {
  const instance = await startWsInstance(t, 'a');
  const gateway = createGateway({ logLevel: 'silent', services: { chat: { instances: [{ url: instance.url }] } }, routes: [{ prefix: '/chat', service: 'chat' }] });
  t.after(() => gateway.close());
  const app = new Koa();
  app.use(gateway.middleware());
  app.use((ctx) => {
    ctx.body = 'host app';
  });
  return { gateway, app };
}

describe('WebSocket', () => {
  test('1 MB messages both ways arrive whole, balanced round-robin over three instances', LIMIT, async (t) => {
    const instances = await Promise.all(['a', 'b', 'c'].map((name) => startWsInstance(t, name)));
    const { url } = await startGateway(t, {
      services: { chat: { instances: instances.map((i) => ({ url: i.url })) } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const greetings: string[] = [];
    for (let i = 0; i < 6; i++) {
      const { ws, greeting } = await connect(wsUrl(url, '/chat/room?x=1'));
      greetings.push(greeting);
      const payload = randomBytes(1024 * 1024);
      const echoed = nextMessage(ws);
      ws.send(payload);
      assert.equal(sha256(await echoed), sha256(payload), 'the 1 MB message came back whole');
      const text = 'ü'.repeat(300_000);
      const echoedText = nextMessage(ws);
      ws.send(text);
      assert.equal(String(await echoedText), text);
      ws.close(1000, 'done');
      assert.equal(await closed(ws), 1000, 'the close handshake went through both ways');
    }
    assert.deepEqual(greetings.sort(), ['hello from a', 'hello from a', 'hello from b', 'hello from b', 'hello from c', 'hello from c']);
    // What the instances saw: the path and query, the WebSocket headers, the gateway's forwarding headers.
    const seen = instances.flatMap((i) => i.handshakes);
    assert.equal(seen.length, 6);
    for (const req of seen) {
      assert.equal(req.url, '/chat/room?x=1');
      assert.equal(req.headers.upgrade, 'websocket');
      assert.equal(req.headers['sec-websocket-version'], '13');
      assert.equal(req.headers['x-forwarded-for'], '127.0.0.1');
    }
  });

  test('subprotocols and extensions are negotiated end to end (permessage-deflate passes through)', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a', { greet: false, perMessageDeflate: true });
    instance.wss.options.handleProtocols = (protocols: Set<string>) => (protocols.has('chat.v2') ? 'chat.v2' : false);
    const { url } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const ws = new WebSocket(wsUrl(url, '/chat'), ['chat.v1', 'chat.v2'], { perMessageDeflate: true });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    assert.equal(ws.protocol, 'chat.v2');
    assert.match(ws.extensions, /permessage-deflate/);
    const payload = 'compressible '.repeat(10_000);
    const echoed = nextMessage(ws);
    ws.send(payload);
    assert.equal(String(await echoed), payload);
    ws.close();
    await closed(ws);
  });

  test('a handshake is refused with a normal HTTP answer by auth (401), a rate limit (429), a route without WebSockets (403), and never reaches an instance', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [
        { prefix: '/secure', service: 'chat', auth: { apiKeys: { keys: ['chat-key-1234'] } } },
        { prefix: '/limited', service: 'chat', rateLimit: { rps: 0.01, burst: 1 } },
        { prefix: '/plain', service: 'chat', websocket: false },
      ],
    });
    await assert.rejects(connect(wsUrl(url, '/secure')), { status: 401 });
    const { ws } = await connect(wsUrl(url, '/secure'), { headers: { 'x-api-key': 'chat-key-1234' } });
    ws.close();
    const first = await connect(wsUrl(url, '/limited'));
    first.ws.close();
    await assert.rejects(connect(wsUrl(url, '/limited')), { status: 429 });
    await assert.rejects(connect(wsUrl(url, '/plain')), { status: 403 });
    assert.equal(instance.handshakes.length, 2, 'only the admitted handshakes reached the instance');
    // The refusal is JSON like every other, and the connection closes after it.
    const port = Number(new URL(url).port);
    const refused = await rawExchange(port, `GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    assert.deepEqual(statusLines(refused.text), [403]);
    assert.match(refused.text, /"error":"MESH_ERR_UPGRADE_REFUSED"/);
    assert.equal(refused.closedByServer, true);
    // A handshake must be a GET without a body (RFC 6455 4.1).
    const post = await rawExchange(port, `POST /secure HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi`);
    assert.deepEqual(statusLines(post.text), [400]);
    // Another protocol in Upgrade (h2c) is ignored: the request is served as HTTP/1.1.
    const h2c = await rawExchange(port, `GET /plain/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`);
    assert.deepEqual(statusLines(h2c.text), [200]);
    assert.match(h2c.text, /plain http from a/);
    await closed(ws);
  });

  test('an instance answering the handshake without 101 is relayed as it is; no instance at all is 503', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] }, empty: {} },
      routes: [
        { prefix: '/chat', service: 'chat' },
        { prefix: '/empty', service: 'empty' },
      ],
    });
    // ws answers 400 to a handshake with a bad key; the client gets that answer.
    const port = Number(new URL(url).port);
    const bad = await rawExchange(port, `GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n`);
    assert.deepEqual(statusLines(bad.text), [400]);
    assert.equal(bad.closedByServer, true);
    await assert.rejects(connect(wsUrl(url, '/empty')), { status: 503 });
  });

  test('bytes the client sends right behind its handshake reach the instance', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a', { greet: false });
    const { url } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const got = new Promise<string>((resolve) => instance.wss.once('connection', (ws) => ws.once('message', (data) => resolve(String(data)))));
    // A masked text frame "early" in the same write as the handshake.
    const mask = randomBytes(4);
    const text = Buffer.from('early');
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | text.length]), mask, Buffer.from(text.map((b, i) => b ^ mask[i % 4]!))]);
    const handshake = Buffer.from(`GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    const answer = rawExchange(Number(new URL(url).port), Buffer.concat([handshake, frame]), 500);
    assert.equal(await got, 'early');
    const { text: seen } = await answer;
    assert.match(seen, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    assert.match(seen, /sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
  });

  test('an instance killed with open tunnels closes them; new handshakes go to the instances left', LIMIT, async (t) => {
    const errors = trackProcessErrors(t);
    const [a, b] = await Promise.all([startWsInstance(t, 'a'), startWsInstance(t, 'b')]);
    const { url, gateway } = await startGateway(t, {
      services: { chat: { instances: [{ url: a.url }, { url: b.url }], retries: { attempts: 2 } } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const open = await Promise.all([0, 1, 2, 3].map(() => connect(wsUrl(url, '/chat'))));
    const onA = open.filter((c) => c.greeting === 'hello from a');
    const onB = open.filter((c) => c.greeting === 'hello from b');
    assert.equal(onA.length, 2);
    assert.equal(gateway.websockets, 4);
    await a.close();
    // Each tunnel to a is closed for its client (no close frame came: 1006).
    assert.deepEqual(await Promise.all(onA.map((c) => closed(c.ws))), [1006, 1006]);
    // The tunnels to b still carry messages.
    for (const { ws } of onB) {
      const echoed = nextMessage(ws);
      ws.send('still here');
      assert.equal(String(await echoed), 'still here');
    }
    // a refuses connections now: every new handshake lands on b (a refused connect is retried).
    for (let i = 0; i < 4; i++) {
      const { ws, greeting } = await connect(wsUrl(url, '/chat'));
      assert.equal(greeting, 'hello from b');
      ws.close();
      await closed(ws);
    }
    for (const { ws } of onB) ws.close();
    await waitFor(() => gateway.websockets === 0, 5000, 'every tunnel released');
    assert.deepEqual(errors, []);
  });

  test('a tunnel idle past websocket.idleTimeout is closed; one with traffic stays open', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url, gateway } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat', websocket: { idleTimeout: 300 } }],
    });
    const idle = await connect(wsUrl(url, '/chat'));
    const busy = await connect(wsUrl(url, '/chat'));
    const idleClosed = closed(idle.ws);
    // The busy tunnel sends a message every 100 ms, for three idle timeouts.
    for (let i = 0; i < 9; i++) {
      const echoed = nextMessage(busy.ws);
      busy.ws.send(`ping ${i}`);
      assert.equal(String(await echoed), `ping ${i}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(await idleClosed, 1006);
    assert.equal(busy.ws.readyState, WebSocket.OPEN);
    assert.equal(gateway.websockets, 1);
    // The instance's side of the idle tunnel is closed too.
    await waitFor(() => instance.wss.clients.size === 1, 5000, 'the instance saw the idle tunnel close');
    busy.ws.close();
    await closed(busy.ws);
  });

  test('websocket.maxConnections per route and per gateway: past them a handshake is 503, and a place is freed when a tunnel closes', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [
        { prefix: '/small', service: 'chat', websocket: { maxConnections: 2 } },
        { prefix: '/big', service: 'chat' },
      ],
      websocket: { maxConnections: 3 },
    });
    const small = [await connect(wsUrl(url, '/small')), await connect(wsUrl(url, '/small'))];
    const refused = await connect(wsUrl(url, '/small')).catch((err: { status: number; headers: Record<string, string> }) => err);
    assert.equal((refused as { status: number }).status, 503);
    assert.equal((refused as { headers: Record<string, string> }).headers['retry-after'], '1');
    const big = await connect(wsUrl(url, '/big'));
    // The gateway's three places are taken.
    await assert.rejects(connect(wsUrl(url, '/big')), { status: 503 });
    small[0]!.ws.close();
    await closed(small[0]!.ws);
    const again = await connect(wsUrl(url, '/small'));
    assert.equal(again.greeting, 'hello from a');
    for (const { ws } of [small[1]!, big, again]) ws.close();
  });

  test('close() takes no new handshakes, lets open tunnels work through drainTimeout, then cuts them', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url, gateway } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat' }],
      drainTimeout: 600,
    });
    const { ws } = await connect(wsUrl(url, '/chat'));
    const wsClosed = closed(ws);
    const closing = gateway.close();
    // Draining: the open tunnel still carries messages.
    const echoed = nextMessage(ws);
    ws.send('during the drain');
    assert.equal(String(await echoed), 'during the drain');
    await assert.rejects(connect(wsUrl(url, '/chat')));
    await closing;
    assert.equal(await wsClosed, 1006);
    assert.equal(gateway.websockets, 0);
    await waitFor(() => instance.sockets.size === 0, 5000, 'the instance side closed');
  });

  test('1,000 handshakes opened and aborted at every stage leave no socket, tunnel or listener behind', { timeout: 120_000 }, async (t) => {
    const errors = trackProcessErrors(t);
    const instance = await startWsInstance(t, 'a', { greet: false });
    const { url, gateway } = await startGateway(t, {
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const listenersBefore = gateway.eventNames().map((name) => gateway.listenerCount(name)).reduce((a, b) => a + b, 0);
    let opened = 0;
    const cycle = (i: number): Promise<void> =>
      new Promise((resolve) => {
        const ws = new WebSocket(wsUrl(url, '/chat'));
        ws.on('error', () => {});
        ws.on('close', () => resolve());
        if (i % 3 === 0) {
          // Aborted as soon as the request is written: before or during the handshake.
          ws.once('upgrade', () => ws.terminate());
          setImmediate(() => ws.terminate());
        } else {
          ws.once('open', () => {
            opened++;
            if (i % 3 === 1) ws.terminate();
            else ws.close();
          });
        }
      });
    for (let i = 0; i < 1000; i += 25) await Promise.all(Array.from({ length: 25 }, (_, k) => cycle(i + k)));
    assert.ok(opened > 500, `${opened} tunnels opened`);
    await waitFor(() => gateway.websockets === 0 && gateway.inflight === 0, 10_000, 'no tunnel or request left');
    await waitFor(() => instance.sockets.size === 0, 10_000, `no socket left at the instance (${instance.sockets.size})`);
    const connections = await new Promise<number>((resolve, reject) => gateway.server!.getConnections((err, n) => (err ? reject(err) : resolve(n))));
    assert.equal(connections, 0, 'no client socket left at the gateway');
    const listenersAfter = gateway.eventNames().map((name) => gateway.listenerCount(name)).reduce((a, b) => a + b, 0);
    assert.equal(listenersAfter, listenersBefore);
    for (const inst of gateway.registry.getService('chat')!.instances.values()) assert.equal(inst.inflight, 0);
    assert.deepEqual(errors, []);
  });

  test('metrics count handshakes by status, open tunnels and their bytes; the access log writes a line when a tunnel closes', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a', { greet: false });
    const lines: string[] = [];
    const { url, adminUrl } = await startGateway(
      t,
      {
        services: { chat: { instances: [{ url: instance.url }] } },
        routes: [
          { name: 'chat', prefix: '/chat', service: 'chat' },
          { prefix: '/plain', service: 'chat', websocket: false },
        ],
        admin: {},
        metrics: {},
      },
      { setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) } as never })) },
    );
    const { ws } = await new Promise<{ ws: WebSocket }>((resolve, reject) => {
      const socket = new WebSocket(wsUrl(url, '/chat'));
      socket.once('open', () => resolve({ ws: socket }));
      socket.once('error', reject);
    });
    const metricsOpen = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metricsOpen, /meshgate_websocket_connections\{route="chat"\} 1/);
    const payload = randomBytes(100_000);
    const echoed = nextMessage(ws);
    ws.send(payload);
    await echoed;
    ws.close();
    await closed(ws);
    await assert.rejects(connect(wsUrl(url, '/plain')), { status: 403 });
    await waitFor(() => lines.length === 2, 5000, 'two access-log lines');
    const metrics = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metrics, /meshgate_websocket_connections\{route="chat"\} 0/);
    assert.match(metrics, /meshgate_websocket_handshakes_total\{route="chat",code="101"\} 1/);
    assert.match(metrics, /meshgate_websocket_handshakes_total\{route="\/plain",code="403"\} 1/);
    const up = Number(/meshgate_websocket_bytes_total\{route="chat",direction="upstream"\} (\d+)/.exec(metrics)?.[1]);
    const down = Number(/meshgate_websocket_bytes_total\{route="chat",direction="downstream"\} (\d+)/.exec(metrics)?.[1]);
    assert.ok(up > 100_000 && up < 100_100, `upstream bytes ${up}`);
    assert.ok(down > 100_000 && down < 100_100, `downstream bytes ${down}`);
    const line = JSON.parse(lines[0]!);
    assert.equal(line.status, 101);
    assert.equal(line.route, 'chat');
    assert.equal(line.bytesIn, up);
    assert.equal(line.bytesOut, down);
    // A clean close: the client's close frame, the instance's answer, then one side's TCP close.
    assert.ok(['client', 'upstream'].includes(line.websocket.closedBy), line.websocket.closedBy);
    assert.ok(line.durationMs > 0);
    assert.equal(JSON.parse(lines[1]!).status, 403);
  });

  test('mounted in a Koa app, the host server hands upgrades to gateway.handleUpgrade', LIMIT, async (t) => {
    const { gateway, app } = await mountedChat(t);
    const server = createServer(app.callback());
    server.on('upgrade', (req, socket, head) => gateway.handleUpgrade(req, socket, head));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const { ws, greeting } = await connect(wsUrl(url, '/chat'));
    assert.equal(greeting, 'hello from a');
    ws.close();
    await closed(ws);
    assert.equal((await send(`${url}/elsewhere`)).body, 'host app');
  });

  test('a header a plugin adds to the 101 with CR/LF in it is dropped, not injected; open tunnels take no connection from plain requests', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const { url } = await startGateway(
      t,
      {
        services: { chat: { instances: [{ url: instance.url }], maxConnections: 1, maxPendingRequests: 0, maxRequests: 1 } },
        routes: [{ prefix: '/chat', service: 'chat' }],
      },
      {
        setup: (gw) =>
          gw.use(
            definePlugin({
              name: 'echo-query',
              setup(host) {
                host.addMiddleware('onRequest', (ctx, next) => {
                  if (ctx.state.mesh.upgrade === null) return next();
                  ctx.state.mesh.responseHeaders.push('x-echo', 'a\r\nset-cookie: session=attacker');
                  ctx.state.mesh.responseHeaders.push('x-fine', 'yes');
                  return next();
                });
              },
            }),
          ),
      },
    );
    const port = Number(new URL(url).port);
    const raw = await rawExchange(port, `GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`, 300);
    assert.match(raw.text, /^HTTP\/1\.1 101 /);
    assert.doesNotMatch(raw.text, /set-cookie/i);
    assert.match(raw.text, /x-fine: yes/);
    // Two open tunnels on a service with one connection, no queue and one request at a time: plain requests still pass.
    const open = [await connect(wsUrl(url, '/chat')), await connect(wsUrl(url, '/chat'))];
    for (let i = 0; i < 3; i++) assert.equal((await send(`${url}/chat/plain`)).status, 200);
    for (const { ws } of open) ws.close();
  });
});

/** `ws`'s frame writer and reader, which its types leave out. */
const { Receiver, Sender } = wsModule as unknown as {
  Receiver: new (options: { isServer: boolean; binaryType: 'nodebuffer' }) => Writable;
  Sender: new (socket: Writable, extensions: object, generateMask: undefined) => {
    send(data: Buffer | string, options: { binary: boolean; fin: boolean; mask: boolean; compress: boolean }, cb: () => void): void;
    close(code: number, reason: string, mask: boolean, cb: () => void): void;
  };
};

/** A WebSocket over an HTTP/2 stream (RFC 8441), client side: frames written and read by `ws`'s own Sender and Receiver. */
interface H2WebSocket {
  status: number;
  headers: IncomingHttpHeaders;
  stream: ClientHttp2Stream;
  /** The answer's body, for a refusal. */
  body: Promise<string>;
  send(data: Buffer | string): void;
  next(): Promise<Buffer>;
  /** Sends a close frame (1000). */
  close(): void;
  /** Settles when the stream has closed. */
  closed: Promise<void>;
}

/** An HTTP/2 session to the gateway, once the gateway's SETTINGS arrived (they say whether extended CONNECT is on). */
async function h2session(t: TestContext, url: string): Promise<ClientHttp2Session> {
  const session = h2connect(url);
  t.after(() => session.destroy());
  await new Promise((resolve, reject) => session.once('remoteSettings', resolve).once('error', reject));
  return session;
}

function h2WebSocket(session: ClientHttp2Session, path: string, headers: Record<string, string> = {}, protocol = 'websocket'): Promise<H2WebSocket> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':protocol': protocol, ':scheme': 'http', ':path': path, 'sec-websocket-version': '13', ...headers });
    stream.once('error', reject);
    const closedStream = new Promise<void>((done) => stream.once('close', done));
    stream.once('response', (head) => {
      const status = Number(head[':status']);
      const queue: Buffer[] = [];
      const waiting: ((data: Buffer) => void)[] = [];
      let body = Promise.resolve('');
      if (status === 200) {
        const receiver = new Receiver({ isServer: false, binaryType: 'nodebuffer' });
        receiver.on('message', (data: Buffer) => {
          const waiter = waiting.shift();
          if (waiter) waiter(data);
          else queue.push(data);
        });
        stream.pipe(receiver);
      } else {
        body = new Promise((done) => {
          let text = '';
          stream.setEncoding('utf8');
          stream.on('data', (chunk: string) => (text += chunk));
          stream.on('end', () => done(text));
        });
      }
      const sender = new Sender(stream, {}, undefined);
      resolve({
        status,
        headers: head,
        stream,
        body,
        send: (data) => sender.send(data, { binary: typeof data !== 'string', fin: true, mask: true, compress: false }, () => {}),
        next: () => (queue.length > 0 ? Promise.resolve(queue.shift()!) : new Promise((done) => waiting.push(done))),
        close: () => sender.close(1000, '', true, () => {}),
        closed: closedStream,
      });
    });
  });
}

describe('WebSocket over HTTP/2 (RFC 8441)', () => {
  test('an extended CONNECT is a WebSocket: SETTINGS_ENABLE_CONNECT_PROTOCOL advertised, 200 without Sec-WebSocket-Accept, the instance gets an HTTP/1.1 handshake, 1 MB messages cross both ways', LIMIT, async (t) => {
    const instances = [await startWsInstance(t, 'a'), await startWsInstance(t, 'b')];
    const { url, gateway } = await startGateway(t, {
      listen: { http2: true },
      services: { chat: { balancer: 'round-robin', instances: instances.map((i) => ({ url: i.url })) } },
      routes: [{ prefix: '/chat', service: 'chat', methods: ['GET'] }],
    });
    const session = await h2session(t, url);
    assert.equal(session.remoteSettings.enableConnectProtocol, true);
    const greetings: string[] = [];
    for (let i = 0; i < 2; i++) {
      const ws = await h2WebSocket(session, `/chat/room?n=${i}`, { 'sec-websocket-protocol': 'chat.v1' });
      assert.equal(ws.status, 200);
      assert.equal(ws.headers['sec-websocket-accept'], undefined);
      assert.equal(ws.headers.upgrade, undefined);
      greetings.push(String(await ws.next()));
      const up = randomBytes(1024 * 1024);
      ws.send(up);
      assert.equal(sha256(await ws.next()), sha256(up));
      ws.send('x'.repeat(300_000));
      assert.equal(String(await ws.next()).length, 300_000);
      ws.close();
      await ws.closed;
    }
    assert.deepEqual(greetings.sort(), ['hello from a', 'hello from b']);
    // What each instance saw: an HTTP/1.1 handshake as a client would have sent it, with a key of the gateway's.
    for (const instance of instances) {
      const [handshake] = instance.handshakes;
      assert.equal(handshake!.method, 'GET');
      assert.equal(handshake!.httpVersion, '1.1');
      assert.equal(handshake!.headers.upgrade, 'websocket');
      assert.match(handshake!.headers['sec-websocket-key']!, /^[A-Za-z0-9+/]{22}==$/);
      assert.equal(handshake!.headers['sec-websocket-protocol'], 'chat.v1');
      assert.equal(handshake!.headers.host, new URL(url).host);
      assert.match(handshake!.url!, /^\/chat\/room\?n=\d$/);
    }
    await waitFor(() => gateway.websockets === 0, 5000, 'the tunnels closed');
    // The session carries plain requests beside tunnels, as before.
    const plain = await new Promise<number>((resolve) => session.request({ ':path': '/chat/plain' }).on('response', (h) => resolve(Number(h[':status']))).resume());
    assert.equal(plain, 200);
  });

  test('a browser (Chromium, over TLS) opens its WebSocket as an extended CONNECT on its HTTP/2 connection, and talks through it', { timeout: 60_000 }, async (t) => {
    const tls = await selfSigned(t);
    const instance = await startWsInstance(t, 'a', { greet: false });
    const seen: string[] = [];
    const { url } = await startGateway(
      t,
      {
        listen: { tls: { cert: tls.cert, key: tls.key } },
        services: { app: { instances: [{ url: instance.url }] } },
        routes: [{ prefix: '/', service: 'app' }],
      },
      {
        setup: (gw) =>
          gw.use(
            definePlugin({
              name: 'seen',
              setup: (host) => {
                host.addMiddleware('onRequest', (ctx, next) => {
                  seen.push(`HTTP/${ctx.req.httpVersion} ${ctx.method} ${ctx.path} ${ctx.req.headers[':protocol'] ?? '-'}`);
                  return next();
                });
              },
            }),
          ),
      },
    );
    const browser = await launchChromium({ ignoreCertificateErrors: true });
    t.after(() => browser.close());
    const page = await browser.newPage({ ignoreHTTPSErrors: true });
    const origin = url.replace('127.0.0.1', 'localhost');
    await page.goto(`${origin}/page`);
    assert.match(await page.content(), /plain http from a/);
    // Runs in the page: WebSocket is the browser's.
    const echoed = await page.evaluate(
      (target) =>
        new Promise<string>((resolve, reject) => {
          const ws = new WebSocket(target);
          ws.onopen = () => ws.send('hello over h2');
          ws.onmessage = (event) => {
            resolve(String(event.data));
            ws.close();
          };
          ws.onerror = () => reject(new Error('the WebSocket failed'));
        }),
      `${origin.replace('https', 'wss')}/chat`,
    );
    assert.equal(echoed, 'hello over h2');
    assert.ok(seen.includes('HTTP/2.0 GET /chat websocket'), seen.join('; '));
    assert.equal(instance.handshakes[0]!.httpVersion, '1.1');
  });

  test('refusals are answers on the stream: auth 401, websocket: false 403, a plain CONNECT 405, another :protocol 501, an instance that answers 200 instead of 101 is 502; none open a tunnel', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const plainHttp = await startUpstream(t);
    const { url } = await startGateway(t, {
      listen: { http2: true },
      services: { chat: { instances: [{ url: instance.url }] }, web: { instances: [{ url: plainHttp.url }] } },
      routes: [
        { prefix: '/secure', service: 'chat', auth: { apiKeys: { keys: ['chat-key-1234'] } } },
        { prefix: '/plain', service: 'chat', websocket: false },
        { prefix: '/web', service: 'web' },
      ],
    });
    const session = await h2session(t, url);
    const denied = await h2WebSocket(session, '/secure');
    assert.equal(denied.status, 401);
    assert.equal(JSON.parse(await denied.body).error, 'MESH_ERR_UNAUTHORIZED');
    const refused = await h2WebSocket(session, '/plain');
    assert.equal(refused.status, 403);
    assert.equal(JSON.parse(await refused.body).error, 'MESH_ERR_UPGRADE_REFUSED');
    const other = await h2WebSocket(session, '/plain', {}, 'connect-udp');
    assert.equal(other.status, 501);
    assert.equal(JSON.parse(await other.body).error, 'MESH_ERR_NOT_IMPLEMENTED');
    const plainConnect = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const stream = session.request({ ':method': 'CONNECT', ':authority': 'example.com:443' });
      let body = '';
      let status = 0;
      stream.on('response', (h) => (status = Number(h[':status'])));
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => (body += chunk));
      stream.on('end', () => resolve({ status, body }));
      stream.on('error', reject);
    });
    assert.equal(plainConnect.status, 405);
    assert.equal(JSON.parse(plainConnect.body).error, 'MESH_ERR_METHOD_NOT_ALLOWED');
    // A 200 on an extended CONNECT says the WebSocket is open (RFC 8441): an instance that did not switch gets the client a 502.
    const notSwitched = await h2WebSocket(session, '/web/socket');
    assert.equal(notSwitched.status, 502);
    assert.match(JSON.parse(await notSwitched.body).message, /answered the WebSocket handshake with 200, not 101/);
    assert.equal(plainHttp.seen.length, 1);
    assert.equal(instance.handshakes.length, 0);
    const allowed = await h2WebSocket(session, '/secure', { 'x-api-key': 'chat-key-1234' });
    assert.equal(allowed.status, 200);
    assert.equal(String(await allowed.next()), 'hello from a');
    allowed.close();
    await allowed.closed;
  });

  test('300 extended CONNECTs reset at every stage (before the answer, at it, in the tunnel) leave no tunnel, request or instance socket behind', { timeout: 60_000 }, async (t) => {
    const instance = await startWsInstance(t, 'a');
    const errors = trackProcessErrors(t);
    const { url, gateway } = await startGateway(t, {
      // Each cycle resets a stream on purpose: not a flood to cut off.
      listen: { http2: { maxResetsPerSecond: 100_000 } },
      services: { chat: { instances: [{ url: instance.url }] } },
      routes: [{ prefix: '/chat', service: 'chat' }],
    });
    const session = await h2session(t, url);
    for (let i = 0; i < 300; i++) {
      const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', 'sec-websocket-version': '13' });
      stream.on('error', () => {});
      const stage = i % 3;
      if (stage === 0) stream.close(constants.NGHTTP2_CANCEL);
      else {
        await new Promise((resolve) => (stage === 1 ? stream.once('response', resolve) : stream.once('data', resolve)));
        stream.close(constants.NGHTTP2_CANCEL);
      }
      await new Promise((resolve) => stream.once('close', resolve));
    }
    await waitFor(() => gateway.websockets === 0 && gateway.inflight === 0 && instance.sockets.size === 0, 10_000, 'nothing left open');
    const ws = await h2WebSocket(session, '/chat');
    assert.equal(String(await ws.next()), 'hello from a');
    ws.close();
    await ws.closed;
    assert.deepEqual(errors, []);
  });

  test('a handshake the client resets while the instance thinks frees its place at once and reaches no tunnel; tunnels the gateway cuts are no resets of the client\'s', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a');
    // An instance that takes its time over the handshake: it answers 101 only when told.
    let answer: (() => void) | null = null;
    const slow = createNetServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () => (answer = () => socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n')));
    });
    await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve));
    t.after(() => slow.close());
    const errors: Error[] = [];
    const ends: number[] = [];
    const { url, gateway } = await startGateway(
      t,
      {
        // Two resets a second (bursts of four) for the whole session: the gateway's own cuts below are more.
        listen: { http2: { maxResetsPerSecond: 2 } },
        services: { slow: { instances: [{ url: `http://127.0.0.1:${(slow.address() as AddressInfo).port}` }] }, chat: { instances: [{ url: instance.url }] } },
        routes: [
          { prefix: '/slow', service: 'slow', websocket: { maxConnections: 1 } },
          { prefix: '/chat', service: 'chat', websocket: { idleTimeout: '200ms' } },
        ],
      },
      {
        setup: (gw) => {
          gw.on('gateway:error', (err) => errors.push(err));
          gw.on('request:end', (_ctx, status) => ends.push(status));
        },
      },
    );
    const session = await h2session(t, url);
    const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/slow', 'sec-websocket-version': '13' });
    stream.on('error', () => {});
    await waitFor(() => answer !== null, 5000, 'the handshake at the slow instance');
    stream.close(constants.NGHTTP2_CANCEL);
    await waitFor(() => gateway.websockets === 0, 5000, 'the place freed');
    assert.deepEqual(ends, [499]);
    answer!();
    // The route's only place (maxConnections: 1) is free for the next handshake.
    answer = null;
    const next = h2WebSocket(session, '/slow');
    await waitFor(() => answer !== null, 5000, 'the next handshake at the slow instance');
    answer!();
    const ws = await next;
    assert.equal(ws.status, 200);
    ws.stream.close();
    await ws.closed;
    assert.deepEqual(errors, []);

    // Six tunnels on the session go idle and the gateway cuts them: the session lives on.
    const tunnels = await Promise.all(Array.from({ length: 6 }, () => h2WebSocket(session, '/chat')));
    assert.deepEqual(tunnels.map((tunnel) => tunnel.status), Array(6).fill(200));
    await Promise.all(tunnels.map((tunnel) => tunnel.closed));
    const plain = await new Promise<number>((resolve, reject) => session.request({ ':path': '/chat/plain' }).on('response', (h) => resolve(Number(h[':status']))).on('error', reject).resume());
    assert.equal(plain, 200);
    assert.equal(session.destroyed, false);
  });

  test('mounted in a Koa app on an HTTP/2 server, the host server hands CONNECT streams to gateway.handleConnect', LIMIT, async (t) => {
    const { gateway, app } = await mountedChat(t);
    const server = createHttp2Server({ settings: { enableConnectProtocol: true } }, app.callback());
    server.on('connect', (req, res) => gateway.handleConnect(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const session = await h2session(t, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const ws = await h2WebSocket(session, '/chat');
    assert.equal(ws.status, 200);
    assert.equal(String(await ws.next()), 'hello from a');
    ws.close();
    await ws.closed;
    const other = await new Promise<string>((resolve, reject) => {
      let body = '';
      session.request({ ':path': '/elsewhere' }).setEncoding('utf8').on('data', (chunk: string) => (body += chunk)).on('end', () => resolve(body)).on('error', reject);
    });
    assert.equal(other, 'host app');
    // The host server's close() waits for its sessions.
    session.destroy();
  });

  test('either side closing ends the other; metrics, the access log and close() treat the stream as they treat a socket; nothing is left behind', LIMIT, async (t) => {
    const instance = await startWsInstance(t, 'a', { greet: false });
    const lines: string[] = [];
    const { url, adminUrl, gateway } = await startGateway(
      t,
      {
        listen: { http2: true },
        services: { chat: { instances: [{ url: instance.url }] } },
        routes: [{ name: 'chat', prefix: '/chat', service: 'chat' }],
        admin: {},
        metrics: {},
        drainTimeout: '300ms',
      },
      { setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) } as never })) },
    );
    const session = await h2session(t, url);
    // The client resets its stream: the instance's socket closes.
    const first = await h2WebSocket(session, '/chat');
    first.send(randomBytes(50_000));
    await first.next();
    await waitFor(() => instance.sockets.size === 1, 5000, 'the tunnel at the instance');
    first.stream.close();
    await waitFor(() => instance.sockets.size === 0, 5000, "the instance's socket closed with the client's stream");
    // The instance closes: the client's stream ends.
    const second = await h2WebSocket(session, '/chat');
    second.send('ping');
    await second.next();
    for (const client of instance.wss.clients) client.terminate();
    await second.closed;
    await waitFor(() => lines.length === 2, 5000, 'two access-log lines');
    const [byClient, byUpstream] = lines.map((line) => JSON.parse(line));
    assert.equal(byClient.status, 200);
    assert.equal(byClient.websocket.closedBy, 'client');
    assert.ok(byClient.bytesIn > 50_000 && byClient.bytesIn < 50_100, `bytes in ${byClient.bytesIn}`);
    assert.ok(byClient.bytesOut > 50_000 && byClient.bytesOut < 50_100, `bytes out ${byClient.bytesOut}`);
    assert.equal(byUpstream.websocket.closedBy, 'upstream');
    const metrics = (await send(`${adminUrl}/metrics`)).body;
    assert.match(metrics, /meshgate_websocket_connections\{route="chat"\} 0/);
    assert.match(metrics, /meshgate_websocket_handshakes_total\{route="chat",code="101"\} 2/);
    assert.equal(gateway.websockets, 0);
    assert.equal(gateway.inflight, 0);
    // close(): the session gets a GOAWAY, the open tunnel works through drainTimeout, then is cut.
    const third = await h2WebSocket(session, '/chat');
    const goaway = new Promise((resolve) => session.once('goaway', resolve));
    const closing = gateway.close();
    await goaway;
    third.send('still here');
    assert.equal(String(await third.next()), 'still here');
    await third.closed;
    await closing;
    await waitFor(() => instance.sockets.size === 0, 5000, 'no socket left at the instance');
  });
});
