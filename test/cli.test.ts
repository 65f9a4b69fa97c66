import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { echo, send, spawnNode, startUpstream, unusedPort, waitFor, type ChildRun } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Runs the real CLI (`node --import tsx lib/cli.ts ...args`) from the repo root. */
function cli(t: TestContext, args: string[], env: Record<string, string | undefined> = {}): Promise<ChildRun> {
  return spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', ...args], { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined, ...env } });
}

/** A temp directory removed after the test; returns a function that writes a file into it. */
async function tempDir(t: TestContext): Promise<{ dir: string; write: (name: string, text: string) => Promise<string> }> {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return {
    dir,
    write: async (name, text) => {
      const file = join(dir, name);
      await writeFile(file, text);
      return file;
    },
  };
}

/** Resolves true once a request to `url` gets any HTTP answer. */
async function answers(url: string): Promise<boolean> {
  try {
    await send(url);
    return true;
  } catch {
    return false;
  }
}

const BAD_YAML = `
listen: { port: abc }
services:
  api:
    instances: [ { url: "ftp://127.0.0.1:21", weight: 0 } ]
    timeout: soon
routes:
  - { prefix: /api, service: ghost }
`;
const BAD_PATHS = ['listen.port', 'services.api.instances[0].url', 'services.api.instances[0].weight', 'services.api.timeout', 'routes[0].service'];

describe('cli: flags and commands', { concurrency: true }, () => {
  test('--version prints package.json\'s version and exits 0', async (t) => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const run = await cli(t, ['--version']);
    const { code } = await run.exited;
    assert.equal(code, 0, run.stderr());
    assert.equal(run.stdout(), `${pkg.version}\n`);
  });

  test('--help prints usage with start and validate and exits 0', async (t) => {
    const run = await cli(t, ['--help']);
    const { code } = await run.exited;
    assert.equal(code, 0, run.stderr());
    assert.match(run.stdout(), /Usage/);
    assert.match(run.stdout(), /meshgate start --config/);
    assert.match(run.stdout(), /meshgate validate --config/);
  });

  test('no command prints the usage and exits 2', async (t) => {
    const run = await cli(t, []);
    const { code } = await run.exited;
    assert.equal(code, 2);
    assert.match(run.stdout() + run.stderr(), /Usage/);
  });

  test('an unknown command exits 2 and names it', async (t) => {
    const run = await cli(t, ['frobnicate']);
    const { code } = await run.exited;
    assert.equal(code, 2);
    assert.match(run.stderr(), /unknown command "frobnicate"/);
  });

  test('an unknown option exits 2', async (t) => {
    const run = await cli(t, ['validate', '--bogus']);
    const { code } = await run.exited;
    assert.equal(code, 2);
    assert.match(run.stderr(), /bogus/);
  });
});

describe('cli: validate', { concurrency: true }, () => {
  test('a good config exits 0 and says so', async (t) => {
    const { write } = await tempDir(t);
    const file = await write(
      'good.yaml',
      'services:\n  api:\n    instances: [ { url: "http://127.0.0.1:3000" } ]\nroutes:\n  - { prefix: /api, service: api }\n',
    );
    const run = await cli(t, ['validate', '--config', file]);
    const { code } = await run.exited;
    assert.equal(code, 0, run.stderr());
    assert.match(run.stdout(), /valid \(1 service, 1 route\)/);
  });

  test('a bad config exits 1 and lists every bad path on stderr', async (t) => {
    const { write } = await tempDir(t);
    const file = await write('bad.yaml', BAD_YAML);
    const run = await cli(t, ['validate', '-c', file]);
    const { code } = await run.exited;
    assert.equal(code, 1);
    const stderr = run.stderr();
    assert.ok(stderr.includes(file), stderr);
    for (const path of BAD_PATHS) assert.match(stderr, new RegExp(`^\\s+${path.replace(/[.[\]]/g, '\\$&')}: `, 'm'), `${path} in:\n${stderr}`);
    assert.match(stderr, /routes\[0\]\.service: unknown service "ghost"/);
    assert.equal(run.stdout(), '');
  });

  test('a missing file exits 1 with a clear message', async (t) => {
    const { dir } = await tempDir(t);
    const file = join(dir, 'missing.yaml');
    const run = await cli(t, ['validate', '--config', file]);
    const { code } = await run.exited;
    assert.equal(code, 1);
    assert.match(run.stderr(), /cannot read/);
    assert.ok(run.stderr().includes(file), run.stderr());
    assert.match(run.stderr(), /ENOENT|no such file/);
    assert.doesNotMatch(run.stderr(), /^\s+at /m, 'a stack trace is not a clear message');
  });
});

