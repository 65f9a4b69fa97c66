import type { IncomingHttpHeaders } from 'node:http';
import { keyReader, type HashKeyReader } from '../balancers/hash-key.js';
import { routePrefix, type RouteConfig } from '../config/schema.js';
import type { ServicePolicy } from './policy.js';

/** A header or query condition, compiled. */
export interface ValueCondition {
  /** Lower-case for headers. */
  readonly name: string;
  readonly kind: 'exact' | 'regex' | 'present' | 'absent';
  /** The exact value, or the regex's source. */
  readonly value: string;
  readonly regex: RegExp | null;
}

/** What a route matches on, compiled. */
export interface RouteMatch {
  /** `prefix` on segment boundaries, an `exact` path, or a `regex` over the path. */
  readonly kind: 'prefix' | 'exact' | 'regex';
  /** The normalized prefix or path, or the regex's source. */
  readonly path: string;
  readonly regex: RegExp | null;
  /** Upper-case; null for any method. */
  readonly methods: ReadonlySet<string> | null;
  /** Lower-case names and `*.suffix` wildcards; null for any host. */
  readonly hosts: readonly string[] | null;
  readonly headers: readonly ValueCondition[];
  readonly query: readonly ValueCondition[];
  /** How many conditions beyond the path: among routes with the same path, more conditions rank first. */
  readonly conditions: number;
}

/** A subset of a service's instances: those whose metadata has every label. */
export interface Subset {
  readonly labels: readonly (readonly [string, string])[];
  /** `version=v2,zone=a`: names the subset in logs, metrics and `GET /routes`. */
  readonly key: string;
}

/** One backend of a route. */
export interface Backend {
  readonly service: string;
  readonly weight: number;
  readonly subset: Subset | null;
  readonly fallback: boolean;
  /** `users-v2` or `users{version=v2}`. */
  readonly name: string;
  /** Its service's policy in the route's config snapshot (null for a router built outside one). */
  readonly policy: ServicePolicy | null;
  /** Its position in the route's list, for stickiness hashing. */
  readonly index: number;
}

/** Header edits, compiled: names lower-case. */
export interface HeaderEdits {
  readonly set: readonly (readonly [string, string])[];
  readonly add: readonly (readonly [string, string])[];
  readonly remove: readonly string[];
}

/** A compiled route. */
export interface Route {
  /** `routes[i].name`, or one built from its conditions (`/users`, `/users host=*.example.com method=GET`). */
  readonly name: string;
  /** Its position in the config: the last tie-breaker. */
  readonly index: number;
  readonly match: RouteMatch;
  /** The normalized prefix of a prefix route, an exact route's path; `/` for a regex route. */
  readonly prefix: string;
  /** The first backend's service (what a one-service route sends to); '' for a redirect. */
  readonly service: string;
  /** Where it sends: one backend for `service`, the split for `backends`, none for a redirect. */
  readonly backends: readonly Backend[];
  /** Sum of the backends' weights. */
  readonly totalWeight: number;
  /** `stickyOn`, split: reads the request value that keeps a user on one backend. */
  readonly sticky: HashKeyReader | null;
  readonly retryOtherBackends: boolean;
  readonly stripPrefix: boolean;
  readonly rewrite: { readonly prefix: string } | { readonly regex: RegExp; readonly replacement: string } | null;
  readonly hostRewrite: string | null;
  readonly requestHeaders: HeaderEdits | null;
  readonly responseHeaders: HeaderEdits | null;
  readonly redirect: RouteConfig['redirect'] | null;
  /** The route's config entry, validated. Plugins read their sections through their scope instead. */
  readonly config: RouteConfig;
  /** The first backend's service policy in the same config snapshot (null for a router built outside one). */
  readonly policy: ServicePolicy | null;
  /** The plugins' prepared sections of this route, by plugin slot (see `PluginScope.route`). */
  readonly sections: readonly unknown[];
}

/** What a config snapshot adds to a route. */
export interface RouteExtras {
  /** A service's policy in the snapshot, by name. */
  policyOf: (service: string) => ServicePolicy | null;
  sections: readonly unknown[];
}

