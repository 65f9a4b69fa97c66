/**
 * Shared test fixtures: real HTTP upstreams on port 0, gateways on port 0, and clean-up through
 * node:test's `t.after`. Nothing here mocks a socket.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createGateway, type Gateway, type GatewayConfigInput, type GatewayOptions } from '../lib/index.js';

/** A real upstream: records what it saw, answers with `handler` (default: JSON echo). */
export interface Upstream {
  server: Server;
  url: string;
  port: number;
  /** Every request the upstream received, in order. */
  seen: { method: string; url: string; headers: IncomingMessage['headers']; rawHeaders: string[] }[];
  /** Destroys open sockets, then closes. */
  close(): Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** Answers `{ name, method, url, headers }` as JSON. */
export function echo(name: string): Handler {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.stringify({ name, method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  };
}

/** Starts a real HTTP server on 127.0.0.1:0; closed after the test. */
export async function startUpstream(t: TestContext | null, handler: Handler = echo('upstream')): Promise<Upstream> {
  const sockets = new Set<Socket>();
  const seen: Upstream['seen'] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders });
    handler(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | null = null;
  const upstream: Upstream = {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      })),
  };
  t?.after(() => upstream.close());
  return upstream;
}

/** A gateway listening on 127.0.0.1:0 with logging off; closed after the test. */
export async function startGateway(
  t: TestContext | null,
  config: GatewayConfigInput,
  options: GatewayOptions & { setup?: (gw: Gateway) => void } = {},
): Promise<{ gateway: Gateway; url: string; adminUrl?: string }> {
  const gateway = createGateway(
    {
      logLevel: 'silent',
      ...config,
      listen: { host: '127.0.0.1', port: 0, ...config.listen },
      ...(config.admin ? { admin: { host: '127.0.0.1', port: 0, ...config.admin } } : {}),
    },
    options,
  );
  options.setup?.(gateway);
  const info = await gateway.listen();
  t?.after(() => gateway.close());
  return { gateway, url: info.url, adminUrl: info.adminUrl };
}

/** What {@link send} and {@link sendPath} resolve with. */
export interface SentResponse {
  status: number;
  headers: IncomingMessage['headers'];
  rawHeaders: string[];
  body: string;
  /** The body as it came off the wire (still compressed, if it was). */
  bytes: Buffer;
  json: () => any;
}

type SendOptions = { method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer };

/** A plain HTTP request with node:http (no pooling surprises); resolves with status, headers and body. */
export function send(url: string, options: SendOptions = {}): Promise<SentResponse> {
  const target = new URL(url);
  return sendPath(target.origin, target.pathname + target.search, options);
}

/** Resolves after `ms` on a real timer. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 20 ms until it returns true, or fails after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
}

/** A Koa app (or any request handler) listening on 127.0.0.1:0; its sockets are destroyed and the server closed after the test. */
export async function listenApp(
  t: TestContext,
  app: { callback(): (req: IncomingMessage, res: ServerResponse) => void },
): Promise<{ server: Server; url: string; port: number }> {
  const sockets = new Set<Socket>();
  const server = createServer(app.callback());
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { server, url: `http://127.0.0.1:${port}`, port };
}

/** A gateway that is not listening (for mount mode), with logging off; closed after the test. */
export function createTestGateway(t: TestContext, config: GatewayConfigInput, options: GatewayOptions = {}): Gateway {
  const gateway = createGateway({ logLevel: 'silent', ...config }, options);
  t.after(() => gateway.close());
  return gateway;
}

/** A port on 127.0.0.1 that nothing listens on (it was bound, then released). */
export async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Like {@link send}, but the request target is sent exactly as given (no URL parsing, so dot
 * segments and escapes reach the server untouched).
 */
