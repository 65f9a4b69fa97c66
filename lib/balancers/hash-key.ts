import type { Context } from 'koa';

/** Reads the consistent-hash key of a request, or `undefined` when the request has none. */
export type HashKeyReader = (ctx: Context) => string | undefined;

/**
 * Compiles a `hashOn` spec into a reader: `header:NAME`, `cookie:NAME`, `query:NAME`, `ip`
 * (the client's socket address) or `path` (the normalized path, without query).
 * @example keyReader('header:x-user-id')(ctx) // the header's value, or undefined
 */
export function keyReader(spec: string): HashKeyReader {
  if (spec === 'ip') return (ctx) => ctx.state.mesh.clientIp || ctx.req.socket.remoteAddress || undefined;
  if (spec === 'path') return (ctx) => ctx.state.mesh.path;
  const colon = spec.indexOf(':');
  const kind = spec.slice(0, colon);
  const name = spec.slice(colon + 1);
  switch (kind) {
    case 'header': {
      const lower = name.toLowerCase();
      return (ctx) => {
        const value = ctx.req.headers[lower];
        if (value === undefined || value === '') return undefined;
        return Array.isArray(value) ? value.join(',') : value;
      };
    }
    case 'cookie':
      return (ctx) => cookieValue(ctx.req.headers.cookie, name);
    case 'query':
      return (ctx) => {
        const query = ctx.state.mesh.query;
        if (query.length < 2) return undefined;
        return new URLSearchParams(query.slice(1)).get(name) || undefined;
      };
    default:
      throw new Error(`unknown hashOn "${spec}"`);
  }
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    if (part.slice(0, eq).trim() === name) {
      const value = part.slice(eq + 1).trim();
      return value === '' ? undefined : value;
    }
  }
  return undefined;
}
