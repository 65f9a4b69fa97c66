/**
 * Registry scale: `npm run bench:scale`. Builds gateways with 10, 1,000 and 10,000 instances
 * (10 per service, so 1, 100 and 1,000 services, one route each) and measures what routing costs
 * per request: normalize the path, match the route, find the service, take its candidates and let
 * the balancer pick. Requests cycle over every service, so caches are as cold as in production.
 * The claim to check: the cost does not grow with the number of services. Measured twice: all
 * requests to one service (the algorithm alone) and spread over every service (plus cache misses).
 */
import type { Context } from 'koa';
import { createGateway } from '../lib/index.js';
import { normalizeTarget } from '../lib/http/path.js';

const SIZES = [10, 1_000, 10_000];
const PER_SERVICE = 10;
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 2_000_000);
/** One balancer for every service, so sizes differ only in how many services there are. */
const BALANCER = process.env.BENCH_BALANCER ?? 'least-request';

async function measure(instances: number): Promise<{ ns: number; hotNs: number; services: number }> {
  const serviceCount = Math.max(1, instances / PER_SERVICE);
  const services: Record<string, { balancer: string; instances: { url: string }[] }> = {};
  const routes: { prefix: string; service: string }[] = [];
  for (let s = 0; s < serviceCount; s++) {
    const name = `svc-${s}`;
    services[name] = {
      balancer: BALANCER,
      instances: Array.from({ length: PER_SERVICE }, (_, i) => ({ url: `http://10.${(s >> 8) & 255}.${s & 255}.${i + 1}:8080` })),
    };
    routes.push({ prefix: `/${name}`, service: name });
  }
  const gateway = createGateway({ logLevel: 'silent', tracing: false, services, routes });
  await gateway.ready();
  const spread = Array.from({ length: 4096 }, (_, i) => `/svc-${(i * 7919) % serviceCount}/users/${i}?q=1`);
  const hot = Array.from({ length: 4096 }, (_, i) => `/svc-${serviceCount - 1}/users/${i}?q=1`);
  const ctx = { state: { mesh: {} }, req: { headers: {}, socket: {} } } as unknown as Context;

  const run = (n: number, targets: string[]): number => {
    let checksum = 0;
    for (let i = 0; i < n; i++) {
      const target = normalizeTarget(targets[i & 4095]!);
      const route = gateway.router.match(target.path)!;
      const service = gateway.registry.getService(route.service)!;
      const candidates = service.candidates();
      checksum += gateway.balancerFor(service).pick(candidates, ctx).weight;
    }
    return checksum;
  };
  const time = (targets: string[]): number => {
    run(200_000, targets); // warm-up: JIT and lazily built balancer state
    const start = process.hrtime.bigint();
    if (run(ITERATIONS, targets) === 0) throw new Error('nothing was picked');
    return Number(process.hrtime.bigint() - start) / ITERATIONS;
  };
  const ns = time(spread);
  const hotNs = time(hot);
  await gateway.close();
  return { ns, hotNs, services: serviceCount };
}

async function main(): Promise<void> {
  const rows: { instances: number; services: number; ns: number; hotNs: number }[] = [];
  for (const instances of SIZES) rows.push({ instances, ...(await measure(instances)) });
  const base = rows[0]!.ns;
  const hotBase = rows[0]!.hotNs;
  process.stdout.write(`\n| instances | services | ns/request, one service | vs ${SIZES[0]} | ns/request, spread over all services | vs ${SIZES[0]} |\n|---:|---:|---:|---:|---:|---:|\n`);
  for (const row of rows) {
    process.stdout.write(
      `| ${row.instances.toLocaleString('en-US')} | ${row.services.toLocaleString('en-US')} | ${row.hotNs.toFixed(0)} | ${(row.hotNs / hotBase).toFixed(2)}x | ${row.ns.toFixed(0)} | ${(row.ns / base).toFixed(2)}x |\n`,
    );
  }
  process.stdout.write('\nOne service: the algorithmic cost (every lookup is O(1) or O(path depth)). Spread: the same work with\nper-service state spread over memory, so cache misses grow with the working set, as in any gateway.\n');
  process.stdout.write(`\n${new Date().toISOString().slice(0, 10)} · node ${process.version} · ${BALANCER} · ${ITERATIONS.toLocaleString('en-US')} requests per measurement\n`);
}

void main();
