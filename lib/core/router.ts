import { routePrefix, type RouteConfig } from '../config/schema.js';
import type { ServicePolicy } from './policy.js';

/** A compiled route. `prefix` is normalized (no trailing slash, except the root `/`). */
export interface Route {
  readonly prefix: string;
  readonly service: string;
  readonly stripPrefix: boolean;
  /** The route's config entry, validated. Plugins read their sections through their scope instead. */
  readonly config: RouteConfig;
  /** Its service's policy in the same config snapshot (null for a router built outside one). */
  readonly policy: ServicePolicy | null;
  /** The plugins' prepared sections of this route, by plugin slot (see `PluginScope.route`). */
  readonly sections: readonly unknown[];
}

/** What a config snapshot adds to a route. */
export interface RouteExtras {
  policy: ServicePolicy | null;
  sections: readonly unknown[];
}

const NO_SECTIONS: readonly unknown[] = Object.freeze([]);

/**
 * Longest-prefix routing on segment boundaries: `/users` matches `/users`, `/users/` and
 * `/users/42`, never `/usersx`. Routes are indexed by their first path segment, so a request costs
 * one map lookup plus a `startsWith` over the few routes sharing that segment (longest first):
 * the cost does not grow with the number of routes.
 */
export class Router {
  readonly #byFirstSegment = new Map<string, Route[]>();
  #root: Route | undefined;

  constructor(routes: readonly RouteConfig[] = []) {
    for (const r of routes) this.add(r);
  }

  add(config: RouteConfig, extras: RouteExtras = { policy: null, sections: NO_SECTIONS }): Route {
    const route: Route = { prefix: routePrefix(config.prefix), service: config.service, stripPrefix: config.stripPrefix, config, policy: extras.policy, sections: extras.sections };
    if (route.prefix === '/') {
      this.#root = route;
      return route;
    }
    const first = firstSegment(route.prefix);
    const list = this.#byFirstSegment.get(first) ?? [];
    list.push(route);
    list.sort((a, b) => b.prefix.length - a.prefix.length);
    this.#byFirstSegment.set(first, list);
    return route;
  }

  routes(): Route[] {
    const all = [...this.#byFirstSegment.values()].flat();
    return this.#root ? [...all, this.#root] : all;
  }

  /** The route with the longest prefix that contains `path` (already normalized), if any. */
  match(path: string): Route | undefined {
    const list = this.#byFirstSegment.get(firstSegment(path));
    if (list !== undefined) {
      for (let i = 0; i < list.length; i++) {
        const prefix = list[i]!.prefix;
        // A prefix matches on a segment boundary: the path ends there or a "/" follows.
        if (path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47)) return list[i];
      }
    }
    return this.#root;
  }
}

function firstSegment(path: string): string {
  const end = path.indexOf('/', 1);
  return end === -1 ? path.slice(1) : path.slice(1, end);
}

/**
 * The path the upstream sees for `path` on `route`: the prefix removed when `stripPrefix` is on.
 * When the path carries path parameters (`/api/x;p/y`, routed without them), as many segments as
 * the prefix has are removed, parameters and all.
 */
export function upstreamPath(route: Route, path: string): string {
  if (!route.stripPrefix || route.prefix === '/') return path;
  if (!path.startsWith(route.prefix) || (path.length > route.prefix.length && path.charCodeAt(route.prefix.length) !== 47)) {
    let end = 0;
    for (let segments = route.prefix.split('/').length - 1; segments > 0; segments--) {
      const next = path.indexOf('/', end + 1);
      end = next === -1 ? path.length : next;
    }
    const rest = path.slice(end);
    return rest === '' ? '/' : rest;
  }
  const rest = path.slice(route.prefix.length);
  return rest === '' ? '/' : rest;
}
