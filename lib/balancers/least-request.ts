import type { Balancer } from '../balancer.js';
import type { Instance, Service } from '../registry.js';
import { weightFunction, type WeightOf } from './weights.js';

/**
 * Least request, as Envoy's `LEAST_REQUEST`: the power of two choices. Two distinct random
 * candidates are drawn and the one with the higher effective weight wins, where
 * effective weight = weight / (active + 1)^bias and `active` is this gateway's in-flight count to
 * the instance (it drops on completion, error and client abort alike). With equal weights that is
 * simply "fewer active requests". O(1) per pick.
 */
export class LeastRequestBalancer implements Balancer {
  readonly #random: () => number;
  readonly #weightOf: WeightOf;
  readonly #bias: number;

  constructor(service: Service, random: () => number = Math.random, bias = 1) {
    this.#random = random;
    this.#weightOf = weightFunction(service);
    this.#bias = bias;
  }

  pick(candidates: readonly Instance[], _ctx?: unknown, exclude?: ReadonlySet<Instance>): Instance {
    const n = candidates.length;
    if (n === 1) return candidates[0]!;
    const i = Math.floor(this.#random() * n);
    let j = Math.floor(this.#random() * (n - 1));
    if (j >= i) j++;
    let a = candidates[i]!;
    let b = candidates[j]!;
    if (exclude !== undefined && exclude.size > 0) {
      if (exclude.has(a) || exclude.has(b)) {
        const rest = candidates.filter((c) => !exclude.has(c));
        if (rest.length === 1) return rest[0]!;
        if (rest.length > 1) {
          const k = Math.floor(this.#random() * rest.length);
          let m = Math.floor(this.#random() * (rest.length - 1));
          if (m >= k) m++;
          a = rest[k]!;
          b = rest[m]!;
        }
      }
    }
    const ea = this.#effective(a);
    const eb = this.#effective(b);
    if (ea === eb) return this.#random() < 0.5 ? a : b;
    return ea > eb ? a : b;
  }

  #effective(instance: Instance): number {
    const active = instance.inflight + 1;
    return this.#weightOf(instance) / (this.#bias === 1 ? active : Math.pow(active, this.#bias));
  }
}
