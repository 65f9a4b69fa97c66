/**
 * A plugin that answers requests itself: `GET /ping` on the gateway's own port says whether each
 * service has an instance to send to, with no upstream involved. Its settings are a top-level
 * `ping` section, declared with a hand-written Standard Schema (no validation library at all):
 * any object with a `~standard.validate` is accepted, as zod 4, valibot and arktype schemas are.
 *
 *   node --import tsx examples/ping-plugin.ts
 *
 * In a config file:   ping: { path: /ping }      plugins: [ { module: ./examples/ping-plugin.ts } ]
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { createGateway, definePlugin, type StandardSchemaV1 } from '../lib/index.js';

/** The `ping` section's options. */
export interface PingOptions {
  /** The path answered. @default '/ping' */
  path: string;
}

/** `ping: { path }`: a Standard Schema written by hand, for a plugin that wants no dependency. */
export const pingSchema: StandardSchemaV1<unknown, PingOptions> = {
  '~standard': {
    version: 1,
    vendor: 'ping-plugin',
    validate(value) {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return { issues: [{ message: 'expected a mapping like { path: /ping }' }] };
      const { path = '/ping', ...rest } = value as Record<string, unknown>;
      const issues: StandardSchemaV1.Issue[] = Object.keys(rest).map((key) => ({ message: 'unknown field', path: [key] }));
      if (typeof path !== 'string' || !path.startsWith('/')) issues.push({ message: 'expected a path starting with "/"', path: ['path'] });
      return issues.length > 0 ? { issues } : { value: { path: path as string } };
    },
  },
};

/**
 * Answers `GET <path>` with `{ status, services: { name: usable instances } }`: 200 when every
 * service has an instance to send to, 503 otherwise. Off unless the config has a `ping` section.
 */
export function ping() {
  return definePlugin({
    name: 'ping',
    config: { global: { key: 'ping', schema: pingSchema } },
    setup(gateway, scope) {
      gateway.addMiddleware('onRequest', (ctx, next) => {
        const options = scope.global(ctx);
        if (options === undefined || ctx.method !== 'GET' || ctx.path !== options.path) return next();
        const services: Record<string, number> = {};
        for (const service of gateway.registry.services()) services[service.name] = service.candidates().length;
        const ready = Object.values(services).every((n) => n > 0);
        ctx.status = ready ? 200 : 503;
        ctx.body = { status: ready ? 'ok' : 'degraded', services };
      });
    },
  });
}

async function main(): Promise<void> {
  const upstream = createServer((_req, res) => res.end('hello\n'));
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const port = (upstream.address() as AddressInfo).port;
  const gateway = createGateway({
    logLevel: 'warn',
    listen: { host: '127.0.0.1', port: 0 },
    ping: { path: '/ping' },
    services: { hello: { instances: [{ url: `http://127.0.0.1:${port}` }] }, later: {} },
    routes: [{ prefix: '/hello', service: 'hello' }],
  });
  gateway.use(ping());
  const { url } = await gateway.listen();
  const res = await fetch(`${url}/ping`);
  console.log(`GET /ping -> ${res.status} ${await res.text()}`);
  await gateway.close();
  upstream.close();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
