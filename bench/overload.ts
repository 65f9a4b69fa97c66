/**
 * `node --import tsx bench/overload.ts`: what load shedding (`overload`) buys under a load the
 * gateway's CPU cannot keep up with. A gateway runs in a child process (one service, its own
 * upstream; every request costs BENCH_WORK_MS of CPU in an `onRequest` middleware, standing in for
 * real per-request work such as a token check, in the `resolve` stage: after shedding decides), once without `overload` and once with
 * `overload: { maxEventLoopDelay: BENCH_MAX_DELAY }`. Each run, BENCH_CONNECTIONS clients send
 * back to back for BENCH_DURATION seconds while a probe asks the admin port's `/healthz` every
 * 100 ms. Reported per run: answers per second by status, p50/p99 latency of the admitted (200)
 * and the shed (503) answers, and the probes' worst latency; then the p99 of admitted requests
 * with shedding against without (same machine, same run).
 *
 * Environment: BENCH_CONNECTIONS (200), BENCH_DURATION seconds (5), BENCH_WORK_MS (1),
 * BENCH_MAX_DELAY ms (50), BENCH_SMOKE=1 (1 s runs).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { get } from 'node:http';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';


const env = process.env;
const int = (name: string, fallback: number): number => (env[name] ? Number(env[name]) : fallback);

if (process.argv[2] === '--child') await child(JSON.parse(process.argv[3]!) as { overload: boolean; workMs: number; maxDelay: number });
else await main();

/** The gateway under load: prints `{ url, adminUrl }` on its IPC channel once listening. */
async function child(options: { overload: boolean; workMs: number; maxDelay: number }): Promise<void> {
  const { createGateway, definePlugin } = await import('../lib/index.js');
  const { startUpstream } = await import('./upstream.js');
  const upstream = await startUpstream();
  const gateway = createGateway({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    metrics: false,
    logLevel: 'silent',
    services: { bench: { instances: [{ url: `http://127.0.0.1:${upstream.port}` }] } },
    routes: [{ prefix: '/', service: 'bench' }],
    ...(options.overload ? { overload: { maxEventLoopDelay: options.maxDelay } } : {}),
  });
  gateway.use(
    definePlugin({
      name: 'bench-work',
      setup(gw) {
        gw.addMiddleware('resolve', (_ctx, next) => {
          const until = performance.now() + options.workMs;
          while (performance.now() < until);
          return next();
        });
      },
    }),
  );
  const info = await gateway.listen();
  process.send!({ url: info.url, adminUrl: info.adminUrl });
}

interface RunResult {
  label: string;
  seconds: number;
  byStatus: Map<number, number[]>;
  errors: number;
  probeWorstMs: number;
  probeFailures: number;
}

async function main(): Promise<void> {
  const smoke = env.BENCH_SMOKE === '1';
  const connections = int('BENCH_CONNECTIONS', 200);
  const seconds = smoke ? 1 : int('BENCH_DURATION', 5);
  const workMs = int('BENCH_WORK_MS', 1);
  const maxDelay = int('BENCH_MAX_DELAY', 50);
  console.log(`# overload: ${connections} connections for ${seconds} s, ${workMs} ms of CPU per request; shedding at an event-loop p99 delay of ${maxDelay} ms\n`);
  const results: RunResult[] = [];
  for (const overload of [false, true]) {
    const proc = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify({ overload, workMs, maxDelay })], { execArgv: ['--import', 'tsx'], stdio: 'inherit' });
    try {
      const { url, adminUrl } = await new Promise<{ url: string; adminUrl: string }>((resolve, reject) => {
        proc.once('message', resolve as (m: unknown) => void);
        proc.once('exit', (code) => reject(new Error(`the gateway exited (${code})`)));
      });
      results.push(await load(overload ? 'shedding on' : 'shedding off', url, adminUrl, connections, seconds));
    } finally {
      await stop(proc);
    }
  }

  console.log('| run | 200/s | 503/s | 200 p50 ms | 200 p99 ms | 503 p99 ms | errors | /healthz worst ms |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const ok = r.byStatus.get(200) ?? [];
    const shed = r.byStatus.get(503) ?? [];
    console.log(
      `| ${r.label} | ${(ok.length / r.seconds).toFixed(0)} | ${(shed.length / r.seconds).toFixed(0)} | ${pct(ok, 50)} | ${pct(ok, 99)} | ${shed.length ? pct(shed, 99) : '-'} | ${r.errors} | ${r.probeWorstMs.toFixed(1)}${r.probeFailures ? ` (${r.probeFailures} failed)` : ''} |`,
    );
  }
  const [off, on] = results as [RunResult, RunResult];
  const offP99 = quantile(off.byStatus.get(200) ?? [], 99);
  const onP99 = quantile(on.byStatus.get(200) ?? [], 99);
  console.log(`\nadmitted p99 with shedding / without: ${(onP99 / offP99).toFixed(2)}x (${onP99.toFixed(1)} ms vs ${offP99.toFixed(1)} ms)`);
}

/** `connections` clients sending back to back for `seconds`; a probe on `/healthz` every 100 ms. */
async function load(label: string, url: string, adminUrl: string, connections: number, seconds: number): Promise<RunResult> {
  const pool = new Pool(url, { connections, pipelining: 1 });
  const byStatus = new Map<number, number[]>();
  let errors = 0;
  let probeWorstMs = 0;
  let probeFailures = 0;
  const until = performance.now() + seconds * 1000;
  const probing = (async () => {
    while (performance.now() < until) {
      const started = performance.now();
      const ok = await probe(`${adminUrl}/healthz`);
      if (!ok) probeFailures++;
      probeWorstMs = Math.max(probeWorstMs, performance.now() - started);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < until) {
        const started = performance.now();
        try {
          const res = await pool.request({ method: 'GET', path: '/load' });
          await res.body.dump();
          let list = byStatus.get(res.statusCode);
          if (!list) byStatus.set(res.statusCode, (list = []));
          list.push(performance.now() - started);
        } catch {
          errors++;
        }
      }
    }),
  );
  await probing;
  await pool.close();
  return { label, seconds, byStatus, errors, probeWorstMs, probeFailures };
}

function probe(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    get(url, { agent: false, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
    }).on('error', () => resolve(false));
  });
}

function quantile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function pct(values: number[], p: number): string {
  return quantile(values, p).toFixed(1);
}

function stop(proc: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill('SIGKILL');
  });
}
