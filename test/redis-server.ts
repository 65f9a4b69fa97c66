/**
 * A real `redis-server` for the tests, on a free port of 127.0.0.1, without persistence (so a
 * restart comes back empty). Never the system Redis on 6379. Killed after the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import type { TestContext } from 'node:test';
import { sleep, unusedPort } from './helpers.js';

/** The binary; CI installs it at /usr/bin/redis-server. */
const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';

/** A redis-server started by {@link startRedis}. */
export interface RedisServerProcess {
  /** `redis://127.0.0.1:PORT` */
  url: string;
  port: number;
  /** Stops the server (default SIGKILL: no goodbye to its clients) and waits for the exit. Idempotent. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port (empty, unless its `args` keep data); resolves once it answers PING. */
  restart(): Promise<void>;
  /** Whether the server process is running. */
  readonly running: boolean;
  /** Freezes the server (SIGSTOP): connections stay open, nothing is answered. */
  pause(): void;
  /** Lets a paused server run again (SIGCONT): it runs what it was sent meanwhile. */
  resume(): void;
}

/**
 * Starts `redis-server` on a free port and waits until it answers PING; killed in `t.after`.
 * `args` come after the defaults and override them (`--appendonly yes --dir D` to keep the data
 * across a restart, `--replicaof`, `--cluster-enabled yes`); `port` to take a given one.
 */
export async function startRedis(t: TestContext, options: { args?: string[]; port?: number } = {}): Promise<RedisServerProcess> {
  const port = options.port ?? (await unusedPort());
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  const launch = async (): Promise<void> => {
    const proc = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmpdir(), '--loglevel', 'warning', ...(options.args ?? [])], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = proc;
    output = '';
    proc.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
    proc.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));
    exited = new Promise<void>((resolve) => {
      proc.once('error', (err) => {
        output += String(err);
        resolve();
      });
      proc.once('exit', () => resolve());
    });
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      if (proc.exitCode !== null || proc.signalCode !== null) break;
      if (await answersPing(port)) return;
      await sleep(25);
    }
    proc.kill('SIGKILL');
    await exited;
    throw new Error(`redis-server on port ${port} did not start: ${output.trim()}`);
  };

  const server: RedisServerProcess = {
    url: `redis://127.0.0.1:${port}`,
    port,
    get running() {
      return child !== null && child.exitCode === null && child.signalCode === null;
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    async restart() {
      await server.kill();
      await launch();
    },
    pause() {
      child?.kill('SIGSTOP');
    },
    resume() {
      child?.kill('SIGCONT');
    },
  };
  // A paused server would not die of SIGKILL until it runs again on some systems: resume first.
  t.after(() => {
    server.resume();
    return server.kill();
  });
  await launch();
  return server;
}

/** One PING over a raw socket: true when the server answers +PONG. */
function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let reply = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

/** Runs `redis-cli` with `args`; resolves with its output (rejects when it exits non-zero). */
export async function redisCli(args: string[]): Promise<string> {
  const proc = spawn(process.env.REDIS_CLI ?? '/usr/bin/redis-cli', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));
  const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
  if (code !== 0) throw new Error(`redis-cli ${args.join(' ')} exited ${code}: ${output}`);
  return output;
}

/** A Sentinel-watched master and replica: `target` is the `redis-sentinel://` form the CLI takes. */
export interface SentinelGroup {
  master: RedisServerProcess;
  replica: RedisServerProcess;
  sentinelPorts: number[];
  name: string;
  /** `redis-sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/NAME` */
  target: string;
  /** The port of the master Sentinel names now. */
  masterPort(): Promise<number>;
}

/**
 * One master, one replica and three Sentinels (quorum 2, a master is down after 1 s), all on free
 * loopback ports, each Sentinel with its own config file (Sentinel rewrites it). Killed after the test.
 */
export async function startSentinelGroup(t: TestContext, dir: string): Promise<SentinelGroup> {
  const { writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const name = 'meshgate-test';
  const master = await startRedis(t);
  const replica = await startRedis(t, { args: ['--replicaof', '127.0.0.1', String(master.port)] });
  const sentinelPorts: number[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await unusedPort();
    const conf = join(dir, `sentinel-${port}.conf`);
    await writeFile(
      conf,
      [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${master.port} 2`, `sentinel down-after-milliseconds ${name} 1000`, `sentinel failover-timeout ${name} 5000`, `sentinel parallel-syncs ${name} 1`, ''].join('\n'),
    );
    const proc = spawn(REDIS_SERVER, [conf, '--sentinel'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    t.after(async () => {
      proc.kill('SIGKILL');
      await exited;
    });
    const end = Date.now() + 10_000;
    while (!(await answersPing(port))) {
      if (Date.now() > end) throw new Error(`sentinel on ${port} did not start`);
      await sleep(25);
    }
    sentinelPorts.push(port);
  }
  // The replica has synced, and every Sentinel knows the others, before anything relies on a failover.
  const end = Date.now() + 20_000;
  for (;;) {
    const info = await redisCli(['-p', String(replica.port), 'info', 'replication']).catch(() => '');
    const sentinels = await redisCli(['-p', String(sentinelPorts[0]), 'sentinel', 'sentinels', name]).catch(() => '');
    if (info.includes('master_link_status:up') && (sentinels.match(/^name$/gm)?.length ?? 0) >= 2) break;
    if (Date.now() > end) throw new Error(`the Sentinel group did not settle: ${info} ${sentinels}`);
    await sleep(100);
  }
  return {
    master,
    replica,
    sentinelPorts,
    name,
    target: `redis-sentinel://${sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',')}/${name}`,
    async masterPort() {
      const out = await redisCli(['-p', String(sentinelPorts[0]), 'sentinel', 'get-master-addr-by-name', name]);
      return Number(out.trim().split('\n')[1]);
    },
  };
}

/** Three Redis Cluster masters (no replicas) made with `redis-cli --cluster create`; `target` is the `redis-cluster://` form. */
export async function startRedisCluster(t: TestContext, dir: string): Promise<{ nodes: RedisServerProcess[]; urls: string[]; target: string }> {
  const nodes: RedisServerProcess[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await unusedPort();
    // The bus port is its own free port: port + 10000 may be past 65535.
    const bus = await unusedPort();
    nodes.push(await startRedis(t, { port, args: ['--cluster-enabled', 'yes', '--cluster-port', String(bus), '--cluster-config-file', `nodes-${port}.conf`, '--dir', dir, '--cluster-node-timeout', '2000'] }));
  }
  await redisCli(['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
  const end = Date.now() + 20_000;
  for (const node of nodes) {
    while (!(await redisCli(['-p', String(node.port), 'cluster', 'info'])).includes('cluster_state:ok')) {
      if (Date.now() > end) throw new Error('the cluster did not reach cluster_state:ok');
      await sleep(100);
    }
  }
  return { nodes, urls: nodes.map((n) => n.url), target: `redis-cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}` };
}
