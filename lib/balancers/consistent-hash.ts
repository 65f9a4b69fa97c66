import type { Context } from 'koa';
import type { Balancer } from './balancer.js';
import type { Instance, Service } from '../registry/registry.js';
import { fmix32, murmur3 } from './hash.js';
import { keyReader, type HashKeyReader } from './hash-key.js';
import { RoundRobinBalancer } from './round-robin.js';

/** Ring points per unit of weight (Ketama uses 160 per server; 100 keeps big rings cheap). */
export const POINTS_PER_WEIGHT = 100;
const INDEX_BITS = 2 ** 20;

/**
 * Consistent hashing on a Ketama-style ring (Envoy's RING_HASH). Every instance owns
 * `weight x 100` points, placed by hashing its URL with the point's number, so the ring depends
 * only on the instance set: every gateway with the same instances maps a key to the same
 * instance, and an instance that leaves moves only the keys it owned. A key maps to the first
 * point at or after its hash; when that owner is not a candidate (unhealthy, open circuit,
 * already tried) the walk continues to the next instance on the ring. O(log n) per pick.
 * A request without the key falls back to round-robin.
 */
export class ConsistentHashBalancer implements Balancer {
  readonly #service: Service;
  readonly #key: HashKeyReader;
  readonly #fallback: RoundRobinBalancer;
  #version = -1;
  /** Sorted point hashes. */
  #points = new Uint32Array(0);
  /** Owner of each point, as an index into #owners. */
  #ownerOf = new Uint32Array(0);
  #owners: Instance[] = [];
  #setFor: readonly Instance[] | null = null;
  #set = new Set<Instance>();

  constructor(service: Service, hashOn = service.policy.hashOn ?? 'path') {
    this.#service = service;
    this.#key = keyReader(hashOn);
    this.#fallback = new RoundRobinBalancer(service);
  }

  pick(candidates: readonly Instance[], ctx: Context, exclude?: ReadonlySet<Instance>): Instance {
    const key = this.#key(ctx);
    if (key === undefined) return this.#fallback.pick(candidates, ctx, exclude);
    return this.lookup(murmur3(key), candidates, exclude) ?? this.#fallback.pick(candidates, ctx, exclude);
  }

  /** The first instance on the ring at or after `hash` that is a candidate and not excluded. */
  lookup(hash: number, candidates: readonly Instance[], exclude?: ReadonlySet<Instance>): Instance | undefined {
    if (this.#version !== this.#service.membershipVersion) this.rebuild();
    const points = this.#points;
    const n = points.length;
    if (n === 0) return undefined;
    const usable = this.#candidateSet(candidates);
    let i = lowerBound(points, hash);
    for (let steps = 0; steps < n; steps++, i++) {
      if (i === n) i = 0;
      const owner = this.#owners[this.#ownerOf[i]!]!;
      if (usable.has(owner) && (exclude === undefined || !exclude.has(owner))) return owner;
    }
    return undefined;
  }

  /** Rebuilds the ring from the service's instances. Done lazily when membership changed. */
  rebuild(): void {
    this.#version = this.#service.membershipVersion;
    const owners = [...this.#service.instances.values()];
    let total = 0;
    for (const inst of owners) total += inst.weight * POINTS_PER_WEIGHT;
    // Pack (hash, owner) in one float so one numeric sort orders both: hash * 2^20 + owner < 2^53.
    const packed = new Float64Array(total);
    let p = 0;
    owners.forEach((inst, owner) => {
      const base = murmur3(inst.url);
      const count = inst.weight * POINTS_PER_WEIGHT;
      for (let k = 0; k < count; k++) packed[p++] = fmix32(base ^ Math.imul(k + 1, 0x9e3779b1)) * INDEX_BITS + owner;
    });
    packed.sort();
    const points = new Uint32Array(total);
    const ownerOf = new Uint32Array(total);
    for (let k = 0; k < total; k++) {
      const v = packed[k]!;
      const owner = v % INDEX_BITS;
      points[k] = (v - owner) / INDEX_BITS;
      ownerOf[k] = owner;
    }
    this.#points = points;
    this.#ownerOf = ownerOf;
    this.#owners = owners;
    this.#setFor = null;
  }

  /** Ring size, for tests and benchmarks. */
  get size(): number {
    return this.#points.length;
  }

  #candidateSet(candidates: readonly Instance[]): ReadonlySet<Instance> {
    if (candidates !== this.#setFor) {
      this.#setFor = candidates;
      this.#set = new Set(candidates);
    }
    return this.#set;
  }
}

function lowerBound(points: Uint32Array, value: number): number {
  let lo = 0;
  let hi = points.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (points[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
