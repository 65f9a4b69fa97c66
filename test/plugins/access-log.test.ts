import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { echo, send, spawnNode, startGateway, startUpstream, unusedPort, waitFor, within, type ChildRun, type Upstream } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const FIELDS = ['method', 'path', 'route', 'service', 'instance', 'status', 'durationMs', 'upstreamMs', 'retries', 'bytesIn', 'bytesOut', 'requestId', 'traceId', 'flags', 'error'];

interface AccessLine {
  method: string;
  path: string;
  route: string | null;
  service: string | null;
  instance: string | null;
  status: number;
  durationMs: number;
  upstreamMs: number | null;
  retries: number;
  bytesIn: number;
  bytesOut: number;
  requestId: string | null;
  traceId: string | null;
  flags: string;
  error: string | null;
  [key: string]: unknown;
}

/** The upstreams the gateway under test talks to: an echo (with a slow path), one that never answers, one that streams forever. */
async function upstreams(t: TestContext): Promise<{ api: Upstream; tricky: Upstream; deadUrl: string }> {
  const serve = echo('api');
  const api = await startUpstream(t, (req, res) => {
    if (req.url?.includes('delay')) setTimeout(() => serve(req, res), 40);
    else serve(req, res);
  });
  const held = new Set<ServerResponse>();
  const tricky = await startUpstream(t, (req, res) => {
    held.add(res);
    if (req.url?.startsWith('/stream')) {
      // Headers and a first chunk, then nothing: the client hangs up mid-response.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk of a long answer\n');
    }
    // '/slow': never answers; the gateway's timeout fires.
  });
  return { api, tricky, deadUrl: `http://127.0.0.1:${await unusedPort()}` };
}

function gatewayConfig(api: Upstream, tricky: Upstream, deadUrl: string, accessLog: boolean): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    ...(accessLog ? { accessLog: true } : {}),
    logLevel: 'info',
    services: {
      api: { instances: [{ url: api.url }] },
      empty: {},
      dead: { instances: [{ url: deadUrl }] },
      slow: { instances: [{ url: tricky.url }], timeout: '300ms' },
      stream: { instances: [{ url: tricky.url }] },
    },
    routes: [
      { prefix: '/api', service: 'api' },
      { prefix: '/empty', service: 'empty' },
      { prefix: '/dead', service: 'dead' },
      { prefix: '/slow', service: 'slow' },
      { prefix: '/stream', service: 'stream' },
      { prefix: '/limited', service: 'api', rateLimit: { rps: 0.01, burst: 1 } },
    ],
  };
}

/** Writes the config (YAML is a superset of JSON) into a temp dir and starts `meshgate start --config FILE`; resolves with the proxy URL. */
async function startCli(t: TestContext, config: Record<string, unknown>): Promise<{ run: ChildRun; url: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-access-log-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'meshgate.yaml');
  await writeFile(file, JSON.stringify(config, null, 2));
  const run = await spawnNode(t, ['--import', 'tsx', 'lib/cli.ts', 'start', '--config', file], { cwd: ROOT, env: { MESHGATE_ADMIN_TOKEN: undefined } });
  let url: string | undefined;
  await waitFor(
    () => {
      if (run.child.exitCode !== null) throw new Error(`meshgate exited with ${run.child.exitCode}:\n${run.stderr()}`);
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(run.stderr())?.[1];
      return url !== undefined;
    },
    20_000,
    'meshgate start to print its URL on stderr',
  );
  return { run, url: url! };
}

function stdoutLines(run: ChildRun): string[] {
  return run.stdout().split('\n').filter((l) => l !== '');
}

function accessLines(run: ChildRun): AccessLine[] {
  return stdoutLines(run).map((line) => {
    try {
      return JSON.parse(line) as AccessLine;
    } catch {
      throw new assert.AssertionError({ message: `stdout has a line that is not JSON: ${line}` });
    }
  });
}

