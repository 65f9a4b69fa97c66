import type { Instance, Service } from '../registry/registry.js';

/** Slow start never sends less than this share of an instance's weight (Envoy's min_weight_percent). */
export const SLOW_START_FLOOR = 0.1;

/** An instance's effective weight right now. */
export type WeightOf = (instance: Instance) => number;

/**
 * The weight function of a service: the configured weight, ramped up linearly over
 * `slowStart` after an instance joins or turns healthy again (Envoy's slow start with
 * aggression 1, 10% floor). Without `slowStart` it is the plain weight.
 */
export function weightFunction(service: Service, now: () => number = Date.now): WeightOf {
  const window = service.policy.slowStart;
  if (!window) return plainWeight;
  return (instance) => {
    const age = now() - instance.readySince;
    if (age >= window) return instance.weight;
    return instance.weight * Math.max(SLOW_START_FLOOR, age / window);
  };
}

const plainWeight: WeightOf = (instance) => instance.weight;

/** When the last of `instances` leaves its slow-start window (epoch ms); 0 without slow start. */
export function rampEndsAt(service: Service, instances: readonly Instance[]): number {
  const window = service.policy.slowStart;
  if (!window) return 0;
  let latest = 0;
  for (const inst of instances) latest = Math.max(latest, inst.readySince + window);
  return latest;
}

/** Picks a random element of `candidates` not in `exclude`, or any when all are excluded. */
export function randomAvoiding(candidates: readonly Instance[], random: () => number, exclude?: ReadonlySet<Instance>): Instance {
  const n = candidates.length;
  const first = candidates[Math.floor(random() * n)]!;
  if (!exclude || exclude.size === 0 || !exclude.has(first)) return first;
  const rest = candidates.filter((c) => !exclude.has(c));
  return rest.length === 0 ? first : rest[Math.floor(random() * rest.length)]!;
}

/**
 * The power of two choices: two distinct random candidates, of which `prefer` keeps one. Instances
 * in `exclude` (tried by earlier attempts) are left out while any other is left.
 */
export function powerOfTwo(
  candidates: readonly Instance[],
  random: () => number,
  exclude: ReadonlySet<Instance> | undefined,
  prefer: (a: Instance, b: Instance) => Instance,
): Instance {
  let pool = candidates;
  if (exclude !== undefined && exclude.size > 0) {
    const rest = candidates.filter((c) => !exclude.has(c));
    if (rest.length > 0) pool = rest;
  }
  const n = pool.length;
  if (n === 1) return pool[0]!;
  const i = Math.floor(random() * n);
  let j = Math.floor(random() * (n - 1));
  if (j >= i) j++;
  return prefer(pool[i]!, pool[j]!);
}
