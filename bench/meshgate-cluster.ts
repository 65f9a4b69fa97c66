/**
 * The `meshgate-cluster` target: the CLI as users run it, `node dist/lib/cli.js start --config
 * <file>`, with the `standard` stack of bench/stack.ts and `workers: auto` (one worker per CPU,
 * lib/cluster.ts). The primary runs the control plane (admin, metrics, health checks), the workers
 * proxy on one shared listener. bench/run.ts measures it only where there are more than 2 CPUs.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { stringify } from 'yaml';
import { stackConfig } from './stack.js';
import { childPids } from './stats.js';
import { ROOT, spawnTracked } from './targets.js';

const CLI = fileURLToPath(new URL('../dist/lib/cli.js', import.meta.url));
const WATCH_PARENT = pathToFileURL(fileURLToPath(new URL('./exit-with-parent.mjs', import.meta.url))).href;

/** A running cluster: the primary's pid, its workers' pids, and how to stop them all. */
export interface ClusterTarget {
  pid: number;
  /** The primary and every worker: what the target's CPU time is the sum of. */
  pids: number[];
  workers: number;
  url: string;
  stop(graceMs?: number): Promise<void>;
}

/** Starts the CLI in cluster mode in front of `upstream`; resolves once every worker listens. */
export async function startMeshgateCluster(upstream: string, readyTimeoutMs = 30_000): Promise<ClusterTarget> {
  const dir = mkdtempSync(join(tmpdir(), 'meshgate-bench-'));
  const configFile = join(dir, 'meshgate.yaml');
  writeFileSync(configFile, stringify({ ...stackConfig('standard', upstream), workers: 'auto' }));
  // stdout to /dev/null (nothing writes there with the access log off); stderr carries the
  // "listening on ... with N workers" line, and whatever goes wrong.
  const child = spawnTracked(process.execPath, ['--import', WATCH_PARENT, CLI, 'start', '--config', configFile], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  const cleanUp = (): void => rmSync(dir, { recursive: true, force: true });
  // However it ends (stop(), or stopAll() from the runner's exit hooks), the config goes with it.
  child.once('exit', cleanUp);
  const stop = async (graceMs = 5000): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    cleanUp();
  };
  const lines = createInterface({ input: child.stderr! });
  let timer: NodeJS.Timeout | undefined;
  try {
    const { url, workers } = await new Promise<{ url: string; workers: number }>((resolve, reject) => {
      lines.on('line', (line) => {
        const ready = /listening on (http:\/\/\S+?),? with (\d+) workers/.exec(line);
        if (ready) resolve({ url: ready[1]!, workers: Number(ready[2]) });
        // Before and after it is ready, what the CLI says is worth seeing.
        else process.stderr.write(`meshgate-cluster: ${line}\n`);
      });
      child.once('exit', (code, signal) => reject(new Error(`meshgate-cluster exited before it was ready (code ${code}, signal ${signal})`)));
      child.once('error', reject);
      timer = setTimeout(() => reject(new Error(`meshgate-cluster did not report listening within ${readyTimeoutMs} ms`)), readyTimeoutMs);
    });
    const pids = [child.pid!, ...childPids(child.pid!)];
    if (pids.length !== workers + 1) throw new Error(`meshgate-cluster reported ${workers} workers, found ${pids.length - 1} child processes`);
    return { pid: child.pid!, pids, workers, url, stop };
  } catch (err) {
    await stop(0);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
