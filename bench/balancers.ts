/**
 * Micro-benchmark of `Balancer.pick()` for every built-in algorithm at 10, 100 and 1000
 * instances (equal and mixed weights for round-robin and random), plus the consistent-hash ring
 * build for 1000 instances. Prints ns per pick and the ratio to a baseline measured in the same
 * run (`candidates[i % n]`, the cheapest pick there is); no assertions.
 *
 * Run: `node --import tsx bench/balancers.ts` (options: `--picks=1000000`).
 */
import { EventEmitter } from 'node:events';
import type { Context } from 'koa';
import type { Balancer } from '../lib/balancers/balancer.js';
import { ConsistentHashBalancer } from '../lib/balancers/consistent-hash.js';
import { EwmaBalancer } from '../lib/balancers/ewma.js';
import { LeastRequestBalancer } from '../lib/balancers/least-request.js';
import { RandomBalancer } from '../lib/balancers/random.js';
import { RoundRobinBalancer } from '../lib/balancers/round-robin.js';
import { validateConfig } from '../lib/index.js';
import { Registry, type Instance, type Service } from '../lib/registry/registry.js';
import { MeshState } from '../lib/core/state.js';
import { seededRandom } from '../lib/kit/random.js';

const PICKS = Number(process.argv.find((a) => a.startsWith('--picks='))?.slice(8) ?? 1_000_000);
/** A case slower than this per pick runs fewer picks, so the whole run stays around a minute. */
const MAX_CASE_NS = 2e9;
const SIZES = [10, 100, 1000] as const;
const KEYS = 4096; // distinct consistent-hash keys, cycled


type Weights = 'equal' | 'mixed';

function makeService(balancer: string, n: number, weights: Weights): Service {
  const registry = new Registry(new EventEmitter());
  const config = validateConfig({ services: { svc: { balancer, ...(balancer === 'consistent-hash' ? { hashOn: 'header:x-user-id' } : {}) } } });
  const service = registry.addService('svc', config.services.svc!);
  const random = seededRandom(n);
  for (let i = 0; i < n; i++) {
    registry.upsertInstance('svc', {
      url: `http://10.${i >> 8}.${i & 255}.1:8080`,
      weight: weights === 'equal' ? 1 : 1 + Math.floor(random() * 5),
    });
  }
  return service;
}

/** Fake Koa contexts carrying a consistent-hash header key, `KEYS` of them to cycle through. */
const contexts: Context[] = Array.from({ length: KEYS }, (_, i) => {
  const mesh = new MeshState();
  mesh.path = '/api/items';
  return { req: { headers: { 'x-user-id': `user-${i}` }, socket: { remoteAddress: '10.0.0.1' } }, state: { mesh } } as unknown as Context;
});

/** Load-aware balancers see some requests in flight and (EWMA) some latency history, as in a running gateway. */
function loadUp(service: Service, balancer: Balancer): void {
  const random = seededRandom(7);
  for (const inst of service.instances.values()) {
    inst.inflight = Math.floor(random() * 4);
    balancer.observe?.(inst, 1 + random() * 50, false);
  }
}

let sink = 0;

/**
 * A timing loop of its own for each case: `new Function` compiles fresh code, so the JIT's type
 * feedback of one case (which balancer class, which closure) never slows down the next one.
 */
type Loop = (balancer: Balancer, candidates: readonly Instance[], ctxs: readonly Context[], mask: number, count: number) => number;
const freshLoop = (): Loop =>
  new Function(
    'balancer',
    'candidates',
    'ctxs',
    'mask',
    'count',
    'let s = 0; for (let i = 0; i < count; i++) s ^= balancer.pick(candidates, ctxs[i & mask]).weight; return s;',
  ) as Loop;

/** ns per pick over `count` picks. */
function time(run: (count: number) => number, count: number): number {
  const start = process.hrtime.bigint();
  sink ^= run(count);
  return Number(process.hrtime.bigint() - start) / count;
}

