/**
 * `npm run bench:routing`: what matching a request against the route table costs as the table
 * grows. Tables of 10, 1,000 and 10,000 routes are generated alike (seeded): prefixes one to three
 * segments deep, a tenth with exact hosts (out of a hundred), a twentieth with `*.suffix` hosts, a
 * tenth with a header condition, a tenth with methods, a few exact paths and regexes. Requests are
 * drawn from the table's own routes (and a tenth that match nothing). Reported: ns per match (median
 * of BENCH_ROUNDS rounds of BENCH_LOOKUPS lookups) and the ratio to the 10-route table, measured in
 * this run. Environment: BENCH_ROUNDS (7), BENCH_LOOKUPS (200000), BENCH_SMOKE=1 (2 rounds of 20000).
 */
import type { IncomingHttpHeaders } from 'node:http';
import { validateConfig } from '../lib/index.js';
import { Router } from '../lib/core/router.js';
import { seededRandom } from '../lib/kit/random.js';
import { median } from './stats.js';

const smoke = process.env.BENCH_SMOKE === '1';
const ROUNDS = smoke ? 2 : Number(process.env.BENCH_ROUNDS ?? 7);
const LOOKUPS = smoke ? 20_000 : Number(process.env.BENCH_LOOKUPS ?? 200_000);

interface Probe {
  path: string;
  method: string;
  headers: IncomingHttpHeaders;
  query: string;
}

function table(size: number): { router: Router; probes: Probe[] } {
  const random = seededRandom(size);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const words = ['users', 'orders', 'cart', 'search', 'catalog', 'billing', 'auth', 'admin', 'media', 'feed'];
  const routes: Record<string, unknown>[] = [];
  const seen = new Set<string>();
  while (routes.length < size) {
    const i = routes.length;
    const depth = 1 + Math.floor(random() * 3);
    const path = `/${pick(words)}${i}` + Array.from({ length: depth - 1 }, () => `/${pick(words)}`).join('');
    const route: Record<string, unknown> = { service: 'api' };
    const roll = random();
    if (roll < 0.02) route.path = path;
    else if (roll < 0.03) route.pathRegex = `^${path}/[0-9]+$`;
    else route.prefix = path;
    const hostRoll = random();
    if (hostRoll < 0.1) route.hosts = [`h${Math.floor(random() * 100)}.example.com`];
    else if (hostRoll < 0.15) route.hosts = [`*.t${Math.floor(random() * 20)}.example.com`];
    if (random() < 0.1) route.headers = { 'x-tenant': `t${Math.floor(random() * 5)}` };
    if (random() < 0.1) route.methods = ['GET', 'HEAD'];
    const key = JSON.stringify(route);
    if (seen.has(key)) continue;
    seen.add(key);
    routes.push(route);
  }
  const config = validateConfig({ services: { api: {} }, routes });
  const router = new Router(config.routes);
  const probes: Probe[] = [];
  for (let i = 0; i < 4096; i++) {
    if (random() < 0.1) {
      probes.push({ path: `/nothing/${i}`, method: 'GET', headers: { host: 'www.example.com' }, query: '' });
      continue;
    }
    const route = pick(routes);
    const base = (route.prefix ?? route.path ?? String(route.pathRegex).slice(1, -9)) as string;
    const hosts = route.hosts as string[] | undefined;
    const host = hosts === undefined ? 'www.example.com' : hosts[0]!.replace('*', 'a');
    const headers: IncomingHttpHeaders = { host, ...((route.headers as Record<string, string> | undefined) ?? {}) };
    const path = route.path !== undefined ? base : route.pathRegex !== undefined ? `${base}/42` : `${base}/x/1`;
    probes.push({ path, method: 'GET', headers, query: '' });
  }
  return { router, probes };
}

function measure(router: Router, probes: Probe[]): { nsPerMatch: number; matched: number } {
  let matched = 0;
  const started = process.hrtime.bigint();
  for (let i = 0; i < LOOKUPS; i++) {
    const probe = probes[i & 4095]!;
    if (router.match(probe.path, probe.method, probe.headers, probe.query) !== undefined) matched++;
  }
  return { nsPerMatch: Number(process.hrtime.bigint() - started) / LOOKUPS, matched };
}

const sizes = [10, 1000, 10_000];
const tables = sizes.map((size) => ({ size, ...table(size) }));
const results = new Map<number, number[]>();
const hitRates = new Map<number, number>();
for (const t of tables) measure(t.router, t.probes); // warm-up
for (let round = 0; round < ROUNDS; round++) {
  for (const t of tables) {
    const { nsPerMatch, matched } = measure(t.router, t.probes);
    (results.get(t.size) ?? results.set(t.size, []).get(t.size)!).push(nsPerMatch);
    hitRates.set(t.size, matched / LOOKUPS);
  }
}
const base = median(results.get(10)!);
console.log(`# route matching: ${LOOKUPS} lookups x ${ROUNDS} rounds per table (node ${process.version})\n`);
console.log('| routes | ns per match (median) | vs 10 routes | requests matched |');
console.log('|---:|---:|---:|---:|');
for (const size of sizes) {
  const ns = median(results.get(size)!);
  console.log(`| ${size.toLocaleString('en-US')} | ${ns.toFixed(0)} | ${(ns / base).toFixed(2)}x | ${(hitRates.get(size)! * 100).toFixed(0)}% |`);
}
