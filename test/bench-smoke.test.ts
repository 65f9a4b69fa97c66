/**
 * Keeps bench/ from rotting: runs `npm run bench`'s script in smoke mode (1 round of 1 s at 8
 * connections, no checks) and checks it finishes, reports every target with traffic and no
 * errors, and says what it did about cluster mode. It asserts nothing about performance: that is
 * bench/'s job, on a quiet machine, as a ratio.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('bench/run.ts in smoke mode exits 0 and prints a row for each target', { timeout: 120_000 }, async (t) => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts'], {
    cwd: ROOT,
    env: { ...process.env, BENCH_SMOKE: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // If the test fails or times out, the runner must not outlive it (it kills its own children).
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code] = (await once(child, 'exit')) as [number | null];

  assert.equal(code, 0, `bench exited ${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
  for (const target of ['direct', 'bare-proxy', 'reply-from', 'http-proxy', 'meshgate-core', 'meshgate-standard', 'meshgate-log']) {
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
    for (const target of ['reply-from', 'http-proxy', 'meshgate-core', 'meshgate-standard', 'meshgate-log']) {
      assert.match(stdout, new RegExp(`^\\| ${target} \\| (?!0\\.00x)\\d+\\.\\d\\dx \\| `, 'm'), `no shared-core row for ${target} in:\n${stdout}`);
    }
  }
  assert.match(stdout, /^checks: skipped in smoke mode$/m);
});
