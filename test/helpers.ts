/**
 * Shared test fixtures: real HTTP upstreams on port 0, gateways on port 0, and clean-up through
 * node:test's `t.after`. Nothing here mocks a socket.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { createGateway, type Gateway, type GatewayConfigInput, type GatewayOptions } from '../lib/index.js';

/** A real upstream: records what it saw, answers with `handler` (default: JSON echo). */
export interface Upstream {
  server: Server;
  url: string;
  port: number;
  /** Every request the upstream received, in order. */
  seen: { method: string; url: string; headers: IncomingMessage['headers']; rawHeaders: string[] }[];
  /** Destroys open sockets, then closes. */
  close(): Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** Answers `{ name, method, url, headers }` as JSON. */
export function echo(name: string): Handler {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.stringify({ name, method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  };
}

/** Starts a real HTTP server on 127.0.0.1:0; closed after the test. */
export async function startUpstream(t: TestContext | null, handler: Handler = echo('upstream')): Promise<Upstream> {
  const sockets = new Set<Socket>();
  const seen: Upstream['seen'] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders });
    handler(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | null = null;
  const upstream: Upstream = {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      })),
  };
  t?.after(() => upstream.close());
  return upstream;
}

/** A gateway listening on 127.0.0.1:0 with logging off; closed after the test. */
export async function startGateway(
  t: TestContext | null,
  config: GatewayConfigInput,
  options: GatewayOptions & { setup?: (gw: Gateway) => void } = {},
): Promise<{ gateway: Gateway; url: string; adminUrl?: string }> {
  const gateway = createGateway(
    {
      logLevel: 'silent',
      ...config,
      listen: { host: '127.0.0.1', port: 0, ...config.listen },
      ...(config.admin ? { admin: { host: '127.0.0.1', port: 0, ...config.admin } } : {}),
    },
    options,
  );
  options.setup?.(gateway);
  const info = await gateway.listen();
  t?.after(() => gateway.close());
  return { gateway, url: info.url, adminUrl: info.adminUrl };
}

/** A plain HTTP request with node:http (no pooling surprises); resolves with status, headers and body. */
export function send(
  url: string,
  options: { method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer } = {},
): Promise<{ status: number; headers: IncomingMessage['headers']; rawHeaders: string[]; body: string; json: () => any }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body, json: () => JSON.parse(body) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Resolves after `ms` on a real timer. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 20 ms until it returns true, or fails after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
}
