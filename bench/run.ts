/**
 * `npm run bench`: requests/s and latency of meshgate's stacks against the floor for a Node proxy
 * (a bare http.createServer + undici Pool), against the proxies users would otherwise pick
 * (Fastify + @fastify/reply-from, http-proxy), and against the upstream hit directly, in one run.
 *
 * Every target runs in its own process (bench/targets.ts). After a warm-up, the targets are
 * measured in alternating rounds, the order rotated each round, so drift on the machine (thermal,
 * noisy neighbours) spreads over all of them instead of landing on one. The table reports the
 * median over rounds and each target's ratio to the bare proxy; the checks below it compare
 * those medians with the targets of the issues. The ratios are the claim, not the absolute
 * numbers, which depend on the machine.
 *
 * Then the shared-core phase (BENCH_SHARED_ROUNDS rounds, 4; 0 skips it): each single-process
 * proxy in turn pinned to the same CPU as the bare proxy and loaded at the same time, so each gets
 * an equal share of it and the requests they serve in the same seconds compare their CPU cost per
 * request under exactly the same conditions. On a shared machine whose speed drifts from one second to the next, that ratio
 * holds far better than two runs taken seconds apart. Printed as a second table (no latency).
 *
 * Checks (printed PASS / FAIL; see CHECKS; throughput ratios from the shared-core phase when it ran,
 * else from the alternating medians; p99 from the alternating rounds): meshgate-core ≥ 0.8x the bare proxy's req/s;
 * meshgate-standard ≥ 0.85x the bare proxy and ≥ 1.2x reply-from, with a p99 ≤ 1.3x the bare
 * proxy's, and the same three for meshgate-untraced (the standard stack without trace context:
 * issue 8's list as written); meshgate-log ≥ 0.7x the bare proxy. Only the core check sets the exit status (its
 * threshold is BENCH_MIN_RATIO); the others are reported, not enforced.
 *
 * Cluster mode (`meshgate start` with `workers: auto`, bench/meshgate-cluster.ts) is measured
 * only with more than 2 CPUs: with 2, the workers would share the cores of the load generator and
 * the upstream, and the number would say nothing about scaling. The run then says so in one line.
 *
 * Environment: BENCH_CONNECTIONS (64), BENCH_DURATION seconds per run (4), BENCH_ROUNDS (6),
 * BENCH_WARMUP seconds per target (2), BENCH_THREADS wrk threads (half the cores, 1 to 4),
 * BENCH_LOADGEN (wrk | autocannon; default wrk when on PATH), BENCH_MIN_RATIO (0.8; 0 stops the
 * core check from setting the exit status), BENCH_PIN (1; 0 turns pinning off), BENCH_CLUSTER
 * (unset: measure the cluster when there are more than 2 CPUs; 0: never; 1: even with 2 or fewer,
 * labelled as not a scaling measurement), BENCH_TARGETS (comma-separated proxies to measure, e.g.
 * `meshgate-standard,reply-from`; the bare proxy and the upstream always are; checks whose targets
 * were left out are skipped).
 *
 * Pinning (Linux with taskset and at least two CPUs): for each run the process under test gets the
 * last CPU to itself and everything else (load generator, upstream) shares the others, so a proxy
 * is measured as what one core of it can do, not as whatever the scheduler left it while the load
 * generator and the upstream ran on the same cores. Every single-process target gets the same
 * treatment. The cluster is the exception: it is there to use every core, so during its runs no
 * process is pinned.
 *
 * BENCH_SMOKE=1: 1 round of 1 s at 8 connections, no warm-up, no checks, so CI keeps this code
 * working without caring about the numbers.
 *
 * Output: a markdown table and the checks on stdout (progress goes to stderr), the same as JSON in
 * .bench/latest.json (.bench/smoke.json in smoke mode). Exits 1 when a target answered non-2xx,
 * or when meshgate-core is below BENCH_MIN_RATIO of the bare proxy.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { pickLoadGenerator, runLoad, type LoadGeneratorName, type LoadResult } from './load.js';
import { startMeshgateCluster, type ClusterTarget } from './meshgate-cluster.js';
import { choosePinning, machine, machineBusyMs, median, pin, processCpuMs, relativeSpread, selfAndReapedCpuMs, type Pinning } from './stats.js';
import { ROOT, installExitHooks, interrupted, startTarget, stopAll, type TargetKind } from './targets.js';
import { UPSTREAM_BODY } from './upstream.js';

interface Settings {
  smoke: boolean;
  connections: number;
  durationSec: number;
  rounds: number;
  warmupSec: number;
  threads: number;
  pin: boolean;
  /** The core check's threshold, and whether it sets the exit status (null: 0.8, reported only). */
  minRatio: number | null;
  /** Measure meshgate-cluster: 'auto' (more than 2 CPUs), 'off', or 'forced' (BENCH_CLUSTER=1). */
  cluster: 'auto' | 'off' | 'forced';
  /** The proxies to measure (BENCH_TARGETS); the bare proxy, the baseline, always is. */
  proxies: readonly string[];
  /** Rounds of the shared-core phase (BENCH_SHARED_ROUNDS); 0 skips it. */
  sharedRounds: number;
}

