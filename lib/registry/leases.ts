import type { Logger } from '../kit/logger.js';
import type { Instance, Registry } from './registry.js';

/** How often leases are checked, ms. Small next to any sensible TTL, cheap (leased instances only). */
export const LEASE_SWEEP_INTERVAL = 250;

/**
 * Heartbeat leases (Eureka-style): an instance registered with a `ttl` stays while heartbeats
 * renew it, and is removed with reason `expired` once `ttl` passes without one. Expiry is decided
 * by the lease's age on this gateway's clock, never by a notification that could be lost.
 */
export class LeaseKeeper {
  readonly #registry: Registry;
  readonly #log: Logger;
  readonly #leased = new Set<Instance>();
  readonly #held = new Set<string>();
  readonly #verifiers = new Map<string, LeaseVerifier>();
  readonly #verifying = new Set<Instance>();
  #timer: NodeJS.Timeout | null = null;

  constructor(registry: Registry, log: Logger) {
    this.#registry = registry;
    this.#log = log;
  }

  /** Follows an instance that joined or changed: it is leased when it has a `ttl`. The gateway calls it on `instance:added` and `instance:updated`. */
  track(instance: Instance): void {
    if (instance.ttl !== undefined) this.#leased.add(instance);
    else this.#leased.delete(instance);
  }

  /** Forgets an instance that left (`instance:removed`). */
  untrack(instance: Instance): void {
    this.#leased.delete(instance);
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.sweep(), LEASE_SWEEP_INTERVAL);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /**
   * Lets a discovery source confirm an expiry before it happens: the source may know of renewals
   * this gateway never heard of (a service heartbeating with a plain Redis PEXPIRE). The verifier
   * answers the lease's remaining ms (renewed), 0 or less (gone), or throws (cannot tell: keep it).
   */
  verifyWith(source: string, verifier: LeaseVerifier): void {
    this.#verifiers.set(source, verifier);
  }

  /**
   * Stops expiring the instances of one discovery source while it cannot deliver heartbeats
   * (Redis down): the gateway keeps serving from its last view instead of emptying it.
   */
  hold(source: string): void {
    this.#held.add(source);
  }

  /** Expires `source`'s instances again, each with a fresh lease: their owners get one TTL to show up. */
  release(source: string, now = Date.now()): void {
    if (!this.#held.delete(source)) return;
    for (const inst of this.#leased) if (inst.source === source) inst.lastHeartbeat = now;
  }

  /** Removes every instance whose lease ran out. */
  sweep(now = Date.now()): void {
    for (const inst of this.#leased) {
      if (inst.ttl === undefined || inst.lastHeartbeat === undefined) continue;
      if (this.#held.size > 0 && this.#held.has(inst.source)) continue;
      if (now - inst.lastHeartbeat <= inst.ttl) continue;
      const verifier = this.#verifiers.get(inst.source);
      if (verifier === undefined) this.#expire(inst);
      else if (!this.#verifying.has(inst)) void this.#verify(inst, verifier);
    }
  }

  async #verify(inst: Instance, verifier: LeaseVerifier): Promise<void> {
    this.#verifying.add(inst);
    try {
      const remaining = await verifier(inst);
      if (this.#registry.getInstance(inst.service, inst.id) !== inst) return;
      if (remaining > 0 && inst.ttl !== undefined) inst.lastHeartbeat = Date.now() - Math.max(0, inst.ttl - remaining);
      else this.#expire(inst);
    } catch {
      // The source cannot say right now (Redis down): keep serving the instance; the next sweep asks again.
    } finally {
      this.#verifying.delete(inst);
    }
  }

  #expire(inst: Instance): void {
    this.#log.warn({ service: inst.service, instance: inst.id, ttl: inst.ttl }, 'lease expired: instance removed');
    this.#registry.removeInstance(inst.service, inst.id, 'expired');
  }
}

/** Confirms a lease with its source: remaining ms (> 0 renewed), 0 or less (gone); throws when it cannot tell. */
export type LeaseVerifier = (instance: Instance) => Promise<number>;