const NO_SECTIONS: readonly unknown[] = Object.freeze([]);
const NO_EXTRAS: RouteExtras = { policyOf: () => null, sections: NO_SECTIONS };
const EMPTY_HEADERS: IncomingHttpHeaders = Object.freeze({});

/** Compiles a validated route entry. */
export function compileRoute(config: RouteConfig, index: number, extras: RouteExtras = NO_EXTRAS): Route {
  const match = compileMatch(config);
  const backends: Backend[] = [];
  if (config.backends !== undefined) {
    config.backends.forEach((b, i) => backends.push(backend(b.service, b.weight, b.subset, b.fallback, i, extras)));
  } else if (config.service !== undefined) {
    backends.push(backend(config.service, 1, undefined, false, 0, extras));
  }
  return {
    name: config.name ?? defaultName(match),
    index,
    match,
    prefix: match.kind === 'regex' ? '/' : match.path,
    service: backends[0]?.service ?? '',
    backends,
    totalWeight: backends.reduce((sum, b) => sum + b.weight, 0),
    sticky: config.stickyOn === undefined ? null : keyReader(config.stickyOn),
    retryOtherBackends: config.retryOtherBackends === true,
    stripPrefix: config.stripPrefix,
    rewrite: config.rewrite === undefined ? null : 'prefix' in config.rewrite ? { prefix: config.rewrite.prefix } : { regex: new RegExp(config.rewrite.regex, 'g'), replacement: config.rewrite.replacement },
    hostRewrite: config.hostRewrite ?? null,
    requestHeaders: edits(config.requestHeaders),
    responseHeaders: edits(config.responseHeaders),
    redirect: config.redirect ?? null,
    config,
    policy: backends[0]?.policy ?? null,
    sections: extras.sections,
  };
}

function backend(service: string, weight: number, labels: Record<string, string> | undefined, fallback: boolean, index: number, extras: RouteExtras): Backend {
  const entries = labels === undefined ? [] : Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1));
  const subset = entries.length === 0 ? null : { labels: entries, key: entries.map(([k, v]) => `${k}=${v}`).join(',') };
  return { service, weight, subset, fallback, index, name: subset === null ? service : `${service}{${subset.key}}`, policy: extras.policyOf(service) };
}

function compileMatch(config: RouteConfig): RouteMatch {
  const headers = conditions(config.headers, true);
  const query = conditions(config.query, false);
  const methods = config.methods === undefined ? null : new Set(config.methods.map((m) => m.toUpperCase()));
  const hosts = config.hosts === undefined ? null : [...new Set(config.hosts.map(normalizeHost))];
  const base = { methods, hosts, headers, query, conditions: (methods === null ? 0 : 1) + headers.length + query.length };
  if (config.path !== undefined) return { kind: 'exact', path: routePrefix(config.path), regex: null, ...base };
  if (config.pathRegex !== undefined) return { kind: 'regex', path: config.pathRegex, regex: new RegExp(config.pathRegex), ...base };
  return { kind: 'prefix', path: routePrefix(config.prefix ?? '/'), regex: null, ...base };
}

