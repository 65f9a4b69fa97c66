/**
 * `npm run bench`: requests/s and latency of meshgate against the floor for a Node proxy (a bare
 * http.createServer + undici Pool), and against the upstream hit directly, in one run.
 *
 * Every target runs in its own process (bench/targets.ts). After a warm-up, the targets are
 * measured in alternating rounds, the order rotated each round, so drift on the machine (thermal,
 * noisy neighbours) spreads over all of them instead of landing on one. The table reports the
 * median over rounds and meshgate's ratio to the bare proxy; the ratio is the claim, not the
 * absolute numbers, which depend on the machine.
 *
 * Environment: BENCH_CONNECTIONS (64), BENCH_DURATION seconds per run (5), BENCH_ROUNDS (5),
 * BENCH_WARMUP seconds per target (2), BENCH_THREADS wrk threads (half the cores, 1 to 4),
 * BENCH_LOADGEN (wrk | autocannon; default wrk when on PATH), BENCH_MIN_RATIO (0.8; 0 turns the
 * check off), BENCH_PIN (1; 0 turns pinning off).
 *
 * Pinning (Linux with taskset and at least two CPUs): for each run the process under test gets the
 * last CPU to itself and everything else (load generator, upstream) shares the others, so a proxy
 * is measured as what one core of it can do, not as whatever the scheduler left it while the load
 * generator and the upstream ran on the same cores. Both proxies get the same treatment.
 *
 * BENCH_SMOKE=1: 1 round of 1 s at 8 connections, no warm-up, no ratio check, so CI keeps this
 * code working without caring about the numbers.
 *
 * Output: a markdown table on stdout (progress goes to stderr), the same as JSON in
 * .bench/latest.json (.bench/smoke.json in smoke mode). Exits 1 when a target answered non-2xx,
 * or when meshgate is below BENCH_MIN_RATIO of the bare proxy.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { pickLoadGenerator, runLoad, type LoadGeneratorName, type LoadResult } from './load.js';
import { choosePinning, machine, machineBusyMs, median, pin, processCpuMs, selfAndReapedCpuMs, type Pinning } from './stats.js';
import { ROOT, installExitHooks, interrupted, startTarget, stopAll, type TargetProcess } from './targets.js';
import { UPSTREAM_BODY } from './upstream.js';

interface Settings {
  smoke: boolean;
  connections: number;
  durationSec: number;
  rounds: number;
  warmupSec: number;
  threads: number;
  pin: boolean;
  /** meshgate's req/s must be at least this share of the bare proxy's; null: no check. */
  minRatio: number | null;
}

interface Target {
  name: 'direct' | 'bare-proxy' | 'meshgate';
  description: string;
  url: string;
  /** The process whose CPU time is charged to this target. */
  pid: number;
}

interface Run extends LoadResult {
  round: number;
  /** Position in the round's order, 0-based. */
  slot: number;
  /** CPU time of the target's process per request, in µs; null where /proc is unavailable. */
  cpuUsPerReq: number | null;
  /** Share of the machine's CPU that processes outside the benchmark used during the run, %. */
  otherLoadPct: number | null;
}

function settingsFromEnv(env: NodeJS.ProcessEnv): Settings {
  const int = (name: string, fallback: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
    return value;
  };
  if (env.BENCH_SMOKE === '1') {
    return { smoke: true, connections: 8, durationSec: 1, rounds: 1, warmupSec: 0, threads: 1, pin: env.BENCH_PIN !== '0', minRatio: null };
  }
  const minRatio = Number(env.BENCH_MIN_RATIO ?? 0.8);
  if (!Number.isFinite(minRatio)) throw new Error(`BENCH_MIN_RATIO must be a number, got "${env.BENCH_MIN_RATIO}"`);
  const settings: Settings = {
    smoke: false,
    connections: int('BENCH_CONNECTIONS', 64),
    durationSec: int('BENCH_DURATION', 5),
    rounds: int('BENCH_ROUNDS', 5),
    warmupSec: int('BENCH_WARMUP', 2),
    threads: int('BENCH_THREADS', Math.max(1, Math.min(4, Math.floor(machine().cores / 2)))),
    pin: env.BENCH_PIN !== '0',
    minRatio: minRatio > 0 ? minRatio : null,
  };
  if (settings.connections < 1 || settings.durationSec < 1 || settings.rounds < 1 || settings.threads < 1) {
    throw new Error('BENCH_CONNECTIONS, BENCH_DURATION, BENCH_ROUNDS and BENCH_THREADS must be at least 1');
  }
  return settings;
}