export function sendPath(baseUrl: string, path: string, options: SendOptions = {}): Promise<SentResponse> {
  const base = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: base.hostname, port: base.port, path, method: options.method ?? 'GET', headers: options.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const bytes = Buffer.concat(chunks);
          const body = bytes.toString();
          resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body, bytes, json: () => JSON.parse(body) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * Records every `unhandledRejection` and `uncaughtException` in the process until the test ends.
 * Assert the returned list is empty at the end of the test.
 */
export function trackProcessErrors(t: TestContext): unknown[] {
  const errors: unknown[] = [];
  const onRejection = (reason: unknown): void => {
    errors.push(reason);
  };
  const onException = (err: unknown): void => {
    errors.push(err);
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  t.after(() => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  });
  return errors;
}

/** Settles like `promise`, or rejects after `ms` so a hang fails the test instead of stalling the run. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms}ms`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

/** A child process started by {@link spawnNode}. */
export interface ChildRun {
  child: import('node:child_process').ChildProcess;
  /** Everything the child wrote so far. */
  stdout(): string;
  stderr(): string;
  /** Settles when the child exits. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Runs `node ...args` in `cwd`, capturing its output; a child still running after the test is
 * killed with `killSignal` (SIGKILL; SIGTERM for a child that must stop its own children first).
 * `env` is added to the parent's environment.
 */
export async function spawnNode(
  t: TestContext | null,
  args: string[],
  options: { cwd: string; env?: Record<string, string | undefined>; killSignal?: NodeJS.Signals },
): Promise<ChildRun> {
  // Loaded here, not at the top: only the process tests need it.
  const { spawn } = await import('node:child_process');
  const env: NodeJS.ProcessEnv = { ...process.env, ...options.env };
  // The test runner marks its own children; a grandchild must not think it is one.
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, args, { cwd: options.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  t?.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(options.killSignal ?? 'SIGKILL');
      await exited.catch(() => undefined);
    }
  });
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** The repository root, where `--import tsx` resolves. */
const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Runs the ES module `script` (TypeScript imports allowed) in a fresh node process from the repository root. */
export function spawnScript(t: TestContext | null, script: string): Promise<ChildRun> {
  return spawnNode(t, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT });
}

/** Runs `script` as {@link spawnScript} does, to its end; checks it exited 0 and returns the JSON on its last line of output. */
export async function scriptResult<T>(t: TestContext, script: string): Promise<T> {
  const run = await spawnScript(t, script);
  const { code } = await run.exited;
  assert.equal(code, 0, run.stderr());
  return JSON.parse(run.stdout().trim().split('\n').pop()!) as T;
}

/**
 * Writes `data` on a fresh socket and collects everything the server sends until it closes the
 * connection (or `idleMs` pass without a byte, then the socket is destroyed).
 */
export function rawExchange(port: number, data: string | Buffer, idleMs = 1500): Promise<{ text: string; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let closedByServer = true;
    const idle = (): void => {
      closedByServer = false;
      socket.destroy();
    };
    socket.setTimeout(idleMs, idle);
    socket.on('connect', () => socket.write(data));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => {}); // a reset after the answer is an acceptable way to close
    socket.on('close', () => resolve({ text: Buffer.concat(chunks).toString('latin1'), closedByServer }));
  });
}

/** Status codes of every response in a raw byte stream. */
export const statusLines = (text: string): number[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

/** Whether something accepts TCP connections on 127.0.0.1:`port` (a probe that sends no request). */
export async function accepts(port: number): Promise<boolean> {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The fenced blocks in one of `langs` of a Markdown file of the repository, with the line each starts on. */
export function fencedBlocks(file: string, langs: readonly string[]): { line: number; text: string }[] {
  const lines = readFileSync(new URL(`../${file}`, import.meta.url), 'utf8').split('\n');
  const blocks: { line: number; text: string }[] = [];
  let open: { line: number; body: string[] } | null = null;
  lines.forEach((line, i) => {
    const fence = /^```(\S*)/.exec(line);
    if (fence && open === null) {
      // A block of another language is skipped whole (line -1), so its closing fence is not taken for an opening one.
      open = { line: langs.includes(fence[1]!) ? i + 1 : -1, body: [] };
      return;
    }
    if (line.startsWith('```') && open !== null) {
      if (open.line > 0) blocks.push({ line: open.line, text: open.body.join('\n') });
      open = null;
      return;
    }
    open?.body.push(line);
  });
  return blocks;
}


/** The library's seeded PRNG, re-exported for the tests that import it from here. */
export { seededRandom } from '../lib/kit/random.js';

/** The real CLI (`node --import tsx lib/cli.ts ...args`) from the repo root, JSON log lines on stderr, no admin token from the environment. */
export function meshgateCli(t: TestContext | null, args: string[], env: Record<string, string | undefined> = {}, killSignal?: NodeJS.Signals): Promise<ChildRun> {
  return spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', ...args], { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined, MESHGATE_LOG_FORMAT: 'json', ...env }, killSignal });
}

/** The JSON log lines a process wrote to stderr so far whose message matches. */
export function logLines(run: ChildRun, message: RegExp): Record<string, unknown>[] {
  return run
    .stderr()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => message.test(String(line.msg)));
}

