/**
 * The docs work as written: every YAML snippet in README.md and ARCHITECTURE.md is a valid config
 * (or valid YAML, for another program's file), and every meshgate command README shows uses
 * commands and options the CLI has. The demo's curls are run in test/demo.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { maintenance } from '../examples/custom-plugin.js';
import { ping } from '../examples/ping-plugin.js';
import { parseConfig } from '../lib/index.js';
import { fencedBlocks } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

const ENV = { MESHGATE_ADMIN_TOKEN: 'example-token', JWT_SECRET: 'example-secret' };

for (const file of ['README.md', 'ARCHITECTURE.md']) {
  test(`every YAML snippet in ${file} is a valid config, or valid YAML for another program`, () => {
    const blocks = fencedBlocks(file, ['yaml', 'yml']);
    assert.ok(blocks.length > 0, `${file} has YAML snippets`);
    for (const { line, text } of blocks) {
      const other = /^#\s*(\S+\.ya?ml)\b/.exec(text.trimStart());
      if (other && !/meshgate/.test(other[1]!)) {
        assert.doesNotThrow(() => parse(text), `${file}:${line} (${other[1]}) is not valid YAML`);
        continue;
      }
      try {
        parseConfig(text, { env: ENV, plugins: [maintenance(), ping()] });
      } catch (err) {
        assert.fail(`${file}:${line} is not a valid config:\n${(err as Error).message}`);
      }
    }
  });
}

test('every meshgate command README shows exists, with the options it is shown with', async () => {
  const commands = fencedBlocks('README.md', ['sh', 'console'])
    .flatMap(({ text }) => text.split('\n'))
    .map((line) => line.replace(/^\$\s*/, '').replace(/#.*$/, '').trim())
    .filter((line) => /^(?:npx )?meshgate\b/.test(line));
  assert.ok(commands.length >= 4, `README shows meshgate commands: ${commands.join(' | ')}`);
  for (const line of commands) {
    const words = line.replace(/^npx /, '').split(/\s+/).slice(1);
    const command = words.find((w) => !w.startsWith('-'));
    const help = command === undefined ? ['--help'] : [command, '--help'];
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'lib/cli.ts', ...help], { cwd: ROOT });
    for (const flag of words.filter((w) => w.startsWith('--') && w !== '--help' && w !== '--version')) {
      assert.ok(stdout.includes(flag), `"${line}": ${flag} is not an option of meshgate ${command ?? ''}`);
    }
  }
});
