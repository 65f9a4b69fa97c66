import type { Balancer } from './balancer.js';
import type { Instance, Service } from '../registry/registry.js';
import { rampEndsAt, weightFunction, type WeightOf } from './weights.js';

/** Longest precomputed cycle, in picks; beyond it (or while weights ramp) each pick is computed. */
const MAX_CYCLE = 10_000;
/** Most work (instances x cycle) spent precomputing one cycle: about 15 ms, once per membership change. */
const MAX_BUILD_WORK = 8_000_000;

/**
 * Smooth weighted round-robin (nginx's algorithm): each step adds every candidate's weight to its
 * running score, takes the highest, and subtracts the total from the winner. Weights 3:1 give
 * `a a b a`; equal weights give an exact rotation.
 *
 * O(1) per pick: one full cycle (sum of weights / gcd picks) is precomputed for the service's
 * candidate list and replayed; it is rebuilt when the list changes (the registry hands out a new
 * array on every change). While slow start ramps weights, or for candidate lists narrowed by a
 * plugin, each pick runs the O(n) step directly.
 */
export class RoundRobinBalancer implements Balancer {
  readonly #service: Service | undefined;
  readonly #weightOf: WeightOf;
  readonly #now: () => number;
  /** Running scores of the step-by-step algorithm, by position in #scoresFor. */
  #scores = new Float64Array(0);
  #scoresFor: readonly Instance[] | null = null;
  #cycleFor: readonly Instance[] | null = null;
  #cycle: readonly Instance[] = [];
  #rampUntil = 0;
  #next = 0;

  constructor(service?: Service, now: () => number = Date.now) {
    this.#service = service;
    this.#now = now;
    this.#weightOf = service ? weightFunction(service, now) : (i) => i.weight;
  }

  pick(candidates: readonly Instance[], _ctx?: unknown, exclude?: ReadonlySet<Instance>): Instance {
    if (candidates.length === 1) return candidates[0]!;
    if (candidates !== this.#cycleFor) this.#rebuild(candidates);
    if (this.#cycle.length === 0) return this.#step(candidates, exclude);
    if (this.#rampUntil !== 0) {
      if (this.#rampUntil > this.#now()) return this.#step(candidates, exclude);
      this.#rampUntil = 0; // the ramp is over: back to the precomputed cycle for good
    }
    const cycle = this.#cycle;
    for (let tries = 0; tries < cycle.length; tries++) {
      const inst = cycle[this.#next]!;
      this.#next = this.#next + 1 === cycle.length ? 0 : this.#next + 1;
      if (exclude === undefined || !exclude.has(inst)) return inst;
    }
    return cycle[this.#next]!;
  }

  #rebuild(candidates: readonly Instance[]): void {
    this.#cycleFor = candidates;
    this.#next = 0;
    this.#cycle = [];
    // A list a plugin narrowed for one request is not worth a cycle: it will not come back.
    if (this.#service && candidates !== this.#service.candidates()) return;
    this.#rampUntil = this.#service ? rampEndsAt(this.#service, candidates) : 0;
    const weights = candidates.map((c) => c.weight);
    if (weights.every((w) => w === weights[0])) {
      this.#cycle = candidates;
      return;
    }
    const g = weights.reduce(gcd);
    const length = weights.reduce((a, b) => a + b, 0) / g;
    if (!Number.isInteger(length) || length > MAX_CYCLE || length * candidates.length > MAX_BUILD_WORK) return;
    const scores = new Array<number>(candidates.length).fill(0);
    const cycle: Instance[] = [];
    for (let step = 0; step < length; step++) cycle.push(candidates[smoothStep(weights, scores)]!);
    this.#cycle = cycle;
  }

  /** One step of the smooth algorithm over live (possibly ramping) weights: O(n). */
  #step(candidates: readonly Instance[], exclude?: ReadonlySet<Instance>): Instance {
    if (candidates !== this.#scoresFor) {
      // Carry scores over by instance, so a changed list does not restart the interleaving.
      const previous = new Map<Instance, number>();
      this.#scoresFor?.forEach((inst, i) => previous.set(inst, this.#scores[i]!));
      this.#scores = Float64Array.from(candidates, (inst) => previous.get(inst) ?? 0);
      this.#scoresFor = candidates;
    }
    const scores = this.#scores;
    let total = 0;
    let best = -1;
    for (let i = 0; i < candidates.length; i++) {
      const weight = this.#weightOf(candidates[i]!);
      scores[i]! += weight;
      total += weight;
      if ((best === -1 || scores[i]! > scores[best]!) && (exclude === undefined || !exclude.has(candidates[i]!))) best = i;
    }
    if (best === -1) best = 0; // everything excluded: any instance beats none
    scores[best]! -= total;
    return candidates[best]!;
  }
}

/** Index of the winner of one smooth-WRR step over fixed weights; updates `scores`. */
function smoothStep(weights: readonly number[], scores: number[]): number {
  let total = 0;
  let best = 0;
  for (let i = 0; i < weights.length; i++) {
    scores[i]! += weights[i]!;
    total += weights[i]!;
    if (scores[i]! > scores[best]!) best = i;
  }
  scores[best]! -= total;
  return best;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}