describe('cli: validate runs the checks start runs', { concurrency: true }, () => {
  test('the file may be given as the command\'s argument', async (t) => {
    const { write } = await tempDir(t);
    const good = await write('good.yaml', 'services:\n  api: {}\n');
    const bad = await write('bad.yaml', BAD_YAML);
    const valid = await cli(t, ['validate', good]);
    assert.equal((await valid.exited).code, 0, valid.stderr());
    assert.match(valid.stdout(), /good\.yaml: valid \(1 service, 0 routes\)/);
    const invalid = await cli(t, ['validate', bad]);
    assert.equal((await invalid.exited).code, 1);
    assert.ok(invalid.stderr().includes(bad), invalid.stderr());
    for (const path of BAD_PATHS) assert.ok(invalid.stderr().includes(`${path}: `), `${path} in:\n${invalid.stderr()}`);
  });

  test('an unknown balancer, a plugin module that does not load and a TLS file that cannot be read are problems, each at its path', async (t) => {
    const { write, dir } = await tempDir(t);
    const file = await write(
      'meshgate.yaml',
      [
        'listen: { tls: { cert: missing.crt, key: missing.key } }',
        'services:',
        '  api: { balancer: round-robbin, tls: { ca: nope.pem } }',
        'plugins: [ { module: ./nowhere.js } ]',
        '',
      ].join('\n'),
    );
    let run = await cli(t, ['validate', file]);
    assert.equal((await run.exited).code, 1);
    // The module is reported first: the rest of the config cannot be checked without its sections.
    assert.match(run.stderr(), /plugins\[0\]\.module: cannot load "\.\/nowhere\.js"/);
    await write('nowhere.js', 'export default () => ({ name: "nowhere", setup() {} });\n');
    run = await cli(t, ['validate', file]);
    assert.equal((await run.exited).code, 1);
    const stderr = run.stderr();
    assert.match(stderr, /listen\.tls\.cert: cannot read .*missing\.crt: ENOENT/);
    assert.match(stderr, /listen\.tls\.key: cannot read .*missing\.key: ENOENT/);
    assert.match(stderr, /services\.api\.tls\.ca: cannot read .*nope\.pem: ENOENT/);
    assert.ok(stderr.includes(join(dir, 'missing.crt')), 'relative paths resolve against the config file');
    await write('missing.crt', 'x');
    await write('missing.key', 'x');
    await write('nope.pem', 'x');
    run = await cli(t, ['validate', file]);
    assert.equal((await run.exited).code, 1);
    assert.match(run.stderr(), /services\.api\.balancer: unknown balancer "round-robbin" \(known: round-robin, /);
  });

  test('a YAML syntax error is reported once, with its line and column, and nothing after it', async (t) => {
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', 'listen: { port: 8080 }\nadmin: { port: 9901, token: ${MESHGATE_ADMIN_TOKEN} }\nservices:\n  api: {}\n');
    const run = await cli(t, ['validate', file]);
    assert.equal((await run.exited).code, 1);
    const stderr = run.stderr();
    assert.match(stderr, /\(1 problem\):/);
    assert.match(stderr, /YAML syntax error at line 2, column 30/);
    assert.equal(stderr.match(/YAML/g)?.length, 1, stderr);
  });

  test('every command has its own --help', async (t) => {
    for (const [command, words] of [
      ['start', /meshgate start \[FILE \| --config FILE\] \[--port N\]/],
      ['validate', /short of binding ports/],
      ['register', /--registry URL --service NAME --url URL/],
    ] as const) {
      const run = await cli(t, [command, '--help']);
      assert.equal((await run.exited).code, 0, run.stderr());
      assert.match(run.stdout(), words);
      assert.doesNotMatch(run.stdout(), /^Usage:/m, `${command} --help prints its own text, not the general one`);
    }
  });
});

describe('cli: logs', { concurrency: true }, () => {
  test('--log-format json: every stderr line is one JSON object, and the listening line gives the address as bound', async (t) => {
    const port = await unusedPort();
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', `listen: { host: 0.0.0.0, port: ${port} }\n`);
    const run = await cli(t, ['start', file, '--log-format', 'json']);
    await waitFor(() => run.stderr().includes('listening on'), 15_000, `the listening line; stderr:\n${run.stderr()}`);
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, 0, run.stderr());
    const lines = run.stderr().trim().split('\n');
    const parsed = lines.map((line) => JSON.parse(line) as { msg: string; level: number });
    assert.ok(parsed.some((l) => l.msg === `meshgate listening on http://0.0.0.0:${port}`), run.stderr());
  });

  test('--log-format pretty: lines for a person, no JSON', async (t) => {
    const port = await unusedPort();
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', `listen: { host: 127.0.0.1, port: ${port} }\n`);
    const run = await cli(t, ['start', file, '--log-format', 'pretty']);
    await waitFor(() => run.stderr().includes('listening on'), 15_000, `the listening line; stderr:\n${run.stderr()}`);
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, 0, run.stderr());
    assert.match(run.stderr(), /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: meshgate listening on http:\/\/127\.0\.0\.1:\d+$/m, run.stderr());
    assert.doesNotMatch(run.stderr(), /^\{/m, run.stderr());
  });

  test('cluster mode: every line says which process wrote it', { timeout: 60_000 }, async (t) => {
    const port = await unusedPort();
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', `workers: 2\nlisten: { host: 127.0.0.1, port: ${port} }\n`);
    const run = await cli(t, ['start', file, '--log-format', 'json']);
    await waitFor(() => (run.stderr().match(/listening on/g) ?? []).length >= 3, 30_000, `the workers and the primary to listen; stderr:\n${run.stderr()}`);
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, 0, run.stderr());
    const lines = run.stderr().trim().split('\n').map((line) => JSON.parse(line) as { cluster?: string; msg: string });
    assert.ok(lines.every((l) => l.cluster === 'primary' || /^worker-\d+$/.test(l.cluster ?? '')), run.stderr());
    assert.equal(new Set(lines.filter((l) => /listening on/.test(l.msg)).map((l) => l.cluster)).size, 3, run.stderr());
  });

  test('--log-format with another value is a usage error', async (t) => {
    const run = await cli(t, ['start', '--log-format', 'xml']);
    assert.equal((await run.exited).code, 2);
    assert.match(run.stderr(), /--log-format expects json or pretty/);
  });
});

