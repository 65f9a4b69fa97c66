/**
 * The load generators: wrk when it is on PATH (a C client that needs far less CPU than the
 * servers it loads), autocannon otherwise. Each runs as its own process and reports the same
 * {@link LoadResult}.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { ROOT, spawnTracked } from './targets.js';

/** The load generators the runner knows. */
export type LoadGeneratorName = 'wrk' | 'autocannon';

/** One load run against one URL. */
export interface LoadResult {
  requests: number;
  /** Requests per second over the run. */
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Responses that were not 2xx/3xx. */
  non2xx: number;
  /** Connect, read, write errors and timeouts. */
  errors: number;
}

/** How hard and how long to load a target. */
export interface LoadOptions {
  connections: number;
  durationSec: number;
  /** wrk threads (autocannon runs on one thread). */
  threads: number;
  /** Run the generator on these CPUs only (a taskset list), when set. */
  cpus?: string;
}

/** `BENCH_LOADGEN` if set, else wrk when it is on PATH, else autocannon. */
export function pickLoadGenerator(forced = process.env.BENCH_LOADGEN): LoadGeneratorName {
  if (forced === 'wrk' || forced === 'autocannon') return forced;
  if (forced) throw new Error(`BENCH_LOADGEN must be wrk or autocannon, got "${forced}"`);
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return 'wrk';
  } catch (err) {
    // wrk prints its usage and exits 1 on --version; only a missing binary means "not there".
    return (err as { code?: string }).code === 'ENOENT' ? 'autocannon' : 'wrk';
  }
}

/** Runs one load test and returns its numbers; rejects when the generator fails. */
export async function runLoad(generator: LoadGeneratorName, url: string, options: LoadOptions): Promise<LoadResult> {
  if (generator === 'wrk') {
    const threads = Math.max(1, Math.min(options.threads, options.connections));
    const out = await capture(options.cpus, 'wrk', ['-t', String(threads), '-c', String(options.connections), '-d', `${options.durationSec}s`, '--latency', url]);
    return parseWrk(out);
  }
  const bin = createRequire(import.meta.url).resolve('autocannon/autocannon.js');
  const out = await capture(options.cpus, process.execPath, [bin, '-j', '-c', String(options.connections), '-d', String(options.durationSec), url]);
  return parseAutocannon(out);
}

async function capture(cpus: string | undefined, command: string, args: string[]): Promise<string> {
  // taskset execs the command, so the tracked process is the generator itself.
  const [file, argv] = cpus ? ['taskset', ['-c', cpus, command, ...args]] : [command, args];
  const child = spawnTracked(file, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  // 'close', not 'exit': 'exit' can come before the last of stdout is read (seen with several
  // generators ending at once), which left nothing to parse. once() rejects on 'error' (no binary).
  const [code, signal] = (await once(child, 'close')) as [number | null, string | null];
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} failed (code ${code}, signal ${signal}):\n${stderr || stdout}`);
  return stdout;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };

function wrkDuration(value: string, unit: string): number {
  const factor = UNIT_MS[unit];
  if (factor === undefined) throw new Error(`unknown wrk time unit "${unit}"`);
  return Number(value) * factor;
}

/** Parses `wrk --latency` output. */
export function parseWrk(text: string): LoadResult {
  const p50 = /^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(text);
  const p99 = /^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(text);
  const total = /^\s*(\d+) requests in /m.exec(text);
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(text);
  if (!p50 || !p99 || !total || !rps) throw new Error(`could not parse wrk output:\n${text}`);
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(text);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const errors = socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  return {
    requests: Number(total[1]),
    rps: Number(rps[1]),
    p50Ms: wrkDuration(p50[1]!, p50[2]!),
    p99Ms: wrkDuration(p99[1]!, p99[2]!),
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    errors,
  };
}

/** Parses autocannon's `--json` result line. */
export function parseAutocannon(text: string): LoadResult {
  const line = text.trim().split('\n').findLast((l) => l.startsWith('{'));
  if (!line) throw new Error(`could not parse autocannon output:\n${text}`);
  const r = JSON.parse(line) as {
    requests: { average: number; total: number };
    latency: { p50: number; p99: number };
    duration: number;
    non2xx: number;
    errors: number;
    timeouts: number;
  };
  return {
    requests: r.requests.total,
    rps: r.duration > 0 ? r.requests.total / r.duration : r.requests.average,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors + r.timeouts,
  };
}