/** One plain request (no keep-alive): the target must answer 200 with the upstream's body. */
function checkAnswers(target: Target): Promise<void> {
  return new Promise((resolve, reject) => {
    get(`${target.url}/bench-check?x=1`, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        if (res.statusCode === 200 && body.equals(UPSTREAM_BODY)) resolve();
        else reject(new Error(`${target.name} answered ${res.statusCode} ${body.toString().slice(0, 200)}, expected 200 with the upstream's body`));
      });
      res.on('error', reject);
    }).on('error', reject);
  });
}

interface Bench {
  generator: LoadGeneratorName;
  settings: Settings;
  pinning: Pinning | null;
  /** Every process started, so the ones not under test can be moved off the target's CPU. */
  pids: number[];
}

async function measure(bench: Bench, target: Target, durationSec: number): Promise<Omit<Run, 'round' | 'slot'>> {
  const { settings, pinning } = bench;
  if (pinning) for (const pid of bench.pids) pin(pid, pid === target.pid ? pinning.target : pinning.rest);
  const before = cpuSnapshot(bench.pids);
  const started = performance.now();
  const result = await runLoad(bench.generator, `${target.url}/`, {
    connections: settings.connections,
    durationSec,
    threads: settings.threads,
    cpus: pinning?.rest,
  });
  const wallMs = performance.now() - started;
  const after = cpuSnapshot(bench.pids);
  const targetBefore = before.pids[bench.pids.indexOf(target.pid)];
  const targetAfter = after.pids[bench.pids.indexOf(target.pid)];
  const cpuUsPerReq = targetBefore != null && targetAfter != null && result.requests > 0 ? ((targetAfter - targetBefore) * 1000) / result.requests : null;
  return { ...result, cpuUsPerReq, otherLoadPct: otherLoad(before, after, wallMs) };
}

interface CpuSnapshot {
  machine: number | null;
  /** This runner plus the load generators it already reaped. */
  self: number | null;
  pids: (number | null)[];
}

function cpuSnapshot(pids: number[]): CpuSnapshot {
  return { machine: machineBusyMs(), self: selfAndReapedCpuMs(), pids: pids.map(processCpuMs) };
}

/** What the rest of the machine (other users, other jobs) took while a run was going on, in %. */
function otherLoad(before: CpuSnapshot, after: CpuSnapshot, wallMs: number): number | null {
  if (before.machine === null || after.machine === null || before.self === null || after.self === null) return null;
  let ours = after.self - before.self;
  for (let i = 0; i < before.pids.length; i++) {
    const a = before.pids[i];
    const b = after.pids[i];
    if (a == null || b == null) return null;
    ours += b - a;
  }
  const other = after.machine - before.machine - ours;
  return Math.max(0, (other * 100) / (wallMs * cpus().length));
}

function generatorVersion(generator: LoadGeneratorName): string {
  if (generator === 'wrk') {
    const out = spawnSync('wrk', ['--version'], { encoding: 'utf8' });
    return /wrk\s+(\S+)/.exec(`${out.stdout}${out.stderr}`)?.[1] ?? 'unknown';
  }
  return (createRequire(import.meta.url)('autocannon/package.json') as { version: string }).version;
}

/** The commit measured, and whether lib/ or plugins/ had uncommitted changes. */
function sourceVersion(): string {
  const git = (...args: string[]): string | null => {
    const out = spawnSync('git', ['-C', ROOT, ...args], { encoding: 'utf8' });
    return out.status === 0 ? out.stdout.trim() : null;
  };
  const head = git('rev-parse', '--short', 'HEAD');
  if (head === null) return 'unknown commit';
  const dirty = git('status', '--porcelain', '--', 'lib', 'plugins');
  return dirty ? `${head} + uncommitted changes in lib/ or plugins/` : head;
}

