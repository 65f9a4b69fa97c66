import type { Balancer } from './balancer.js';
import type { Instance, Service } from '../registry/registry.js';
import { randomAvoiding } from './weights.js';

/**
 * Weighted random: each instance is picked with probability weight / total weight; uniform when
 * the weights are equal. O(1) per pick through Vose's alias table, built once per candidate list.
 */
export class RandomBalancer implements Balancer {
  readonly #random: () => number;
  #tableFor: readonly Instance[] | null = null;
  #prob: Float64Array = new Float64Array(0);
  #alias: Uint32Array = new Uint32Array(0);
  #uniform = true;

  constructor(_service: Service, random: () => number = Math.random) {
    this.#random = random;
  }

  pick(candidates: readonly Instance[], _ctx?: unknown, exclude?: ReadonlySet<Instance>): Instance {
    const n = candidates.length;
    if (n === 1) return candidates[0]!;
    const first = this.#draw(candidates);
    if (exclude === undefined || !exclude.has(first)) return first;
    // A retry: draw again a few times, then fall back to uniform over the rest.
    for (let i = 0; i < 4; i++) {
      const next = this.#draw(candidates);
      if (!exclude.has(next)) return next;
    }
    return randomAvoiding(candidates, this.#random, exclude);
  }

  #draw(candidates: readonly Instance[]): Instance {
    if (candidates !== this.#tableFor) this.#build(candidates);
    const n = candidates.length;
    if (this.#uniform) return candidates[Math.floor(this.#random() * n)]!;
    const column = Math.floor(this.#random() * n);
    return candidates[this.#random() < this.#prob[column]! ? column : this.#alias[column]!]!;
  }

  /** Vose's alias method: O(n) once, O(1) per draw. */
  #build(candidates: readonly Instance[]): void {
    this.#tableFor = candidates;
    const n = candidates.length;
    // Configured weights: slow start is for round-robin and least-request, whose state moves per pick.
    const weights = candidates.map((c) => c.weight);
    this.#uniform = weights.every((w) => w === weights[0]);
    if (this.#uniform) return;
    const total = weights.reduce((a, b) => a + b, 0);
    const prob = new Float64Array(n);
    const alias = new Uint32Array(n);
    const scaled = weights.map((w) => (w * n) / total);
    const small: number[] = [];
    const large: number[] = [];
    scaled.forEach((p, i) => (p < 1 ? small : large).push(i));
    while (small.length > 0 && large.length > 0) {
      const s = small.pop()!;
      const l = large.pop()!;
      prob[s] = scaled[s]!;
      alias[s] = l;
      scaled[l] = scaled[l]! + scaled[s]! - 1;
      (scaled[l]! < 1 ? small : large).push(l);
    }
    for (const i of large) prob[i] = 1;
    for (const i of small) prob[i] = 1; // rounding leftovers
    this.#prob = prob;
    this.#alias = alias;
  }
}
