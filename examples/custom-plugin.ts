/**
 * A custom plugin with its own config sections: maintenance mode per route, and an owner per
 * service. Routes with `maintenance: { enabled: true }` answer 503 themselves (the upstream sees
 * nothing); every answer of a service with an `owner` section names the owning team in a header.
 *
 *   node --import tsx examples/custom-plugin.ts
 *
 * In a config file:
 *
 *   services:
 *     payments:
 *       instances: [ { url: http://127.0.0.1:3000 } ]
 *       owner: { team: payments }
 *   routes:
 *     - { prefix: /payments, service: payments }
 *     - { prefix: /refunds, service: payments, maintenance: { enabled: true, retryAfter: 10m } }
 *   plugins:
 *     - { module: ./examples/custom-plugin.ts }
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { duration } from '../lib/config/index.js';
import { createGateway, definePlugin } from '../lib/index.js';

/** `routes[i].maintenance`: the route answers itself while `enabled`. */
export const maintenanceSchema = z.strictObject({
  enabled: z.boolean(),
  /** The status of the answer. @default 503 */
  status: z.number().int().min(400).max(599).default(503),
  /** What the answer says. @default 'down for maintenance' */
  message: z.string().default('down for maintenance'),
  /** How long clients should wait, sent as `Retry-After` (seconds). */
  retryAfter: duration.optional(),
});

/** `services.<name>.owner`: who runs the service; named on every answer. */
export const ownerSchema = z.strictObject({
  team: z.string().min(1),
  /** The response header that names the team. @default 'x-owner' */
  header: z.string().regex(/^[A-Za-z0-9-]+$/, 'expected a header name').default('x-owner'),
});

// Typed config in TypeScript too: createGateway({ routes: [{ ..., maintenance: { enabled: true } }] }).
declare module '../lib/index.js' {
  interface RouteSections {
    maintenance: typeof maintenanceSchema;
  }
  interface ServiceSections {
    owner: typeof ownerSchema;
  }
}

/**
 * Maintenance mode per route and an owner header per service.
 * @example gateway.use(maintenance())
 */
export function maintenance() {
  return definePlugin({
    name: 'maintenance',
    config: {
      route: { key: 'maintenance', schema: maintenanceSchema },
      service: { key: 'owner', schema: ownerSchema },
    },
    setup(gateway, scope) {
      // onRequest: once per request (not per attempt), and before auth and rate limits spend anything on it.
      gateway.addMiddleware('onRequest', (ctx, next) => {
        const owner = scope.service(ctx);
        if (owner !== undefined) ctx.state.mesh.responseHeaders.push(owner.header, owner.team);
        const window = scope.route(ctx);
        if (window === undefined || !window.enabled) return next();
        if (window.retryAfter !== undefined) ctx.set('retry-after', String(Math.ceil(window.retryAfter / 1000)));
        ctx.status = window.status;
        ctx.body = { error: 'MAINTENANCE', message: window.message, team: owner?.team ?? null };
      });
    },
  });
}

export default maintenance;

async function main(): Promise<void> {
  const upstream = createServer((_req, res) => res.end('hello from the upstream\n'));
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const port = (upstream.address() as AddressInfo).port;
  const gateway = createGateway({
    logLevel: 'warn',
    listen: { host: '127.0.0.1', port: 0 },
    services: { payments: { instances: [{ url: `http://127.0.0.1:${port}` }], owner: { team: 'payments' } } },
    routes: [
      { prefix: '/payments', service: 'payments' },
      { prefix: '/refunds', service: 'payments', maintenance: { enabled: true, retryAfter: '10m' } },
    ],
  });
  gateway.use(maintenance());
  const { url } = await gateway.listen();
  for (const path of ['/payments/1', '/refunds/1']) {
    const res = await fetch(url + path);
    console.log(`GET ${path} -> ${res.status} x-owner: ${res.headers.get('x-owner')} retry-after: ${res.headers.get('retry-after')} body: ${(await res.text()).trim()}`);
  }
  await gateway.close();
  upstream.close();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
