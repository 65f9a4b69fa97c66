import { BadRequestError } from '../errors.js';

// Characters RFC 3986 calls unreserved: their percent-encoding means the same as the character.
const UNRESERVED = /[A-Za-z0-9\-._~]/;
const NEEDS_WORK = /%|\/\.\.?(?:\/|$)|^\.\.?(?:\/|$)/;
// Tomcat-style path parameters on a dot segment (`/..;x/`): some servers resolve them as `..`.
const DOT_PARAMETER = /(?:^|\/)\.\.?;/;

/** The request target split into a normalized path and the raw query (with its `?`, or `''`). */
export interface RequestTarget {
  path: string;
  query: string;
}

/**
 * Normalizes an origin-form request target once, before routing; the same form is forwarded.
 * - percent-encoded unreserved characters are decoded (`%2e` is `.`, `%7E` is `~`), other escapes upper-cased;
 * - dot segments are resolved (RFC 3986 5.2.4), never above `/`, so no path escapes its route prefix;
 * - an encoded slash or backslash (`%2f`, `%5c`), a raw backslash, a dot segment with a path
 *   parameter (`..;`), a NUL, a malformed escape, or a target that does not start with `/`
 *   (absolute-form, `*`) is a {@link BadRequestError}.
 */
export function normalizeTarget(url: string): RequestTarget {
  const q = url.indexOf('?');
  const rawPath = q === -1 ? url : url.slice(0, q);
  const query = q === -1 ? '' : url.slice(q);
  if (rawPath.charCodeAt(0) !== 47 /* / */) {
    throw new BadRequestError(`request target must be a path starting with "/"`, 'MESH_ERR_BAD_PATH');
  }
  // Some upstreams (IIS, several Java stacks) read a backslash as a slash: `..\\` would be `../`.
  if (rawPath.includes('\\')) throw new BadRequestError('backslash in path', 'MESH_ERR_BAD_PATH');
  if (!NEEDS_WORK.test(rawPath)) {
    if (rawPath.includes(';') && DOT_PARAMETER.test(rawPath)) throw new BadRequestError('path parameter on a dot segment', 'MESH_ERR_BAD_PATH');
    return { path: rawPath, query };
  }
  const path = removeDotSegments(decodeUnreserved(rawPath));
  if (DOT_PARAMETER.test(path)) throw new BadRequestError('path parameter on a dot segment', 'MESH_ERR_BAD_PATH');
  return { path, query };
}

function decodeUnreserved(path: string): string {
  if (!path.includes('%')) return path;
  let out = '';
  for (let i = 0; i < path.length; i++) {
    const ch = path[i]!;
    if (ch !== '%') {
      out += ch;
      continue;
    }
    const hex = path.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new BadRequestError('malformed percent-encoding in path', 'MESH_ERR_BAD_PATH');
    const code = parseInt(hex, 16);
    if (code === 0x2f || code === 0x5c) throw new BadRequestError('encoded slash in path', 'MESH_ERR_BAD_PATH');
    if (code === 0) throw new BadRequestError('NUL in path', 'MESH_ERR_BAD_PATH');
    const decoded = String.fromCharCode(code);
    out += UNRESERVED.test(decoded) ? decoded : `%${hex.toUpperCase()}`;
    i += 2;
  }
  return out;
}

/** RFC 3986 5.2.4 for an absolute path. */
function removeDotSegments(path: string): string {
  const segments = path.split('/');
  const out: string[] = [];
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '.') {
      if (last) out.push('');
    } else if (seg === '..') {
      out.pop();
      if (last) out.push('');
    } else {
      out.push(seg);
    }
  }
  return `/${out.join('/')}`;
}

/**
 * The path without its path parameters (`/api/private;jsessionid=x/data` is `/api/private/data`),
 * as Tomcat, Jetty and Spring read it before they route: the gateway routes on the same path, so a
 * `;` cannot move a request from a protected route to a public one.
 */
export function withoutPathParameters(path: string): string {
  return path.replace(/;[^/]*/g, '');
}

/** The path parameters of a request path are refused (`listen.pathParameters: reject`). */
export class PathParametersError extends BadRequestError {
  constructor() {
    super('path parameters (";" in a path segment) are refused; set listen.pathParameters: allow to route on the path without them', 'MESH_ERR_BAD_PATH');
  }
}
