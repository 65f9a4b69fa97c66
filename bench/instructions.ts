/**
 * `npm run bench:instructions`: user-space CPU instructions per proxied request, counted by
 * valgrind's callgrind, for the bare proxy, meshgate's stacks and the standard stack without each
 * of its plugins in turn (which prices every plugin).
 *
 * Why: on a shared 2-vCPU VM, two runs of the same build in `npm run bench` differ by several
 * percent, and an A/A duel of one build against itself by up to 4%, so a change worth 1-2% cannot
 * be seen there. Instruction counts do not depend on what else the machine is doing (see below
 * for what it took to make them repeatable). They leave out the kernel (the socket syscalls, a
 * third of a proxy's CPU time here, the same for every target) and say nothing about latency, so
 * they complement `npm run bench`, they do not replace it.
 *
 * Method: each target runs under `valgrind --tool=callgrind --instr-atstart=no` (about 50x slower).
 * The runner sends BENCH_WARMUP_REQUESTS (12000) requests, asks the target for a full GC, sends a
 * third as many again (the GC drops compiled code too, which the JIT must redo), switches counting
 * on (`callgrind_control -i on`), sends BENCH_REQUESTS (5000), switches it off and stops the target.
 * Requests come from an undici Pool in this process, BENCH_CONNECTIONS (8) at a time.
 *
 * What makes the count repeatable (two runs of each stack agree within 0.3%) is keeping out what
 * depends on timing or history rather than on the request path:
 * - V8's memory reducer: under valgrind the heap sees a fiftieth of its real allocation rate per
 *   second, which the reducer took for an idle process and answered with major GCs in the middle
 *   of the count (the same build varied by 8%). The targets run with --no-memory-reducer.
 * - The warm-up's garbage: the full GC before the window (a major GC inside it added about 7,000
 *   instructions per request to some runs and not to others).
 * - V8's background optimizing compiler (OptimizedCompilationJob), left out of the count.
 * Work driven by timers still counts, about 50 times more per request than in a real run, since
 * valgrind slows the requests and not the clock: the health-check row mostly prices its probes.
 *
 * Environment: BENCH_TARGETS (comma-separated; default bare-proxy, meshgate-core,
 * meshgate-standard), BENCH_PLUGINS (1; 0 skips the standard-without-each-plugin rows),
 * BENCH_SMOKE=1 (100 + 100 requests; the bare proxy, the standard stack and the standard stack
 * without trace context: keeps this code working in CI, numbers meaningless). Needs valgrind (`apt-get install -y valgrind`). Output: a markdown
 * table on stdout, the same as JSON in .bench/instructions.json; callgrind files stay in
 * .bench/callgrind/ for `callgrind_annotate`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from 'undici';
import { STANDARD_PLUGINS, type StandardPlugin } from './stack.js';
import { ROOT, installExitHooks, startTarget, stopAll, type TargetKind } from './targets.js';

interface Variant {
  kind: TargetKind;
  without?: StandardPlugin;
}

interface Row {
  target: string;
  instructionsPerRequest: number;
  /** The background optimizing compiler's share, left out of the count. */
  compilerPerRequest: number;
}

const env = process.env;
const smoke = env.BENCH_SMOKE === '1';
const requests = smoke ? 100 : Number(env.BENCH_REQUESTS ?? 5000);
const warmup = smoke ? 100 : Number(env.BENCH_WARMUP_REQUESTS ?? 12_000);
const connections = Number(env.BENCH_CONNECTIONS ?? 8);
const OUT_DIR = join(ROOT, '.bench', 'callgrind');

function variants(): Variant[] {
  const kinds = (env.BENCH_TARGETS ?? (smoke ? 'bare-proxy,meshgate-standard' : 'bare-proxy,meshgate-core,meshgate-standard')).split(',').map((k) => k.trim()) as TargetKind[];
  const list: Variant[] = kinds.map((kind) => ({ kind }));
  if (env.BENCH_PLUGINS !== '0' && kinds.includes('meshgate-standard')) {
    // The smoke run keeps one of them, so the path from here to bench/child.ts stays tested.
    for (const without of smoke ? STANDARD_PLUGINS.slice(0, 1) : STANDARD_PLUGINS) list.push({ kind: 'meshgate-standard', without });
  }
  return list;
}

function label(v: Variant): string {
  return v.without ? `${v.kind} without ${v.without}` : v.kind;
}

function requireTools(): void {
  for (const tool of ['valgrind', 'callgrind_control', 'callgrind_annotate']) {
    try {
      execFileSync('which', [tool], { stdio: 'ignore' });
    } catch {
      throw new Error(`${tool} is not installed (apt-get install -y valgrind)`);
    }
  }
}

/** Sends `count` GET / requests, `connections` at a time; throws on any non-2xx answer. */
async function drive(pool: Pool, count: number): Promise<void> {
  let sent = 0;
  const worker = async (): Promise<void> => {
    while (sent < count) {
      sent++;
      const res = await pool.request({ path: '/', method: 'GET' });
      await res.body.dump();
      if (res.statusCode < 200 || res.statusCode > 299) throw new Error(`answered ${res.statusCode}`);
    }
  };
  await Promise.all(Array.from({ length: connections }, worker));
}

