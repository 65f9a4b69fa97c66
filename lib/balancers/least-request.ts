import type { Balancer } from './balancer.js';
import type { Instance, Service } from '../registry/registry.js';
import { powerOfTwo, weightFunction, type WeightOf } from './weights.js';

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
    return powerOfTwo(candidates, this.#random, exclude, this.#prefer);
  }

  readonly #prefer = (a: Instance, b: Instance): Instance => {
    const ea = this.#effective(a);
    const eb = this.#effective(b);
    if (ea === eb) return this.#random() < 0.5 ? a : b;
    return ea > eb ? a : b;
  };

  #effective(instance: Instance): number {
    const active = instance.inflight + 1;
    return this.#weightOf(instance) / (this.#bias === 1 ? active : Math.pow(active, this.#bias));
  }
}
