import type { Balancer } from './balancer.js';
import type { Instance } from '../registry/registry.js';
import { powerOfTwo } from './weights.js';

/** Options of {@link EwmaBalancer}. */
export interface EwmaOptions {
  /** RTT assumed for an instance with no samples yet, ms. @default 30 */
  defaultRtt?: number;
  /** Decay time constant, ms: how fast old samples stop counting. @default 10000 */
  decay?: number;
  random?: () => number;
  now?: () => number;
}

interface Estimate {
  rtt: number;
  stamp: number;
}

/**
 * Linkerd's balancer: power of two choices over peak-EWMA latency. Each instance keeps an
 * exponentially weighted moving average of its time to response headers that jumps straight up to
 * a slower sample (the "peak") and decays back as faster samples come in; with no samples it
 * decays toward zero, so an idle instance is tried again. Cost = estimate x (in-flight + 1); of
 * two random candidates the cheaper wins. O(1) per pick.
 */
export class EwmaBalancer implements Balancer {
  readonly #estimates = new WeakMap<Instance, Estimate>();
  readonly #defaultRtt: number;
  readonly #decay: number;
  readonly #random: () => number;
  readonly #now: () => number;

  constructor(options: EwmaOptions = {}) {
    this.#defaultRtt = options.defaultRtt ?? 30;
    this.#decay = options.decay ?? 10_000;
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? (() => performance.now());
  }

  pick(candidates: readonly Instance[], _ctx?: unknown, exclude?: ReadonlySet<Instance>): Instance {
    return powerOfTwo(candidates, this.#random, exclude, this.#prefer);
  }

  readonly #prefer = (a: Instance, b: Instance): Instance => {
    const now = this.#now();
    const ca = this.cost(a, now);
    const cb = this.cost(b, now);
    if (ca === cb) return this.#random() < 0.5 ? a : b;
    return ca < cb ? a : b;
  };

  /**
   * Records one attempt. A failure counts as at least ten default RTTs: a refused connection
   * answers in a millisecond, and must not look like the fastest instance.
   */
  observe(instance: Instance, durationMs: number, failed = false): void {
    if (failed) durationMs = Math.max(durationMs, this.#defaultRtt * 10);
    const now = this.#now();
    const est = this.#estimates.get(instance);
    if (est === undefined) {
      this.#estimates.set(instance, { rtt: Math.max(durationMs, 0), stamp: now });
      return;
    }
    const current = this.#decayed(est, now);
    if (durationMs > current) {
      est.rtt = durationMs; // peak: a slow answer counts in full at once
    } else {
      const w = Math.exp(-Math.max(now - est.stamp, 0) / this.#decay);
      est.rtt = est.rtt * w + durationMs * (1 - w);
    }
    est.stamp = now;
  }

  /** The instance's current cost: decayed RTT estimate times (in-flight + 1). */
  cost(instance: Instance, now = this.#now()): number {
    const est = this.#estimates.get(instance);
    const rtt = est === undefined ? this.#defaultRtt : this.#decayed(est, now);
    return rtt * (instance.inflight + 1);
  }

  #decayed(est: Estimate, now: number): number {
    return est.rtt * Math.exp(-Math.max(now - est.stamp, 0) / this.#decay);
  }
}
