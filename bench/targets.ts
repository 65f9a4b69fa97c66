/**
 * Starts each benchmark target in its own process, so the load generator, the upstream and the
 * proxy under test never share an event loop, and makes sure every process started here dies
 * with the runner: on a normal end, on an error, on Ctrl-C, and (through the IPC channel each
 * target watches) even when the runner itself is killed.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The processes the benchmark can start; see bench/child.ts. */
export type TargetKind = 'upstream' | 'bare-proxy' | 'meshgate';

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
 * Starts `bench/child.ts <kind> [upstream]` in a new Node process and resolves once it printed
 * its port. `nodeArgs` go before the script (e.g. `--cpu-prof`).
 */
export async function startTarget(
  kind: TargetKind,
  options: { upstream?: string; nodeArgs?: readonly string[]; readyTimeoutMs?: number } = {},
): Promise<TargetProcess> {
  const args = [...(options.nodeArgs ?? []), '--import', 'tsx', CHILD, kind, ...(options.upstream ? [options.upstream] : [])];
  const child = spawnTracked(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const lines = createInterface({ input: child.stdout! });
  const timeoutMs = options.readyTimeoutMs ?? 30_000;
  let onLine: ((line: string) => void) | undefined;
  let onExit: ((code: number | null, signal: string | null) => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      onLine = (line) => {
        if (/^\d+$/.test(line.trim())) resolve(Number(line.trim()));
      };
      onExit = (code, signal) => reject(new Error(`${kind} exited before it was ready (code ${code}, signal ${signal})`));
      timer = setTimeout(() => reject(new Error(`${kind} did not print its port within ${timeoutMs} ms`)), timeoutMs);
      lines.on('line', onLine);
      child.once('exit', onExit);
      child.once('error', reject);
    });
    return {
      kind,
      pid: child.pid!,
      port,
      url: `http://127.0.0.1:${port}`,
      stop: (graceMs = 5000) => stopChild(child, graceMs),
    };
  } catch (err) {
    await stopChild(child, 0);
    throw err;
  } finally {
    clearTimeout(timer);
    // The 'line' listener stays (a no-op now) so a chatty child never blocks on a full pipe.
    if (onExit) child.off('exit', onExit);
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
