/**
 * `node --import tsx bench/metrics-cost.ts`: what the metrics plugin costs. The same gateway
 * (bench/meshgate-admin.ts: one route, round-robin, admin server on) runs twice, each in its own
 * process: with metrics (`meshgate-metrics`, the default once `admin` is configured) and with
 * `metrics: false` (`meshgate-no-metrics`). After a warm-up they are measured in alternating
 * rounds, the order swapped each round, under the load generator of bench/load.ts and the CPU
 * pinning of bench/run.ts. Reported: req/s and CPU µs per request of both (medians over rounds),
 * the throughput ratio metrics / no-metrics, and the cost it implies.
 *
 * Environment: BENCH_CONNECTIONS (64), BENCH_DURATION seconds per run (5), BENCH_ROUNDS (6),
 * BENCH_WARMUP seconds per target (2), BENCH_THREADS wrk threads, BENCH_LOADGEN, BENCH_PIN (1),
 * BENCH_MAX_COST percent (10; 0 turns the check off), BENCH_SMOKE=1 (2 rounds of 1 s, no check),
 * BENCH_SOURCE=1 (measure lib/ under tsx instead of dist/).
 *
 * Exits 1 when a target answered non-2xx, or when the throughput cost is above BENCH_MAX_COST.
 */
import { existsSync } from 'node:fs';
import { get } from 'node:http';
import { cpus } from 'node:os';
import { pickLoadGenerator, runLoad, type LoadResult } from './load.js';
import { choosePinning, machine, machineBusyMs, median, pin, processCpuMs, selfAndReapedCpuMs } from './stats.js';
import { installExitHooks, interrupted, startTarget, stopAll, type TargetKind, type TargetProcess } from './targets.js';
import { UPSTREAM_BODY } from './upstream.js';

type Name = 'meshgate-metrics' | 'meshgate-no-metrics';

/** What the targets run, decided as bench/meshgate-admin.ts decides it. */
const BUILD = existsSync(new URL('../dist/lib/index.js', import.meta.url)) && process.env.BENCH_SOURCE !== '1' ? 'dist' : 'source';

interface Run extends LoadResult {
  round: number;
  cpuUsPerReq: number | null;
  /** Share of the machine's CPU that processes outside this benchmark used during the run, %. */
  otherLoadPct: number | null;
}

const env = process.env;
const smoke = env.BENCH_SMOKE === '1';
const int = (name: string, fallback: number): number => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return value;
};
const settings = {
  connections: smoke ? 8 : int('BENCH_CONNECTIONS', 64),
  durationSec: smoke ? 1 : int('BENCH_DURATION', 5),
  rounds: smoke ? 2 : int('BENCH_ROUNDS', 6),
  warmupSec: smoke ? 0 : Number(env.BENCH_WARMUP ?? 2),
  threads: smoke ? 1 : int('BENCH_THREADS', Math.max(1, Math.min(4, Math.floor(machine().cores / 2)))),
  maxCostPct: smoke ? 0 : Number(env.BENCH_MAX_COST ?? 10),
};

const log = (line: string): void => void process.stderr.write(`${line}\n`);
const fmt = (n: number | null, digits: number): string => (n === null || !Number.isFinite(n) ? 'n/a' : n.toFixed(digits));
const thousands = (n: number): string => Math.round(n).toLocaleString('en-US');

/** One plain request: the target must answer 200 with the upstream's body. */
function checkAnswers(name: string, url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    get(`${url}/bench-check`, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode === 200 && Buffer.concat(chunks).equals(UPSTREAM_BODY)) resolve();
        else reject(new Error(`${name} answered ${res.statusCode}, expected 200 with the upstream's body`));
      });
      res.on('error', reject);
    }).on('error', reject);
  });
}

interface Snapshot {
  /** CPU time of the whole machine, ms. */
  machine: number | null;
  /** This runner plus the load generators it reaped, ms. */
  self: number | null;
  /** CPU time of each target process, ms. */
  pids: (number | null)[];
}

