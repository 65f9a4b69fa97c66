import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { meshgateCli, send, startGateway, startUpstream, waitFor } from './helpers.js';

const LIMIT = { timeout: 60_000 };

async function ca(t: TestContext, ...args: string[]): Promise<string> {
  const run = await meshgateCli(t, ['ca', ...args]);
  const { code } = await run.exited;
  assert.equal(code, 0, run.stderr());
  return run.stdout();
}

/** An HTTPS GET with a client certificate; resolves with the status and the serial of the certificate the server showed. */
async function call(port: number, dir: string, caFile: string, client: string | null, path = '/api/x'): Promise<{ status: number; serial: string }> {
  const [caPem, cert, key] = await Promise.all([readFile(caFile), client ? readFile(join(dir, `${client}.crt`)) : undefined, client ? readFile(join(dir, `${client}.key`)) : undefined]);
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, ca: caPem, cert, key, servername: 'gateway', agent: false }, (res) => {
      const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber;
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, serial }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('meshgate ca init and issue make SPIFFE certificates node\'s TLS accepts; a policy tells billing from orders; a reissued listener certificate is used for new connections without a restart; expectedIdentity checks instances', LIMIT, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshgate-ca-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const caDir = join(dir, 'mesh-ca');
  assert.match(await ca(t, 'init', '--trust-domain', 'example.internal', '--out', caDir), /mesh CA for spiffe:\/\/example\.internal/);
  for (const service of ['gateway', 'billing', 'orders']) await ca(t, 'issue', '--service', service, '--ca', caDir, '--out', dir, '--ttl', '1h');
  const billing = new X509Certificate(await readFile(join(dir, 'billing.crt')));
  assert.match(billing.subjectAltName ?? '', /URI:spiffe:\/\/example\.internal\/billing/);
  assert.ok(billing.verify(new X509Certificate(await readFile(join(caDir, 'ca.crt'))).publicKey), 'signed by the mesh CA');
  assert.ok(Date.parse(billing.validTo) - Date.now() <= 3_600_000 + 60_000, 'short-lived');

  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, {
    listen: { tls: { cert: join(dir, 'gateway.crt'), key: join(dir, 'gateway.key'), clientCa: join(caDir, 'ca.crt'), clientCert: 'require' } },
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [{ prefix: '/api', service: 'api', authorization: { rules: [{ action: 'allow', when: { principals: ['spiffe://example.internal/billing'] } }] } }],
  });
  const port = Number(new URL(url).port);
  const caFile = join(caDir, 'ca.crt');
  const first = await call(port, dir, caFile, 'billing');
  assert.equal(first.status, 200);
  assert.equal((await call(port, dir, caFile, 'orders')).status, 403);
  assert.match(String(upstream.seen[0]!.headers['x-forwarded-client-cert']), /By=spiffe:\/\/example\.internal\/gateway;.*URI=spiffe:\/\/example\.internal\/billing/);

  // Rotation: a new certificate for the gateway, written where the old one was.
  await ca(t, 'issue', '--service', 'gateway', '--ca', caDir, '--out', dir, '--ttl', '1h');
  const rotated = new X509Certificate(await readFile(join(dir, 'gateway.crt'))).serialNumber.toUpperCase();
  assert.notEqual(rotated, first.serial.toUpperCase());
  await waitFor(async () => (await call(port, dir, caFile, 'billing')).serial.toUpperCase() === rotated, 10_000, 'new connections to get the new certificate');

  // expectedIdentity: an HTTPS instance showing the billing certificate.
  const [cert, key] = await Promise.all([readFile(join(dir, 'billing.crt')), readFile(join(dir, 'billing.key'))]);
  const clientSerials: string[] = [];
  const billingServer = createHttpsServer({ cert, key, ca: await readFile(caFile), requestCert: true, rejectUnauthorized: true }, (req, res) => {
    clientSerials.push((req.socket as TLSSocket).getPeerCertificate().serialNumber.toUpperCase());
    res.end('billing');
  });
  await new Promise<void>((resolve) => billingServer.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => billingServer.close(() => resolve())));
  const instance = `https://127.0.0.1:${(billingServer.address() as AddressInfo).port}`;
  const tls = (expectedIdentity: string) => ({ ca: caFile, cert: join(dir, 'gateway.crt'), key: join(dir, 'gateway.key'), expectedIdentity });
  const { url: plain } = await startGateway(t, {
    services: { right: { instances: [{ url: instance }], tls: tls('spiffe://example.internal/billing') }, wrong: { instances: [{ url: instance }], tls: tls('spiffe://example.internal/orders') } },
    routes: [
      { prefix: '/right', service: 'right' },
      { prefix: '/wrong', service: 'wrong' },
    ],
  });
  const right = await send(`${plain}/right/x`);
  assert.equal(right.status, 200, right.body);
  assert.equal(right.body, 'billing');
  assert.equal((await send(`${plain}/wrong/x`)).status, 502, 'an instance with another identity is refused');
  assert.equal(clientSerials.at(-1), rotated, 'the gateway presents its mesh certificate upstream');

  // The gateway's certificate is reissued: its next upstream connections present the new one.
  await ca(t, 'issue', '--service', 'gateway', '--ca', caDir, '--out', dir, '--ttl', '1h');
  const reissued = new X509Certificate(await readFile(join(dir, 'gateway.crt'))).serialNumber.toUpperCase();
  await waitFor(async () => (await send(`${plain}/right/x`)).status === 200 && clientSerials.at(-1) === reissued, 10_000, 'the upstream to see the reissued certificate');
});
