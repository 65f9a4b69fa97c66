/**
 * TLS on both sides of the gateway, with a test CA and certificates made by `openssl` at test
 * time: the HTTPS listener, mutual TLS to an upstream that demands a client certificate, and
 * upstreams whose certificates must be refused. The gateway's log lines are captured through a
 * pino logger writing to an in-memory stream.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import pino from 'pino';
import { send, startGateway, startUpstream } from './helpers.js';

const run = promisify(execFile);
const LIMIT = { timeout: 20_000 };

/** Paths of the PEM files made for this run. */
interface Pki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  rogueCaCert: string;
  rogueServerCert: string;
  rogueServerKey: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir });
}

/** A CA (key + self-signed cert) named `name`. */
async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(dir, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** A leaf certificate for `cn`, signed by CA `ca`, with the given extensions. */
async function makeLeaf(dir: string, name: string, cn: string, ca: string, extensions: string): Promise<void> {
  await openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  await writeFile(join(dir, `${name}.ext`), extensions);
  await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`]);
}

async function makePki(): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-tls-'));
  const server = 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n';
  const client = 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n';
  await makeCa(dir, 'test-ca');
  await makeCa(dir, 'rogue-ca');
  await makeLeaf(dir, 'server', 'localhost', 'test-ca', server);
  await makeLeaf(dir, 'client', 'gateway-client', 'test-ca', client);
  await makeLeaf(dir, 'rogue-server', 'localhost', 'rogue-ca', server);
  const p = (f: string): string => join(dir, f);
  return {
    dir,
    caCert: p('test-ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    rogueCaCert: p('rogue-ca.crt'),
    rogueServerCert: p('rogue-server.crt'),
    rogueServerKey: p('rogue-server.key'),
  };
}

/** A pino logger whose JSON lines land in `lines`. */
function captureLogger(): { logger: pino.Logger; lines: () => Record<string, unknown>[] } {
  const raw: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void raw.push(line) });
  return { logger, lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/** An HTTPS upstream; with `ca` it demands a client certificate signed by it. Records the client's CN. */
async function httpsUpstream(t: TestContext, options: { cert: string; key: string; ca?: string }) {
  const seen: { url: string; clientCn: string | undefined; headers: IncomingMessage['headers'] }[] = [];
  const tlsErrors: string[] = [];
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createHttpsServer(
    {
      cert: await readFile(options.cert),
      key: await readFile(options.key),
      ...(options.ca ? { ca: await readFile(options.ca), requestCert: true, rejectUnauthorized: true } : {}),
    },
    (req: IncomingMessage, res: ServerResponse) => {
      const peer = (req.socket as TLSSocket).getPeerCertificate() as PeerCertificate | Record<string, never>;
      const cn = (peer as PeerCertificate).subject?.CN;
      seen.push({ url: req.url!, clientCn: Array.isArray(cn) ? cn.join(',') : cn, headers: req.headers });
      const body = JSON.stringify({ ok: true });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    },
  );
  server.on('connection', (s: Socket) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', (err: Error & { code?: string }) => tlsErrors.push(err.code ?? err.message));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, tlsErrors, connections: () => connections };
}

/** A gateway routing /api to service `x` at `instanceUrl` with `tls`, logging into a captured stream. */
async function tlsGateway(t: TestContext, instanceUrl: string, tls: { ca?: string; cert?: string; key?: string; servername?: string } | undefined) {
  const capture = captureLogger();
  const { url } = await startGateway(
    t,
    {
      logLevel: 'debug',
      services: { x: { instances: [{ url: instanceUrl }], ...(tls ? { tls } : {}) } },
      routes: [{ prefix: '/api', service: 'x' }],
    },
    { logger: capture.logger },
  );
  return { url, lines: capture.lines };
}

/** Log lines at warn or above that mention the service `x`. */
const tlsWarnings = (lines: Record<string, unknown>[]): Record<string, unknown>[] =>
  lines.filter((l) => Number(l.level) >= 40 && (l.service === 'x' || JSON.stringify(l).includes('"x"')));

describe('TLS', () => {
  let pki: Pki;
  before(async () => {
    pki = await makePki();
  });
  after(() => (pki ? rm(pki.dir, { recursive: true, force: true }) : undefined));

  test('the HTTPS listener (listen.tls) serves a request verified against the test CA', LIMIT, async (t) => {
    const upstream = await startUpstream(t);
    const { url } = await startGateway(t, {
      listen: { tls: { cert: pki.serverCert, key: pki.serverKey } },
      services: { a: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'a' }],
    });
    assert.match(url, /^https:\/\//);
    const ca = await readFile(pki.caCert);
    const res = await new Promise<{ status: number; issuer: string | undefined; authorized: boolean }>((resolve, reject) => {
      const req = httpsRequest(`${url}/api/x`, { ca, agent: false }, (r) => {
        const socket = r.socket as TLSSocket;
        r.resume();
        const issuer = socket.getPeerCertificate().issuer?.CN;
        r.on('end', () => resolve({ status: r.statusCode!, issuer: Array.isArray(issuer) ? issuer.join(',') : issuer, authorized: socket.authorized }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(res.status, 200);
    assert.equal(res.authorized, true, 'the client verified the chain against the test CA');
    assert.equal(res.issuer, 'test-ca');
    assert.equal(upstream.seen.length, 1);
    assert.equal(upstream.seen[0]!.headers['x-forwarded-proto'], 'https');
  });

  test('mutual TLS: with services.x.tls { ca, cert, key } the request passes and the upstream sees the client CN', LIMIT, async (t) => {
    const upstream = await httpsUpstream(t, { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert });
    const { url } = await tlsGateway(t, upstream.url, { ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey });
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(
      upstream.seen.map((s) => [s.url, s.clientCn]),
      [['/api/hello', 'gateway-client']],
    );
  });

  test('mutual TLS without the client certificate: 502, logged, and the upstream handler never ran', LIMIT, async (t) => {
    const upstream = await httpsUpstream(t, { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert });
    const { url, lines } = await tlsGateway(t, upstream.url, { ca: pki.caCert });
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 502, res.body);
    assert.equal(upstream.seen.length, 0);
    assert.ok(upstream.connections() > 0, 'the gateway did try (so the 502 is the handshake, not a config slip)');
    const warnings = tlsWarnings(lines());
    assert.ok(warnings.length > 0, `the gateway logged the TLS failure; answered ${res.body}; upstream TLS errors ${upstream.tlsErrors}; log: ${JSON.stringify(lines().filter((l) => Number(l.level) >= 30))}`);
  });

  test('an upstream whose certificate comes from an unknown CA: 502, logged, never silently accepted', LIMIT, async (t) => {
    const upstream = await httpsUpstream(t, { cert: pki.rogueServerCert, key: pki.rogueServerKey });
    const { url, lines } = await tlsGateway(t, upstream.url, { ca: pki.caCert });
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 502, res.body);
    assert.equal(res.json().error, 'MESH_ERR_UPSTREAM_CONNECT');
    assert.equal(upstream.seen.length, 0, 'no request was sent over an unverified connection');
    const warnings = tlsWarnings(lines());
    assert.ok(warnings.length > 0, `the gateway logged the TLS failure; log: ${JSON.stringify(lines())}`);
    assert.match(JSON.stringify(warnings), /CERT|VERIFY|SELF_SIGNED/);
  });

  test('an https:// instance without any tls section is verified against the system CAs (the test CA is not trusted)', LIMIT, async (t) => {
    const upstream = await httpsUpstream(t, { cert: pki.serverCert, key: pki.serverKey });
    const { url } = await tlsGateway(t, upstream.url, undefined);
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 502, res.body);
    assert.equal(upstream.seen.length, 0);
  });

  test('the service CA is the one that counts: an upstream cert from the test CA passes with it', LIMIT, async (t) => {
    const upstream = await httpsUpstream(t, { cert: pki.serverCert, key: pki.serverKey });
    const { url } = await tlsGateway(t, upstream.url, { ca: pki.caCert });
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 200, res.body);
    assert.equal(upstream.seen.length, 1);
  });
});

describe('mutual TLS on the listener', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'meshgate-mtls-'));
    const leaf = (usage: string, san: string): string => `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=${usage}\nsubjectAltName=${san}\n`;
    await makeCa(dir, 'mesh-ca');
    await makeCa(dir, 'other-ca');
    await makeLeaf(dir, 'gateway', 'gateway', 'mesh-ca', leaf('serverAuth', 'IP:127.0.0.1,DNS:localhost,URI:spiffe://example.internal/gateway'));
    await makeLeaf(dir, 'billing', 'billing', 'mesh-ca', leaf('clientAuth', 'URI:spiffe://example.internal/billing'));
    await makeLeaf(dir, 'orders', 'orders', 'mesh-ca', leaf('clientAuth', 'URI:spiffe://example.internal/orders'));
    await makeLeaf(dir, 'stranger', 'billing', 'other-ca', leaf('clientAuth', 'URI:spiffe://example.internal/billing'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  /** An HTTPS request to the gateway with the client certificate `name` (or none). */
  const call = async (port: number, path: string, name: string | null, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> => {
    const [ca, cert, key] = await Promise.all([readFile(join(dir, 'mesh-ca.crt')), name ? readFile(join(dir, `${name}.crt`)) : undefined, name ? readFile(join(dir, `${name}.key`)) : undefined]);
    return new Promise((resolve, reject) => {
      const req = httpsRequest({ host: '127.0.0.1', port, path, ca, cert, key, headers, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      req.end();
    });
  };

  const gatewayWith = async (t: TestContext, clientCert: 'request' | 'require') => {
    const upstream = await startUpstream(t);
    const { url } = await startGateway(t, {
      listen: { tls: { cert: join(dir, 'gateway.crt'), key: join(dir, 'gateway.key'), clientCa: join(dir, 'mesh-ca.crt'), clientCert } },
      services: { invoices: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/invoices', service: 'invoices', authorization: { rules: [{ action: 'allow', when: { principals: ['spiffe://example.internal/billing'] } }] } }],
    });
    return { upstream, port: Number(new URL(url).port) };
  };

  test('billing gets through a policy that allows its SPIFFE id, orders gets 403; the upstream sees the verified XFCC, never the client\'s', LIMIT, async (t) => {
    const { upstream, port } = await gatewayWith(t, 'require');
    const forged = 'By=spiffe://evil;URI=spiffe://example.internal/admin';
    const ok = await call(port, '/invoices/1', 'billing', { 'x-forwarded-client-cert': forged });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(upstream.seen.length, 1);
    const xfcc = upstream.seen[0]!.headers['x-forwarded-client-cert'] as string;
    assert.match(xfcc, /^By=spiffe:\/\/example\.internal\/gateway;Hash=[0-9a-f]{64};URI=spiffe:\/\/example\.internal\/billing;Subject="CN=billing"$/);
    assert.ok(!upstream.seen[0]!.rawHeaders.includes(forged), 'the forged header never reached the upstream');
    const denied = await call(port, '/invoices/1', 'orders');
    assert.equal(denied.status, 403);
    assert.equal(upstream.seen.length, 1, 'the upstream never saw the denied request');
  });

  test('clientCert: require refuses a handshake without a certificate, or with one from another CA', LIMIT, async (t) => {
    const { upstream, port } = await gatewayWith(t, 'require');
    await assert.rejects(call(port, '/invoices/1', null), (err: NodeJS.ErrnoException) => /certificate|ECONNRESET|socket hang up|alert/i.test(`${err.code} ${err.message}`));
    await assert.rejects(call(port, '/invoices/1', 'stranger'), (err: NodeJS.ErrnoException) => /certificate|ECONNRESET|socket hang up|alert|unknown ca/i.test(`${err.code} ${err.message}`));
    assert.equal(upstream.seen.length, 0);
  });

  test('clientCert: request lets a client without a certificate in, anonymous: a policy that names principals refuses it, a forged XFCC is dropped', LIMIT, async (t) => {
    const { upstream, port } = await gatewayWith(t, 'request');
    const anonymous = await call(port, '/invoices/1', null, { 'x-forwarded-client-cert': 'URI=spiffe://example.internal/billing' });
    assert.equal(anonymous.status, 403);
    const stranger = await call(port, '/invoices/1', 'stranger');
    assert.equal(stranger.status, 403, 'a certificate the client CA did not sign is no identity');
    const billing = await call(port, '/invoices/1', 'billing');
    assert.equal(billing.status, 200);
    assert.equal(upstream.seen.length, 1);
  });
});
