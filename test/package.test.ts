/**
 * meshgate as a user's project gets it: `npm pack`, installed into a fresh project, imported by
 * its public entry points, typechecked with tsc. A consumer augments `GatewayServices` and
 * `RouteSections` and imports built-in plugins by subpath, in either file order.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

const AUGMENT = `
import { z } from 'zod';
import type { Registry } from 'prom-client';

export const maintenanceSchema = z.strictObject({ enabled: z.boolean() });

declare module 'meshgate' {
  interface GatewayServices {
    tenantCache: Map<string, string>;
  }
  interface RouteSections {
    maintenance: typeof maintenanceSchema;
  }
}
export type MetricsRegistry = Registry;
`;

const USE = `
import { createGateway, definePlugin, type GatewayPlugin } from 'meshgate';
import { metrics } from 'meshgate/plugins/metrics';
import { circuitBreaker } from 'meshgate/plugins/circuit-breaker';
import { duration } from 'meshgate/config';
import { TokenBuckets } from 'meshgate/kit';
import { maintenanceSchema } from './augment.js';

const gateway = createGateway({
  services: { api: { instances: [{ url: 'http://127.0.0.1:3000' }], circuitBreaker: { resetTimeout: '5s' } } },
  routes: [{ prefix: '/api', service: 'api', maintenance: { enabled: true } }],
});
export const plugin: GatewayPlugin = definePlugin({
  name: 'tenants',
  config: { route: { key: 'maintenance', schema: maintenanceSchema } },
  setup(gw, scope) {
    gw.decorate('tenantCache', new Map());
    // No annotation: without the augmentation in view, get() would be unknown and this would not compile.
    const cache = gw.get('tenantCache');
    const size: number = gw.get('metricsRegistry').getMetricsAsArray().length;
    gw.addMiddleware('guard', (ctx, next) => {
      const enabled: boolean | undefined = scope.route(ctx)?.enabled;
      const id: string = ctx.state.mesh.instance.id;
      cache.set(id, String(enabled) + size);
      return next();
    });
  },
});
gateway.use(metrics()).use(circuitBreaker()).use(plugin);
export const parsed: number = duration.parse('2s');
export const buckets = new TokenBuckets(1, 1);
`;

test('the packed package installs into a fresh project and typechecks there whatever the file order', { timeout: 240_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-consumer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // prepare builds dist/ first, as `npm pack` and `npm install <git url>` do for a user. In a copy of
  // the sources: the build starts by clearing dist/, which other tests (the bench smoke runs) use.
  const source = join(dir, 'source');
  for (const entry of ['lib', 'plugins', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE']) {
    await cp(join(ROOT, entry), join(source, entry), { recursive: true });
  }
  await symlink(join(ROOT, 'node_modules'), join(source, 'node_modules'), 'dir');
  await run('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: source, maxBuffer: 16 * 1024 * 1024 });
  const tarball = (await readdir(dir)).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball, 'npm pack made a tarball');
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  // Everything else it needs is in npm's cache already (this repository's own install put it there).
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', `./${tarball}`, 'typescript@5.9', '@types/node@20', 'zod@4'], {
    cwd: dir,
    maxBuffer: 16 * 1024 * 1024,
  });
  await writeFile(join(dir, 'augment.ts'), AUGMENT);
  await writeFile(join(dir, 'use.ts'), USE);
  const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
  for (const files of [['augment.ts', 'use.ts'], ['use.ts', 'augment.ts']]) {
    await writeFile(
      join(dir, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, noEmit: true, types: ['node'] }, files }),
    );
    const result = await run(process.execPath, [tsc, '-p', '.'], { cwd: dir }).catch((err: { stdout: string; stderr: string }) => err);
    assert.equal('code' in result ? result.stdout + result.stderr : '', '', `tsc with files in the order ${files.join(', ')}`);
  }
  // What the package ships: the license it names, and source maps that carry the sources they name.
  const pkg = join(dir, 'node_modules', 'meshgate');
  assert.match(await readFile(join(pkg, 'LICENSE'), 'utf8'), /MIT License/);
  const maps = (await readdir(join(pkg, 'dist'), { recursive: true })).filter((f) => f.endsWith('.js.map'));
  assert.ok(maps.length > 30, 'source maps are shipped');
  for (const file of maps) {
    const map = JSON.parse(await readFile(join(pkg, 'dist', file), 'utf8')) as { sources: string[]; sourcesContent?: (string | null)[] };
    assert.equal(map.sourcesContent?.length, map.sources.length, `${file} names sources it does not carry`);
    assert.ok(map.sourcesContent!.every((text) => typeof text === 'string' && text.length > 0), file);
  }
  // The bin runs from the installed package.
  const version = await run(process.execPath, [join(dir, 'node_modules', '.bin', 'meshgate'), '--version'], { cwd: dir });
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
  // And it runs: the subpaths resolve to the compiled build.
  const script = "import('meshgate').then(async (m) => { const g = m.createGateway({ logLevel: 'silent' }); await g.ready(); await g.close(); console.log(typeof m.definePlugin); })";
  const { stdout } = await run(process.execPath, ['-e', script], { cwd: dir });
  assert.equal(stdout.trim(), 'function');
  // The dashboard's page and its libraries come from the installed package, not the source tree.
  const page = `import('meshgate').then(async (m) => {
    const g = m.createGateway({ logLevel: 'silent', listen: { port: 0 }, admin: { port: 0 } });
    const { adminUrl } = await g.listen();
    const out = [];
    for (const p of ['/', '/dashboard/assets/app.js', '/dashboard/assets/app.css', '/dashboard/assets/preact.js', '/dashboard/assets/hooks.js', '/dashboard/assets/htm.js', '/dashboard/assets/uplot.js', '/dashboard/assets/uplot.css']) out.push(p + ' ' + (await fetch(adminUrl + p)).status);
    await g.close();
    console.log(out.join('\\n'));
  })`;
  const served = await run(process.execPath, ['-e', page], { cwd: dir });
  assert.deepEqual(served.stdout.trim().split('\n').filter((line) => !line.endsWith(' 200')), [], served.stdout);
});

test('npm install on a fresh clone leaves package-lock.json as committed', { timeout: 120_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-lock-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const lock = await readFile(join(ROOT, 'package-lock.json'), 'utf8');
  await writeFile(join(dir, 'package.json'), await readFile(join(ROOT, 'package.json'), 'utf8'));
  await writeFile(join(dir, 'package-lock.json'), lock);
  // What `npm install` would write, resolved against the lock (no download, no scripts).
  await run('npm', ['install', '--package-lock-only', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir, maxBuffer: 16 * 1024 * 1024 });
  assert.equal(await readFile(join(dir, 'package-lock.json'), 'utf8'), lock, 'npm install rewrites package-lock.json: run npm install and commit the lock');
});

test('every package the install brings supports this Node version (no EBADENGINE warning)', async () => {
  const { satisfies } = await import('semver');
  const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { engines?: { node?: string } }> };
  const unsupported = Object.entries(lock.packages)
    .filter(([, pkg]) => typeof pkg.engines?.node === 'string' && !satisfies(process.version, pkg.engines.node, { includePrerelease: true }))
    .map(([path, pkg]) => `${path.replace(/^node_modules\//, '')} wants node ${pkg.engines!.node}`);
  assert.deepEqual(unsupported, []);
});
