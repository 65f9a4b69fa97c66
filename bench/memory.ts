/**
 * Memory under sustained load: `npm run bench:memory` (BENCH_MEMORY_TOTAL requests,
 * default 1,000,000, in windows of BENCH_MEMORY_WINDOW, default 100,000). After every window the
 * gateway runs a full GC and reports RSS and heap. Checks, printed (not asserted): RSS under
 * 120 MB at the end, and no heap growth from the second window to the last (a leak shows as a
 * steady climb; a pool filling up shows once, in the first window). The gateway runs the dist/
 * build in plain Node, as `meshgate start` does (build first: npm run build).
 */
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { pickLoadGenerator, runLoad } from './load.js';
import { stackConfig, type StackName } from './stack.js';
import { ROOT, installExitHooks, spawnTracked, startTarget, stopAll } from './targets.js';

const MB = 1024 * 1024;

async function main(): Promise<void> {
  installExitHooks();
  const total = Number(process.env.BENCH_MEMORY_TOTAL ?? 1_000_000);
  const window = Number(process.env.BENCH_MEMORY_WINDOW ?? 100_000);
  const stack = (process.env.BENCH_STACK ?? 'standard') as StackName;
  const generator = pickLoadGenerator();
  const upstream = await startTarget('upstream');
  const config = stackConfig(stack, upstream.url);
  const child = spawnTracked(process.execPath, [...(process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean), '--expose-gc', 'bench/memory-target.mjs', JSON.stringify(config)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
  const url = `http://127.0.0.1:${line.trim()}/`;
  const sample = async (): Promise<{ rss: number; heapUsed: number }> => {
    child.send('sample');
    const [memory] = (await once(child, 'message')) as [{ rss: number; heapUsed: number }];
    return memory;
  };

  // Size windows by time, from a short calibration run.
  const calibration = await runLoad(generator, url, { connections: 32, durationSec: 2, threads: 1 });
  const secondsPerWindow = Math.max(1, Math.round(window / Math.max(calibration.rps, 1)));
  const rows: { requests: number; rss: number; heapUsed: number; errors: number }[] = [];
  let done = calibration.requests;
  process.stdout.write(`memory: ${stack} stack, ~${secondsPerWindow}s per window of ${window.toLocaleString('en-US')} requests, ${generator}\n`);
  while (done < total) {
    const run = await runLoad(generator, url, { connections: 32, durationSec: secondsPerWindow, threads: 1 });
    done += run.requests;
    const memory = await sample();
    rows.push({ requests: done, rss: memory.rss, heapUsed: memory.heapUsed, errors: run.non2xx + run.errors });
    process.stdout.write(`  ${JSON.stringify(Object.fromEntries(Object.entries(memory).map(([k, v]) => [k, Math.round((v as number) / MB)])))}\n`);
    process.stdout.write(`  ${done.toLocaleString('en-US').padStart(10)} requests  rss ${(memory.rss / MB).toFixed(1)} MB  heap ${(memory.heapUsed / MB).toFixed(2)} MB  errors ${run.non2xx + run.errors}\n`);
  }
  const last = rows.at(-1)!;
  const second = rows[1] ?? rows[0]!;
  const growth = (last.heapUsed - second.heapUsed) / MB;
  process.stdout.write(`\n| after | RSS | heap after GC |\n|---:|---:|---:|\n`);
  for (const row of rows) process.stdout.write(`| ${row.requests.toLocaleString('en-US')} | ${(row.rss / MB).toFixed(1)} MB | ${(row.heapUsed / MB).toFixed(2)} MB |\n`);
  process.stdout.write(`\nRSS after ${last.requests.toLocaleString('en-US')} requests: ${(last.rss / MB).toFixed(1)} MB (target < 120 MB): ${last.rss < 120 * MB ? 'ok' : 'OVER'}\n`);
  process.stdout.write(`heap growth from window 2 to window ${rows.length}: ${growth.toFixed(2)} MB: ${Math.abs(growth) < 1 ? 'flat' : 'GROWING'}\n`);
  await stopAll();
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench/memory: ${(err as Error)?.stack ?? String(err)}\n`);
  await stopAll(0);
  process.exit(1);
});
