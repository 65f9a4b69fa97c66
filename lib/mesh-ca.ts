import { webcrypto } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** What `meshgate ca init` writes: the CA's certificate and key, and its trust domain. */
export interface MeshCa {
  certPem: string;
  keyPem: string;
  trustDomain: string;
}

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** @peculiar/x509 on node's WebCrypto; loaded only by the `ca` commands. */
async function x509(): Promise<typeof import('@peculiar/x509')> {
  // The Reflect API @peculiar/x509's dependency injection (tsyringe) asks for, first.
  await import('reflect-metadata');
  const lib = await import('@peculiar/x509');
  lib.cryptoProvider.set(webcrypto as unknown as Parameters<typeof lib.cryptoProvider.set>[0]);
  return lib;
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
}

/** A trust domain as SPIFFE allows it: lower-case letters, digits, dots, dashes, underscores. */
export function checkTrustDomain(domain: string): string | null {
  return /^[a-z0-9._-]{1,255}$/.test(domain) ? null : `trust domain "${domain}" must be lower-case letters, digits, ".", "-" or "_"`;
}

/** Makes a mesh CA (EC P-256, self-signed, 10 years by default) for `trustDomain`. */
export async function createMeshCa(trustDomain: string, days = 3650): Promise<MeshCa> {
  const lib = await x509();
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = new Date();
  const cert = await lib.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=meshgate CA ${trustDomain},O=meshgate`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + days * 86_400_000),
    keys: keys as never,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new lib.BasicConstraintsExtension(true, 0, true),
      new lib.KeyUsagesExtension(lib.KeyUsageFlags.keyCertSign | lib.KeyUsageFlags.cRLSign, true),
      new lib.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${trustDomain}` }]),
      await lib.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey), trustDomain };
}

/**
 * Issues a short-lived certificate for `service` (default 24 h): SAN URI
 * `spiffe://<trust domain>/<service>` (its identity, as policies and `expectedIdentity` read it)
 * and SAN DNS `<service>`, usable as a server and as a client certificate.
 */
export async function issueCertificate(ca: MeshCa, service: string, hours = 24, dnsNames: string[] = []): Promise<{ certPem: string; keyPem: string; spiffeId: string }> {
  const lib = await x509();
  const caCert = new lib.X509Certificate(ca.certPem);
  const caKey = await webcrypto.subtle.importKey('pkcs8', pemBody(ca.keyPem), ALGORITHM, false, ['sign']);
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const spiffeId = `spiffe://${ca.trustDomain}/${service}`;
  const now = new Date();
  const cert = await lib.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `O=meshgate,CN=${service}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + hours * 3_600_000),
    signingKey: caKey as never,
    publicKey: keys.publicKey as never,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new lib.BasicConstraintsExtension(false, undefined, true),
      new lib.KeyUsagesExtension(lib.KeyUsageFlags.digitalSignature, true),
      new lib.ExtendedKeyUsageExtension([lib.ExtendedKeyUsage.serverAuth, lib.ExtendedKeyUsage.clientAuth]),
      new lib.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }, ...[service, ...dnsNames].map((d) => ({ type: 'dns' as const, value: d }))]),
      await lib.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey), spiffeId };
}

/** Writes a CA to `dir` (ca.crt, ca.key readable by the owner only, trust-domain); never over an existing CA, whose certificates would all stop verifying. */
export async function writeMeshCa(dir: string, ca: MeshCa): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'ca.key'), ca.keyPem, { mode: 0o600, flag: 'wx' });
  await writeFile(join(dir, 'ca.crt'), ca.certPem, { flag: 'wx' });
  await writeFile(join(dir, 'trust-domain'), `${ca.trustDomain}\n`, { flag: 'wx' });
}

export async function readMeshCa(dir: string): Promise<MeshCa> {
  const [certPem, keyPem, domain] = await Promise.all([readFile(join(dir, 'ca.crt'), 'utf8'), readFile(join(dir, 'ca.key'), 'utf8'), readFile(join(dir, 'trust-domain'), 'utf8')]);
  return { certPem, keyPem, trustDomain: domain.trim() };
}

function pemBody(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0]! &= 0x7f; // a positive serial
  return Buffer.from(bytes).toString('hex');
}