/** Waits for the access-log line of the request with this id. */
async function lineFor(run: ChildRun, requestId: string): Promise<AccessLine> {
  let found: AccessLine | undefined;
  await waitFor(() => (found = accessLines(run).find((l) => l.requestId === requestId)) !== undefined, 5000, `the access-log line of ${requestId}`);
  assert.equal(accessLines(run).filter((l) => l.requestId === requestId).length, 1, `more than one line for ${requestId}`);
  return found!;
}

/** Sends one request and hangs up as soon as the first body chunk arrives. */
function hangUpAfterFirstChunk(url: string, requestId: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers: { 'x-request-id': requestId }, agent: false }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' ? undefined : reject(err)));
    req.end();
  });
}

test('access log: the real CLI with accessLog: true writes one JSON line per request on stdout', { timeout: 30_000 }, async (t) => {
  const { api, tricky, deadUrl } = await upstreams(t);
  const { run, url } = await startCli(t, gatewayConfig(api, tricky, deadUrl, true));
  let sent = 0;

  await t.test('a proxied request: every field, ids matching what the client and the upstream got', async () => {
    const res = await send(`${url}/api/delay/1?x=1`);
    sent++;
    assert.equal(res.status, 200);
    const requestId = String(res.headers['x-request-id']);
    assert.match(requestId, UUID_V4);
    const line = await lineFor(run, requestId);
    for (const field of FIELDS) assert.ok(field in line, `field ${field} missing from ${JSON.stringify(line)}`);
    assert.equal(line.method, 'GET');
    assert.equal(line.path, '/api/delay/1');
    assert.equal(line.route, '/api');
    assert.equal(line.service, 'api');
    assert.equal(line.instance, `127.0.0.1:${api.port}`);
    assert.equal(line.status, 200);
    assert.equal(line.retries, 0);
    assert.equal(line.flags, '-');
    assert.equal(line.error, null);
    assert.equal(line.bytesIn, 0);
    assert.equal(line.bytesOut, Buffer.byteLength(res.body));
    assert.equal(typeof line.upstreamMs, 'number');
    assert.ok(line.upstreamMs! >= 35, `upstreamMs ${line.upstreamMs} for an upstream that waited 40 ms`);
    assert.ok(line.durationMs >= line.upstreamMs!, `durationMs ${line.durationMs} < upstreamMs ${line.upstreamMs}`);
    const seen = api.seen.find((s) => s.headers['x-request-id'] === requestId);
    assert.ok(seen, 'the upstream did not get the request id the client got');
    const traceId = /^00-([0-9a-f]{32})-/.exec(String(seen.headers.traceparent))?.[1];
    assert.equal(line.traceId, traceId);
    assert.match(String(line.time), /^\d{4}-\d\d-\d\dT/);
  });

  await t.test('a request id sent by the client is the one logged; bytesIn counts the request body', async () => {
    const body = 'b'.repeat(100);
    const res = await send(`${url}/api/upload`, { method: 'POST', headers: { 'x-request-id': 'client-id-1', 'content-type': 'text/plain' }, body });
    sent++;
    assert.equal(res.headers['x-request-id'], 'client-id-1');
    const line = await lineFor(run, 'client-id-1');
    assert.equal(line.method, 'POST');
    assert.equal(line.bytesIn, 100);
    assert.equal(line.status, 200);
  });

  const flagged: [string, string, number, string, Partial<AccessLine>][] = [
    ['NR for an unknown route', '/nowhere/1', 404, 'NR', { route: null, service: null, instance: null, upstreamMs: null, error: 'MESH_ERR_NO_ROUTE' }],
    ['UH for a service without instances', '/empty/1', 503, 'UH', { route: '/empty', service: 'empty', instance: null, error: 'MESH_ERR_NO_HEALTHY_INSTANCE' }],
    ['UF for a dead instance', '/dead/1', 502, 'UF', { route: '/dead', service: 'dead', instance: new URL(deadUrl).host, retries: 0, error: 'MESH_ERR_UPSTREAM_CONNECT' }],
    ['UT for an upstream that does not answer in time', '/slow/1', 504, 'UT', { route: '/slow', service: 'slow', error: 'MESH_ERR_UPSTREAM_TIMEOUT' }],
  ];
  for (const [what, path, status, flags, fields] of flagged) {
    await t.test(`flags ${what}`, async () => {
      const requestId = `flag-${flags}`;
      const res = await send(url + path, { headers: { 'x-request-id': requestId } });
      sent++;
      assert.equal(res.status, status, res.body);
      const line = await lineFor(run, requestId);
      assert.equal(line.flags, flags);
      assert.equal(line.status, status);
      assert.equal(line.path, path);
      for (const [key, value] of Object.entries(fields)) assert.equal(line[key], value, `${key} of ${JSON.stringify(line)}`);
    });
  }

  await t.test('flags RL for a rate-limited request', async () => {
    const first = await send(`${url}/limited/1`, { headers: { 'x-request-id': 'rl-first' } });
    const second = await send(`${url}/limited/2`, { headers: { 'x-request-id': 'rl-second' } });
    sent += 2;
    assert.equal(first.status, 200);
    assert.equal(second.status, 429);
    assert.equal((await lineFor(run, 'rl-first')).flags, '-');
    const line = await lineFor(run, 'rl-second');
    assert.equal(line.flags, 'RL');
    assert.equal(line.status, 429);
    assert.equal(line.route, '/limited');
    assert.equal(line.error, 'MESH_ERR_RATE_LIMITED');
  });

  await t.test('flags DC when the client hangs up mid-response', async () => {
    await within(hangUpAfterFirstChunk(`${url}/stream/1`, 'dc-1'), 5000, 'the first chunk of the streamed answer');
    sent++;
    const line = await lineFor(run, 'dc-1');
    assert.equal(line.flags, 'DC');
    assert.equal(line.status, 499);
    assert.equal(line.route, '/stream');
  });

  await t.test('stdout holds exactly one access-log line per request; the gateway\'s own logs went to stderr', async () => {
    run.child.kill('SIGTERM');
    const { code } = await within(run.exited, 15_000, 'meshgate to exit after SIGTERM');
    assert.equal(code, 0, run.stderr());
    const lines = accessLines(run);
    assert.equal(lines.length, sent, `expected ${sent} lines, got:\n${run.stdout()}`);
    for (const line of lines) {
      assert.equal(typeof line.flags, 'string', `not an access-log line: ${JSON.stringify(line)}`);
      assert.notEqual(line.name, 'meshgate', `a gateway log line on stdout: ${JSON.stringify(line)}`);
    }
    const stderr = run.stderr();
    assert.match(stderr, /"name":"meshgate".*listening on/, 'the gateway\'s pino log lines should be on stderr');
    assert.match(stderr, /"msg":"stopped"/);
    assert.doesNotMatch(stderr, /"flags":/, 'an access-log line went to stderr');
  });
});