/** A temporary directory, removed after the test. */
export async function tempDir(t: TestContext, prefix = 'meshgate-test-'): Promise<string> {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A self-signed certificate for localhost and 127.0.0.1 (made by `openssl` in a temp folder): paths, and the certificate as a CA. */
export async function selfSigned(t: TestContext): Promise<{ cert: string; key: string; ca: Buffer }> {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const { readFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const dir = await tempDir(t);
  const cert = join(dir, 'gw.crt');
  const key = join(dir, 'gw.key');
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-days', '1']);
  return { cert, key, ca: await readFile(cert) };
}

/**
 * Requests from `clients` loops on keep-alive connections (spread over `urls`) until stopped:
 * what came back 200 (counted by the JSON body's `name` when it has one), and every failure
 * (a status, or a socket error such as ECONNRESET).
 */
export function keepAliveLoad(urls: readonly string[], path: string, clients: number): { stop: () => Promise<{ ok: number; failed: string[]; by: Map<string, number> }> } {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: clients });
  let running = true;
  let ok = 0;
  const failed: string[] = [];
  const by = new Map<string, number>();
  const one = (url: string): Promise<void> =>
    new Promise((resolve) => {
      const req = httpRequest(`${url}${path}`, { agent }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (c: string) => (body += c));
        res.on('end', () => {
          if (res.statusCode === 200) {
            ok++;
            try {
              const name = (JSON.parse(body) as { name?: string }).name;
              if (name !== undefined) by.set(name, (by.get(name) ?? 0) + 1);
            } catch {
              // not JSON: counted, not named
            }
          } else failed.push(`status ${res.statusCode}: ${body}`);
          resolve();
        });
        res.on('error', (err) => {
          failed.push(`response ${err.message}`);
          resolve();
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        failed.push(err.code ?? err.message);
        resolve();
      });
      req.end();
    });
  const loops = Array.from({ length: clients }, async (_, i) => {
    while (running) await one(urls[i % urls.length]!);
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      agent.destroy();
      return { ok, failed, by };
    },
  };
}

/** A cluster started by `meshgate start` from a config file: its ports, the file (rewrite it, then SIGHUP) and the process. */
export interface ClusterRun {
  port: number;
  /** The admin URL, when `adminToken` was given. */
  admin: string;
  file: string;
  run: ChildRun;
  /** Rewrites the config file: `workers: 2`, quiet logs, the ports, then `lines`. */
  write(lines: readonly string[]): Promise<void>;
}

/** `meshgate start` with `workers: 2` on free ports (an admin port too with `adminToken`), waited for until it accepts connections. */
export async function startCluster(t: TestContext, lines: readonly string[], adminToken?: string): Promise<ClusterRun> {
  const { writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const port = await unusedPort();
  const adminPort = await unusedPort();
  const file = join(await tempDir(t, 'meshgate-cluster-'), 'meshgate.yaml');
  const write = (more: readonly string[]): Promise<void> =>
    writeFile(file, ['workers: 2', 'logLevel: warn', `listen: { host: 127.0.0.1, port: ${port} }`, ...(adminToken === undefined ? [] : [`admin: { port: ${adminPort}, token: ${adminToken} }`]), ...more].join('\n'));
  await write(lines);
  const run = await spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'start', '--config', file], { cwd: ROOT });
  // logLevel: warn keeps the listening line quiet: wait for the listener itself.
  await waitFor(() => accepts(port), 20_000, `the cluster to listen; stderr:\n${run.stderr()}`);
  return { port, admin: `http://127.0.0.1:${adminPort}`, file, run, write };
}
