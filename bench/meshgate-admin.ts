/**
 * The targets of bench/metrics-cost.ts: the gateway of bench/meshgate.ts (one service `bench`
 * whose only instance is the benchmark upstream, route `/`, round-robin, logging silent) plus the
 * admin server on a free loopback port, with the metrics plugin on (`meshgate-metrics`: what
 * configuring `admin` gives you) or off (`meshgate-no-metrics`: `metrics: false`). Nothing else
 * differs, so the gap between the two is what the metrics plugin costs.
 */
import { existsSync } from 'node:fs';
import { get } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Gateway, GatewayConfigInput, ListenInfo } from '../lib/index.js';

// The same build as bench/meshgate.ts: dist/ when it exists, the sources with BENCH_SOURCE=1.
const DIST = new URL('../dist/lib/index.js', import.meta.url);
/** Which build the targets run: `dist` or `source`. */
export const BUILD = existsSync(DIST) && process.env.BENCH_SOURCE !== '1' ? 'dist' : 'source';
const entry = BUILD === 'dist' ? DIST.href : new URL('../lib/index.ts', import.meta.url).href;
const { createGateway } = (await import(entry)) as { createGateway: (config: GatewayConfigInput) => Gateway };

/**
 * Starts meshgate with its admin server in front of `upstream`, metrics on or off, and checks
 * that it is what it claims: with metrics, `GET /metrics` counts a request sent through it;
 * without, `/metrics` answers 404.
 */
export async function startMeshgateWithAdmin(upstream: string, options: { metrics: boolean }): Promise<{ gateway: Gateway; port: number; info: ListenInfo }> {
  const gateway = createGateway({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: 'bench-admin-token' },
    services: { bench: { balancer: 'round-robin', instances: [{ url: upstream }] } },
    routes: [{ prefix: '/', service: 'bench' }],
    logLevel: 'silent',
    ...(options.metrics ? {} : { metrics: false }),
  });
  const info = await gateway.listen();
  const proxied = await fetchText(`${info.url}/bench-self-check`);
  if (proxied.status !== 200) throw new Error(`self-check: the gateway answered ${proxied.status}`);
  const scraped = await fetchText(`${info.adminUrl}/metrics`);
  if (options.metrics && !(scraped.status === 200 && /^meshgate_requests_total\{.*\} 1$/m.test(scraped.body))) {
    throw new Error(`self-check: /metrics answered ${scraped.status} without the request just sent`);
  }
  if (!options.metrics && scraped.status !== 404) throw new Error(`self-check: metrics: false, yet /metrics answered ${scraped.status}`);
  return { gateway, port: (gateway.server!.address() as AddressInfo).port, info };
}

function fetchText(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', reject);
    }).on('error', reject);
  });
}
