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
