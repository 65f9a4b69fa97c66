import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { GatewayConfig } from '../config/schema.js';

/**
 * The proxy's listener: HTTP, or HTTPS with `listen.tls`, with the configured limits. CONNECT is
 * refused outright: a gateway is not a forward proxy.
 */
export function createListener(listen: GatewayConfig['listen'], resolvePath: (path: string) => string, handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
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
          cert: readFileSync(resolvePath(listen.tls.cert)),
          key: readFileSync(resolvePath(listen.tls.key)),
          ...(listen.tls.ca ? { ca: readFileSync(resolvePath(listen.tls.ca)) } : {}),
          // Mutual TLS: the client CA verifies client certificates; `require` refuses a handshake without one.
          ...(listen.tls.clientCert
            ? { requestCert: true, rejectUnauthorized: listen.tls.clientCert === 'require', ca: readFileSync(resolvePath(listen.tls.clientCa!)) }
            : {}),
        },
        handler,
      )
    : createHttpServer(options, handler);
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    const body = JSON.stringify({ error: 'MESH_ERR_METHOD_NOT_ALLOWED', message: 'CONNECT is not supported' });
    socket.end(`HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
  return server;
}

/** The host part of a URL for an address the server listens on (the wildcard becomes loopback). */
export function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::' || host === '') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