/** Warms up twice (the first lets the JIT settle), then times up to `PICKS` picks. */
function measure(run: (count: number) => number): { ns: number; picks: number } {
  const warm = Math.min(100_000, PICKS);
  const warmNs = time(run, warm);
  const picks = Math.max(100_000, Math.min(PICKS, Math.floor(MAX_CASE_NS / Math.max(warmNs, 1))));
  time(run, warm);
  return { ns: time(run, picks), picks };
}

interface Case {
  name: string;
  weights: Weights;
  make: (service: Service) => Balancer;
  ctx?: boolean;
}

const cases: Case[] = [
  { name: 'round-robin', weights: 'equal', make: (s) => new RoundRobinBalancer(s) },
  { name: 'round-robin', weights: 'mixed', make: (s) => new RoundRobinBalancer(s) },
  { name: 'random', weights: 'equal', make: (s) => new RandomBalancer(s, seededRandom(1)) },
  { name: 'random', weights: 'mixed', make: (s) => new RandomBalancer(s, seededRandom(1)) },
  { name: 'least-request', weights: 'equal', make: (s) => new LeastRequestBalancer(s, seededRandom(1)) },
  { name: 'consistent-hash', weights: 'equal', make: (s) => new ConsistentHashBalancer(s), ctx: true },
  { name: 'ewma', weights: 'equal', make: () => new EwmaBalancer({ random: seededRandom(1) }) },
];

const rows: string[][] = [];
const header = ['balancer', 'weights', 'instances', 'ns/pick', 'x baseline', 'picks'];

for (const n of SIZES) {
  const base = makeService('round-robin', n, 'equal').candidates();
  const baselineLoop = new Function('c', 'n', 'count', 'let s = 0; for (let i = 0; i < count; i++) s ^= c[i % n].weight; return s;') as (
    c: readonly Instance[],
    n: number,
    count: number,
  ) => number;
  const baseline = measure((count) => baselineLoop(base, n, count));
  rows.push(['baseline: candidates[i % n]', 'equal', String(n), baseline.ns.toFixed(1), '1.0', String(baseline.picks)]);
  for (const c of cases) {
    const service = makeService(c.name, n, c.weights);
    const balancer = c.make(service);
    loadUp(service, balancer);
    const candidates = service.candidates();
    const loop = freshLoop();
    const result = c.ctx
      ? measure((count) => loop(balancer, candidates, contexts, KEYS - 1, count))
      : measure((count) => loop(balancer, candidates, contexts, 0, count));
    rows.push([c.name, c.weights, String(n), result.ns.toFixed(1), (result.ns / baseline.ns).toFixed(1), String(result.picks)]);
  }
}

const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
const line = (cells: string[]): string => cells.map((cell, i) => (i < 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
process.stdout.write(`pick() micro-benchmark, node ${process.version}\n\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n`);
for (const row of rows) process.stdout.write(`${line(row)}\n`);

// ring build: what a membership change costs the next consistent-hash request
process.stdout.write('\nconsistent-hash ring build, 1000 instances (median of 15, after 3 warm-ups)\n');
for (const weights of ['equal', 'mixed'] as const) {
  const service = makeService('consistent-hash', 1000, weights);
  const ring = new ConsistentHashBalancer(service);
  const samples: number[] = [];
  for (let i = 0; i < 18; i++) {
    const start = process.hrtime.bigint();
    ring.rebuild();
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (i >= 3) samples.push(ms);
  }
  samples.sort((a, b) => a - b);
  const median = samples[samples.length >> 1]!;
  process.stdout.write(`  ${weights.padEnd(5)} weights: ${ring.size} points, ${median.toFixed(2)} ms (min ${samples[0]!.toFixed(2)} ms)\n`);
}

// keeps `sink` observable, so no pick loop can be optimized away
if (sink === 0.5) process.stdout.write('\n');