describe('cli: start', () => {
  test('serves traffic, and on SIGTERM drains an in-flight request and exits 0', async (t) => {
    // /slow sends its head and half its body, then waits for the test to finish it.
    const held: ServerResponse[] = [];
    const echoing = echo('upstream');
    const upstream = await startUpstream(t, (req, res) => {
      if (req.url === '/slow') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('first half;');
        held.push(res);
        return;
      }
      echoing(req, res);
    });
    const port = await unusedPort();
    const { write } = await tempDir(t);
    const file = await write(
      'meshgate.yaml',
      `listen: { host: 127.0.0.1, port: ${port} }
services:
  api:
    instances: [ { url: "${upstream.url}" } ]
routes:
  - { prefix: /api, service: api, stripPrefix: true }
`,
    );
    const run = await cli(t, ['start', '--config', file]);
    const url = `http://127.0.0.1:${port}`;
    await waitFor(() => answers(`${url}/api/ping`), 15_000, `the gateway on ${url}; stderr:\n${run.stderr()}`);

    const ping = await send(`${url}/api/hello?x=1`, { headers: { 'x-test': 'cli' } });
    assert.equal(ping.status, 200);
    assert.equal(ping.json().url, '/hello?x=1');
    const seen = upstream.seen.find((s) => s.url === '/hello?x=1');
    assert.ok(seen, 'the upstream did not see the request');
    assert.equal(seen.headers['x-test'], 'cli');

    const slow = send(`${url}/api/slow`);
    await waitFor(() => held.length === 1, 5000, 'the upstream to receive /slow');
    run.child.kill('SIGTERM');
    await waitFor(() => /SIGTERM: draining/.test(run.stderr()), 5000, `the drain log line; stderr:\n${run.stderr()}`);
    // Draining: new connections are refused while the in-flight request is still open.
    await waitFor(async () => !(await answers(`${url}/api/ping`)), 5000, 'the gateway to stop taking connections');
    assert.equal(run.child.exitCode, null, 'the CLI exited before the in-flight request finished');

    held[0]!.end('second half');
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.body, 'first half;second half');
    const { code, signal } = await run.exited;
    assert.equal(signal, null);
    assert.equal(code, 0, run.stderr());
  });

  test('--port overrides listen.port', async (t) => {
    const upstream = await startUpstream(t);
    const [configured, override] = [await unusedPort(), await unusedPort()];
    const { write } = await tempDir(t);
    const file = await write(
      'meshgate.yaml',
      `listen: { host: 127.0.0.1, port: ${configured} }\nservices:\n  api: { instances: [ { url: "${upstream.url}" } ] }\nroutes: [ { prefix: /, service: api } ]\n`,
    );
    const run = await cli(t, ['start', '--config', file, '--port', String(override)]);
    await waitFor(() => answers(`http://127.0.0.1:${override}/x`), 15_000, `the gateway on ${override}; stderr:\n${run.stderr()}`);
    assert.equal((await send(`http://127.0.0.1:${override}/x`)).status, 200);
    assert.equal(await answers(`http://127.0.0.1:${configured}/x`), false);
    run.child.kill('SIGTERM');
    assert.deepEqual(await run.exited, { code: 0, signal: null });
  });

  test('a --port that is not a number is a usage error, not a crash', async (t) => {
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', 'listen: { host: 127.0.0.1, port: 0 }\nlogLevel: silent\n');
    const run = await cli(t, ['start', '--config', file, '--port', 'abc']);
    const { code } = await run.exited;
    assert.equal(code, 2, run.stderr());
    assert.match(run.stderr(), /--port/);
    assert.doesNotMatch(run.stderr(), /^\s+at /m, 'a stack trace is not a usage message');
  });

  test('a port already in use exits 1 and says so', async (t) => {
    const occupied = await startUpstream(t);
    const { write } = await tempDir(t);
    const file = await write('meshgate.yaml', `listen: { host: 127.0.0.1, port: ${occupied.port} }\nlogLevel: silent\n`);
    const run = await cli(t, ['start', '--config', file]);
    const { code } = await run.exited;
    assert.equal(code, 1);
    assert.match(run.stderr(), /address in use/);
    assert.ok(run.stderr().includes(String(occupied.port)), run.stderr());
  });

  test('a bad config exits 1 with the path-named error on stderr', async (t) => {
    const { write } = await tempDir(t);
    const file = await write('bad.yaml', BAD_YAML);
    const run = await cli(t, ['start', '--config', file]);
    const { code } = await run.exited;
    assert.equal(code, 1);
    for (const path of BAD_PATHS) assert.ok(run.stderr().includes(`${path}: `), `${path} in:\n${run.stderr()}`);
    assert.match(run.stderr(), /routes\[0\]\.service: unknown service "ghost"/);
  });
});
