/**
 * `npm run bench:dashboard`: what the web dashboard costs in the browser with 200 services of 10
 * instances each (and a route per service), in headless Chromium (Debian's, driven by
 * playwright-core).
 * - Time to first render: from navigation to the first frame with the tables drawn, as the page
 *   records it (`performance.now()` in the frame after the first data render), and as seen from here
 *   (navigation to the first instance row in the DOM); median of BENCH_LOADS (5) loads.
 *   Also the renderer's CPU time for one load.
 * - Per-update cost: the CPU time (from /proc) of the browser's renderer and GPU processes while
 *   the registry changes BENCH_RATE (100) times a second for BENCH_SECONDS (10) s (an instance's
 *   health flips, each a streamed event), less the same over as long without changes (the
 *   stream's ticks, the clock), divided by the changes. CPU time, not wall time: on a shared 2-core
 *   machine wall-clock durations are mostly waiting. Also the page's own counters: frames drawn,
 *   and the script and render time of one.
 * - What the virtual tables draw: instance rows in the DOM out of 2,000.
 * - The initial state (`GET /dashboard/api/state`) on the wire, uncompressed, gzip and brotli
 *   (bytes, and the median time to read it whole, of 5), and the coding the browser was sent.
 * Environment: BENCH_SERVICES (200), BENCH_INSTANCES (10), BENCH_LOADS, BENCH_RATE, BENCH_SECONDS,
 * BENCH_SMOKE=1 (20 x 3, one load, 1 s), BENCH_PROFILE=FILE (a CPU profile of the page under changes),
 * BENCH_KBPS=N (the page's loads over a link of N kbit/s and 20 ms latency, as a remote admin port
 * would be; off by default). Output: a markdown table, and JSON in .bench/dashboard.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { createGateway, type GatewayConfigInput } from '../lib/index.js';
import { launchChromium } from '../test/browser.js';
import { machine, median, processCpuMs } from './stats.js';
import { ROOT } from './targets.js';

const env = process.env;
const smoke = env.BENCH_SMOKE === '1';
const SERVICES = smoke ? 20 : Number(env.BENCH_SERVICES ?? 200);
const INSTANCES = smoke ? 3 : Number(env.BENCH_INSTANCES ?? 10);
const LOADS = smoke ? 1 : Number(env.BENCH_LOADS ?? 5);
const RATE = Number(env.BENCH_RATE ?? 100);
const SECONDS = smoke ? 1 : Number(env.BENCH_SECONDS ?? 10);
const TOKEN = 'bench-dashboard';
const KBPS = Number(env.BENCH_KBPS ?? 0);

const upstream = createServer((_req, res) => res.end('ok'));
await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;

// Every instance a path on one upstream: distinct ids and URLs, one connection pool.
const services: Record<string, unknown> = {};
const routes: Record<string, unknown>[] = [];
for (let s = 0; s < SERVICES; s++) {
  const name = `svc-${String(s).padStart(3, '0')}`;
  services[name] = { instances: Array.from({ length: INSTANCES }, (_, i) => ({ url: `${origin}/${name}/${i}`, id: `${name}-${i}`, zone: `zone-${i % 3}`, metadata: { version: i % 4 === 0 ? 'v2' : 'v1' } })) };
  routes.push({ name, prefix: `/${name}`, service: name });
}
const gateway = createGateway({ logLevel: 'silent', listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0, token: TOKEN }, services, routes } as GatewayConfigInput);
const { url, adminUrl } = await gateway.listen();
// A request on every route: every service and route has a series, as on a busy gateway.
for (const route of routes) await fetch(`${url}${route.prefix as string}/x`).then((r) => r.arrayBuffer());

const browser = await launchChromium();
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
await context.addInitScript((token) => (globalThis as unknown as { sessionStorage: { setItem(k: string, v: string): void } }).sessionStorage.setItem('meshgate.adminToken', token), TOKEN);
const page: Page = await context.newPage();
const cdp = await context.newCDPSession(page);
if (KBPS > 0) await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: (KBPS * 1000) / 8, uploadThroughput: (KBPS * 1000) / 8 });
// The coding the browser's state request was answered in (Chromium sends br over plain HTTP too, or not).
let browserCoding = '';
page.on('response', (res) => {
  if (res.url().endsWith('/dashboard/api/state')) browserCoding = res.headers()['content-encoding'] ?? 'identity';
});

interface PageStats {
  firstRender: number | null;
  messages: number;
  flushes: number;
  flushMs: number;
}
const pageStats = (): Promise<PageStats> => page.evaluate(() => (window as unknown as { __meshgateDashboard: PageStats }).__meshgateDashboard);
const browserCdp = await browser.newBrowserCDPSession();
/**
 * CPU time (user + system, from /proc) the browser's renderer and GPU processes have used so far,
 * in ms: what the page costs, whatever else the machine is doing (wall-clock durations on a busy
 * 2-core machine are mostly waiting).
 */
