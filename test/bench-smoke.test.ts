/**
 * Keeps bench/ from rotting: runs `npm run bench`'s script in smoke mode (1 round of 1 s at 8
 * connections, no ratio check) and checks it finishes and reports every target. It asserts
 * nothing about performance: that is bench/'s job, on a quiet machine, as a ratio.
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
  for (const target of ['direct', 'bare-proxy', 'meshgate']) {
    // A data row: the target's name, then a number of requests per second greater than zero.
    assert.match(stdout, new RegExp(`^\\| ${target} \\| [1-9][\\d,]* \\|`, 'm'), `no table row for ${target} in:\n${stdout}`);
  }
});
