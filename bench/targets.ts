/**
 * Starts each benchmark target in its own process, so the load generator, the upstream and the
 * proxy under test never share an event loop, and makes sure every process started here dies
 * with the runner: on a normal end, on an error, on Ctrl-C, and (through the IPC channel each
 * target watches) even when the runner itself is killed.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

/**
 * The processes the benchmark can start; see bench/child.ts. `meshgate` is the gateway of
 * bench/meshgate.ts (round-robin, built-in defaults); the `meshgate-<stack>` kinds are the stacks
 * of bench/stack.ts (`meshgate-untraced` is `standard` without trace context, `meshgate-log` is `standard+log`).
 */
export type TargetKind =
  | 'upstream'
  | 'bare-proxy'
  | 'reply-from'
  | 'http-proxy'
  | 'meshgate'
  | 'meshgate-core'
  | 'meshgate-standard'
  | 'meshgate-untraced'
  | 'meshgate-log'
  | 'baseline-core'
  | 'baseline-standard';

/** The repository root: children run from there so `--import tsx` resolves. */
export const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));

/** A running target process. */
export interface TargetProcess {
  kind: TargetKind;
  pid: number;
  port: number;
  url: string;
  /** Asks the process to exit (SIGTERM), then kills it if it has not after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** Asks the process for a full garbage collection and waits until it is done (a no-op without `--expose-gc`). */
  gc(): Promise<void>;
}

const children = new Set<ChildProcess>();

/** Spawns a process that {@link stopAll} and the exit hooks will kill; use it for load generators too. */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  const child = spawn(command, args, options);
  children.add(child);
  child.once('exit', () => children.delete(child));
  // A failed spawn (ENOENT) emits 'error' and no 'exit'.
  child.once('error', () => children.delete(child));
  return child;
}

/**
 * Starts `bench/child.ts <kind> [upstream]` in a new Node process and resolves once it reported
 * its port over the IPC channel. The child's stdout is /dev/null: nothing reads it, and the access
 * log of `meshgate-log` (pino, fd 1) is written there for real and discarded. `nodeArgs` go before
 * the script (e.g. `--cpu-prof`).
 */
export async function startTarget(
  kind: TargetKind,
  options: {
    upstream?: string;
    nodeArgs?: readonly string[];
    readyTimeoutMs?: number;
    /** A program that runs node, with its arguments (`['valgrind', '--tool=callgrind']`); the pid is then the wrapper's. */
    wrapper?: readonly string[];
    /** Extra environment for the child. */
    env?: NodeJS.ProcessEnv;
  } = {},
): Promise<TargetProcess> {
  const args = [...(options.nodeArgs ?? []), '--import', 'tsx', CHILD, kind, ...(options.upstream ? [options.upstream] : [])];
  const [command, ...wrapperArgs] = options.wrapper ?? [process.execPath];
  // 'ignore' opens /dev/null on the child's fd 1.
  const child = spawnTracked(command!, options.wrapper ? [...wrapperArgs, process.execPath, ...args] : args, {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    // BENCH_WITHOUT reaches a child only when asked for here: left set in a shell, it would
    // silently turn `npm run bench`'s standard stack into a smaller one under the same name.
    env: { ...process.env, BENCH_WITHOUT: undefined, ...options.env },
  });
  const timeoutMs = options.readyTimeoutMs ?? 30_000;
  let onMessage: ((message: unknown) => void) | undefined;
  let onExit: ((code: number | null, signal: string | null) => void) | undefined;
  let onError: ((err: Error) => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      onMessage = (message) => {
        const port = (message as { port?: unknown } | null)?.port;
        if (typeof port === 'number') resolve(port);
      };
      onExit = (code, signal) => reject(new Error(`${kind} exited before it was ready (code ${code}, signal ${signal})`));
      timer = setTimeout(() => reject(new Error(`${kind} did not report its port within ${timeoutMs} ms`)), timeoutMs);
      child.on('message', onMessage);
      child.once('exit', onExit);
      onError = reject;
      child.once('error', onError);
    });
    return {
      kind,
      pid: child.pid!,
      port,
      url: `http://127.0.0.1:${port}`,
      stop: (graceMs = 5000) => stopChild(child, graceMs),
      gc: () =>
        new Promise<void>((resolve, reject) => {
          if (child.exitCode !== null || child.signalCode !== null || !child.connected) {
            reject(new Error(`${kind} is gone: no GC to ask for`));
            return;
          }
          const done = (err?: Error): void => {
            clearTimeout(timer);
            child.off('message', onReply);
            child.off('exit', onGone);
            if (err) reject(err);
            else resolve();
          };
          const onGone = (): void => done(new Error(`${kind} exited while asked for a GC`));
          const onReply = (message: unknown): void => {
            if ((message as { gc?: unknown } | null)?.gc === true) done();
          };
          const timer = setTimeout(() => done(new Error(`${kind} did not answer a GC request within ${timeoutMs} ms`)), timeoutMs);
          child.on('message', onReply);
          child.once('exit', onGone);
          child.send('gc', (err) => {
            if (err) done(err);
          });
        }),
    };
  } catch (err) {
    await stopChild(child, 0);
    throw err;
  } finally {
    clearTimeout(timer);
    if (onMessage) child.off('message', onMessage);
    if (onExit) child.off('exit', onExit);
    if (onError) child.off('error', onError);
  }
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(graceMs > 0 ? 'SIGTERM' : 'SIGKILL');
  if (graceMs > 0) {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  } else {
    await exited;
  }
}

/** Stops every process started through this module. */
export async function stopAll(graceMs = 5000): Promise<void> {
  await Promise.all([...children].map((child) => stopChild(child, graceMs)));
}

let hooked = false;
let signalled = false;

/** True once SIGINT/SIGTERM started tearing everything down: errors after that are expected. */
export function interrupted(): boolean {
  return signalled;
}

/**
 * Kills every tracked process when the runner exits, however it exits: `process.on('exit')`
 * can only run synchronous code, so it sends SIGKILL; SIGINT/SIGTERM stop the children
 * gracefully first, then exit with the conventional status.
 */
export function installExitHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const child of children) child.kill('SIGKILL');
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      signalled = true;
      process.stderr.write(`\nbench: ${signal}, stopping ${children.size} child process(es)\n`);
      stopAll(1000).finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
    });
  }
}
