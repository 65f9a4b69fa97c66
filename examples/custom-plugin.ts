/**
 * A custom plugin: adds a response header with the instance that answered, and counts requests
 * per service, shared with other plugins through a decorator.
 *
 *   node --import tsx examples/custom-plugin.ts
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { createGateway, definePlugin, type GatewayPlugin } from '../lib/index.js';

declare module '../lib/index.js' {
  interface GatewayServices {
    /** Requests per service, kept by the served-by plugin. */
    requestCounts: Map<string, number>;
  }
}

/** Options of {@link servedBy}. */
export interface ServedByOptions {
  /** Response header naming the instance. @default 'x-served-by' */
  header?: string;
}

/**
 * Tells the client which instance answered, and counts requests per service.
 * @example gateway.use(servedBy({ header: 'x-backend' }))
 */
export function servedBy(options: ServedByOptions = {}): GatewayPlugin {
  const header = options.header ?? 'x-served-by';
  return definePlugin({
    name: 'served-by',
    setup(gateway) {
      const counts = new Map<string, number>();
      gateway.decorate('requestCounts', counts);
      // guard wraps each attempt: after next(), the chosen instance and its answer are known.
      gateway.addMiddleware('guard', async (ctx, next) => {
        await next();
        const mesh = ctx.state.mesh;
        ctx.set(header, mesh.instance!.id);
        counts.set(mesh.service!.name, (counts.get(mesh.service!.name) ?? 0) + 1);
      });
      gateway.onClose(() => counts.clear());
    },
  });
}

async function main(): Promise<void> {
  const upstream = createServer((_req, res) => res.end('hello from the upstream\n'));
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const port = (upstream.address() as AddressInfo).port;
  const gateway = createGateway({
    logLevel: 'warn',
    listen: { host: '127.0.0.1', port: 0 },
    services: { hello: { instances: [{ url: `http://127.0.0.1:${port}`, id: 'hello-1' }] } },
    routes: [{ prefix: '/hello', service: 'hello' }],
  });
  gateway.use(servedBy());
  const { url } = await gateway.listen();
  const res = await fetch(`${url}/hello`);
  console.log(`GET ${url}/hello -> ${res.status}, x-served-by: ${res.headers.get('x-served-by')}, body: ${(await res.text()).trim()}`);
  console.log('requests per service:', Object.fromEntries(gateway.get('requestCounts')));
  await gateway.close();
  upstream.close();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
