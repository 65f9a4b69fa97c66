import { validateHeaderName, validateHeaderValue, type IncomingMessage, type ServerResponse } from 'node:http';
import { BadRequestError, MeshError } from '../errors.js';

/**
 * Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy `keep-alive`, `proxy-connection` and the
 * proxy credentials of RFC 2616 13.5.1): they describe one connection and are never forwarded.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/** Request headers the gateway owns: recomputed for the upstream, never copied from the client. */
const GATEWAY_OWNED: ReadonlySet<string> = new Set([
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  // Set from the verified client certificate only (Envoy's XFCC sanitize-and-set): a client's own is a forgery.
  'x-forwarded-client-cert',
  // The gateway answered `Expect: 100-continue` itself; the upstream gets the body right away.
  'expect',
]);

/**
 * Client addresses other frameworks read (Spring prefers `Forwarded`, nginx setups `X-Real-IP`):
 * kept only from a peer `listen.trustProxy` trusts, like the client's `X-Forwarded-For` chain.
 */
const TRUSTED_ONLY: ReadonlySet<string> = new Set(['forwarded', 'x-real-ip']);

/**
 * Headers HTTP/2 allows once only (node:http2's list, from RFC 9110's singleton fields): a second
 * one makes Node throw, where HTTP/1.1 passes it on.
 */
const HTTP2_SINGLE_VALUE: ReadonlySet<string> = new Set([
  'access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method', 'age', 'authorization',
  'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type',
  'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range', 'referer', 'retry-after',
  'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options',
]);

/** Whether a name and value can go out as a header field (no CR, LF or other invalid characters). */
export function validField(name: string, value: string): boolean {
  try {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    return true;
  } catch {
    return false;
  }
}

/** Whether HTTP/2 allows the header (lower-case name) once only. */
export function isSingleValue(name: string): boolean {
  return HTTP2_SINGLE_VALUE.has(name);
}

/** Adds a field to a header object as node:http2 takes them: a repeated name becomes a list. */
export function addField(headers: Record<string, string | string[] | number | undefined>, name: string, value: string): void {
  const existing = headers[name];
  if (existing === undefined) headers[name] = value;
  else if (Array.isArray(existing)) existing.push(value);
  else headers[name] = [String(existing), value];
}

/**
 * A client's trailers for the instance: as {@link trailerObject}, less every field the gateway
 * sets or strips among the headers (its own, the trusted-peer ones, `x-meshgate-*`, and the
 * names the route or a plugin overrode), which a trailer must not smuggle past it.
 */
export function requestTrailerObject(raw: readonly string[], overrides: readonly (string | null)[] | null): Record<string, string> {
  const out = trailerObject(raw);
  for (const name of Object.keys(out)) if (owned(name.replace(/_/g, '-'), overrides)) delete out[name];
  return out;
}

/** A status and a flat header list as the header object node:http2's `respond` takes (names in lower case). */
export function http2Fields(status: number, head: readonly string[]): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = { ':status': String(status) };
  for (let i = 0; i < head.length; i += 2) addField(headers, head[i]!.toLowerCase(), head[i + 1]!);
  return headers;
}

/** Fields that never belong in trailers (RFC 9110 6.5.1): framing, routing, connection-specific ones. */
const NOT_TRAILERS: ReadonlySet<string> = new Set(['content-length', 'content-type', 'content-encoding', 'host', 'authorization', 'set-cookie']);

/**
 * Trailers (a flat raw list, either way: an instance's or a client's) as `addTrailers` and
 * `sendTrailers` take them, repeated names joined: minus hop-by-hop fields, pseudo-headers and
 * other fields trailers may not carry, which node:http2 would refuse by throwing, and minus any
 * invalid value (the undici path passes values through unchecked).
 */
export function trailerObject(raw: readonly (Buffer | string)[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1').toLowerCase();
    const value = raw[i + 1]!.toString('latin1');
    if (HOP_BY_HOP.has(name) || NOT_TRAILERS.has(name) || name.charCodeAt(0) === 58 || !validField(name, value)) continue;
    out[name] = out[name] === undefined ? value : `${out[name]}, ${value}`;
  }
  return out;
}

/**
 * A flat header list made fit for HTTP/2: the first of each single-value header kept (a repeat is
 * the sender's error; the first is what an HTTP/1.1 reader would use too), connection-specific
 * headers dropped. Returns `head` itself when it has nothing to change (the usual case).
 */
export function http2Head(head: string[]): string[] {
  let seen: Set<string> | null = null;
  let out: string[] | null = null;
  for (let i = 0; i < head.length; i += 2) {
    const name = head[i]!.toLowerCase();
    let drop = HOP_BY_HOP.has(name);
    if (!drop && HTTP2_SINGLE_VALUE.has(name)) {
      seen ??= new Set();
      drop = seen.has(name);
      seen.add(name);
    }
    if (drop) out ??= head.slice(0, i);
    else if (out !== null) out.push(head[i]!, head[i + 1]!);
  }
  return out ?? head;
}

