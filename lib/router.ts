import { routePrefix, type RouteConfig } from './config/schema.js';

/** A compiled route. `prefix` is normalized (no trailing slash, except the root `/`). */
export interface Route {
  readonly prefix: string;
  readonly service: string;
  readonly stripPrefix: boolean;
  /** The route's config entry as written, so plugins can read their own sections. */
  readonly config: RouteConfig;
}

/**
 * Longest-prefix routing on segment boundaries: `/users` matches `/users`, `/users/` and
 * `/users/42`, never `/usersx`. Matching walks up the path's own prefixes through a map, so its cost
 * grows with the depth of the path, not with the number of routes.
 */
export class Router {
  readonly #byPrefix = new Map<string, Route>();
  #root: Route | undefined;

  constructor(routes: readonly RouteConfig[] = []) {
    for (const r of routes) this.add(r);
  }

  add(config: RouteConfig): Route {
    const route: Route = { prefix: routePrefix(config.prefix), service: config.service, stripPrefix: config.stripPrefix, config };
    if (route.prefix === '/') this.#root = route;
    else this.#byPrefix.set(route.prefix, route);
    return route;
  }

  routes(): Route[] {
    return this.#root ? [...this.#byPrefix.values(), this.#root] : [...this.#byPrefix.values()];
  }

  /** The route with the longest prefix that contains `path` (already normalized), if any. */
  match(path: string): Route | undefined {
    const map = this.#byPrefix;
    if (map.size > 0) {
      let end = path.length;
      let candidate = path;
      while (end > 0) {
        const route = map.get(candidate);
        if (route) return route;
        end = path.lastIndexOf('/', end - 1);
        if (end <= 0) break;
        candidate = path.slice(0, end);
      }
    }
    return this.#root;
  }
}

/** The path the upstream sees for `path` on `route`: the prefix removed when `stripPrefix` is on. */
export function upstreamPath(route: Route, path: string): string {
  if (!route.stripPrefix || route.prefix === '/') return path;
  const rest = path.slice(route.prefix.length);
  return rest === '' ? '/' : rest;
}