/** What processes outside the benchmark took of the machine during a run, % (as in bench/run.ts). */
function otherLoad(before: Snapshot, after: Snapshot, wallMs: number): number | null {
  if (before.machine === null || after.machine === null || before.self === null || after.self === null) return null;
  let ours = after.self - before.self;
  for (let i = 0; i < before.pids.length; i++) {
    const [a, b] = [before.pids[i], after.pids[i]];
    if (a == null || b == null) return null;
    ours += b - a;
  }
  return Math.max(0, ((after.machine - before.machine - ours) * 100) / (wallMs * cpus().length));
}

async function main(): Promise<number> {
  installExitHooks();
  const generator = pickLoadGenerator();
  log(`metrics-cost: starting upstream and both gateways (load generator: ${generator})`);
  const upstream = await startTarget('upstream');
  // The two kinds are branches of bench/child.ts that TargetKind does not list.
  const [withMetrics, withoutMetrics] = await Promise.all([
    startTarget('meshgate-metrics' as TargetKind, { upstream: upstream.url }),
    startTarget('meshgate-no-metrics' as TargetKind, { upstream: upstream.url }),
  ]);
  const targets: { name: Name; proc: TargetProcess }[] = [
    { name: 'meshgate-metrics', proc: withMetrics },
    { name: 'meshgate-no-metrics', proc: withoutMetrics },
  ];
  for (const { name, proc } of targets) await checkAnswers(name, proc.url);
  const pids = [upstream.pid, withMetrics.pid, withoutMetrics.pid];
  const pinning = env.BENCH_PIN === '0' ? null : choosePinning();
  const snapshot = (): Snapshot => ({ machine: machineBusyMs(), self: selfAndReapedCpuMs(), pids: pids.map(processCpuMs) });

  const measure = async (proc: TargetProcess, durationSec: number): Promise<Omit<Run, 'round'>> => {
    if (pinning) for (const pid of pids) pin(pid, pid === proc.pid ? pinning.target : pinning.rest);
    const before = snapshot();
    const started = performance.now();
    const result = await runLoad(generator, `${proc.url}/`, { connections: settings.connections, durationSec, threads: settings.threads, cpus: pinning?.rest });
    const wallMs = performance.now() - started;
    const after = snapshot();
    const [cpuBefore, cpuAfter] = [before.pids[pids.indexOf(proc.pid)], after.pids[pids.indexOf(proc.pid)]];
    const cpuUsPerReq = cpuBefore != null && cpuAfter != null && result.requests > 0 ? ((cpuAfter - cpuBefore) * 1000) / result.requests : null;
    return { ...result, cpuUsPerReq, otherLoadPct: otherLoad(before, after, wallMs) };
  };

  if (settings.warmupSec > 0) {
    for (const { name, proc } of targets) {
      log(`metrics-cost: warm-up ${name} (${settings.warmupSec} s)`);
      await measure(proc, settings.warmupSec);
    }
  }
  const runs = new Map<Name, Run[]>(targets.map((t) => [t.name, []]));
  for (let round = 0; round < settings.rounds; round++) {
    const order = round % 2 === 0 ? targets : [...targets].reverse();
    for (const { name, proc } of order) {
      const result = await measure(proc, settings.durationSec);
      runs.get(name)!.push({ round, ...result });
      log(
        `metrics-cost: round ${round + 1}/${settings.rounds} ${name.padEnd(19)} ${thousands(result.rps).padStart(8)} req/s` +
          `  p50 ${fmt(result.p50Ms, 2)} ms  p99 ${fmt(result.p99Ms, 2)} ms  cpu ${fmt(result.cpuUsPerReq, 1)} µs/req  other load ${fmt(result.otherLoadPct, 0)}%` +
          (result.non2xx + result.errors > 0 ? `  non-2xx ${result.non2xx} errors ${result.errors}` : ''),
      );
    }
  }
  await stopAll();

  const summary = targets.map(({ name }) => {
    const list = runs.get(name)!;
    return {
      name,
      rps: median(list.map((r) => r.rps)),
      p50Ms: median(list.map((r) => r.p50Ms)),
      p99Ms: median(list.map((r) => r.p99Ms)),
      cpuUsPerReq: list.every((r) => r.cpuUsPerReq !== null) ? median(list.map((r) => r.cpuUsPerReq!)) : null,
      non2xx: list.reduce((n, r) => n + r.non2xx + r.errors, 0),
    };
  });
  const [on, off] = summary as [(typeof summary)[0], (typeof summary)[0]];
  const onRuns = runs.get('meshgate-metrics')!;
  const offRuns = runs.get('meshgate-no-metrics')!;
  const ratio = on.rps / off.rps;
  // Each round measures both within seconds of each other: the median of those ratios resists drift.
  const pairedRatio = median(onRuns.map((r, i) => r.rps / offRuns[i]!.rps));
  const cpuCostPct = on.cpuUsPerReq !== null && off.cpuUsPerReq !== null ? (on.cpuUsPerReq / off.cpuUsPerReq - 1) * 100 : null;
  const costPct = (1 - pairedRatio) * 100;

  const all = [...onRuns, ...offRuns];
  const otherLoadPct = all.every((r) => r.otherLoadPct !== null) ? median(all.map((r) => r.otherLoadPct!)) : null;
  const host = machine();
  const lines = [
    '| target | req/s (median) | p50 ms | p99 ms | CPU µs/req | non-2xx + errors |',
    '|---|---:|---:|---:|---:|---:|',
    ...summary.map((s) => `| ${s.name} | ${thousands(s.rps)} | ${fmt(s.p50Ms, 2)} | ${fmt(s.p99Ms, 2)} | ${fmt(s.cpuUsPerReq, 1)} | ${s.non2xx} |`),
    '',
    `throughput ratio metrics / no-metrics: ${fmt(ratio, 3)} (medians), ${fmt(pairedRatio, 3)} (round by round): cost ${fmt(costPct, 1)}%`,
    `CPU per request: ${fmt(on.cpuUsPerReq, 1)} µs with metrics, ${fmt(off.cpuUsPerReq, 1)} µs without: ${cpuCostPct === null ? 'n/a' : `${cpuCostPct >= 0 ? '+' : ''}${fmt(cpuCostPct, 1)}%`}`,
    '',
    `${host.cpu} · ${host.cores} cores · node ${host.node} · ${BUILD} build · ${generator} · ${settings.connections} connections · ` +
      (pinning ? `target pinned to CPU ${pinning.target} · ` : 'no CPU pinning · ') +
      `${settings.rounds} round(s) × ${settings.durationSec} s after ${settings.warmupSec} s warm-up, order swapped each round · other load ${fmt(otherLoadPct, 0)}% (median)` +
      (smoke ? ' · SMOKE (numbers not meaningful)' : ''),
  ];
  if (otherLoadPct !== null && otherLoadPct > 10) {
    lines.push('', `warning: other processes used ${fmt(otherLoadPct, 0)}% of the machine's CPU during the runs (median): req/s are noisy; trust the CPU-per-request figures more.`);
  }
  const failures: string[] = [];
  for (const s of summary) if (s.non2xx > 0) failures.push(`${s.name} had ${s.non2xx} non-2xx responses or socket errors: its numbers are not valid`);
  if (settings.maxCostPct > 0) {
    const pass = costPct < settings.maxCostPct;
    const verdict = `metrics cost ${fmt(costPct, 1)}% of throughput; target < ${settings.maxCostPct}%: ${pass ? 'PASS' : 'ABOVE TARGET'}`;
    lines.push('', verdict);
    if (!pass) failures.push(verdict);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  for (const failure of failures) log(`metrics-cost: ${failure}`);
  return failures.length > 0 ? 1 : 0;
}

try {
  process.exitCode = await main();
} catch (err) {
  if (!interrupted()) process.stderr.write(`metrics-cost: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
} finally {
  await stopAll();
}