/**
 * Writes the status line and a flat header list. Node's `writeHead(status, array)` keeps repeated
 * headers (two Set-Cookie) only on its fast path, when no header was ever set on the response;
 * once one was (`ctx.set` by a plugin or the host app), it falls back to `setHeader` per pair and
 * the last value of each name wins. So with headers set before, each pair is appended instead.
 */
export function writeHead(res: ServerResponse, status: number, head: string[], headersWereSet: boolean): void {
  if (!headersWereSet) {
    res.writeHead(status, head);
    return;
  }
  for (let i = 0; i < head.length; i += 2) res.appendHeader(head[i]!, head[i + 1]!);
  res.writeHead(status);
}

/**
 * Adds the lower-cased tokens of a `Connection` header value to `into` (created when needed).
 * `keep-alive` and `close`, by far the usual values, name no header to strip: no allocation then.
 */
export function connectionTokens(value: string, into: Set<string> | null): Set<string> | null {
  if (into === null) {
    const lower = value.length <= 10 ? value.trim().toLowerCase() : '';
    if (lower === 'keep-alive' || lower === 'close') return null;
  }
  const set = into ?? new Set<string>();
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase();
    if (name) set.add(name);
  }
  return set;
}

/** How the client reached the gateway, for the `X-Forwarded-*` headers. */
export interface ForwardedInfo {
  /** The client's address as the gateway saw it. */
  remoteAddress: string;
  /** `http` or `https`. */
  proto: string;
  /** When the body is replaced (a host app's body parser consumed the stream): its new length. */
  bodyLength?: number;
  /**
   * Keep the client's `X-Forwarded-For` chain and append to it (the client is behind trusted
   * proxies). Otherwise the chain is replaced by the socket address: never trust what you cannot check.
   * @default false
   */
  appendForwardedFor?: boolean;
  /** Headers set (string) or removed (null) by plugins, lower-case names: they win over the client's. */
  overrides?: readonly (string | null)[] | null;
  /** Most header lines a request may have (`listen.maxHeaders`); more is 431. @default 100 */
  maxHeaders?: number;
  /** `x-forwarded-client-cert` for the client's verified certificate (mutual TLS), else undefined. */
  clientCert?: string;
  /** The gateway's own `Via` entry (`1.1 meshgate-1a2b3c4d`), appended to the client's: a request that comes back with it went round a loop. */
  via?: string;
}

/** The request has more header (or trailer) lines than `listen.maxHeaders` (431). */
export class TooManyHeadersError extends MeshError {
  constructor(limit: number, what = 'request headers') {
    super('MESH_ERR_HEADERS_TOO_MANY', 431, `more than ${limit} ${what}`);
  }
}

/** Characters of a DNS-style host name (RFC 3986 unreserved, and `%` of percent-escapes), by char code. */
const NAME_CHAR = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%') NAME_CHAR[c.charCodeAt(0)] = 1;
const IPV6_LITERAL = /^\[[0-9A-Fa-f:.]+\]$/;

/**
 * Whether `value` is a Host RFC 9112 3.2 accepts: an RFC 3986 authority without userinfo,
 * `host[:port]`, where host is a DNS-style name (unreserved characters and percent-escapes), an
 * IPv4 address or a bracketed IPv6 literal, and the port up to 65535. A loop over char codes, not
 * a regular expression: it runs for every request.
 */
export function validHost(value: string): boolean {
  let end = value.length;
  const colon = value.lastIndexOf(':');
  const bracket = value.lastIndexOf(']');
  if (colon > bracket) {
    // A port: 1-5 digits, at most 65535.
    const digits = value.length - colon - 1;
    if (digits < 1 || digits > 5) return false;
    let port = 0;
    for (let i = colon + 1; i < value.length; i++) {
      const d = value.charCodeAt(i) - 48;
      if (d < 0 || d > 9) return false;
      port = port * 10 + d;
    }
    if (port > 65535) return false;
    end = colon;
  }
  if (end === 0) return false;
  if (value.charCodeAt(0) === 91 /* [ */) return IPV6_LITERAL.test(value.slice(0, end));
  for (let i = 0; i < end; i++) {
    const c = value.charCodeAt(i);
    if (c > 127 || NAME_CHAR[c] === 0) return false;
  }
  return true;
}

const kValidHost = Symbol('meshgate.validHost');

/**
 * Checks a request's Host: exactly one, and a valid authority; else 400 (RFC 9112 3.2). The last
 * valid Host of a connection is kept on its socket: keep-alive clients send the same one each time.
 */
function checkHost(req: IncomingMessage, value: string, seen: boolean): void {
  if (seen) throw new BadRequestError('more than one Host header', 'MESH_ERR_BAD_HOST');
  const socket = req.socket as (IncomingMessage['socket'] & { [kValidHost]?: string }) | undefined;
  if (socket !== undefined && socket[kValidHost] === value) return;
  if (!validHost(value)) throw new BadRequestError(`invalid Host header ${JSON.stringify(value)}`, 'MESH_ERR_BAD_HOST');
  if (socket !== undefined) socket[kValidHost] = value;
}