test('access log: without accessLog the CLI writes nothing to stdout per request', { timeout: 30_000 }, async (t) => {
  const { api, tricky, deadUrl } = await upstreams(t);
  const { run, url } = await startCli(t, gatewayConfig(api, tricky, deadUrl, false));
  assert.equal((await send(`${url}/api/1`)).status, 200);
  assert.equal((await send(`${url}/nowhere`)).status, 404);
  assert.equal((await send(`${url}/dead/1`)).status, 502);
  run.child.kill('SIGTERM');
  const { code } = await within(run.exited, 15_000, 'meshgate to exit after SIGTERM');
  assert.equal(code, 0, run.stderr());
  assert.equal(run.stdout(), '');
  assert.match(run.stderr(), /listening on/);
});

test('access log: lines are ASCII JSON whatever they carry; a destination passed in gets every line', { timeout: 15_000 }, async (t) => {
  const { accessLog } = await import('../../plugins/access-log/index.js');
  const api = await startUpstream(t, echo('api'));
  const lines: string[] = [];
  const { gateway, url } = await startGateway(
    t,
    { services: { api: {} }, routes: [{ prefix: '/api', service: 'api' }] },
    { setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) } })) },
  );
  // An instance id from a program (no config validation) with a non-ASCII character, a request id with JSON's two specials.
  gateway.registry.upsertInstance('api', { url: api.url, id: 'café-1' });
  const res = await send(`${url}/api/x?q=1`, { headers: { 'x-request-id': 'a"b\\c' } });
  assert.equal(res.status, 200);
  await waitFor(() => lines.length === 1, 5000, 'the access-log line');
  assert.match(lines[0]!, /^[\x20-\x7e]+$/, 'an ASCII line');
  assert.ok(lines[0]!.includes('caf\\u00e9-1'), lines[0]);
  const line = JSON.parse(lines[0]!) as AccessLine;
  assert.equal(line.instance, 'café-1');
  assert.equal(line.requestId, 'a"b\\c');
  assert.equal(line.path, '/api/x');
  assert.equal(line.status, 200);
});

