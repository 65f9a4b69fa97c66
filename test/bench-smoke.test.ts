/**
 * Keeps bench/ from rotting: runs `npm run bench`'s script in smoke mode (1 round of 1 s at 8
 * connections, no checks) and checks it finishes, reports every target with traffic and no
 * errors, and says what it did about cluster mode; the same for bench/instructions.ts (100
 * requests counted under callgrind). It asserts nothing about performance: that is bench/'s job,
 * on a quiet machine, as a ratio.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { spawnNode } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Runs a bench script with BENCH_SMOKE=1 and returns what it printed, after checking it exited 0. */
async function smokeRun(t: TestContext, script: string): Promise<string> {
  // If the test fails or times out, SIGTERM: the runner must not outlive it, and it kills its own children.
  const run = await spawnNode(t, ['--import', 'tsx', script], { cwd: ROOT, env: { BENCH_SMOKE: '1' }, killSignal: 'SIGTERM' });
  const { code } = await run.exited;
  assert.equal(code, 0, `${script} exited ${code}\nstdout:\n${run.stdout()}\nstderr:\n${run.stderr()}`);
  return run.stdout();
}

test('bench/run.ts in smoke mode exits 0 and prints a row for each target', { timeout: 120_000 }, async (t) => {
  const stdout = await smokeRun(t, 'bench/run.ts');
  for (const target of ['direct', 'bare-proxy', 'reply-from', 'http-proxy', 'meshgate-core', 'meshgate-standard', 'meshgate-untraced', 'meshgate-log']) {
    // A data row: the target's name, a number of requests per second greater than zero, and (last
    // column) no non-2xx answers and no socket errors.
    assert.match(stdout, new RegExp(`^\\| ${target} \\| [1-9][\\d,]* \\|.* \\| 0 / 0 \\|$`, 'm'), `no clean table row for ${target} in:\n${stdout}`);
  }
  // Either the cluster was measured (more than 2 CPUs) or the run says why not; never silence.
  assert.match(stdout, /^(\| meshgate-cluster \| [1-9]|cluster: scaling not measured)/m, `nothing about cluster mode in:\n${stdout}`);
  // The shared-core table (a ratio for every single-process proxy, the bare proxy's being 1), or
  // the line saying why it was not measured (no CPU pinning on this machine).
  if (!/^shared core: not measured: it needs CPU pinning/m.test(stdout)) {
    assert.match(stdout, /^\| bare-proxy \| 1\.00x \| /m, `no shared-core table in:\n${stdout}`);
    for (const target of ['reply-from', 'http-proxy', 'meshgate-core', 'meshgate-standard', 'meshgate-untraced', 'meshgate-log']) {
      assert.match(stdout, new RegExp(`^\\| ${target} \\| (?!0\\.00x)\\d+\\.\\d\\dx \\| `, 'm'), `no shared-core row for ${target} in:\n${stdout}`);
    }
  }
  assert.match(stdout, /^checks: skipped in smoke mode$/m);
});

test('bench/instructions.ts in smoke mode counts instructions for the bare proxy, the standard stack and the stack without one plugin', { timeout: 300_000 }, async (t) => {
  const stdout = await smokeRun(t, 'bench/instructions.ts');
  assert.match(stdout, /^\| bare-proxy \| [1-9][\d.]*k \| 1\.000x \| {2}\|$/m, `no bare-proxy row in:\n${stdout}`);
  assert.match(stdout, /^\| meshgate-standard \| [1-9][\d.]*k \| \d\.\d{3}x \| {2}\|$/m, `no meshgate-standard row in:\n${stdout}`);
  // The standard stack run again without one plugin (BENCH_WITHOUT through bench/child.ts), priced against the full one.
  assert.match(stdout, /^\| meshgate-standard without trace-context \| [1-9][\d.]*k \| \d\.\d{3}x \| -?[\d.]+k \(-?[\d.]+%\) \|$/m, `no without-plugin row in:\n${stdout}`);
});

test('the standard stack without each of its plugins runs exactly the rest (what bench:instructions prices)', { timeout: 60_000 }, async () => {
  const { startMeshgateStack } = await import('../bench/meshgate.js');
  const { STANDARD_PLUGINS } = await import('../bench/stack.js');
  for (const without of STANDARD_PLUGINS) {
    // startMeshgateStack throws when the plugins running are not the stack's minus `without`.
    const { gateway } = await startMeshgateStack('standard', 'http://127.0.0.1:9', 0, without);
    try {
      assert.equal(gateway.hasPlugin(without), false, `${without} still runs`);
      for (const other of STANDARD_PLUGINS.filter((name) => name !== without)) assert.equal(gateway.hasPlugin(other), true, `${other} is off without ${without}`);
    } finally {
      await gateway.close();
    }
  }
});

test('bench/overload.ts in smoke mode measures the gateway with shedding off and on, and the admin port answers throughout', { timeout: 60_000 }, async (t) => {
  const stdout = await smokeRun(t, 'bench/overload.ts');
  for (const run of ['shedding off', 'shedding on']) {
    // Admitted answers, no socket errors, every /healthz probe answered.
    assert.match(stdout, new RegExp(`^\\| ${run} \\| [1-9]\\d* \\| \\d+ \\| [\\d.]+ \\| [\\d.]+ \\| [-\\d.]+ \\| 0 \\| [\\d.]+ \\|$`, 'm'), `no clean row for ${run} in:\n${stdout}`);
  }
  assert.match(stdout, /^admitted p99 with shedding \/ without: \d+\.\d\dx/m);
});

test('bench/protocols.ts in smoke mode exits 0 and prints its HTTP/2 and gRPC rows', { timeout: 120_000 }, async (t) => {
  const stdout = await smokeRun(t, 'bench/protocols.ts');
  for (const protocol of ['HTTP/2', 'gRPC unary']) {
    for (const target of ['instance directly', 'bare-h2 proxy', 'meshgate \\(core, h2c both sides\\)']) {
      assert.match(stdout, new RegExp(`^\\| ${protocol} \\| ${target} \\| [1-9]\\d* \\|`, 'm'), `no ${protocol} row for ${target} in:\n${stdout}`);
    }
  }
});
