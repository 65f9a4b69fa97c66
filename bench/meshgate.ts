/**
 * The meshgate targets.
 * - `meshgate` ({@link startMeshgate}): a gateway with one service, `bench`, whose only instance
 *   is the benchmark upstream, a route `/` to it, round-robin, logging silent and no admin server.
 *   Nothing else is configured, so this measures the core pipeline (Koa, routing, the stages, the
 *   undici proxy) plus whatever built-in plugins are on by default (lib/builtins.ts).
 * - `meshgate-core`, `meshgate-standard`, `meshgate-untraced`, `meshgate-log` ({@link startMeshgateStack}):
 *   the stacks of bench/stack.ts (`meshgate-untraced` is the standard one without trace context),
 *   each checked at start to run exactly the plugins its name promises.
 */
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Gateway, GatewayConfigInput } from '../lib/index.js';
import { stackConfig, type StackName, type StandardPlugin } from './stack.js';

// Measure what users run: the tsc build in dist/ (npm run bench builds it first). Under tsx the
// sources carry esbuild's __name() wrappers on every closure. BENCH_SOURCE=1 measures the sources.
// BENCH_DIST (set by the runner for the baseline-* targets): another checkout's build, to measure
// the code before a change against the code after it in the same run.
const DIST = process.env.BENCH_DIST ? pathToFileURL(join(process.env.BENCH_DIST, 'dist/lib/index.js')) : new URL('../dist/lib/index.js', import.meta.url);
if (process.env.BENCH_DIST && !existsSync(DIST)) throw new Error(`BENCH_BASELINE: no build at ${DIST.pathname} (run npm run build there)`);
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

/** The built-in plugins each stack must run (static discovery is always on) and those it must not. */
const STACK_PLUGINS: Record<StackName, { on: string[]; off: string[] }> = {
  core: { on: [], off: ['trace-context', 'metrics', 'dashboard', 'access-log', 'health-check', 'circuit-breaker', 'retries'] },
  standard: { on: ['trace-context', 'metrics', 'dashboard', 'health-check', 'circuit-breaker', 'retries'], off: ['access-log'] },
  'standard+log': { on: ['trace-context', 'metrics', 'dashboard', 'health-check', 'circuit-breaker', 'retries', 'access-log'], off: [] },
};

/**
 * Starts meshgate with one of the stacks of bench/stack.ts in front of `upstream`, and throws if
 * the plugins it runs are not the ones the stack stands for (a config change that silently turned
 * one off would otherwise make the benchmark flatter). The access log, when on, goes to stdout.
 * `without` leaves one plugin of the stack out (bench/instructions.ts prices each plugin so).
 */
export async function startMeshgateStack(
  stack: StackName,
  upstream: string,
  port = 0,
  without?: StandardPlugin,
): Promise<{ gateway: Gateway; port: number }> {
  const gateway = createGateway(stackConfig(stack, upstream, port, without));
  await gateway.listen();
  // A baseline build older than a plugin of the stack runs the stack as it was then.
  const built = (name: string): boolean => !process.env.BENCH_DIST || existsSync(join(process.env.BENCH_DIST, 'dist/plugins', name));
  const on = STACK_PLUGINS[stack].on.filter(built);
  const off = STACK_PLUGINS[stack].off;
  const expected = without === undefined ? { on, off } : { on: on.filter((name) => name !== without), off: [...off, without] };
  const wrong = [
    ...expected.on.filter((name) => !gateway.hasPlugin(name)).map((name) => `${name} is off`),
    ...expected.off.filter((name) => gateway.hasPlugin(name)).map((name) => `${name} is on`),
  ];
  if (wrong.length > 0) {
    await gateway.close();
    throw new Error(`the ${stack} stack is not what it claims: ${wrong.join(', ')}`);
  }
  return { gateway, port: (gateway.server!.address() as AddressInfo).port };
}