function conditions(spec: RouteConfig['headers'], lowerCase: boolean): ValueCondition[] {
  if (spec === undefined) return [];
  return Object.entries(spec)
    .map(([rawName, rule]): ValueCondition => {
      const name = lowerCase ? rawName.toLowerCase() : rawName;
      if (typeof rule === 'string') return { name, kind: 'exact', value: rule, regex: null };
      if ('exact' in rule) return { name, kind: 'exact', value: rule.exact, regex: null };
      if ('regex' in rule) return { name, kind: 'regex', value: rule.regex, regex: new RegExp(rule.regex) };
      return { name, kind: rule.present ? 'present' : 'absent', value: '', regex: null };
    })
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

function edits(spec: RouteConfig['requestHeaders']): HeaderEdits | null {
  if (spec === undefined) return null;
  const lower = (record: Record<string, string> | undefined): [string, string][] => Object.entries(record ?? {}).map(([k, v]) => [k.toLowerCase(), v]);
  return { set: lower(spec.set), add: lower(spec.add), remove: (spec.remove ?? []).map((n) => n.toLowerCase()) };
}

/** `/users`, or `/users host=*.example.com method=GET,POST header=x-canary query=debug`: stable across reloads. */
function defaultName(match: RouteMatch): string {
  const parts = [match.kind === 'regex' ? `~${match.path}` : match.kind === 'exact' ? `=${match.path}` : match.path];
  if (match.hosts !== null) parts.push(`host=${match.hosts.join(',')}`);
  if (match.methods !== null) parts.push(`method=${[...match.methods].join(',')}`);
  if (match.headers.length > 0) parts.push(`header=${match.headers.map((h) => h.name).join(',')}`);
  if (match.query.length > 0) parts.push(`query=${match.query.map((q) => q.name).join(',')}`);
  return parts.join(' ');
}

/** A request's Host as routes compare it: lower-case, without the port or a trailing dot. */
export function normalizeHost(host: string): string {
  let end = host.length;
  const colon = host.lastIndexOf(':');
  if (colon > host.lastIndexOf(']')) end = colon;
  if (host.charCodeAt(end - 1) === 46 /* . */) end--;
  return host.slice(0, end).toLowerCase();
}

/** Whether a request meets a route's conditions other than host and path. */
function accepts(match: RouteMatch, method: string, headers: IncomingHttpHeaders, query: string): boolean {
  if (match.conditions === 0) return true;
  if (match.methods !== null && !match.methods.has(method)) return false;
  for (let i = 0; i < match.headers.length; i++) {
    const condition = match.headers[i]!;
    const value = headers[condition.name];
    if (!meets(condition, Array.isArray(value) ? value.join(', ') : value)) return false;
  }
  if (match.query.length > 0) {
    const params = new URLSearchParams(query.charCodeAt(0) === 63 /* ? */ ? query.slice(1) : query);
    for (const condition of match.query) if (!meets(condition, params.get(condition.name) ?? undefined)) return false;
  }
  return true;
}

function meets(condition: ValueCondition, value: string | undefined): boolean {
  switch (condition.kind) {
    case 'present':
      return value !== undefined;
    case 'absent':
      return value === undefined;
    case 'exact':
      return value === condition.value;
    default:
      return value !== undefined && condition.regex!.test(value);
  }
}

/**
 * The routes of one host (or of any host), indexed by path: exact paths in a map, prefixes by
 * their first segment (so a request looks at the few routes sharing its first segment, not all),
 * regex routes in a list. Each list is in precedence order.
 */
class RouteTable {
  readonly exact = new Map<string, Route[]>();
  /** Regexes whose first path segment is a literal (`^/users/[0-9]+$`), by that segment. */
  readonly regexBySegment = new Map<string, Route[]>();
  /** Regexes that may match any first segment. */
  readonly regex: Route[] = [];
  readonly bySegment = new Map<string, Route[]>();
  readonly root: Route[] = [];

  add(route: Route): void {
    const match = route.match;
    if (match.kind === 'exact') insert(this.exact, match.path, route);
    else if (match.kind === 'regex') {
      const segment = literalFirstSegment(match.path);
      if (segment === null) place(this.regex, route);
      else insert(this.regexBySegment, segment, route);
    }
    else if (match.path === '/') place(this.root, route);
    else insert(this.bySegment, firstSegment(match.path), route);
  }

  /** Precedence: an exact path, then a regex, then the longest prefix; among equals, more conditions, then config order. */
  find(path: string, method: string, headers: IncomingHttpHeaders, query: string): Route | undefined {
    if (this.exact.size > 0) {
      const list = this.exact.get(path);
      if (list !== undefined) for (let i = 0; i < list.length; i++) if (accepts(list[i]!.match, method, headers, query)) return list[i];
    }
    const segment = firstSegment(path);
    let regexMatch: Route | undefined;
    if (this.regexBySegment.size > 0) {
      const list = this.regexBySegment.get(segment);
      if (list !== undefined) regexMatch = firstRegex(list, path, method, headers, query);
    }
    if (this.regex.length > 0) {
      const other = firstRegex(this.regex, path, method, headers, query);
      if (other !== undefined && (regexMatch === undefined || ranksBefore(other, regexMatch))) regexMatch = other;
    }
    if (regexMatch !== undefined) return regexMatch;
    const list = this.bySegment.get(segment);
    if (list !== undefined) {
      for (let i = 0; i < list.length; i++) {
        const route = list[i]!;
        const prefix = route.match.path;
        // A prefix matches on a segment boundary: the path ends there or a "/" follows.
        if (path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47) && accepts(route.match, method, headers, query)) return route;
      }
    }
    for (let i = 0; i < this.root.length; i++) if (accepts(this.root[i]!.match, method, headers, query)) return this.root[i];
    return undefined;
  }

}

