import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { constants as h2, createServer as createHttp2Server, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { HTTP2_LISTENER_DEFAULTS, type GatewayConfig } from '../config/schema.js';

/**
 * The proxy's listener: HTTP, or HTTPS with `listen.tls`, with the configured limits. CONNECT is
 * refused outright: a gateway is not a forward proxy.
 */
export function createListener(
  listen: GatewayConfig['listen'],
  resolvePath: (path: string) => string,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
  extendedConnect: (req: Http2ServerRequest, res: Http2ServerResponse) => void,
): Server {
  const options = {
    maxHeaderSize: listen.maxHeaderSize,
    headersTimeout: listen.headersTimeout,
    requestTimeout: listen.requestTimeout,
    keepAliveTimeout: listen.keepAliveTimeout,
    // Node checks those timeouts only every connectionsCheckingInterval (30 s by default),
    // which would let a slowloris client hold a socket 60 times longer than configured.
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(Math.min(listen.headersTimeout, listen.requestTimeout) / 2))),
  };
  const http2 = http2Settings(listen);
  const server = listen.tls
    ? createHttpsServer(
        {
          ...options,
          // HTTP/2 is offered first; a client that does not speak it gets HTTP/1.1.
          ...(http2 !== null ? { ALPNProtocols: ['h2', 'http/1.1'] } : {}),
          ...listenerTlsFiles(listen.tls, resolvePath),
          // Mutual TLS: `require` refuses a handshake without a client certificate the client CA verifies.
          ...(listen.tls.clientCert ? { requestCert: true, rejectUnauthorized: listen.tls.clientCert === 'require' } : {}),
        },
        handler,
      )
    : createHttpServer(options, handler);
  server.on('upgrade', upgrade);
  if (http2 !== null) serveHttp2(server, listen, http2, handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void, extendedConnect);
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    const body = JSON.stringify({ error: 'MESH_ERR_METHOD_NOT_ALLOWED', message: 'CONNECT is not supported' });
    socket.end(`HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
  return server;
}

/**
 * The listener's certificate, key and CAs, read from their files: at start, and again (for
 * `server.setSecureContext`) when a file changes. With mutual TLS the CA is the client CA.
 */
export function listenerTlsFiles(tls: NonNullable<GatewayConfig['listen']['tls']>, resolvePath: (path: string) => string): { cert: Buffer; key: Buffer; ca?: Buffer } {
  const ca = tls.clientCert ? tls.clientCa : tls.ca;
  return {
    cert: readFileSync(resolvePath(tls.cert)),
    key: readFileSync(resolvePath(tls.key)),
    ...(ca ? { ca: readFileSync(resolvePath(ca)) } : {}),
  };
}

/** The host part of a URL for an address the server listens on (the wildcard becomes loopback). */
export function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::' || host === '') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

/** What `listen.http2` comes to: null when off. */
interface Http2Settings {
  maxConcurrentStreams: number;
  maxResetsPerSecond: number;
}

function http2Settings(listen: GatewayConfig['listen']): Http2Settings | null {
  const option = listen.http2 ?? listen.tls !== undefined;
  if (option === false) return null;
  return option === true ? HTTP2_LISTENER_DEFAULTS : option;
}

/** The connection preface every HTTP/2 client sends first (RFC 9113 3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const kHttp2 = Symbol('meshgate.http2');

/**
 * HTTP/2 beside HTTP/1.1 on the listener's port. Over TLS the connection goes to HTTP/2 when
 * ALPN chose `h2`; without TLS when its first bytes are the HTTP/2 preface (prior knowledge),
 * as Envoy's AUTO codec does. Either way the same handler gets node:http2's compatibility
 * request and response, so routes and plugins do not see the version. The HTTP/1 server keeps
 * its timeouts and limits for the connections that stay HTTP/1.
 */
function serveHttp2(
  server: Server,
  listen: GatewayConfig['listen'],
  settings: Http2Settings,
  handler: (req: Http2ServerRequest, res: Http2ServerResponse) => void,
  extendedConnect: (req: Http2ServerRequest, res: Http2ServerResponse) => void,
): void {
  const h2server = createHttp2Server({
    // enableConnectProtocol: WebSockets over HTTP/2 (RFC 8441), an extended CONNECT per WebSocket.
    settings: { maxConcurrentStreams: settings.maxConcurrentStreams, maxHeaderListSize: listen.maxHeaderSize, enablePush: false, enableConnectProtocol: true },
    maxSessionInvalidFrames: 100,
    maxSessionRejectedStreams: 100,
  });
  const sessions = new Set<ServerHttp2Session>();
  (server as Server & { [kHttp2]?: Set<ServerHttp2Session> })[kHttp2] = sessions;
  h2server.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    idleSessions(session, listen.headersTimeout, listen.keepAliveTimeout);
    // A peer that breaks the protocol loses its connection, not the gateway.
    session.on('error', () => session.destroy());
    guardResets(session, settings.maxResetsPerSecond);
  });
  h2server.on('request', (req: Http2ServerRequest, res: Http2ServerResponse) => {
    // A request reset in the same read as its HEADERS (a rapid-reset flood) is over before it
    // starts: the handler runs once the whole read is processed, and finds the stream closed.
    setImmediate(startStream, handler, req, res);
  });
  // CONNECT streams: a WebSocket (`:protocol: websocket`) is the gateway's to handle, the rest it refuses.
  h2server.on('connect', (req: Http2ServerRequest, res: Http2ServerResponse) => void setImmediate(startStream, extendedConnect, req, res));
  // Stream-level errors (a client's protocol error on one stream) end that stream only.
  h2server.on('streamError', () => {});
  if (listen.tls) {
    const http1 = server.listeners('secureConnection')[0] as (socket: TLSSocket) => void;
    server.removeListener('secureConnection', http1);
    server.on('secureConnection', (socket: TLSSocket) => {
      if (socket.alpnProtocol === 'h2') h2server.emit('connection', socket);
      else http1.call(server, socket);
    });
    return;
  }
  const http1 = server.listeners('connection')[0] as (socket: Socket) => void;
  server.removeListener('connection', http1);
  server.on('connection', (socket: Socket) => sniffPreface(socket, listen.headersTimeout, (isHttp2) => {
    if (isHttp2) h2server.emit('connection', socket);
    else {
      http1.call(server, socket);
      socket.resume();
    }
  }));
}

function startStream(handler: (req: Http2ServerRequest, res: Http2ServerResponse) => void, req: Http2ServerRequest, res: Http2ServerResponse): void {
  if (res.stream.destroyed) return;
  handler(req, res);
}

/**
 * Reads a new plaintext connection's first bytes and says whether they are the HTTP/2 preface;
 * the bytes are put back for the server that takes the connection. A client that sends nothing
 * within `timeout` is dropped, as the HTTP/1 server would drop it.
 */
function sniffPreface(socket: Socket, timeout: number, decide: (isHttp2: boolean) => void): void {
  let seen: Buffer = Buffer.alloc(0);
  // A deadline, not an idle timer: a byte at a time must not hold the socket any longer.
  const timer = setTimeout(() => socket.destroy(), timeout);
  timer.unref();
  const onData = (chunk: Buffer): void => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, PREFACE.length);
    const matches = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
    // Part of the preface so far: wait for the rest.
    if (matches && n < PREFACE.length) return;
    socket.off('data', onData);
    socket.off('error', onError);
    clearTimeout(timer);
    socket.pause();
    socket.unshift(seen);
    decide(matches);
  };
  const onError = (): void => {
    clearTimeout(timer);
    socket.destroy();
  };
  socket.on('data', onData);
  socket.on('error', onError);
}

/**
 * The HTTP/2 side of the listener's timeouts: a connection must open its first stream within
 * `headersTimeout`, and one with no stream open and nothing sent for `keepAliveTimeout` is closed
 * (GOAWAY, so its client knows), as an idle HTTP/1.1 keep-alive connection is. A quiet stream (a
 * gRPC server stream between messages) keeps its connection.
 */
function idleSessions(session: ServerHttp2Session, headersTimeout: number, keepAliveTimeout: number): void {
  let open = 0;
  let started = false;
  session.setTimeout(headersTimeout);
  // on(), not setTimeout's callback, which node:http2 runs once only.
  session.on('timeout', () => {
    if (open > 0) return;
    if (started) session.close();
    else session.destroy();
  });
  session.on('stream', (stream) => {
    if (!started) {
      started = true;
      session.setTimeout(keepAliveTimeout);
    }
    open++;
    stream.once('close', () => open--);
  });
}

/**
 * Closes a session whose client resets streams faster than `perSecond` (a burst of twice that):
 * GOAWAY with ENHANCE_YOUR_CALM, then the connection (CVE-2023-44487). nghttp2 has a looser
 * guard of its own; this one is the gateway's, so it is the same on every Node version.
 */
function guardResets(session: ServerHttp2Session, perSecond: number): void {
  const burst = perSecond * 2;
  let tokens = burst;
  let at = performance.now();
  session.on('stream', (stream) => {
    // 'aborted': the client reset the stream before the answer was complete (a cancel, or the attack).
    // node:http2 says it too when the gateway destroys a stream it had not ended (a tunnel it cut):
    // the stream is destroyed by then, and that is no reset of the client's.
    stream.once('aborted', () => {
      if (stream.destroyed) return;
      const now = performance.now();
      tokens = Math.min(burst, tokens + ((now - at) * perSecond) / 1000);
      at = now;
      if (--tokens >= 0 || session.destroyed) return;
      session.goaway(h2.NGHTTP2_ENHANCE_YOUR_CALM);
      session.destroy();
    });
  });
}

/**
 * The listener's HTTP/2 connections: `graceful` sends each a GOAWAY (streams under way finish,
 * no new ones start), otherwise they are closed at once.
 */
export function closeHttp2Sessions(server: Server, graceful: boolean): void {
  const sessions = (server as Server & { [kHttp2]?: Set<ServerHttp2Session> })[kHttp2];
  if (sessions === undefined) return;
  for (const session of sessions) {
    if (graceful) session.close();
    else session.destroy();
  }
}

