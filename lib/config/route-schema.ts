import safeRegex from 'safe-regex2';
import { z } from 'zod';

/**
 * A regular expression from the config: it must compile, and it must not be able to backtrack
 * exponentially (nested quantifiers like `(a+)+`, checked by safe-regex2): a route's regex runs
 * on every request that reaches it, with the request's path or header as input.
 */
export const safeRegexSource = z.string().min(1).superRefine((source, ctx) => {
  try {
    new RegExp(source);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a valid regular expression: ${(err as Error).message}` });
    return;
  }
  if (!safeRegex(source)) ctx.addIssue({ code: 'custom', message: `refused: ${JSON.stringify(source)} can backtrack exponentially (a quantifier inside a quantified group); rewrite it without nested repetition` });
});

/** A header or query condition: an exact value, a regex, or whether it is there at all. */
export const valueMatch = z.union([
  z.string(),
  z.strictObject({ exact: z.string() }),
  z.strictObject({ regex: safeRegexSource }),
  z.strictObject({ present: z.boolean() }),
]);

const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const headerName = z.string().regex(HEADER_NAME, 'expected a header name (RFC 9110 token)');

/** `requestHeaders` / `responseHeaders`: headers to set (replace), add (append) and remove. */
export const headerEdits = z.strictObject({
  set: z.record(headerName, z.string()).optional(),
  add: z.record(headerName, z.string()).optional(),
  remove: z.array(headerName).optional(),
});

/** `*.example.com` or a host name, without a port (the port of a request's Host is ignored). */
const hostPattern = z
  .string()
  .min(1)
  .regex(/^(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$|^\[[0-9A-Fa-f:.]+\]$/, 'expected a host name or *.suffix, without a port');

const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** One backend of a route: a service, its share of the route's traffic, optionally a subset of its instances. */
export const backendSchema = z.strictObject({
  service: z.string().min(1),
  /** Relative share of the route's traffic; 0 takes the backend out. @default 1 */
  weight: z.number().int().min(0).max(1_000_000).default(1),
  /** Only instances whose metadata has all these values (Istio's DestinationRule subsets). */
  subset: z.record(z.string().min(1), z.string()).optional(),
  /** With no usable instance in the subset, use the rest of the service instead of answering 503. @default false */
  fallback: z.boolean().default(false),
});

/** `redirect`: the gateway answers with a redirect instead of proxying. */
export const redirectSchema = z.strictObject({
  status: z.union([z.literal(301), z.literal(302), z.literal(303), z.literal(307), z.literal(308)]).default(302),
  scheme: z.enum(['http', 'https']).optional(),
  host: z.string().min(1).optional(),
  /** The whole path of the target. */
  path: z.string().startsWith('/', 'expected a path starting with "/"').optional(),
  /** Replaces the route's prefix in the path (prefix routes only). */
  prefix: z.string().startsWith('/', 'expected a path starting with "/"').optional(),
});

/** `rewrite`: the upstream path, after `stripPrefix`. */
export const rewriteSchema = z.union([
  /** Replaces the route's prefix (or an exact route's whole path). */
  z.strictObject({ prefix: z.string().startsWith('/', 'expected a path starting with "/"') }),
  /** Replaces every match of `regex` in the path; `$1` in `replacement` is the first group. */
  z.strictObject({ regex: safeRegexSource, replacement: z.string() }),
]);

const pathString = z.string().startsWith('/', 'expected a path starting with "/"');

/** The core's fields of a `routes[]` entry. */
export const routeShape = {
  /** Names the route in metrics, the access log, traces and `GET /routes`. @default built from its conditions */
  name: z.string().min(1).optional(),
  /** Matches paths under this prefix, on segment boundaries. With no `prefix`, `path` or `pathRegex`, every path matches. */
  prefix: pathString.optional(),
  /** Matches this path exactly. */
  path: pathString.optional(),
  /** Matches paths this regular expression matches (anchor it with ^ and $ for a whole-path match). */
  pathRegex: safeRegexSource.optional(),
  /** Matches only these methods. */
  methods: z.array(z.string().regex(METHOD, 'expected an HTTP method')).min(1).optional(),
  /** Matches only these hosts (`api.example.com`, `*.example.com`; case-insensitive, the port ignored). */
  hosts: z.array(hostPattern).min(1).optional(),
  /** Matches only requests whose headers meet every condition. */
  headers: z.record(headerName, valueMatch).optional(),
  /** Matches only requests whose query parameters meet every condition. */
  query: z.record(z.string().min(1), valueMatch).optional(),
  /** The service the route sends to (or `backends`, or `redirect`). */
  service: z.string().min(1).optional(),
  /** Weighted backends instead of one service: a canary split. */
  backends: z.array(backendSchema).min(1).optional(),
  /** Keeps a user on one backend of a split: `header:NAME`, `cookie:NAME` or `query:NAME`. */
  stickyOn: z
    .string()
    .regex(/^(?:header|cookie|query):[^\s:]+$/, 'expected header:NAME, cookie:NAME or query:NAME')
    .optional(),
  /** A retry may go to another backend of the split. @default false */
  retryOtherBackends: z.boolean().optional(),
  stripPrefix: z.boolean().default(false),
  rewrite: rewriteSchema.optional(),
  /** The Host the upstream sees. */
  hostRewrite: z.string().min(1).optional(),
  requestHeaders: headerEdits.optional(),
  responseHeaders: headerEdits.optional(),
  redirect: redirectSchema.optional(),
};

/** A route entry's match conditions, normalized: equal for two routes that match exactly the same requests. */
export function matchSignature(route: Record<string, unknown>, normalizePath: (path: string) => string): string {
  const sorted = (value: unknown): unknown =>
    typeof value === 'object' && value !== null && !Array.isArray(value)
      ? Object.fromEntries(
          Object.entries(value)
            .map(([k, v]) => [k.toLowerCase(), sorted(v)] as const)
            .sort(([a], [b]) => (a < b ? -1 : 1)),
        )
      : value;
  const list = (value: unknown, lower: (s: string) => string): unknown => (Array.isArray(value) ? [...new Set(value.map((v) => lower(String(v))))].sort() : null);
  return JSON.stringify([
    typeof route.path === 'string' ? ['path', normalizePath(route.path)] : typeof route.pathRegex === 'string' ? ['regex', route.pathRegex] : ['prefix', normalizePath(typeof route.prefix === 'string' ? route.prefix : '/')],
    list(route.hosts, (s) => s.toLowerCase().replace(/\.$/, '')),
    list(route.methods, (s) => s.toUpperCase()),
    sorted(route.headers ?? null),
    route.query === undefined ? null : Object.fromEntries(Object.entries(route.query as object).sort(([a], [b]) => (a < b ? -1 : 1))),
  ]);
}

/** Checks across a route's fields; paths are relative to the route. */
export function routeIssues(route: Record<string, unknown>, services: Record<string, unknown>): { path: PropertyKey[]; message: string }[] {
  const issues: { path: PropertyKey[]; message: string }[] = [];
  const targets = ['service', 'backends', 'redirect'].filter((key) => route[key] !== undefined);
  if (targets.length === 0) issues.push({ path: ['service'], message: 'a route needs a service, backends or a redirect' });
  else if (targets.length > 1) issues.push({ path: [targets[1]!], message: `use one of service, backends and redirect (also ${targets[0]})` });
  const paths = ['prefix', 'path', 'pathRegex'].filter((key) => route[key] !== undefined);
  if (paths.length > 1) issues.push({ path: [paths[1]!], message: `use one of prefix, path and pathRegex (also ${paths[0]})` });
  if (route.stripPrefix === true && route.prefix === undefined) issues.push({ path: ['stripPrefix'], message: 'needs a prefix' });
  const rewrite = route.rewrite as Record<string, unknown> | undefined;
  if (rewrite?.prefix !== undefined && route.pathRegex !== undefined) issues.push({ path: ['rewrite', 'prefix'], message: 'needs a prefix or path route; use rewrite.regex with pathRegex' });
  const redirect = route.redirect as Record<string, unknown> | undefined;
  if (redirect?.prefix !== undefined && route.prefix === undefined) issues.push({ path: ['redirect', 'prefix'], message: 'needs a prefix route' });
  if (redirect?.prefix !== undefined && redirect.path !== undefined) issues.push({ path: ['redirect', 'path'], message: 'use one of path and prefix' });
  if (redirect !== undefined) {
    for (const key of ['rewrite', 'hostRewrite', 'stripPrefix'] as const) {
      if (route[key] !== undefined && route[key] !== false) issues.push({ path: [key], message: 'has no effect on a redirect route' });
    }
  }
  if (typeof route.service === 'string' && !Object.hasOwn(services, route.service)) issues.push({ path: ['service'], message: `unknown service "${route.service}"` });
  if (Array.isArray(route.backends)) {
    route.backends.forEach((backend: unknown, i: number) => {
      const name = (backend as Record<string, unknown> | null)?.service;
      if (typeof name === 'string' && !Object.hasOwn(services, name)) issues.push({ path: ['backends', i, 'service'], message: `unknown service "${name}"` });
    });
    if (route.backends.every((b: unknown) => (b as Record<string, unknown> | null)?.weight === 0)) issues.push({ path: ['backends'], message: 'every weight is 0: nothing would be sent anywhere' });
  }
  if (route.stickyOn !== undefined && route.backends === undefined) issues.push({ path: ['stickyOn'], message: 'needs backends' });
  if (route.retryOtherBackends === true && route.backends === undefined) issues.push({ path: ['retryOtherBackends'], message: 'needs backends' });
  return issues;
}
