/**
 * The benchmark's upstream: plain node:http answering every request with the same small JSON
 * body (about 100 bytes, `Content-Length` set, keep-alive), so what is measured is the proxy in
 * front of it, not the upstream's own work.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** The body every request gets. */
export const UPSTREAM_BODY = Buffer.from(
  JSON.stringify({ ok: true, service: 'bench', message: 'hello from the benchmark upstream', items: [1, 2, 3, 4, 5] }),
);

/** Starts the upstream on `127.0.0.1:port` (0 for any free port). */
export async function startUpstream(port = 0): Promise<{ server: Server; port: number }> {
  const length = String(UPSTREAM_BODY.length);
  const server = createServer((req, res) => {
    // Read (and drop) any request body so the connection stays reusable.
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': length });
    res.end(UPSTREAM_BODY);
  });
  // Idle sockets stay open past any client's keep-alive: a proxy running 50 times slower under
  // valgrind (bench:instructions) would otherwise send a request on a socket this side just closed,
  // and the bare proxy, which does not retry, would answer 502.
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}