function firstRegex(list: readonly Route[], path: string, method: string, headers: IncomingHttpHeaders, query: string): Route | undefined {
  for (let i = 0; i < list.length; i++) {
    const route = list[i]!;
    if (route.match.regex!.test(path) && accepts(route.match, method, headers, query)) return route;
  }
  return undefined;
}

/**
 * The first path segment every path a regex matches must have, when the regex spells it out
 * (`^/users/...`: `users`), else null: then the regex is tried for every path. Conservative: any
 * `|`, escape or metacharacter before the segment ends gives null.
 */
function literalFirstSegment(source: string): string | null {
  if (!source.startsWith('^/') || source.includes('|')) return null;
  let i = 2;
  while (i < source.length && /[A-Za-z0-9_~%-]/.test(source[i]!)) i++;
  if (i === 2) return null;
  const next = source[i];
  // The segment ends at a literal "/" or at the end of the path ("$"), and no quantifier touched its last character.
  if (next === '/' || (next === '$' && i === source.length - 1)) return source.slice(2, i);
  return null;
}

function insert(map: Map<string, Route[]>, key: string, route: Route): void {
  let list = map.get(key);
  if (list === undefined) map.set(key, (list = []));
  place(list, route);
}

/** Longer prefixes first, then more conditions, then config order. */
function place(list: Route[], route: Route): void {
  list.push(route);
  list.sort((a, b) => b.match.path.length - a.match.path.length || b.match.conditions - a.match.conditions || a.index - b.index);
}

/**
 * The route table. A request is matched by host first (an exact host, then wildcards from the
 * longest suffix, then routes for any host), and within the first host table that has a match by
 * path (an exact path, then a regex, then the longest prefix on segment boundaries), then by the
 * number of other conditions (methods, headers, query), then config order; the first route whose
 * conditions all hold wins. Hosts and first path segments are map lookups, so the cost does not
 * grow with the number of routes, only with the routes sharing a host and a first segment.
 */
export class Router {
  readonly #any = new RouteTable();
  readonly #hosts = new Map<string, RouteTable>();
  /** `*.example.com` is kept under `.example.com`. */
  readonly #wildcards = new Map<string, RouteTable>();
  readonly #routes: Route[] = [];

  constructor(routes: readonly RouteConfig[] = []) {
    routes.forEach((r) => this.add(r));
  }