/** Inclusive instruction counts of the whole program and of V8's background optimizing compiler. */
function readCounts(file: string): { all: number; compiler: number } {
  const text = execFileSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', file], { maxBuffer: 1 << 28 }).toString();
  const count = (re: RegExp): number => Number((re.exec(text)?.[1] ?? '0').replace(/,/g, ''));
  // The percentage column is there from valgrind 3.18 on.
  const all = count(/([\d,]+)(?: \([ \d.]+%\))?\s+PROGRAM TOTALS/);
  if (all === 0) throw new Error(`no instruction count in ${file}`);
  return { all, compiler: count(/([\d,]+)(?: \([ \d.]+%\))?\s+\S*OptimizedCompilationJob::ExecuteJob/) };
}

/**
 * Switches callgrind's counting in `pid` on or off. callgrind_control exits 0 even when it found
 * no callgrind run to talk to, so its output is checked instead.
 */
function instrumentation(pid: number, state: 'on' | 'off'): void {
  const out = execFileSync('callgrind_control', ['-i', state, String(pid)], { timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  if (/error|no active callgrind|not detected/i.test(out)) throw new Error(`callgrind_control -i ${state} ${pid}: ${out.trim()}`);
}

async function measure(v: Variant, upstream: string): Promise<Row> {
  const file = join(OUT_DIR, `${label(v).replace(/\s+/g, '-')}.out`);
  // A file left by an earlier run must never pass for this one's (a target killed before it wrote its own).
  rmSync(file, { force: true });
  const target = await startTarget(v.kind, {
    upstream,
    wrapper: ['valgrind', '-q', '--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${file}`],
    // --no-memory-reducer: see the header comment.
    nodeArgs: ['--expose-gc', '--no-memory-reducer'],
    env: { BENCH_WITHOUT: v.without ?? '' },
    readyTimeoutMs: 180_000,
  });
  const pool = new Pool(target.url, { connections });
  try {
    await drive(pool, warmup);
    // A full GC now, then more warm-up: the GC also throws away compiled code that the JIT must redo.
    await target.gc();
    await drive(pool, Math.ceil(warmup / 3));
    instrumentation(target.pid, 'on');
    await drive(pool, requests);
    instrumentation(target.pid, 'off');
  } finally {
    await pool.close();
    // callgrind writes its file as the target exits, which takes a while under valgrind.
    await target.stop(60_000);
  }
  if (!existsSync(file)) throw new Error(`${label(v)}: callgrind wrote no ${file} (the target did not exit within 60 s)`);
  const { all, compiler } = readCounts(file);
  return { target: label(v), instructionsPerRequest: (all - compiler) / requests, compilerPerRequest: compiler / requests };
}

function table(rows: Row[]): string {
  const bare = rows.find((r) => r.target === 'bare-proxy')?.instructionsPerRequest;
  const standard = rows.find((r) => r.target === 'meshgate-standard')?.instructionsPerRequest;
  const k = (n: number): string => `${(n / 1000).toFixed(1)}k`;
  const lines = ['| target | instructions / request | vs bare proxy | plugin cost |', '|---|---:|---:|---:|'];
  for (const r of rows) {
    const ratio = bare ? `${(r.instructionsPerRequest / bare).toFixed(3)}x` : '';
    const cost = standard && r.target.includes(' without ') ? `${k(standard - r.instructionsPerRequest)} (${(((standard - r.instructionsPerRequest) / standard) * 100).toFixed(1)}%)` : '';
    lines.push(`| ${r.target} | ${k(r.instructionsPerRequest)} | ${ratio} | ${cost} |`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  installExitHooks();
  requireTools();
  mkdirSync(OUT_DIR, { recursive: true });
  const upstream = await startTarget('upstream');
  const rows: Row[] = [];
  try {
    for (const v of variants()) {
      process.stderr.write(`callgrind: ${label(v)} (${warmup} warm-up + ${requests} counted requests)\n`);
      const row = await measure(v, upstream.url);
      process.stderr.write(`  ${(row.instructionsPerRequest / 1000).toFixed(1)}k instructions/request (compiler ${(row.compilerPerRequest / 1000).toFixed(1)}k left out)\n`);
      rows.push(row);
    }
  } finally {
    await stopAll();
  }
  process.stdout.write(`## Instructions per request (callgrind, ${requests} requests after ${warmup} warm-up, ${connections} connections${smoke ? ', smoke run: numbers meaningless' : ''})\n\n${table(rows)}\n`);
  writeFileSync(join(ROOT, '.bench', 'instructions.json'), JSON.stringify({ date: new Date().toISOString(), requests, warmup, connections, rows }, null, 2));
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench:instructions: ${(err as Error)?.stack ?? String(err)}\n`);
  await stopAll(0);
  process.exit(1);
});