type TargetName =
  | 'direct'
  | 'bare-proxy'
  | 'reply-from'
  | 'http-proxy'
  | 'meshgate-core'
  | 'meshgate-standard'
  | 'meshgate-untraced'
  | 'meshgate-log'
  | 'baseline-core'
  | 'baseline-standard'
  | 'meshgate-cluster';

/** The proxies started through bench/child.ts, in table order, and what each is. */
const PROXIES: { name: TargetName & TargetKind; description: string }[] = [
  { name: 'bare-proxy', description: 'http.createServer + undici Pool.stream' },
  { name: 'reply-from', description: 'fastify + @fastify/reply-from, defaults' },
  { name: 'http-proxy', description: 'http.createServer + http-proxy, keep-alive agent' },
  { name: 'meshgate-core', description: 'round-robin, no plugins beyond static discovery' },
  { name: 'meshgate-standard', description: 'least-request, breaker, health checks, metrics, retries, tracing' },
  { name: 'meshgate-untraced', description: "standard without tracing: issue 8's list as written" },
  { name: 'meshgate-log', description: 'standard + JSON access log to /dev/null' },
];

/**
 * With BENCH_BASELINE=<dir> (another checkout of meshgate, built: a git worktree of the commit
 * before a change, with node_modules linked), its core and standard stacks run as two more
 * targets, so the code before and after a change are measured in the same run, side by side.
 */
const BASELINES: { name: TargetName & TargetKind; description: string }[] = [
  { name: 'baseline-core', description: 'meshgate-core from BENCH_BASELINE' },
  { name: 'baseline-standard', description: 'meshgate-standard from BENCH_BASELINE' },
];

/**
 * The widest spread of the bare proxy's req/s over the rounds, relative to its median, that still
 * makes a run worth quoting. The runs quoted in README spread by 17% and 30%; a run whose VM
 * slowed down by half midway spread by 86%, and ranked the standard stack above the same stack
 * without tracing.
 */
const MAX_BASELINE_SPREAD = 0.3;

/** Above this many CPUs the cluster is measured by default. */
const CLUSTER_MIN_CPUS = 3;

interface Target {
  name: TargetName;
  description: string;
  url: string;
  /** The processes whose CPU time is charged to this target (one, or a cluster's primary and workers). */
  pids: number[];
  /** Runs on every CPU: nothing is pinned while it is measured. */
  spread: boolean;
}

