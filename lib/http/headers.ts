import type { IncomingMessage, ServerResponse } from 'node:http';

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
  // The gateway answered `Expect: 100-continue` itself; the upstream gets the body right away.
  'expect',
]);

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
}

/**
 * The headers for the upstream request, as a flat `[name, value, ...]` list: the client's headers
 * without hop-by-hop headers (and those its `Connection` names), with `X-Forwarded-For` appended
 * and `X-Forwarded-Proto` / `X-Forwarded-Host` set. `Host` is kept, as Envoy does.
 */
export function upstreamRequestHeaders(req: IncomingMessage, info: ForwardedInfo): string[] {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let named: Set<string> | null = null;
  let forwardedFor = '';
  let host = '';
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (lower === 'connection') {
      named = connectionTokens(raw[i + 1]!, named);
      continue;
    }
    if (HOP_BY_HOP.has(lower)) continue;
    if (GATEWAY_OWNED.has(lower)) {
      if (lower === 'x-forwarded-for' && info.appendForwardedFor === true) {
        forwardedFor = forwardedFor ? `${forwardedFor}, ${raw[i + 1]}` : raw[i + 1]!;
      }
      continue;
    }
    if (lower === 'host') host = raw[i + 1]!;
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
  if (info.bodyLength !== undefined) out.push('content-length', String(info.bodyLength));
  if (info.overrides != null) {
    const overrides = info.overrides;
    for (let i = 0; i < overrides.length; i += 2) if (overrides[i + 1] !== null) out.push(overrides[i]!, overrides[i + 1]!);
  }
  return out;
}

function isOverridden(overrides: readonly (string | null)[], lower: string): boolean {
  for (let i = 0; i < overrides.length; i += 2) if (overrides[i] === lower) return true;
  return false;
}
