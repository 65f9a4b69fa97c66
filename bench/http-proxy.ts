/**
 * The http-proxy target: `http.createServer` plus http-proxy's `createProxyServer` with a
 * keep-alive agent, as a competent user configures it (without the agent, http-proxy sends
 * `Connection: close` and opens a new upstream connection per request). Errors answer 502.
 */
import { Agent, createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import httpProxy from 'http-proxy';

/** Starts the http-proxy proxy on `127.0.0.1:port` in front of `upstream` (an origin URL). */
export async function startHttpProxy(upstream: string, port = 0): Promise<{ server: Server; port: number; agent: Agent }> {
  const agent = new Agent({ keepAlive: true });
  const proxy = httpProxy.createProxyServer({ target: upstream, agent });
  proxy.on('error', (_err, _req, res) => {
    // On an upstream error the client gets a 502; for a socket (upgrade) there is nobody to answer.
    if (!('writeHead' in res)) return void res.destroy();
    if (res.headersSent) res.destroy();
    else res.writeHead(502, { 'content-length': '0' }).end();
  });
  const server = createServer((req, res) => proxy.web(req, res));
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, agent };
}
