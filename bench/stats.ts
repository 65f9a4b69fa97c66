/** Small helpers for the runner: medians, per-process CPU time, machine description. */
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';

/** The median of `values` (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * How far the values spread around their median: (max - min) / median, 0 for fewer than two.
 * Applied to the bare proxy's req/s over the rounds it says whether the machine kept its speed:
 * the bare proxy's code does not change between rounds, so a wide spread is the machine.
 */
export function relativeSpread(values: readonly number[]): number {
  if (values.length < 2) return 0;
  return (Math.max(...values) - Math.min(...values)) / median(values);
}

let clockTicks: number | undefined;

function ticksToMs(ticks: number): number {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  return (ticks * 1000) / clockTicks;
}

/**
 * CPU time (user + system) a process has used so far, in ms, from /proc; `null` where /proc is
 * not available. Read before and after a run, it tells what each request cost the process under
 * test, which is steadier than requests/s on a small machine where everything shares the cores.
 */
export function processCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ticksToMs(Number(fields[11]) + Number(fields[12]));
  } catch {
    // Not Linux, or the process is gone: the CPU column is simply left out.
    return null;
  }
}

/** CPU model, core count and Node version of this machine. */
export function machine(): { cpu: string; cores: number; node: string } {
  return { cpu: cpus()[0]?.model.trim() ?? 'unknown', cores: availableParallelism(), node: process.version };
}

/** The CPU ids this process may run on (Linux `Cpus_allowed_list`), or null where unknown. */
export function allowedCpus(): number[] | null {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const list = /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1];
    if (!list) return null;
    const ids: number[] = [];
    for (const part of list.split(',')) {
      const [from, to] = part.split('-').map(Number);
      for (let id = from!; id <= (to ?? from!); id++) ids.push(id);
    }
    return ids;
  } catch {
    // Not Linux: no pinning.
    return null;
  }
}

/**
 * How the runner pins processes: the process under test alone on `target`, everything else (the
 * load generator, the upstream when a proxy is measured) on `rest`. Null when pinning is off.
 */
export interface Pinning {
  target: string;
  rest: string;
}

/** Pinning for this machine: needs Linux, `taskset` and at least two CPUs. */
export function choosePinning(): Pinning | null {
  const ids = allowedCpus();
  if (ids === null || ids.length < 2) return null;
  if (spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status !== 0) return null;
  return { target: String(ids[ids.length - 1]), rest: ids.slice(0, -1).join(',') };
}

/** Moves every thread of `pid` onto `cpus` (a taskset list such as `0,1`). */
export function pin(pid: number, cpus: string): void {
  const out = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`taskset -a -p -c ${cpus} ${pid} failed: ${out.stderr}`);
}

/**
 * CPU time the whole machine spent running processes (user, nice, system, steal; all CPUs), in ms,
 * from /proc/stat; null where unavailable. Interrupt time is left out: on loopback much of it is
 * the benchmark's own network traffic, which no process is charged for.
 */
export function machineBusyMs(): number | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
    const [user, nice, system, , , , , steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return ticksToMs(user! + nice! + system! + (steal ?? 0));
  } catch {
    // Not Linux: the "other load" figure is left out.
    return null;
  }
}

/** CPU time of this process plus its children that already exited (the load generators), ms. */
export function selfAndReapedCpuMs(): number | null {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ticksToMs(Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]));
  } catch {
    // Not Linux: see machineBusyMs.
    return null;
  }
}

/** The pids whose parent is `pid` (Linux /proc); empty where /proc is unavailable. */
export function childPids(pid: number): number[] {
  const children: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    // Not Linux: the caller charges the parent alone.
    return children;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The parent pid is the second field after the parenthesized command name.
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {
      // The process exited between readdir and read: not a child any more.
    }
  }
  return children;
}
