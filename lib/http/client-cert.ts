import { createHash, X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

/** A client's verified certificate, as policies and the upstream see it. */
export interface PeerIdentity {
  /** The SAN URIs (`spiffe://example.internal/billing`). */
  uris: string[];
  dns: string[];
  /** RFC 2253-ish: `CN=billing,O=example`. */
  subject: string;
  /** SHA-256 of the DER certificate, hex. */
  hash: string;
  /** The `x-forwarded-client-cert` value (Envoy's XFCC) for the upstream. */
  xfcc: string;
}

const kPeer = Symbol('meshgate.peerIdentity');

/**
 * The verified client certificate of a TLS connection, worked out once per connection; null for
 * plain connections, connections without a certificate, and certificates the client CA did not
 * verify (`clientCert: request` lets those through as anonymous). `by` is the gateway's own SAN
 * URI, XFCC's `By`.
 */
export function peerIdentity(socket: Socket, by: string | null): PeerIdentity | null {
  const tls = socket as TLSSocket & { [kPeer]?: PeerIdentity | null };
  if (tls.encrypted !== true) return null;
  const cached = tls[kPeer];
  if (cached !== undefined) return cached;
  let identity: PeerIdentity | null = null;
  if (tls.authorized) {
    const raw = tls.getPeerCertificate()?.raw;
    if (raw !== undefined && raw.length > 0) identity = describe(new X509Certificate(raw), by);
  }
  tls[kPeer] = identity;
  return identity;
}

/** The SAN URIs of a certificate. */
export function sanUris(cert: X509Certificate): string[] {
  return sanEntries(cert.subjectAltName, 'URI');
}

/** The entries of one kind (`URI`, `DNS`) of a subject alt name as node prints it (`URI:spiffe://a, DNS:b`). */
export function sanEntries(subjectAltName: string | undefined, kind: string): string[] {
  return (subjectAltName ?? '')
    .split(/,\s*/)
    .filter((entry) => entry.startsWith(`${kind}:`))
    .map((entry) => entry.slice(kind.length + 1));
}

function describe(cert: X509Certificate, by: string | null): PeerIdentity {
  const uris = sanUris(cert);
  const dns = sanEntries(cert.subjectAltName, 'DNS');
  const subject = cert.subject.split('\n').reverse().join(',');
  const hash = createHash('sha256').update(cert.raw).digest('hex');
  // Envoy's XFCC: key=value pairs, `;`-separated; a value with `,`, `;`, `=` or `"` is quoted.
  const value = (text: string): string => (/[,;="\\]/.test(text) ? `"${text.replace(/["\\]/g, '\\$&')}"` : text);
  const parts = [...(by === null ? [] : [`By=${value(by)}`]), `Hash=${hash}`, ...uris.map((u) => `URI=${value(u)}`), ...dns.map((d) => `DNS=${value(d)}`), `Subject="${subject.replace(/["\\]/g, '\\$&')}"`];
  return { uris, dns, subject, hash, xfcc: parts.join(';') };
}