interface Run extends LoadResult {
  round: number;
  /** Position in the round's order, 0-based. */
  slot: number;
  /** CPU time of the target's processes per request, in µs; null where /proc is unavailable. */
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
  const clusterEnv = env.BENCH_CLUSTER ?? '';
  if (!['', '0', '1'].includes(clusterEnv)) throw new Error(`BENCH_CLUSTER must be 0 or 1 (or unset), got "${clusterEnv}"`);
  const cluster = clusterEnv === '0' ? 'off' : clusterEnv === '1' ? 'forced' : 'auto';
  const known = [...PROXIES, ...(env.BENCH_BASELINE ? BASELINES : [])].map((p) => p.name as string);
  const wanted = (env.BENCH_TARGETS ?? '').split(',').map((t) => t.trim()).filter(Boolean);
  const unknown = wanted.filter((t) => !known.includes(t));
  if (unknown.length > 0) throw new Error(`BENCH_TARGETS: unknown target(s) ${unknown.join(', ')} (known: ${known.join(', ')})`);
  const proxies = wanted.length === 0 ? known : known.filter((t) => t === 'bare-proxy' || wanted.includes(t));
  if (env.BENCH_SMOKE === '1') {
    return { smoke: true, connections: 8, durationSec: 1, rounds: 1, warmupSec: 0, threads: 1, pin: env.BENCH_PIN !== '0', minRatio: null, cluster, proxies, sharedRounds: 1 };
  }
  const minRatio = Number(env.BENCH_MIN_RATIO ?? 0.8);
  if (!Number.isFinite(minRatio)) throw new Error(`BENCH_MIN_RATIO must be a number, got "${env.BENCH_MIN_RATIO}"`);
  const settings: Settings = {
    smoke: false,
    connections: int('BENCH_CONNECTIONS', 64),
    durationSec: int('BENCH_DURATION', 4),
    rounds: int('BENCH_ROUNDS', 6),
    warmupSec: int('BENCH_WARMUP', 2),
    threads: int('BENCH_THREADS', Math.max(1, Math.min(4, Math.floor(machine().cores / 2)))),
    pin: env.BENCH_PIN !== '0',
    minRatio: minRatio > 0 ? minRatio : null,
    cluster,
    proxies,
    sharedRounds: int('BENCH_SHARED_ROUNDS', 4),
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
  targets: Target[];
  /** Every process started, so the ones not under test can be moved off the target's CPU. */
  pids: number[];
}

async function measure(bench: Bench, target: Target, durationSec: number): Promise<Omit<Run, 'round' | 'slot'>> {
  const { settings, pinning } = bench;
  if (pinning) {
    const all = `${pinning.rest},${pinning.target}`;
    const mine = new Set(target.pids);
    for (const pid of bench.pids) pin(pid, target.spread ? all : mine.has(pid) ? pinning.target : pinning.rest);
  }
  const before = cpuSnapshot(bench);
  const started = performance.now();
  const result = await runLoad(bench.generator, `${target.url}/`, {
    connections: settings.connections,
    durationSec,
    threads: settings.threads,
    cpus: pinning && !target.spread ? pinning.rest : undefined,
  });
  const wallMs = performance.now() - started;
  const after = cpuSnapshot(bench);
  const index = bench.targets.indexOf(target);
  const [targetBefore, targetAfter] = [before.targets[index], after.targets[index]];
  const cpuUsPerReq = targetBefore != null && targetAfter != null && result.requests > 0 ? ((targetAfter - targetBefore) * 1000) / result.requests : null;
  return { ...result, cpuUsPerReq, otherLoadPct: otherLoad(before, after, wallMs) };
}

interface CpuSnapshot {
  machine: number | null;
  /** This runner plus the load generators it already reaped. */
  self: number | null;
  /** Every process started, in `bench.pids` order. */
  pids: (number | null)[];
  /** Each target's processes summed, in `bench.targets` order. */
  targets: (number | null)[];
}

function cpuSnapshot(bench: Bench): CpuSnapshot {
  const byPid = new Map(bench.pids.map((pid) => [pid, processCpuMs(pid)]));
  const targets = bench.targets.map((t) => t.pids.reduce<number | null>((sum, pid) => (sum === null || byPid.get(pid) == null ? null : sum + byPid.get(pid)!), 0));
  return { machine: machineBusyMs(), self: selfAndReapedCpuMs(), pids: [...byPid.values()], targets };
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

/** The versions of the competing proxies, as installed. */
function competitorVersions(): string {
  const require = createRequire(import.meta.url);
  const version = (name: string): string => (require(`${name}/package.json`) as { version: string }).version;
  return ['undici', 'fastify', '@fastify/reply-from', 'http-proxy'].map((name) => `${name} ${version(name)}`).join(', ');
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

interface Summary {
  name: TargetName;
  description: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  ratioVsBare: number;
  /** The same ratio taken round by round (both measured seconds apart), then the median. */
  pairedRatioVsBare: number;
  rpsMin: number;
  rpsMax: number;
  cpuUsPerReq: number | null;
  otherLoadPct: number | null;
  non2xx: number;
  errors: number;
  runs: Run[];
}

/** A target from the issues, checked against the medians of one run. */
interface Check {
  /** What is compared, e.g. `meshgate-standard req/s / reply-from req/s`. */
  what: string;
  op: '≥' | '≤';
  threshold: number;
  /**
   * What passes or fails. For req/s, the shared-core ratio (median over rounds) when that phase
   * ran, else the ratio of the alternating medians; for p99, the alternating medians' ratio.
   */
  ratio: number;
  /** Where `ratio` comes from. */
  basis: 'shared core' | 'alternating';
  /** The ratio of the alternating rounds' medians, shown next to a shared-core ratio; null for p99. */
  alternating: number | null;
  pass: boolean;
  /** Sets the exit status when it fails. */
  enforced: boolean;
  source: string;
}

/**
 * The targets of the issues. Each compares one metric of `target` with the same metric of
 * `baseline` (req/s: higher is better; p99: lower is better).
 */
const CHECKS: { target: TargetName; baseline: TargetName; metric: 'req/s' | 'p99'; op: '≥' | '≤'; threshold: number; source: string }[] = [
  { target: 'meshgate-core', baseline: 'bare-proxy', metric: 'req/s', op: '≥', threshold: 0.8, source: 'issue 2 (BENCH_MIN_RATIO)' },
  { target: 'meshgate-standard', baseline: 'bare-proxy', metric: 'req/s', op: '≥', threshold: 0.85, source: 'issue 8' },
  { target: 'meshgate-standard', baseline: 'reply-from', metric: 'req/s', op: '≥', threshold: 1.2, source: 'issue 8' },
  { target: 'meshgate-standard', baseline: 'bare-proxy', metric: 'p99', op: '≤', threshold: 1.3, source: 'issue 8' },
  // Issue 8 lists the standard stack without trace context, which meshgate turns on by default:
  // the same three checks for its list as written, reported next to the full stack's.
  { target: 'meshgate-untraced', baseline: 'bare-proxy', metric: 'req/s', op: '≥', threshold: 0.85, source: "issue 8's list, no tracing" },
  { target: 'meshgate-untraced', baseline: 'reply-from', metric: 'req/s', op: '≥', threshold: 1.2, source: "issue 8's list, no tracing" },
  { target: 'meshgate-untraced', baseline: 'bare-proxy', metric: 'p99', op: '≤', threshold: 1.3, source: "issue 8's list, no tracing" },
  { target: 'meshgate-log', baseline: 'bare-proxy', metric: 'req/s', op: '≥', threshold: 0.7, source: 'issue 8' },
];

function runChecks(summary: Summary[], settings: Settings, shared: readonly SharedRound[]): Check[] {
  const byName = (name: TargetName): Summary => summary.find((s) => s.name === name)!;
  const measured = (name: TargetName): boolean => summary.some((s) => s.name === name);
  return CHECKS.filter((c) => measured(c.target) && measured(c.baseline)).map((c) => {
    const [target, baseline] = [byName(c.target), byName(c.baseline)];
    const core = c.target === 'meshgate-core';
    const threshold = core ? (settings.minRatio ?? c.threshold) : c.threshold;
    const alternating = c.metric === 'req/s' ? target.rps / baseline.rps : target.p99Ms / baseline.p99Ms;
    const inShared = c.metric === 'req/s' && shared.length > 0 && shared[0]!.ratios.has(c.target) && shared[0]!.ratios.has(c.baseline);
    const ratio = inShared ? sharedRatio(shared, c.target, c.baseline) : alternating;
    return {
      what: `${c.target} ${c.metric} / ${c.baseline} ${c.metric}`,
      op: c.op,
      threshold,
      ratio,
      basis: inShared ? 'shared core' : 'alternating',
      alternating: inShared ? alternating : null,
      pass: c.op === '≥' ? ratio >= threshold : ratio <= threshold,
      enforced: core && settings.minRatio !== null,
      source: c.source,
    };
  });
}

/** `target`'s requests over `baseline`'s in the shared-core phase: the median over its rounds. */
function sharedRatio(shared: readonly SharedRound[], target: TargetName, baseline: TargetName): number {
  return median(shared.map((r) => r.ratios.get(target)! / r.ratios.get(baseline)!));
}

const SHARED_NEEDS_PINNING = 'it needs CPU pinning (Linux, taskset, two or more CPUs, BENCH_PIN not 0)';

/** One shared-core round: each proxy's requests over the bare proxy's, served in the same seconds on the same CPU. */
interface SharedRound {
  ratios: Map<TargetName, number>;
  /** With BENCH_BASELINE: each build's stack against the baseline build's, the two on one CPU at once. */
  duels: Map<string, number>;
  non2xx: number;
}

/** The before/after pairs measured head to head when BENCH_BASELINE is set. */
const DUELS = [
  ['meshgate-core', 'baseline-core'],
  ['meshgate-standard', 'baseline-standard'],
] as const;

/**
 * The shared-core phase: each proxy in turn shares one CPU with the bare proxy, both loaded at
 * the same time with half the connections each. The scheduler gives each runnable process an
 * equal share of that CPU, so the requests the two serve in the same seconds are in the inverse
 * ratio of their CPU cost per request, and whatever else the machine does (noisy neighbours,
 * frequency changes) hits both at once instead of one run at a time. Pairs rather than all at
 * once: two processes per core keep each one's event loop batching about as it does alone.
 * Latency means nothing here (each waits for the other's turns), so only ratios are reported.
 */
async function measureShared(bench: Bench, rounds: number, durationSec: number, log: (line: string) => void): Promise<SharedRound[]> {
  const { settings, pinning } = bench;
  const bare = bench.targets.find((t) => t.name === 'bare-proxy')!;
  const others = bench.targets.filter((t) => t.name !== 'direct' && t.name !== 'bare-proxy' && !t.spread);
  const connections = Math.max(1, Math.floor(settings.connections / 2));
  const pairOf = async (one: Target, two: Target, seconds: number): Promise<[LoadResult, LoadResult]> => {
    if (pinning) {
      const together = new Set([...one.pids, ...two.pids]);
      for (const pid of bench.pids) pin(pid, together.has(pid) ? pinning.target : pinning.rest);
    }
    const load = (t: Target): Promise<LoadResult> => runLoad(bench.generator, `${t.url}/`, { connections, durationSec: seconds, threads: 1, cpus: pinning?.rest });
    return Promise.all([load(one), load(two)]);
  };
  const pair = (target: Target, seconds: number): Promise<[LoadResult, LoadResult]> => pairOf(bare, target, seconds);
  const byName = (name: TargetName): Target | undefined => others.find((t) => t.name === name);
  const duels = DUELS.map(([after, before]) => [byName(after), byName(before)] as const).filter((d): d is readonly [Target, Target] => d[0] !== undefined && d[1] !== undefined);
  if (settings.warmupSec > 0) for (const target of others) await pair(target, settings.warmupSec);
  const out: SharedRound[] = [];
  for (let round = 0; round < rounds; round++) {
    const ratios = new Map<TargetName, number>([['bare-proxy', 1]]);
    let non2xx = 0;
    // Rotated like the alternating rounds, so no proxy always goes first.
    for (let i = 0; i < others.length; i++) {
      const target = others[(i + round) % others.length]!;
      const [b, t] = await pair(target, durationSec);
      ratios.set(target.name, b.requests > 0 ? t.requests / b.requests : Number.NaN);
      non2xx += b.non2xx + t.non2xx;
    }
    const duelRatios = new Map<string, number>();
    for (const [after, before] of duels) {
      const [a, b] = await pairOf(after, before, durationSec);
      duelRatios.set(`${after.name} / ${before.name}`, b.requests > 0 ? a.requests / b.requests : Number.NaN);
      non2xx += a.non2xx + b.non2xx;
    }
    const ordered = new Map([...bench.targets].filter((t) => ratios.has(t.name)).map((t) => [t.name, ratios.get(t.name)!]));
    out.push({ ratios: ordered, duels: duelRatios, non2xx });
    log(`bench: shared round ${round + 1}/${rounds} ` + [...ordered, ...duelRatios].map(([name, r]) => `${name} ${fmt(r, 2)}x`).join('  '));
  }
  return out;
}

async function main(): Promise<number> {
  installExitHooks();
  const settings = settingsFromEnv(process.env);
  const generator = pickLoadGenerator();
  const host = machine();
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const measureCluster = settings.cluster === 'forced' || (settings.cluster === 'auto' && host.cores >= CLUSTER_MIN_CPUS);

  const proxies = [...PROXIES, ...BASELINES].filter((p) => settings.proxies.includes(p.name));
  log(`bench: starting the upstream and ${proxies.length + (measureCluster ? 1 : 0)} proxies (load generator: ${generator})`);
  const upstream = await startTarget('upstream');
  const baselineEnv = process.env.BENCH_BASELINE ? { BENCH_DIST: process.env.BENCH_BASELINE } : {};
  const started = await Promise.all(proxies.map((p) => startTarget(p.name, { upstream: upstream.url, env: p.name.startsWith('baseline-') ? baselineEnv : {} })));
  let cluster: ClusterTarget | null = null;
  if (measureCluster) cluster = await startMeshgateCluster(upstream.url);
  const targets: Target[] = [
    { name: 'direct', description: 'load generator -> upstream', url: upstream.url, pids: [upstream.pid], spread: false },
    ...proxies.map((p, i) => ({ ...p, url: started[i]!.url, pids: [started[i]!.pid], spread: false })),
  ];
  if (cluster) {
    targets.push({
      name: 'meshgate-cluster',
      description: `meshgate start, standard stack, workers: auto (${cluster.workers})`,
      url: cluster.url,
      pids: cluster.pids,
      spread: true,
    });
  }
  for (const target of targets) await checkAnswers(target);
  const pinning = settings.pin ? choosePinning() : null;
  const bench: Bench = { generator, settings, pinning, targets, pids: targets.flatMap((t) => t.pids) };

  if (settings.warmupSec > 0) {
    for (const target of targets) {
      log(`bench: warm-up ${target.name} (${settings.warmupSec} s)`);
      await measure(bench, target, settings.warmupSec);
    }
  }

  const runs = new Map<TargetName, Run[]>(targets.map((t) => [t.name, []]));
  for (let round = 0; round < settings.rounds; round++) {
    const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
    for (const [slot, target] of order.entries()) {
      const result = await measure(bench, target, settings.durationSec);
      runs.get(target.name)!.push({ round, slot, ...result });
      log(
        `bench: round ${round + 1}/${settings.rounds} ${target.name.padEnd(17)} ${thousands(result.rps).padStart(8)} req/s` +
          `  p50 ${fmt(result.p50Ms, 2)} ms  p99 ${fmt(result.p99Ms, 2)} ms  cpu ${fmt(result.cpuUsPerReq, 1)} µs/req` +
          `  other load ${fmt(result.otherLoadPct, 0)}%` +
          (result.non2xx + result.errors > 0 ? `  non-2xx ${result.non2xx} errors ${result.errors}` : ''),
      );
    }
  }
  // Without pinning the pair would not share one CPU, and the ratio would mean nothing.
  if (settings.sharedRounds > 0 && pinning === null) log(`bench: shared-core phase skipped: ${SHARED_NEEDS_PINNING}`);
  const shared = settings.sharedRounds > 0 && pinning !== null ? await measureShared(bench, settings.sharedRounds, settings.durationSec, log) : [];
  await cluster?.stop();
  await stopAll();

  const bareRuns = runs.get('bare-proxy')!;
  const bareRps = median(bareRuns.map((r) => r.rps));
  const summary: Summary[] = targets.map((target) => {
    const list = runs.get(target.name)!;
    const rps = median(list.map((r) => r.rps));
    return {
      name: target.name,
      description: target.description,
      rps,
      p50Ms: median(list.map((r) => r.p50Ms)),
      p99Ms: median(list.map((r) => r.p99Ms)),
      ratioVsBare: rps / bareRps,
      pairedRatioVsBare: median(list.map((r, i) => r.rps / bareRuns[i]!.rps)),
      rpsMin: Math.min(...list.map((r) => r.rps)),
      rpsMax: Math.max(...list.map((r) => r.rps)),
      cpuUsPerReq: list.every((r) => r.cpuUsPerReq !== null) ? median(list.map((r) => r.cpuUsPerReq!)) : null,
      otherLoadPct: list.every((r) => r.otherLoadPct !== null) ? median(list.map((r) => r.otherLoadPct!)) : null,
      non2xx: list.reduce((n, r) => n + r.non2xx, 0),
      errors: list.reduce((n, r) => n + r.errors, 0),
      runs: list,
    };
  });
  const find = (name: TargetName): Summary | undefined => summary.find((s) => s.name === name);
  const bare = find('bare-proxy')!;

  const date = new Date().toISOString();
  const version = generatorVersion(generator);
  const source = sourceVersion();
  const threadNote = generator === 'wrk' ? `, ${settings.threads} thread(s)` : '';
  // With the proxy CPU-bound, its capacity per core is 1 / (CPU per request): this ratio is what
  // req/s converges to on a quiet machine, and it is much steadier on a shared one.
  // For the cluster, CPU per request is summed over the primary and its workers.
  const capacity = (s: Summary): number | null => (s.cpuUsPerReq !== null && bare.cpuUsPerReq !== null ? bare.cpuUsPerReq / s.cpuUsPerReq : null);
  const lines = [
    `| target | req/s (median) | p50 ms | p99 ms | vs bare proxy (req/s) | req/s min-max | CPU µs/req | capacity per core vs bare (CPU) | other load % | non-2xx / socket errors |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|`,
    ...summary.map(
      (s) =>
        `| ${s.name} | ${thousands(s.rps)} | ${fmt(s.p50Ms, 2)} | ${fmt(s.p99Ms, 2)} | ${fmt(s.ratioVsBare, 2)}x | ` +
        `${thousands(s.rpsMin)}-${thousands(s.rpsMax)} | ${fmt(s.cpuUsPerReq, 1)} | ${s.name === 'direct' ? '-' : `${fmt(capacity(s), 2)}x`} | ${fmt(s.otherLoadPct, 0)} | ${s.non2xx} / ${s.errors} |`,
    ),
    '',
    ...summary.map((s) => `- ${s.name}: ${s.description}`),
    '',
    `${date.slice(0, 10)} · ${host.cpu} · ${host.cores} cores · node ${host.node} · meshgate ${source} (dist build) · ${competitorVersions()} · ` +
      `${generator} ${version}${threadNote} · ${settings.connections} connections · ` +
      (pinning ? `target pinned to CPU ${pinning.target}, load generator and upstream on CPU ${pinning.rest} · ` : 'no CPU pinning · ') +
      `${settings.rounds} round(s) × ${settings.durationSec} s after ${settings.warmupSec} s warm-up, order rotated each round` +
      (settings.smoke ? ' · SMOKE (numbers not meaningful)' : ''),
  ];

  // Where the CPU per request goes, stack by stack: each step's extra µs is what it adds.
  const [core, standard, withLog] = [find('meshgate-core'), find('meshgate-standard'), find('meshgate-log')];
  if (core && standard && withLog && bare.cpuUsPerReq !== null && core.cpuUsPerReq !== null && standard.cpuUsPerReq !== null && withLog.cpuUsPerReq !== null) {
    const plus = (a: number, b: number): string => `${a - b >= 0 ? '+' : ''}${fmt(a - b, 1)} µs`;
    lines.push(
      '',
      `CPU per request: bare proxy ${fmt(bare.cpuUsPerReq, 1)} µs; meshgate-core ${fmt(core.cpuUsPerReq, 1)} µs (${plus(core.cpuUsPerReq, bare.cpuUsPerReq)} over bare), ` +
        `meshgate-standard ${fmt(standard.cpuUsPerReq, 1)} µs (${plus(standard.cpuUsPerReq, core.cpuUsPerReq)} over core), ` +
        `meshgate-log ${fmt(withLog.cpuUsPerReq, 1)} µs (${plus(withLog.cpuUsPerReq, standard.cpuUsPerReq)} over standard)`,
    );
  }

  const clusterSummary = find('meshgate-cluster');
  let clusterNote: string;
  if (clusterSummary && standard) {
    const paired = median(clusterSummary.runs.map((r, i) => r.rps / standard.runs[i]!.rps));
    const direct = find('direct')!;
    clusterNote =
      `cluster: meshgate-cluster (${cluster!.workers} workers, unpinned) / meshgate-standard (one process, one CPU) = ${fmt(clusterSummary.rps / standard.rps, 2)}x req/s ` +
      `(round by round ${fmt(paired, 2)}x); the upstream alone does ${thousands(direct.rps)} req/s, a ceiling for anything in front of it` +
      (host.cores < CLUSTER_MIN_CPUS ? ` · FORCED on ${host.cores} CPUs: the workers share the cores of the load generator and the upstream, this is not a scaling measurement` : '');
  } else {
    clusterNote =
      settings.cluster === 'off'
        ? 'cluster: scaling not measured (BENCH_CLUSTER=0)'
        : `cluster: scaling not measured: this machine has ${host.cores} CPU${host.cores === 1 ? '' : 's'}, and cluster mode is only measured with more than 2 ` +
          '(with fewer, its workers would share the cores of the load generator and the upstream)';
  }
  lines.push('', clusterNote);

  if (shared.length === 0 && settings.sharedRounds > 0) {
    lines.push('', `shared core: not measured: ${SHARED_NEEDS_PINNING}`);
  }
  if (shared.length > 0) {
    // The phase runs only with pinning, so `pinning` is set here.
    const sharedNames = [...shared[0]!.ratios.keys()];
    lines.push(
      '',
      `Shared core: each proxy in turn pinned together with the bare proxy on CPU ${pinning!.target}, both loaded at once ` +
        `(${Math.max(1, Math.floor(settings.connections / 2))} connections each, ${shared.length} round(s) × ${settings.durationSec} s per pair): ` +
        'requests served in the same seconds over the bare proxy\'s, the same noise for both (latency not comparable here).',
      '',
      '| target | vs bare proxy (median) | rounds min-max |',
      '|---|---:|---:|',
      ...sharedNames.map((name) => {
        const list = shared.map((r) => r.ratios.get(name)!);
        return `| ${name} | ${fmt(sharedRatio(shared, name, 'bare-proxy'), 2)}x | ${fmt(Math.min(...list), 2)}-${fmt(Math.max(...list), 2)}x |`;
      }),
    );
    for (const duel of shared[0]!.duels.keys()) {
      const list = shared.map((r) => r.duels.get(duel)!);
      lines.push(
        '',
        `before and after, head to head on one CPU: ${duel} (baseline: ${process.env.BENCH_BASELINE}) = ${fmt(median(list), 3)}x ` +
          `(rounds ${fmt(Math.min(...list), 3)}-${fmt(Math.max(...list), 3)}x); via the bare proxy: ${fmt(sharedRatio(shared, duel.split(' / ')[0] as TargetName, duel.split(' / ')[1] as TargetName), 3)}x`,
      );
    }
    for (const name of ['meshgate-standard', 'meshgate-untraced'] as const) {
      if (!sharedNames.includes(name) || !sharedNames.includes('reply-from')) continue;
      lines.push('', `shared core: ${name} / reply-from = ${fmt(sharedRatio(shared, name, 'reply-from'), 2)}x`);
    }
  }

  const allRuns = [...runs.values()].flat();
  const otherLoadPct = allRuns.every((r) => r.otherLoadPct !== null) ? median(allRuns.map((r) => r.otherLoadPct!)) : null;
  if (otherLoadPct !== null && otherLoadPct > 10) {
    lines.push('', `warning: other processes used ${fmt(otherLoadPct, 0)}% of the machine's CPU during the runs (median): req/s and latency are noisy; trust the CPU-per-request column more.`);
  }

  // Steal and frequency changes on a shared VM show up in no load counter, only in the baseline.
  const baselineSpread = relativeSpread(bare.runs.map((r) => r.rps));
  if (baselineSpread > MAX_BASELINE_SPREAD) {
    lines.push(
      '',
      `warning: the machine did not keep its speed: the bare proxy's req/s went from ${thousands(bare.rpsMin)} to ${thousands(bare.rpsMax)} ` +
        `over the rounds (${fmt(baselineSpread * 100, 0)}% of its median; above ${MAX_BASELINE_SPREAD * 100}% the ratios below are not to be trusted, ` +
        'even the shared-core ones). Rerun on a quiet machine before quoting them.',
    );
  }

  const failures: string[] = [];
  for (const s of summary) if (s.non2xx > 0) failures.push(`${s.name} answered ${s.non2xx} non-2xx responses: its numbers are not valid`);
  if (shared.some((r) => r.non2xx > 0)) failures.push('a proxy answered non-2xx in the shared-core phase: its numbers are not valid');
  const checks = settings.smoke ? [] : runChecks(summary, settings, shared);
  if (settings.smoke) {
    lines.push('', 'checks: skipped in smoke mode');
  } else {
    lines.push(
      '',
      'Checks: throughput from the shared-core phase when it ran (the same seconds on the same CPU for both sides; the',
      'alternating medians, which a shared machine can move by ±20% between runs, in brackets); p99 from the alternating rounds:',
      '',
      '| check | target | measured | basis | result | source |',
      '|---|---:|---:|---|---|---|',
      ...checks.map(
        (c) =>
          `| ${c.what} | ${c.op} ${c.threshold}x | ${fmt(c.ratio, 2)}x${c.alternating === null ? '' : ` (${fmt(c.alternating, 2)}x)`} | ${c.basis} | ${c.pass ? 'PASS' : 'FAIL'} | ` +
          `${c.source}${c.enforced ? ', sets the exit status' : ', reported only'} |`,
      ),
      '',
      `${checks.filter((c) => c.pass).length} of ${checks.length} checks pass` +
        (checks.some((c) => !c.pass) ? `; failing: ${checks.filter((c) => !c.pass).map((c) => c.what).join('; ')}` : ''),
    );
    for (const c of checks) if (c.enforced && !c.pass) failures.push(`${c.what} = ${fmt(c.ratio, 2)}x, below ${c.threshold}x`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);

  const dir = join(ROOT, '.bench');
  mkdirSync(dir, { recursive: true });
  const base = settings.smoke ? 'smoke' : 'latest';
  const report = {
    date,
    source,
    machine: host,
    loadGenerator: { name: generator, version },
    settings,
    pinning,
    targets: summary,
    checks,
    shared: shared.map((r) => ({ ...Object.fromEntries(r.ratios), ...Object.fromEntries(r.duels) })),
    cluster: clusterNote,
    otherLoadPct,
    baselineSpread,
  };
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