const fmt = (n: number | null, digits: number): string => (n === null || !Number.isFinite(n) ? 'n/a' : n.toFixed(digits));
const thousands = (n: number): string => Math.round(n).toLocaleString('en-US');

async function main(): Promise<number> {
  installExitHooks();
  const settings = settingsFromEnv(process.env);
  const generator = pickLoadGenerator();
  const log = (line: string): void => void process.stderr.write(`${line}\n`);

  log(`bench: starting upstream, bare proxy and meshgate (load generator: ${generator})`);
  const upstream = await startTarget('upstream');
  const [bare, gateway] = await Promise.all([
    startTarget('bare-proxy', { upstream: upstream.url }),
    startTarget('meshgate', { upstream: upstream.url }),
  ]);
  const procOf = (p: TargetProcess): { url: string; pid: number } => ({ url: p.url, pid: p.pid });
  const targets: Target[] = [
    { name: 'direct', description: 'load generator -> upstream', ...procOf(upstream) },
    { name: 'bare-proxy', description: 'http.createServer + undici Pool.stream', ...procOf(bare) },
    { name: 'meshgate', description: 'createGateway, one route, round-robin', ...procOf(gateway) },
  ];
  for (const target of targets) await checkAnswers(target);
  const pinning = settings.pin ? choosePinning() : null;
  const bench: Bench = { generator, settings, pinning, pids: targets.map((t) => t.pid) };

  if (settings.warmupSec > 0) {
    for (const target of targets) {
      log(`bench: warm-up ${target.name} (${settings.warmupSec} s)`);
      await measure(bench, target, settings.warmupSec);
    }
  }

  const runs = new Map<Target['name'], Run[]>(targets.map((t) => [t.name, []]));
  for (let round = 0; round < settings.rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
    for (const [slot, target] of order.entries()) {
      const result = await measure(bench, target, settings.durationSec);
      runs.get(target.name)!.push({ round, slot, ...result });
      log(
        `bench: round ${round + 1}/${settings.rounds} ${target.name.padEnd(10)} ${thousands(result.rps).padStart(8)} req/s` +
          `  p50 ${fmt(result.p50Ms, 2)} ms  p99 ${fmt(result.p99Ms, 2)} ms  cpu ${fmt(result.cpuUsPerReq, 1)} µs/req` +
          `  other load ${fmt(result.otherLoadPct, 0)}%` +
          (result.non2xx + result.errors > 0 ? `  non-2xx ${result.non2xx} errors ${result.errors}` : ''),
      );
    }
  }
  await stopAll();

  const bareRuns = runs.get('bare-proxy')!;
  const summary = targets.map((target) => {
    const list = runs.get(target.name)!;
    const rps = median(list.map((r) => r.rps));
    const cpu = list.every((r) => r.cpuUsPerReq !== null) ? median(list.map((r) => r.cpuUsPerReq!)) : null;
    const other = list.every((r) => r.otherLoadPct !== null) ? median(list.map((r) => r.otherLoadPct!)) : null;
    return {
      name: target.name,
      description: target.description,
      rps,
      p50Ms: median(list.map((r) => r.p50Ms)),
      p99Ms: median(list.map((r) => r.p99Ms)),
      ratioVsBare: rps / median(bareRuns.map((r) => r.rps)),
      // The same ratio taken round by round (both measured minutes apart at most), then the median.
      pairedRatioVsBare: median(list.map((r, i) => r.rps / bareRuns[i]!.rps)),
      rpsMin: Math.min(...list.map((r) => r.rps)),
      rpsMax: Math.max(...list.map((r) => r.rps)),
      cpuUsPerReq: cpu,
      otherLoadPct: other,
      non2xx: list.reduce((n, r) => n + r.non2xx, 0),
      errors: list.reduce((n, r) => n + r.errors, 0),
      runs: list,
    };
  });

  const host = machine();
  const date = new Date().toISOString();
  const version = generatorVersion(generator);
  const source = sourceVersion();
  const threadNote = generator === 'wrk' ? `, ${settings.threads} thread(s)` : '';
  const lines = [
    `| target | req/s (median) | p50 ms | p99 ms | vs bare proxy (req/s) | req/s min-max | CPU µs/req (target process) | other load % | non-2xx / socket errors |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---:|`,
    ...summary.map(
      (s) =>
        `| ${s.name} | ${thousands(s.rps)} | ${fmt(s.p50Ms, 2)} | ${fmt(s.p99Ms, 2)} | ${fmt(s.ratioVsBare, 2)}x | ` +
        `${thousands(s.rpsMin)}-${thousands(s.rpsMax)} | ${fmt(s.cpuUsPerReq, 1)} | ${fmt(s.otherLoadPct, 0)} | ${s.non2xx} / ${s.errors} |`,
    ),
    '',
    `${date.slice(0, 10)} · ${host.cpu} · ${host.cores} cores · node ${host.node} · meshgate ${source} · ${generator} ${version}${threadNote} · ` +
      `${settings.connections} connections · ` +
      (pinning ? `target pinned to CPU ${pinning.target}, load generator and upstream on CPU ${pinning.rest} · ` : 'no CPU pinning · ') +
      `${settings.rounds} round(s) × ${settings.durationSec} s after ${settings.warmupSec} s warm-up, order rotated each round` +
      (settings.smoke ? ' · SMOKE (numbers not meaningful)' : ''),
  ];

  const meshgate = summary.find((s) => s.name === 'meshgate')!;
  const bareSummary = summary.find((s) => s.name === 'bare-proxy')!;
  // CPU per request is steadier than req/s when the machine is shared: with the proxy CPU-bound,
  // capacity is 1 / (CPU per request), so this ratio is what req/s converges to on a quiet box.
  const cpuRatio = meshgate.cpuUsPerReq !== null && bareSummary.cpuUsPerReq !== null ? bareSummary.cpuUsPerReq / meshgate.cpuUsPerReq : null;
  if (cpuRatio !== null) {
    lines.push(
      '',
      `CPU per request: meshgate ${fmt(meshgate.cpuUsPerReq, 1)} µs, bare proxy ${fmt(bareSummary.cpuUsPerReq, 1)} µs: ` +
        `meshgate's capacity per core ≈ ${fmt(cpuRatio, 2)}x the bare proxy's`,
    );
  }
  const allRuns = [...runs.values()].flat();
  const otherLoad = allRuns.every((r) => r.otherLoadPct !== null) ? median(allRuns.map((r) => r.otherLoadPct!)) : null;
  if (otherLoad !== null && otherLoad > 10) {
    lines.push('', `warning: other processes used ${fmt(otherLoad, 0)}% of the machine's CPU during the runs (median): req/s and latency are noisy; trust the CPU-per-request ratio more.`);
  }
  const failures: string[] = [];
  for (const s of summary) if (s.non2xx > 0) failures.push(`${s.name} answered ${s.non2xx} non-2xx responses: its numbers are not valid`);
  let verdict: string | null = null;
  if (settings.minRatio !== null) {
    const pass = meshgate.ratioVsBare >= settings.minRatio;
    verdict = `meshgate / bare proxy = ${fmt(meshgate.ratioVsBare, 2)}x req/s (round-by-round median ${fmt(meshgate.pairedRatioVsBare, 2)}x); target ≥ ${settings.minRatio}x: ${pass ? 'PASS' : 'BELOW TARGET'}`;
    lines.push('', verdict);
    if (!pass) failures.push(verdict);
  }
  process.stdout.write(`${lines.join('\n')}\n`);

  const dir = join(ROOT, '.bench');
  mkdirSync(dir, { recursive: true });
  const base = settings.smoke ? 'smoke' : 'latest';
  const report = { date, source, machine: host, loadGenerator: { name: generator, version }, settings, pinning, targets: summary, cpuRatio, otherLoadPct: otherLoad, verdict };
  writeFileSync(join(dir, `${base}.json`), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(dir, `${base}.md`), `${lines.join('\n')}\n`);
  log(`bench: wrote .bench/${base}.json and .bench/${base}.md`);

  for (const failure of failures) log(`bench: ${failure}`);
  return failures.length > 0 ? 1 : 0;
}

try {
  process.exitCode = await main();
} catch (err) {
  // After Ctrl-C the load generator dies mid-run; that error is ours, not news.
  if (!interrupted()) process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
} finally {
  await stopAll();
}
