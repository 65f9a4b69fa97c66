/**
 * `node --import tsx bench/profile.ts [target]`: runs one proxy target of bench/targets.ts
 * (default meshgate) under `node --cpu-prof` while the load generator drives it, then prints
 * where its CPU time went (bench/cpuprofile-summary.ts), counting only the window under load.
 *
 * Environment: BENCH_CONNECTIONS (64), BENCH_DURATION seconds of load (10), BENCH_WARMUP seconds
 * before it (2), BENCH_PROF_INTERVAL sampling interval in µs (100), BENCH_TOP rows (30). Pinning as
 * in bench/run.ts. The profile is kept in .bench/profiles/<target>-<time>/ for DevTools, with the summary next to it.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatSummary, summarize, type CpuProfile } from './cpuprofile-summary.js';
import { pickLoadGenerator, runLoad } from './load.js';
import { choosePinning, pin, processCpuMs } from './stats.js';
import { ROOT, installExitHooks, interrupted, startTarget, stopAll, type TargetKind } from './targets.js';

async function main(): Promise<void> {
  installExitHooks();
  const kind = (process.argv[2] ?? 'meshgate') as TargetKind;
  if (kind === 'upstream') throw new Error('profile a proxy (bare-proxy, reply-from, http-proxy, meshgate, meshgate-core, meshgate-standard, meshgate-log), not the upstream');
  const env = process.env;
  const connections = Number(env.BENCH_CONNECTIONS ?? 64);
  const durationSec = Number(env.BENCH_DURATION ?? 10);
  const warmupSec = Number(env.BENCH_WARMUP ?? 2);
  const generator = pickLoadGenerator();
  // One directory per run: --cpu-prof writes a file per thread (the ESM loader of tsx runs in a
  // worker), named CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; the main thread is 0.
  const dir = join(ROOT, '.bench', 'profiles', `${kind}-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(dir, { recursive: true });

  const upstream = await startTarget('upstream');
  const target = await startTarget(kind, {
    upstream: upstream.url,
    nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-interval=${env.BENCH_PROF_INTERVAL ?? 100}`],
  });
  const pinning = env.BENCH_PIN === '0' ? null : choosePinning();
  if (pinning) {
    pin(target.pid, pinning.target);
    pin(upstream.pid, pinning.rest);
  }
  const load = { connections, threads: 1, cpus: pinning?.rest };
  if (warmupSec > 0) await runLoad(generator, `${target.url}/`, { ...load, durationSec: warmupSec });
  const cpuBefore = processCpuMs(target.pid);
  const result = await runLoad(generator, `${target.url}/`, { ...load, durationSec });
  const cpuAfter = processCpuMs(target.pid);
  // SIGTERM: the child exits through process.exit, which writes the profile.
  await target.stop();
  await stopAll();

  const mainThread = readdirSync(dir).find((f) => new RegExp(`\\.${target.pid}\\.0\\.\\d+\\.cpuprofile$`).test(f));
  if (!mainThread) throw new Error(`no main-thread profile of pid ${target.pid} in ${dir}: ${readdirSync(dir).join(', ')}`);
  const file = join(dir, mainThread);
  const summary = summarize(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, { lastMs: durationSec * 1000 });
  const cpuNote =
    cpuBefore !== null && cpuAfter !== null ? `, ${(((cpuAfter - cpuBefore) * 1000) / result.requests).toFixed(1)} µs CPU/req (profiler on)` : '';
  const text = [
    `## CPU profile: ${kind}`,
    '',
    `${generator}, ${connections} connections, ${durationSec} s: ${Math.round(result.rps)} req/s, p50 ${result.p50Ms.toFixed(2)} ms, ` +
      `p99 ${result.p99Ms.toFixed(2)} ms${cpuNote}; non-2xx ${result.non2xx}; ${pinning ? `pinned to CPU ${pinning.target}` : 'not pinned'}`,
    `profile: ${file}`,
    '',
    formatSummary(summary, Number(env.BENCH_TOP ?? 30)),
  ].join('\n');
  writeFileSync(file.replace(/\.cpuprofile$/, '.md'), text);
  process.stdout.write(text);
}

try {
  await main();
} catch (err) {
  if (!interrupted()) process.stderr.write(`bench profile: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
} finally {
  await stopAll();
}
