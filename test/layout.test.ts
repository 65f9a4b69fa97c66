/**
 * The layout rules of ARCHITECTURE.md, checked on the source: no import circles inside lib/
 * (type-only imports count: a circle of types is still two files that cannot be read apart), and
 * plugins reach the core only through its public entry points, as a user's plugin does.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The entry points a plugin may import from lib/: `meshgate` and its documented subpaths (package.json `exports`). */
export const PUBLIC_ENTRIES = ['lib/index.ts', 'lib/config/index.ts', 'lib/kit/index.ts', 'lib/redis/index.ts'];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/**
 * The files a source file imports statically (`import`, `import type`, `export ... from`), as
 * repo-relative paths. Dynamic `import()` is left out: it runs after both modules are loaded,
 * which is how builtins.ts loads plugins only when a config uses them.
 */
export function staticImports(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: string[] = [];
  const pattern = /^\s*(?:import|export)\s[^;]*?\sfrom\s+['"](\.[^'"]+)['"]|^\s*import\s+['"](\.[^'"]+)['"]/gms;
  for (const match of text.matchAll(pattern)) {
    const spec = match[1] ?? match[2]!;
    out.push(relative(ROOT, resolve(ROOT, dirname(file), spec)).replace(/\.js$/, '.ts'));
  }
  return out;
}

/** Strongly connected components with more than one file (or a file importing itself): import circles. */
function circles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    indices.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indices.get(w)!));
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (graph.get(v) ?? []).includes(v)) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!indices.has(v)) visit(v);
  return found;
}

test('no import circle between files in lib/, type-only imports included', () => {
  const graph = new Map(sourceFiles('lib').map((f) => [f, staticImports(f).filter((t) => t.startsWith('lib/'))]));
  assert.ok(graph.size > 30, 'the scan found the sources');
  assert.deepEqual(circles(graph), []);
});

test('no import circle through plugins/ either: the plugins\' config declarations, which lib/builtins.ts loads eagerly, import only the subpaths', () => {
  const files = [...sourceFiles('lib'), ...sourceFiles('plugins')];
  const graph = new Map(files.map((f) => [f, staticImports(f).filter((t) => t.startsWith('lib/') || t.startsWith('plugins/'))]));
  assert.deepEqual(circles(graph), []);
});

test('the circle finder finds a circle (the check above can fail)', () => {
  const graph = new Map([
    ['a', ['b']],
    ['b', ['c']],
    ['c', ['a']],
    ['d', ['a']],
  ]);
  assert.deepEqual(circles(graph), [['a', 'b', 'c']]);
});

test('plugins import the core only through its public entry points', () => {
  const offenders: string[] = [];
  const files = sourceFiles('plugins');
  assert.ok(files.length >= 10, 'the scan found the plugins');
  for (const file of files) {
    for (const target of staticImports(file)) {
      if (target.startsWith('lib/') && !PUBLIC_ENTRIES.includes(target)) offenders.push(`${file} imports ${target}`);
    }
    // Dynamic imports of the core would dodge the rule just the same.
    const text = readFileSync(join(ROOT, file), 'utf8');
    for (const match of text.matchAll(/import\(\s*['"](\.[^'"]+)['"]\s*\)/g)) {
      const target = relative(ROOT, resolve(ROOT, dirname(file), match[1]!)).replace(/\.js$/, '.ts');
      if (target.startsWith('lib/') && !PUBLIC_ENTRIES.includes(target)) offenders.push(`${file} imports ${target}`);
    }
  }
  assert.deepEqual(offenders, []);
});
