import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A tiny demo service: answers every request with JSON saying which instance answered,
 * and `GET /health` with 200.
 */
export function startDemoInstance(name: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    const body = JSON.stringify({ instance: name, method: req.method, path: req.url, forwardedFor: req.headers['x-forwarded-for'] ?? null });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

/** The port a demo instance listens on. */
export function portOf(server: Server): number {
  return (server.address() as AddressInfo).port;
}
