/**
 * Reads a V8 `.cpuprofile` (from `node --cpu-prof`) and aggregates its samples: self time by
 * function (name + file + line), inclusive time by function, and self time by area (meshgate's
 * own code, each package, Node internals, GC, idle).
 *
 *   node --import tsx bench/cpuprofile-summary.ts FILE.cpuprofile [--top 30] [--last-ms N]
 *
 * `--last-ms` keeps only the samples of the profile's last N ms: the window under load, without
 * the process's start-up. Line numbers are those V8 saw, except in .ts files run through tsx, whose
 * transpiled code is minified: there a named function's line is looked up in the source by its
 * declaration and shown as `:~N`; anonymous functions show the file only.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
/** The parts of a V8 CPU profile this reads. */
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One aggregated row. */
export interface Row {
  /** `name file:line` for functions, the area name for areas. */
  key: string;
  ms: number;
  /** Share of the profiled (non-idle) time, in percent. */
  pct: number;
}

/** Where a profile's time went, over the kept window. */
export interface Summary {
  /** Wall time covered by the kept samples, ms. */
  windowMs: number;
  /** Time the process spent idle (waiting in epoll), ms. */
  idleMs: number;
  /** Non-idle time, ms: what the percentages are of. */
  busyMs: number;
  self: Row[];
  inclusive: Row[];
  areas: Row[];
}

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const sources = new Map<string, string[] | null>();

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * tsx hands V8 its transpiled code with the whitespace minified, so the lines V8 reports for a .ts
 * file mean nothing in the source. For named functions, find the declaration in the source
 * instead (marked `~`); anonymous ones get the file only.
 */
function sourceLine(file: string, name: string): number | null {
  if (!name || name === '(anonymous)') return null;
  let lines = sources.get(file);
  if (lines === undefined) {
    try {
      lines = readFileSync(file, 'utf8').split('\n');
    } catch {
      lines = null;
    }
    sources.set(file, lines);
  }
  if (lines === null) return null;
  const n = escapeRegExp(name.replace(/^(?:get|set) /, ''));
  const declaration = new RegExp(
    `^\\s*(?:(?:export|default|async|static|public|private|protected|readonly|get|set|override)\\s+)*(?:function\\*?\\s+${n}\\b|${n}\\s*[(<]|(?:const|let|var)\\s+${n}\\s*=|readonly\\s+${n}\\s*=|${n}\\s*=\\s*(?:async\\s*)?\\()`,
  );
  const index = lines.findIndex((line) => declaration.test(line));
  return index === -1 ? null : index + 1;
}

function location(frame: CallFrame): string {
  let url = frame.url;
  if (!url) return '';
  if (url.startsWith('file://')) {
    const file = fileURLToPath(url);
    url = relative(ROOT, file);
    // V8's line is of the transpiled code, which never matches the .ts source.
    if (/\.[cm]?tsx?$/.test(file)) {
      const line = sourceLine(file, frame.functionName);
      return line === null ? url : `${url}:~${line}`;
    }
  }
  return `${url}:${frame.lineNumber + 1}`;
}

function functionKey(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  const where = location(frame);
  return where ? `${name} ${where}` : name;
}

/** Which part of the stack a frame belongs to: meshgate's lib/ or plugins/, a package, Node, or V8. */
export function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) {
    if (functionName === '(garbage collector)' || functionName === '(idle)' || functionName === '(program)') return functionName;
    return '(native / V8 builtins)';
  }
  if (url.startsWith('node:')) return 'node: internals';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  const path = url.startsWith('file://') ? relative(ROOT, fileURLToPath(url)) : url;
  const top = path.split('/')[0]!;
  return top === 'lib' || top === 'plugins' || top === 'bench' ? `meshgate ${top}/` : path;
}

/** Aggregates `profile`; `lastMs` keeps only the final `lastMs` of samples. */
export function summarize(profile: CpuProfile, options: { lastMs?: number } = {}): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  // Sample i's time is the delta to the next sample (V8's own convention in DevTools).
  const times: number[] = [];
  let t = profile.startTime;
  for (const delta of profile.timeDeltas) times.push((t += delta));
  const cutoff = options.lastMs !== undefined ? profile.endTime - options.lastMs * 1000 : -Infinity;

  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const areas = new Map<string, number>();
  let idle = 0;
  let windowUs = 0;
  const add = (map: Map<string, number>, key: string, us: number): void => void map.set(key, (map.get(key) ?? 0) + us);
  for (let i = 0; i < profile.samples.length; i++) {
    if (times[i]! < cutoff) continue;
    const us = (i + 1 < times.length ? times[i + 1]! : profile.endTime) - times[i]!;
    windowUs += us;
    const node = byId.get(profile.samples[i]!)!;
    if (node.callFrame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    add(self, functionKey(node.callFrame), us);
    add(areas, areaOf(node.callFrame), us);
    // Inclusive: every distinct function on the stack, once (recursion counted once).
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const frame = byId.get(id)!.callFrame;
      if (frame.functionName === '(root)') continue;
      const key = functionKey(frame);
      if (seen.has(key)) continue;
      seen.add(key);
      add(inclusive, key, us);
    }
  }
  const busy = windowUs - idle;
  const rows = (map: Map<string, number>): Row[] =>
    [...map]
      .map(([key, us]) => ({ key, ms: us / 1000, pct: busy > 0 ? (us * 100) / busy : 0 }))
      .sort((a, b) => b.ms - a.ms);
  return { windowMs: windowUs / 1000, idleMs: idle / 1000, busyMs: busy / 1000, self: rows(self), inclusive: rows(inclusive), areas: rows(areas) };
}

/** The summary as markdown tables. */
export function formatSummary(summary: Summary, top = 30): string {
  const table = (title: string, rows: Row[], n: number): string =>
    [
      `### ${title}`,
      '',
      '| ms | % of busy | function / area |',
      '|---:|---:|---|',
      ...rows.slice(0, n).map((r) => `| ${r.ms.toFixed(0)} | ${r.pct.toFixed(1)} | \`${r.key}\` |`),
      '',
    ].join('\n');
  return [
    `window ${summary.windowMs.toFixed(0)} ms, busy ${summary.busyMs.toFixed(0)} ms, idle ${summary.idleMs.toFixed(0)} ms`,
    '',
    table('Self time by area', summary.areas, 20),
    table(`Top ${top} functions by self time`, summary.self, top),
    table(`Top ${top} functions by inclusive time`, summary.inclusive, top),
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const file = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
  if (!file) {
    process.stderr.write('usage: node --import tsx bench/cpuprofile-summary.ts FILE.cpuprofile [--top 30] [--last-ms N]\n');
    process.exit(2);
  }
  const opt = (name: string): number | undefined => {
    const i = args.indexOf(name);
    return i === -1 ? undefined : Number(args[i + 1]);
  };
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  process.stdout.write(formatSummary(summarize(profile, { lastMs: opt('--last-ms') }), opt('--top') ?? 30));
}