const cpuMs = async (): Promise<{ renderer: number; gpu: number }> => {
  const { processInfo } = (await browserCdp.send('SystemInfo.getProcessInfo')) as { processInfo: { type: string; id: number }[] };
  const sum = (type: string): number => processInfo.filter((p) => p.type === type).reduce((n, p) => n + (processCpuMs(p.id) ?? 0), 0);
  return { renderer: sum('renderer'), gpu: sum('GPU') };
};

// Time to first render: the page's clock, ours, and the renderer's CPU time for it.
const pageMs: number[] = [];
const seenMs: number[] = [];
const loadCpuMs: number[] = [];
for (let i = 0; i < LOADS; i++) {
  await page.goto('about:blank');
  const cpuBefore = await cpuMs();
  const started = performance.now();
  await page.goto(`${adminUrl}/`);
  await page.locator('#instances tbody tr[data-instance]').first().waitFor({ timeout: 30_000 });
  seenMs.push(performance.now() - started);
  await page.waitForFunction(() => (window as unknown as { __meshgateDashboard: PageStats }).__meshgateDashboard.firstRender !== null);
  pageMs.push((await pageStats()).firstRender!);
  loadCpuMs.push((await cpuMs()).renderer - cpuBefore.renderer);
}
await page.locator('#connection', { hasText: 'live' }).waitFor();
const drawnRows = await page.locator('#instances tbody tr[data-instance]').count();

