import type { Context } from 'koa';
import { murmur3 } from '../balancers/hash.js';
import type { Instance, Service } from '../registry/registry.js';
import type { Backend, Route } from './router.js';

/**
 * The instances a request to `backend` may go to: the service's candidates, or its subset's. A
 * subset with none is empty (the request gets 503), unless the backend has `fallback`: then the
 * whole service's candidates.
 */
export function backendCandidates(service: Service, backend: Backend | null): readonly Instance[] {
  const subset = backend?.subset ?? null;
  if (subset === null) return service.candidates();
  const candidates = service.subsetCandidates(subset);
  return candidates.length === 0 && backend!.fallback ? service.candidates() : candidates;
}

/**
 * The backend of `route` a request goes to. One backend: that one. A split: with `stickyOn` and
 * the request carrying its key, weighted rendezvous hashing (each backend scores
 * `weight / -ln(hash(key, backend))`, the highest wins), so a user stays on one backend while the
 * weights stay, and a weight change moves only the users it must; otherwise a weighted random
 * pick. Backends in `exclude` (tried already) and those of weight 0 are skipped; null when none is left.
 */
export function chooseBackend(route: Route, ctx: Context, random: () => number, exclude: ReadonlySet<Backend> | null = null): Backend | null {
  const backends = route.backends;
  if (backends.length === 1 && exclude === null) return backends[0]!;
  const key = route.sticky?.(ctx);
  if (key !== undefined) {
    let best: Backend | null = null;
    let bestScore = -Infinity;
    for (const backend of backends) {
      if (backend.weight === 0 || exclude?.has(backend)) continue;
      // A uniform number in (0, 1) from the key and the backend's position.
      const u = (murmur3(key, backend.index + 1) + 0.5) / 4294967296;
      const score = backend.weight / -Math.log(u);
      if (score > bestScore) {
        bestScore = score;
        best = backend;
      }
    }
    return best;
  }
  let total = 0;
  for (const backend of backends) if (!exclude?.has(backend)) total += backend.weight;
  if (total === 0) return null;
  let point = random() * total;
  for (const backend of backends) {
    if (backend.weight === 0 || exclude?.has(backend)) continue;
    point -= backend.weight;
    if (point < 0) return backend;
  }
  // Rounding: the last one with weight.
  for (let i = backends.length - 1; i >= 0; i--) if (backends[i]!.weight > 0 && !exclude?.has(backends[i]!)) return backends[i]!;
  return null;
}