  /** Compiles and adds a route; `extras` come from the config snapshot. */
  add(config: RouteConfig, extras: RouteExtras = NO_EXTRAS): Route {
    const route = compileRoute(config, this.#routes.length, extras);
    this.#routes.push(route);
    const hosts = route.match.hosts;
    if (hosts === null) this.#any.add(route);
    else {
      for (const host of hosts) {
        const [map, key] = host.startsWith('*.') ? [this.#wildcards, host.slice(1)] : [this.#hosts, host];
        let table = map.get(key);
        if (table === undefined) map.set(key, (table = new RouteTable()));
        table.add(route);
      }
    }
    return route;
  }

  /** Every route, in config order. */
  routes(): Route[] {
    return [...this.#routes];
  }

  /** The route for a request; `path` is normalized (and without path parameters). */
  match(path: string, method = 'GET', headers: IncomingHttpHeaders = EMPTY_HEADERS, query = ''): Route | undefined {
    if (this.#hosts.size > 0 || this.#wildcards.size > 0) {
      const raw = headers.host;
      if (raw !== undefined) {
        const host = normalizeHost(raw);
        const exact = this.#hosts.get(host)?.find(path, method, headers, query);
        if (exact !== undefined) return exact;
        if (this.#wildcards.size > 0) {
          // `.b.example.com`, then `.example.com`, then `.com`: the longest suffix first.
          for (let dot = host.indexOf('.'); dot !== -1; dot = host.indexOf('.', dot + 1)) {
            const found = this.#wildcards.get(host.slice(dot))?.find(path, method, headers, query);
            if (found !== undefined) return found;
          }
        }
      }
    }
    return this.#any.find(path, method, headers, query);
  }

  /**
   * Routes that can never match: another route ranks before them for every request they would
   * match (the same hosts and path, and conditions they all imply). `meshgate validate` and the
   * gateway's start warn about each.
   */
  unreachable(): { route: Route; shadowedBy: Route }[] {
    const found: { route: Route; shadowedBy: Route }[] = [];
    for (const route of this.#routes) {
      for (const other of this.#routes) {
        if (other === route || !ranksBefore(other, route) || !sameScope(other.match, route.match) || !implies(route.match, other.match)) continue;
        found.push({ route, shadowedBy: other });
        break;
      }
    }
    return found;
  }
}

function ranksBefore(a: Route, b: Route): boolean {
  return a.match.conditions > b.match.conditions || (a.match.conditions === b.match.conditions && a.index < b.index);
}

function sameScope(a: RouteMatch, b: RouteMatch): boolean {
  const hosts = (m: RouteMatch): string => (m.hosts === null ? '' : [...m.hosts].sort().join(','));
  return a.kind === b.kind && a.path === b.path && hosts(a) === hosts(b);
}

/** Whether every request `narrow` accepts, `wide` accepts too (a conservative check: false when unsure). */
function implies(narrow: RouteMatch, wide: RouteMatch): boolean {
  if (wide.methods !== null && (narrow.methods === null || [...narrow.methods].some((m) => !wide.methods!.has(m)))) return false;
  const covered = (wideList: readonly ValueCondition[], narrowList: readonly ValueCondition[]): boolean =>
    wideList.every((w) =>
      narrowList.some((n) => n.name === w.name && (w.kind === 'present' ? n.kind !== 'absent' : n.kind === w.kind && n.value === w.value)),
    );
  return covered(wide.headers, narrow.headers) && covered(wide.query, narrow.query);
}

function firstSegment(path: string): string {
  const end = path.indexOf('/', 1);
  return end === -1 ? path.slice(1) : path.slice(1, end);
}

/**
 * The path the upstream sees for `path` on `route`: the prefix removed when `stripPrefix` is on,
 * then `rewrite` applied. When the path carries path parameters (`/api/x;p/y`, routed without
 * them), as many segments as the prefix has are removed, parameters and all.
 */
export function upstreamPath(route: Route, path: string): string {
  const rewrite = route.rewrite;
  if (rewrite !== null) {
    if ('prefix' in rewrite) {
      const rest = route.match.kind === 'exact' ? '' : afterPrefix(route, path);
      // `/v2` + `/users` ; `/v2/` + `` is `/v2/`; `/` + `/users` is `/users`.
      return rewrite.prefix === '/' ? rest || '/' : rewrite.prefix.endsWith('/') && rest.startsWith('/') ? rewrite.prefix + rest.slice(1) : rewrite.prefix + rest;
    }
    const base = route.stripPrefix ? afterPrefix(route, path) || '/' : path;
    return base.replace(rewrite.regex, rewrite.replacement);
  }
  if (!route.stripPrefix || route.prefix === '/') return path;
  return afterPrefix(route, path) || '/';
}

/** What follows the route's prefix in `path` ('' when nothing does). */
function afterPrefix(route: Route, path: string): string {
  if (route.prefix === '/') return path;
  if (!path.startsWith(route.prefix) || (path.length > route.prefix.length && path.charCodeAt(route.prefix.length) !== 47)) {
    let end = 0;
    for (let segments = route.prefix.split('/').length - 1; segments > 0; segments--) {
      const next = path.indexOf('/', end + 1);
      end = next === -1 ? path.length : next;
    }
    return path.slice(end);
  }
  return path.slice(route.prefix.length);
}