test('access log: a request that outlives close() (cut off at the drain timeout) still gets its line', { timeout: 15_000 }, async (t) => {
  const { accessLog } = await import('../../plugins/access-log/index.js');
  // An upstream that never answers: the request is still in flight when the drain timeout ends.
  const held: ServerResponse[] = [];
  const api = await startUpstream(t, (_req, res) => void held.push(res));
  t.after(() => held.forEach((res) => res.destroy()));
  const lines: string[] = [];
  const { gateway, url } = await startGateway(
    t,
    { services: { api: { instances: [{ url: api.url }] } }, routes: [{ prefix: '/api', service: 'api' }], drainTimeout: 100 },
    { setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) } })) },
  );
  const pending = send(`${url}/api/slow`, { headers: { 'x-request-id': 'cut-off' } }).catch((err: Error) => err);
  await waitFor(() => held.length === 1, 5000, 'the upstream to get the request');
  await gateway.close();
  await pending;
  await waitFor(() => lines.some((l) => l.includes('"cut-off"')), 5000, 'the line of the request cut off by close()');
  const line = JSON.parse(lines.find((l) => l.includes('"cut-off"'))!) as AccessLine;
  assert.equal(line.path, '/api/slow');
  assert.ok(line.status >= 499, `status ${line.status}`);
});

test('access log: names and counts that agree: retries as retries.attempts counts them, bytes that crossed the wire', { timeout: 15_000 }, async (t) => {
  const { accessLog } = await import('../../plugins/access-log/index.js');
  const api = await startUpstream(t, echo('api'));
  const dead = [await unusedPort(), await unusedPort()];
  const lines: string[] = [];
  const { url } = await startGateway(
    t,
    {
      services: {
        // Two dead instances and one alive, round-robin from the first: the request retries twice.
        api: { instances: [{ url: `http://127.0.0.1:${dead[0]}` }, { url: `http://127.0.0.1:${dead[1]}` }, { url: api.url }], retries: { attempts: 2 } },
      },
      routes: [{ prefix: '/api', service: 'api' }],
    },
    { setup: (gw) => gw.use(accessLog({ destination: { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) } })) },
  );
  const retried = await send(`${url}/api/retried`);
  assert.equal(retried.status, 200);
  // A chunked upload: no length declared, the bytes are counted as they stream.
  const upload = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${url}/api/upload`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.write('a'.repeat(1000));
    req.end('b'.repeat(234));
  });
  assert.equal(upload, 200);
  const missing = await send(`${url}/nowhere`);
  assert.equal(missing.status, 404);
  await waitFor(() => lines.length === 3, 5000, 'three access-log lines');
  const byPath = new Map(lines.map((l) => JSON.parse(l) as AccessLine).map((l) => [l.path, l]));
  const first = byPath.get('/api/retried')!;
  assert.equal(first.retries, 2, 'two dead instances, then the live one: two retries');
  assert.equal(byPath.get('/api/upload')!.bytesIn, 1234);
  assert.equal(byPath.get('/nowhere')!.bytesOut, Buffer.byteLength(missing.body));
});
