/**
 * The HTTP/2 and gRPC rows of `npm run bench` (also `npm run bench:protocols` alone): requests
 * per second through meshgate against the same calls made directly to the instance and through
 * `bare-h2`, a bare node:http2 proxy (bench/protocol-child.ts), the floor for an HTTP/2 proxy in
 * Node. All in one run, rounds alternating between the targets so drift spreads over all of them;
 * the table reports medians and ratios, which are the claim (absolute numbers depend on the machine).
 *
 * The proxy under test is pinned to the last CPU (as in bench/run.ts), the instances and the load
 * generator (this process: node:http2 sessions for HTTP/2, a @grpc/grpc-js client for gRPC) share
 * the others. The HTTP/2 load keeps BENCH_H2_STREAMS (64) streams in flight over 4 connections;
 * the gRPC load BENCH_GRPC_CALLS (64) unary calls in flight on one channel.
 *
 * Environment: BENCH_DURATION seconds per run (3), BENCH_ROUNDS (4), BENCH_SMOKE=1 (1 round of 1 s,
 * for CI to keep this code working).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect, type ClientHttp2Session } from 'node:http2';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { choosePinning, median, pin } from './stats.js';

const CHILD = fileURLToPath(new URL('./protocol-child.ts', import.meta.url));
const PROTO = fileURLToPath(new URL('../test/fixtures/echo.proto', import.meta.url));
const smoke = process.env.BENCH_SMOKE === '1';
const durationMs = (smoke ? 1 : Number(process.env.BENCH_DURATION ?? 3)) * 1000;
const rounds = smoke ? 1 : Number(process.env.BENCH_ROUNDS ?? 4);
const streams = Number(process.env.BENCH_H2_STREAMS ?? 64);
const calls = Number(process.env.BENCH_GRPC_CALLS ?? 64);

const children: ChildProcess[] = [];

function start(kind: string, arg?: string): Promise<{ child: ChildProcess; url: string }> {
  const child = fork(CHILD, arg === undefined ? [kind] : [kind, arg], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.once('message', (msg: { port: number }) => resolve({ child, url: `http://127.0.0.1:${msg.port}` }));
    child.once('exit', (code) => reject(new Error(`${kind} exited with ${code} before it listened`)));
  });
}

/** HTTP/2 GETs with `streams` in flight over 4 sessions for `ms`: completed requests per second. */
async function h2Load(url: string, ms: number): Promise<number> {
  const sessions: ClientHttp2Session[] = Array.from({ length: 4 }, () => connect(url));
  let done = 0;
  let failed = 0;
  const until = performance.now() + ms;
  const worker = (session: ClientHttp2Session): Promise<void> =>
    new Promise((resolve) => {
      const next = (): void => {
        if (performance.now() >= until) return resolve();
        const stream = session.request({ ':path': '/bench' });
        stream.on('response', (h) => {
          if (h[':status'] !== 200) failed++;
        });
        stream.resume();
        stream.on('end', () => {
          done++;
          next();
        });
        stream.on('error', () => {
          failed++;
          next();
        });
      };
      next();
    });
  await Promise.all(Array.from({ length: streams }, (_, i) => worker(sessions[i % sessions.length]!)));
  for (const session of sessions) session.close();
  if (failed > 0) throw new Error(`${failed} HTTP/2 requests to ${url} failed`);
  return (done * 1000) / ms;
}

const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO, { keepCase: true, defaults: true })) as unknown as { meshtest: { Echo: grpc.ServiceClientConstructor } };

/** Unary gRPC calls with `calls` in flight on one channel for `ms`: completed calls per second. */
async function grpcLoad(url: string, ms: number): Promise<number> {
  const client = new pkg.meshtest.Echo(new URL(url).host, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Unary: Function };
  let done = 0;
  let failed: grpc.ServiceError | null = null;
  const until = performance.now() + ms;
  const worker = (): Promise<void> =>
    new Promise((resolve) => {
      const next = (): void => {
        if (performance.now() >= until || failed !== null) return resolve();
        client.Unary({ text: 'bench', n: 1 }, (err: grpc.ServiceError | null) => {
          if (err) failed = err;
          else done++;
          next();
        });
      };
      next();
    });
  await Promise.all(Array.from({ length: calls }, worker));
  client.close();
  if (failed !== null) throw new Error(`a gRPC call to ${url} failed: ${(failed as grpc.ServiceError).message}`);
  return (done * 1000) / ms;
}

async function main(): Promise<void> {
  const [h2, grpcInstance] = [await start('upstream-h2'), await start('upstream-grpc')];
  const origins = `${h2.url},${grpcInstance.url}`;
  const bare = await start('bare-h2', origins);
  const meshgate = await start('meshgate-h2', origins);
  const pinning = smoke ? null : choosePinning();
  if (pinning !== null) {
    // The proxies get the last CPU each in turn: both are pinned there, and only one is loaded at a time.
    for (const p of [bare, meshgate]) pin(p.child.pid!, pinning.target);
    for (const p of [h2, grpcInstance]) pin(p.child.pid!, pinning.rest);
    pin(process.pid, pinning.rest);
  }
  const rows: { protocol: string; target: string; load: (ms: number) => Promise<number> }[] = [
    { protocol: 'HTTP/2', target: 'instance directly', load: (ms) => h2Load(h2.url, ms) },
    { protocol: 'HTTP/2', target: 'bare-h2 proxy', load: (ms) => h2Load(bare.url, ms) },
    { protocol: 'HTTP/2', target: 'meshgate (core, h2c both sides)', load: (ms) => h2Load(meshgate.url, ms) },
    { protocol: 'gRPC unary', target: 'instance directly', load: (ms) => grpcLoad(grpcInstance.url, ms) },
    { protocol: 'gRPC unary', target: 'bare-h2 proxy', load: (ms) => grpcLoad(bare.url, ms) },
    { protocol: 'gRPC unary', target: 'meshgate (core, h2c both sides)', load: (ms) => grpcLoad(meshgate.url, ms) },
  ];
  const results = rows.map(() => [] as number[]);
  if (!smoke) for (const row of rows) await row.load(1000); // warm-up: JIT, connections
  for (let round = 0; round < rounds; round++) {
    // Rotated each round, so a slow second of the machine does not always land on the same row.
    for (let k = 0; k < rows.length; k++) {
      const i = (k + round) % rows.length;
      results[i]!.push(await rows[i]!.load(durationMs));
    }
    process.stderr.write(`protocols: round ${round + 1}/${rounds}\n`);
  }
  const medians = results.map((r) => median(r));
  console.log(`\n### HTTP/2 and gRPC (${rounds} rounds of ${durationMs / 1000} s; ${streams} streams over 4 connections, ${calls} gRPC calls in flight${pinning ? '; proxy pinned to one CPU' : ''})\n`);
  console.log('| protocol | target | req/s (median) | vs bare-h2 proxy | vs direct |');
  console.log('|---|---|---:|---:|---:|');
  rows.forEach((row, i) => {
    const base = row.protocol === 'HTTP/2' ? 0 : 3;
    console.log(`| ${row.protocol} | ${row.target} | ${Math.round(medians[i]!)} | ${(medians[i]! / medians[base + 1]!).toFixed(2)}x | ${(medians[i]! / medians[base]!).toFixed(2)}x |`);
  });
}

try {
  await main();
} finally {
  for (const child of children) child.kill('SIGTERM');
}