/**
 * The headers for the upstream request, as a flat `[name, value, ...]` list: the client's headers
 * without hop-by-hop headers (and those its `Connection` names), with `X-Forwarded-For` appended
 * and `X-Forwarded-Proto` / `X-Forwarded-Host` set. `Host` is kept, as Envoy does. On the way it
 * refuses what cannot be forwarded safely: more than `maxHeaders` lines (431), a missing-in-effect
 * or repeated or malformed Host (400). It drops what an upstream could mistake for the gateway's
 * word: `Forwarded` and `X-Real-IP` from an untrusted peer, and underscore spellings of the headers
 * the gateway sets or strips (`x_forwarded_for`, `x_user_id`), which Rack, WSGI and CGI read as
 * the dashed names.
 */
export function upstreamRequestHeaders(req: IncomingMessage, info: ForwardedInfo): string[] {
  const raw = req.rawHeaders;
  const maxHeaders = info.maxHeaders ?? 100;
  if (raw.length > maxHeaders * 2) throw new TooManyHeadersError(maxHeaders);
  const trusted = info.appendForwardedFor === true;
  const out: string[] = [];
  let named: Set<string> | null = null;
  let forwardedFor = '';
  let host = '';
  let hostSeen = false;
  let via = '';
  // HTTP/2: the pseudo-headers are the request line, not headers; `:authority` is the Host.
  const http2 = req.httpVersionMajor === 2;
  for (let i = 0; i < raw.length; i += 2) {
    let name = raw[i]!;
    if (http2) {
      if (name.charCodeAt(0) === 58 /* : */) {
        if (name !== ':authority') continue;
        name = 'host';
      } else if (name.toLowerCase() === 'host' && req.headers[':authority'] !== undefined) continue;
    }
    let lower = name.toLowerCase();
    if (lower.includes('_')) {
      // Only the underscore spellings of names the gateway owns are dropped; others pass as they are.
      const dashed = lower.replace(/_/g, '-');
      if (owned(dashed, info.overrides)) continue;
    }
    if (lower === 'connection') {
      named = connectionTokens(raw[i + 1]!, named);
      continue;
    }
    if (HOP_BY_HOP.has(lower)) continue;
    if (GATEWAY_OWNED.has(lower)) {
      if (lower === 'x-forwarded-for' && trusted) {
        forwardedFor = forwardedFor ? `${forwardedFor}, ${raw[i + 1]}` : raw[i + 1]!;
      }
      continue;
    }
    if (!trusted && (lower === 'forwarded' || lower === 'x-real-ip')) continue;
    if (lower === 'host') {
      checkHost(req, raw[i + 1]!, hostSeen);
      hostSeen = true;
      host = raw[i + 1]!;
    }
    if (lower === 'via' && info.via !== undefined) {
      via = via ? `${via}, ${raw[i + 1]}` : raw[i + 1]!;
      continue;
    }
    if (info.bodyLength !== undefined && lower === 'content-length') continue;
    if (info.overrides != null && isOverridden(info.overrides, lower)) continue;
    // The gateway's own internal headers never come from outside.
    if (lower.startsWith('x-meshgate-')) continue;
    out.push(name, raw[i + 1]!);
  }
  if (named !== null) {
    for (let i = out.length - 2; i >= 0; i -= 2) {
      const lower = out[i]!.toLowerCase();
      // Never let Connection strip what HTTP itself needs.
      if (named.has(lower) && lower !== 'host' && lower !== 'content-length') out.splice(i, 2);
    }
  }
  const client = info.remoteAddress;
  out.push('x-forwarded-for', forwardedFor ? `${forwardedFor}, ${client}` : client);
  out.push('x-forwarded-proto', info.proto);
  if (host) out.push('x-forwarded-host', host);
  if (info.clientCert !== undefined) out.push('x-forwarded-client-cert', info.clientCert);
  // RFC 9110 7.6.3: a proxy adds itself to Via. It is also how a loop is seen (the request comes back with it).
  if (info.via !== undefined) out.push('via', via ? `${via}, ${info.via}` : info.via);
  if (info.bodyLength !== undefined) out.push('content-length', String(info.bodyLength));
  if (info.overrides != null) {
    const overrides = info.overrides;
    for (let i = 0; i < overrides.length; i += 2) if (overrides[i + 1] !== null) out.push(overrides[i]!, overrides[i + 1]!);
  }
  return out;
}

/** Whether a header name (lower case, dashed) is one the gateway sets or strips. */
function owned(lower: string, overrides: readonly (string | null)[] | null | undefined): boolean {
  return (
    HOP_BY_HOP.has(lower) ||
    GATEWAY_OWNED.has(lower) ||
    TRUSTED_ONLY.has(lower) ||
    lower === 'host' ||
    lower === 'content-length' ||
    lower.startsWith('x-meshgate-') ||
    (overrides != null && isOverridden(overrides, lower))
  );
}

function isOverridden(overrides: readonly (string | null)[], lower: string): boolean {
  for (let i = 0; i < overrides.length; i += 2) if (overrides[i] === lower) return true;
  return false;
}
