import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { GatewayConfig } from '../config/schema.js';

/**
 * The proxy's listener: HTTP, or HTTPS with `listen.tls`, with the configured limits. CONNECT is
 * refused outright: a gateway is not a forward proxy.
 */
export function createListener(
  listen: GatewayConfig['listen'],
  resolvePath: (path: string) => string,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
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
  const server = listen.tls
    ? createHttpsServer(
        {
          ...options,
          ...listenerTlsFiles(listen.tls, resolvePath),
          // Mutual TLS: `require` refuses a handshake without a client certificate the client CA verifies.
          ...(listen.tls.clientCert ? { requestCert: true, rejectUnauthorized: listen.tls.clientCert === 'require' } : {}),
        },
        handler,
      )
    : createHttpServer(options, handler);
  server.on('upgrade', upgrade);
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
