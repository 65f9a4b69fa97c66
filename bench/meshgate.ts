/**
 * The meshgate target: a gateway with one service, `bench`, whose only instance is the benchmark
 * upstream, a route `/` to it, round-robin, logging silent and no admin server. Nothing else is
 * configured, so this measures the core pipeline (Koa, routing, the stages, the undici proxy)
 * plus whatever built-in plugins are on by default (lib/builtins.ts), as a user gets it.
 */
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Gateway, GatewayConfigInput } from '../lib/index.js';

// Measure what users run: the tsc build in dist/ (npm run bench builds it first). Under tsx the
// sources carry esbuild's __name() wrappers on every closure. BENCH_SOURCE=1 measures the sources.
const DIST = new URL('../dist/lib/index.js', import.meta.url);
const entry = existsSync(DIST) && process.env.BENCH_SOURCE !== '1' ? DIST.href : new URL('../lib/index.ts', import.meta.url).href;
const { createGateway } = (await import(entry)) as { createGateway: (config: GatewayConfigInput) => Gateway };

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
