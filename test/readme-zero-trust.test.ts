import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { fencedBlocks, logLines, spawnNode, startUpstream, unusedPort, waitFor } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

test("README's zero-trust walkthrough runs as written: CA, certificates, the policy; billing 200, orders 403, no certificate refused", { timeout: 60_000 }, async (t) => {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('### Zero-trust between services');
  const end = readme.indexOf('\n## ', start);
  const blocks = fencedBlocks('README.md', ['console', 'yaml']).filter((b) => {
    const at = readme.split('\n').slice(0, b.line).join('\n').length;
    return at > start && at < end;
  });
  assert.equal(blocks.length, 3, 'commands, the config, the calls');
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-zero-trust-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const commands = (text: string): string[] => text.split('\n').filter((l) => l.startsWith('$ ')).map((l) => l.slice(2).replace(/\s+#.*$/, '').trim());

  // 1. The CA and the certificates, with the CLI from this checkout.
  for (const line of commands(blocks[0]!.text)) {
    const args = line.replace(/^npx meshgate /, '').split(/\s+/);
    const child = await spawnNode(t, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'lib/cli.ts'), ...args], { cwd: dir, env: { NODE_PATH: join(ROOT, 'node_modules') } });
    assert.equal((await child.exited).code, 0, `${line}: ${child.stderr()}`);
  }

  // 2. The config, on free ports, with an instance behind it.
  const invoices = await startUpstream(t);
  const port = await unusedPort();
  await writeFile(join(dir, 'meshgate.yaml'), blocks[1]!.text.replace('port: 8443', `port: ${port}`).replace('http://127.0.0.1:3001', invoices.url));
  const [startLine, ...calls] = commands(blocks[2]!.text);
  const gateway = await spawnNode(t, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'lib/cli.ts'), ...startLine!.replace(/^npx meshgate /, '').split(/\s+/)], { cwd: dir, env: { MESHGATE_LOG_FORMAT: 'json', NODE_PATH: join(ROOT, 'node_modules') } });
  await waitFor(() => logLines(gateway, /listening/).length > 0, 20_000, `the gateway: ${gateway.stderr()}`);

  // 3. The calls, with curl, as the walkthrough shows them.
  const curl = async (line: string): Promise<{ status: string; body: string }> => {
    const args = line.replace(/^curl /, '').replace('https://localhost:8443', `https://localhost:${port}`).split(/\s+/);
    try {
      const { stdout } = await run('curl', ['-s', '-w', '\n%{http_code}', ...args], { cwd: dir });
      const lines = stdout.split('\n');
      return { status: lines.pop()!, body: lines.join('\n') };
    } catch (err) {
      return { status: `curl exit ${(err as { code?: number }).code}`, body: '' };
    }
  };
  const [billing, orders, anonymous] = [await curl(calls[0]!), await curl(calls[1]!), await curl(calls[2]!)];
  assert.equal(billing.status, '200', billing.body);
  assert.equal(orders.status, '403');
  assert.match(orders.body, /MESH_ERR_FORBIDDEN/);
  assert.match(anonymous.status, /^curl exit|^000$/, 'no certificate, no handshake');
  assert.equal(invoices.seen.length, 1);
  assert.match(String(invoices.seen[0]!.headers['x-forwarded-client-cert']), /^By=spiffe:\/\/example\.internal\/gateway;Hash=[0-9a-f]{64};URI=spiffe:\/\/example\.internal\/billing;DNS=billing;Subject="CN=billing,O=meshgate"$/);
});