/** The state as sent for `acceptEncoding`: its bytes on the wire and the time to read them whole (node:http, which decodes nothing). */
const readState = (acceptEncoding: string): Promise<{ bytes: number; ms: number; coding: string }> =>
  new Promise((resolve, reject) => {
    const started = performance.now();
    const req = request(`${adminUrl}/dashboard/api/state`, { headers: { authorization: `Bearer ${TOKEN}`, 'accept-encoding': acceptEncoding } }, (res) => {
      let bytes = 0;
      res.on('data', (chunk: Buffer) => (bytes += chunk.length));
      res.on('end', () => resolve({ bytes, ms: performance.now() - started, coding: String(res.headers['content-encoding'] ?? 'identity') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
const stateWire: Record<string, { bytes: number; ms: number; coding: string }> = {};
for (const accept of ['identity', 'gzip', 'br']) {
  const reads = [];
  for (let i = 0; i < 5; i++) reads.push(await readState(accept));
  stateWire[accept] = { bytes: reads[0]!.bytes, ms: median(reads.map((r) => r.ms)), coding: reads[0]!.coding };
}
const stateBytes = stateWire.identity!.bytes;

// Per-update cost: the browser's CPU time with changes, less as long without.
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const window = async (changes: boolean): Promise<{ renderer: number; gpu: number; changes: number; stats: PageStats }> => {
  const before = await cpuMs();
  const statsBefore = await pageStats();
  const all = [...gateway.registry.services()].flatMap((s) => [...s.instances.values()]);
  let made = 0;
  const end = performance.now() + SECONDS * 1000;
  while (performance.now() < end) {
    if (changes) {
      const inst = all[(made * 7919) % all.length]!;
      gateway.registry.setHealth(inst, inst.health === 'healthy' ? 'unhealthy' : 'healthy', 'bench');
      made++;
    }
    await sleep(1000 / RATE);
  }
  await sleep(500);
  const statsAfter = await pageStats();
  const after = await cpuMs();
  return {
    renderer: after.renderer - before.renderer,
    gpu: after.gpu - before.gpu,
    changes: made,
    stats: { firstRender: null, messages: statsAfter.messages - statsBefore.messages, flushes: statsAfter.flushes - statsBefore.flushes, flushMs: statsAfter.flushMs - statsBefore.flushMs },
  };
};
const idle = await window(false);
// BENCH_PROFILE=FILE: a CPU profile of the page while it takes the changes (read it with bench/cpuprofile-summary.ts).
if (env.BENCH_PROFILE) {
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.start');
}
const busy = await window(true);
if (env.BENCH_PROFILE) writeFileSync(env.BENCH_PROFILE, JSON.stringify(((await cdp.send('Profiler.stop')) as { profile: unknown }).profile));
const perChangeMs = (busy.renderer + busy.gpu - idle.renderer - idle.gpu) / busy.changes;

const seconds = SECONDS + 0.5;
const result = {
  machine: machine(),
  services: SERVICES,
  instances: SERVICES * INSTANCES,
  stateBytes,
  stateWire,
  browserCoding,
  kbps: KBPS,
  firstRenderMs: median(pageMs),
  firstRowSeenMs: median(seenMs),
  firstRenderRendererCpuMs: median(loadCpuMs),
  drawnInstanceRows: drawnRows,
  idleCpuMsPerSecond: { renderer: idle.renderer / seconds, gpu: idle.gpu / seconds },
  changes: busy.changes,
  changesPerSecond: busy.changes / SECONDS,
  busyCpuMsPerSecond: { renderer: busy.renderer / seconds, gpu: busy.gpu / seconds },
  perChangeMs,
  frames: busy.stats.flushes,
  msPerFrame: busy.stats.flushes === 0 ? 0 : busy.stats.flushMs / busy.stats.flushes,
};
await browser.close();
await gateway.close();
upstream.close();

const f = (n: number, d = 1): string => n.toFixed(d);
console.log(`dashboard, ${SERVICES} services x ${INSTANCES} instances, ${SERVICES} routes (${result.machine.cpu}, ${result.machine.cores} cores); state ${Math.round(stateBytes / 1024)} KiB`);
console.log('| measure | value |\n|---|---:|');
console.log(`| time to first render (page's clock, median of ${LOADS}${KBPS > 0 ? `, ${KBPS} kbit/s link` : ''}) | ${f(result.firstRenderMs)} ms |`);
console.log(`| navigation to first instance row (from here) | ${f(result.firstRowSeenMs)} ms |`);
console.log(`| renderer CPU for one load | ${f(result.firstRenderRendererCpuMs)} ms |`);
console.log(`| instance rows in the DOM (virtual table) | ${drawnRows} of ${SERVICES * INSTANCES} |`);
for (const [accept, wire] of Object.entries(stateWire)) console.log(`| state asked with Accept-Encoding: ${accept} (sent as ${wire.coding}): bytes, time to read (median of 5) | ${f(wire.bytes / 1024)} KiB, ${f(wire.ms)} ms |`);
console.log(`| state as the browser was sent it | ${browserCoding} |`);
console.log(`| CPU, stream open, no changes (renderer + gpu) | ${f(result.idleCpuMsPerSecond.renderer)} + ${f(result.idleCpuMsPerSecond.gpu)} ms/s |`);
console.log(`| CPU at ${f(result.changesPerSecond, 0)} changes/s (renderer + gpu) | ${f(result.busyCpuMsPerSecond.renderer)} + ${f(result.busyCpuMsPerSecond.gpu)} ms/s |`);
console.log(`| per change (CPU less idle, / changes) | ${f(perChangeMs, 3)} ms |`);
console.log(`| frames drawn while changing / script+render ms per frame (page's counters) | ${result.frames} / ${f(result.msPerFrame, 2)} ms |`);
mkdirSync(join(ROOT, '.bench'), { recursive: true });
writeFileSync(join(ROOT, '.bench', 'dashboard.json'), `${JSON.stringify(result, null, 2)}\n`);
