/**
 * The meshgate target: a gateway with one service, `bench`, whose only instance is the benchmark
 * upstream, a route `/` to it, round-robin, logging silent and no admin server. Nothing else is
 * configured, so this measures the core pipeline (Koa, routing, the stages, the undici proxy)
 * plus whatever built-in plugins are on by default (lib/builtins.ts), as a user gets it.
 */
import type { AddressInfo } from 'node:net';
import { createGateway, type Gateway } from '../lib/index.js';

/** Starts meshgate on `127.0.0.1:port` in front of `upstream` (an origin URL). */
export async function startMeshgate(upstream: string, port = 0): Promise<{ gateway: Gateway; port: number }> {
  const gateway = createGateway({
    listen: { host: '127.0.0.1', port },
    services: { bench: { balancer: 'round-robin', instances: [{ url: upstream }] } },
    routes: [{ prefix: '/', service: 'bench' }],
    logLevel: 'silent',
  });
  await gateway.listen();
  return { gateway, port: (gateway.server!.address() as AddressInfo).port };
}
