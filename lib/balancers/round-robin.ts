import type { Balancer } from '../balancer.js';
import type { Instance } from '../registry.js';

/**
 * Smooth weighted round-robin (nginx): each pick adds every candidate's weight to its running
 * score, takes the highest, and subtracts the total from the winner. Weights 3:1 give `a a b a`,
 * never long runs on the heavy instance; equal weights give an exact rotation.
 * Per-instance scores live in a WeakMap, so instances that leave take their state with them.
 *
 * With equal weights (the common case) it is a plain rotating index: O(1) per pick.
 */
export class RoundRobinBalancer implements Balancer {
  #next = 0;
  readonly #current = new WeakMap<Instance, number>();
  /** Effective weight of an instance; slow start plugs in here. */
  readonly #weightOf: (instance: Instance) => number;

  constructor(weightOf: (instance: Instance) => number = (i) => i.weight) {
    this.#weightOf = weightOf;
  }

  pick(candidates: readonly Instance[], _ctx: unknown, exclude?: ReadonlySet<Instance>): Instance {
    const n = candidates.length;
    if (n === 1) return candidates[0]!;
    if (this.#uniform(candidates)) {
      for (let tries = 0; tries < n; tries++) {
        const inst = candidates[this.#next++ % n]!;
        if (this.#next >= 0x3fffffff) this.#next = 0;
        if (!exclude?.has(inst)) return inst;
      }
      return candidates[this.#next++ % n]!;
    }
    let total = 0;
    let best: Instance | undefined;
    let bestScore = -Infinity;
    for (let i = 0; i < n; i++) {
      const inst = candidates[i]!;
      const weight = this.#weightOf(inst);
      const score = (this.#current.get(inst) ?? 0) + weight;
      this.#current.set(inst, score);
      total += weight;
      if (score > bestScore && !exclude?.has(inst)) {
        bestScore = score;
        best = inst;
      }
    }
    best ??= candidates[0]!;
    this.#current.set(best, bestScore === -Infinity ? 0 : bestScore - total);
    return best;
  }

  #uniform(candidates: readonly Instance[]): boolean {
    const first = this.#weightOf(candidates[0]!);
    for (let i = 1; i < candidates.length; i++) if (this.#weightOf(candidates[i]!) !== first) return false;
    return true;
  }
}
