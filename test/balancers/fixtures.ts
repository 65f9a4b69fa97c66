/**
 * Fixtures shared by the balancer tests: a registry-backed service built from config (the same
 * validation the gateway runs), a fake Koa context for the hash keys, and a load driver that
 * sends requests through a real gateway and counts which upstream answered.
 */
import { EventEmitter } from 'node:events';
import { Agent, request as httpRequest } from 'node:http';
import { Worker } from 'node:worker_threads';
import type { Context } from 'koa';
import { validateConfig } from '../../lib/index.js';
import { Registry, type Instance, type Service } from '../../lib/registry/registry.js';
import { MeshState } from '../../lib/core/state.js';
import { echo, startUpstream, type Handler, type Upstream } from '../helpers.js';
import type { TestContext } from 'node:test';

/** The `services.<name>` fields the balancers read, as written in config. */
export interface PolicyInput {
  balancer?: string;
  hashOn?: string;
  slowStart?: string | number;
  panicThreshold?: number;
}

/** A service in a fresh registry, its instances upserted in order. */
export function makeService(
  policy: PolicyInput = {},
  instances: readonly { url: string; weight?: number; zone?: string }[] = [],
  name = 'svc',
): { registry: Registry; service: Service; instances: Instance[] } {
  const registry = new Registry(new EventEmitter());
  const config = validateConfig({ services: { [name]: { ...policy } } });
  const service = registry.addService(name, config.services[name]!);
  const added = instances.map((spec) => registry.upsertInstance(name, spec));
  return { registry, service, instances: added };
}

/** `count` instance specs with distinct URLs (`http://10.0.0.1:8080`, `http://10.0.0.2:8080`, ...) and the given weight (or weights by index). */
export function specs(count: number, weight: number | ((i: number) => number) = 1): { url: string; weight: number }[] {
  return Array.from({ length: count }, (_, i) => ({
    url: `http://10.0.${Math.floor(i / 250)}.${(i % 250) + 1}:8080`,
    weight: typeof weight === 'number' ? weight : weight(i),
  }));
}

/** A Koa-like context with just what the hash-key readers and balancers touch. */
export function fakeCtx(
  options: { headers?: Record<string, string>; path?: string; query?: string; ip?: string } = {},
): Context {
  const mesh = new MeshState();
  mesh.path = options.path ?? '/';
  mesh.query = options.query ?? '';
  return {
    req: { headers: options.headers ?? {}, socket: { remoteAddress: options.ip ?? '127.0.0.1' } },
    state: { mesh },
  } as unknown as Context;
}

/** Tallies values: `tally(['a', 'b', 'a'])` is `Map { a => 2, b => 1 }`. */
export function tally<T>(values: Iterable<T>): Map<T, number> {
  const counts = new Map<T, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return counts;
}

/** Picks `n` times and returns the picked instances' ids in order. */
export function pickMany(
  balancer: { pick(c: readonly Instance[], ctx: Context, exclude?: ReadonlySet<Instance>): Instance },
  candidates: readonly Instance[] | (() => readonly Instance[]),
  n: number,
  ctx: Context | (() => Context) = fakeCtx(),
): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const list = typeof candidates === 'function' ? candidates() : candidates;
    out.push(balancer.pick(list, typeof ctx === 'function' ? ctx() : ctx).id);
  }
  return out;
}

/** Named upstreams that answer `{ name, ... }` (the echo handler), or with `handler(name)`. */
export async function startNamedUpstreams(
  t: TestContext,
  names: readonly string[],
  handler: (name: string) => Handler = echo,
): Promise<Record<string, Upstream>> {
  const out: Record<string, Upstream> = {};
  for (const name of names) out[name] = await startUpstream(t, handler(name));
  return out;
}

/**
 * One GET through node:http; resolves with the status and the upstream's `name` (from the echo
 * body), or '' when the body is not an echo. A new connection per request unless `agent` is given.
 */
export function get(
  url: string,
  headers: Record<string, string> = {},
  localAddress?: string,
  agent: Agent | false = false,
): Promise<{ status: number; name: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent, localAddress }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let name = '';
        try {
          name = String(JSON.parse(Buffer.concat(chunks).toString()).name ?? '');
        } catch {
          // an error body from the gateway, not an echo: no upstream name
        }
        resolve({ status: res.statusCode!, name });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Sends `total` GETs to `url` from `concurrency` clients (each sends its next request when the
 * previous one finished, over its own keep-alive connection) and returns which upstream answered
 * each, in completion order.
 */
export async function drive(
  url: string,
  total: number,
  concurrency: number,
  headers: (i: number) => Record<string, string> = () => ({}),
): Promise<{ status: number; name: string }[]> {
  const results: { status: number; name: string }[] = [];
  // keep-alive keeps the per-request work (and so the timing noise on a busy machine) low
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  let next = 0;
  const client = async (): Promise<void> => {
    while (next < total) {
      const i = next++;
      results.push(await get(url, headers(i), undefined, agent));
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, client));
  } finally {
    agent.destroy();
  }
  return results;
}

/** The load driver of {@link driveInWorker}: plain CommonJS, run by a worker thread with `eval`. */
const WORKER_DRIVER = `
const { workerData, parentPort } = require('node:worker_threads');
const http = require('node:http');
const { url, total, concurrency } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const statuses = [];
let next = 0;
const one = () => new Promise((resolve, reject) => {
  const req = http.get(url, { agent }, (res) => {
    res.resume();
    res.on('end', () => resolve(res.statusCode));
    res.on('error', reject);
  });
  req.on('error', reject);
});
const client = async () => {
  while (next < total) {
    next++;
    statuses.push(await one());
  }
};
Promise.all(Array.from({ length: concurrency }, client)).then(() => {
  agent.destroy();
  parentPort.postMessage(statuses);
});
`;

/**
 * Like {@link drive}, but the clients run in a worker thread and only the statuses come back
 * (count what each upstream saw instead). For tests whose outcome depends on how long the
 * gateway holds a request: the clients' own work stays off the event loop the gateway and the
 * upstreams share, so a busy machine distorts the timing less.
 */
export function driveInWorker(url: string, total: number, concurrency: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER_DRIVER, { eval: true, workerData: { url, total, concurrency } });
    worker.once('message', (statuses: number[]) => {
      resolve(statuses);
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`load driver exited with ${code} before reporting`)));
  });
}
