/**
 * meshgate mounted in an existing Koa app: the app keeps its own routes (here /hello and a
 * body parser), and requests under /api are proxied to the `api` service.
 *
 *   node --import tsx examples/mount-in-koa.ts
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { bodyParser } from '@koa/bodyparser';
import Koa from 'koa';
import { createGateway, type Gateway } from '../lib/index.js';

/** Builds the host app with the gateway mounted; `apiUrl` is the upstream of the `api` service. */
export function buildApp(apiUrl: string): { app: Koa; gateway: Gateway } {
  const gateway = createGateway({
    logLevel: 'warn',
    services: { api: { instances: [{ url: apiUrl }], retries: { attempts: 1 } } },
    routes: [{ prefix: '/api', service: 'api', stripPrefix: true }],
  });
  const app = new Koa();
  app.use(async (ctx, next) => {
    ctx.set('x-host-app', 'yes'); // reaches proxied responses too
    await next();
  });
  app.use(bodyParser()); // meshgate forwards the parsed body when a parser already read it
  // Starts the gateway now (health checks, leases, admin registrations), not at the first request.
  // Register plugins with gateway.use() before this line.
  app.use(gateway.middleware());
  app.use((ctx) => {
    ctx.body = { from: 'the host app', path: ctx.path };
  });
  return { app, gateway };
}

async function main(): Promise<void> {
  const upstream = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ from: 'the api service', path: req.url }));
  });
  await listen(upstream);
  const { app, gateway } = buildApp(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
  await gateway.ready(); // fails fast on a bad config or plugin; the gateway is already started
  const server = createServer(app.callback());
  await listen(server);
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (const path of ['/api/users/1', '/hello']) {
    const res = await fetch(base + path);
    console.log(`GET ${path} -> ${res.status} ${await res.text()}  (x-host-app: ${res.headers.get('x-host-app')})`);
  }
  server.close();
  await gateway.close();
  upstream.close();
}

function listen(server: Server): Promise<void> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
