/**
 * The floor for any Node proxy: `http.createServer` plus one undici `Pool` to the upstream, what a
 * competent engineer writes in 40 lines. It forwards method, path and headers (minus hop-by-hop),
 * streams the body both ways with `pool.stream` writing straight into the client's response, and
 * does nothing else: no routing, no X-Forwarded-*, no timeouts, no retries. meshgate's ratio
 * against it is the price of everything meshgate adds.
 */
import { createServer, type IncomingHttpHeaders, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type Dispatcher } from 'undici';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** Starts the bare proxy on `127.0.0.1:port` in front of `upstream` (an origin URL). */
export async function startBareProxy(upstream: string, port = 0): Promise<{ server: Server; port: number; pool: Pool }> {
  const pool = new Pool(upstream, { connections: null, pipelining: 1 });
  const server = createServer((req, res) => {
    const headers: string[] = [];
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) headers.push(raw[i]!, raw[i + 1]!);
    const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
    pool.stream(
      { path: req.url!, method: req.method as Dispatcher.HttpMethod, headers, body: hasBody ? req : null, opaque: res },
      ({ statusCode, headers: upstreamHeaders, opaque }) => {
        const out = opaque as ServerResponse;
        out.writeHead(statusCode, responseHeaders(upstreamHeaders));
        return out;
      },
      (err) => {
        if (!err) return;
        if (res.headersSent) res.destroy();
        else res.writeHead(502, { 'content-length': '0' }).end();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, pool };
}

function responseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) if (!HOP_BY_HOP.has(name)) out[name] = headers[name];
  return out;
}
