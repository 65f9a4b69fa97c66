import type { Logger } from '../kit/logger.js';
import type { Instance, PreservedService, Registry, RegistryEmitter } from './registry.js';

/** How often leases are checked, ms. Small next to any sensible TTL, cheap (leased instances only). */
export const LEASE_SWEEP_INTERVAL = 250;

/** `selfPreservation` in the config: `false`, or when to stop expiring a service's leases. */
export type SelfPreservationPolicy = false | { threshold: number; minInstances: number };

/**
 * Heartbeat leases (Eureka-style): an instance registered with a `ttl` stays while heartbeats
 * renew it, and is removed with reason `expired` once `ttl` passes without one. Expiry is decided
 * by the lease's age on this gateway's clock, never by a notification that could be lost.
 *
 * Self-preservation (`selfPreservation`, off by default): an instance is *silent* once half its
 * TTL has passed without a heartbeat (clients beat every TTL/3, so a live one never is). When more
 * than `threshold` percent of a service's leased instances (and at least `minInstances` are
 * leased) are silent together, the likelier story is that this gateway lost the network, not that
 * the service lost its instances: the service's leases stop expiring, and the gateway keeps
 * routing to its last view. When enough heartbeats are back, the instances still silent get one
 * fresh TTL to show up, then expire as usual. One instance stopping alone is never preserved.
 */
export class LeaseKeeper {
  readonly #registry: Registry;
  readonly #log: Logger;
  readonly #leased = new Set<Instance>();
  readonly #held = new Set<string>();
  readonly #verifiers = new Map<string, LeaseVerifier>();
  readonly #verifying = new Set<Instance>();
  readonly #events: RegistryEmitter;
  readonly #policy: () => SelfPreservationPolicy;
  readonly #preserved = new Map<string, PreservedService>();
  #timer: NodeJS.Timeout | null = null;

  constructor(registry: Registry, log: Logger, events: RegistryEmitter, policy: () => SelfPreservationPolicy = () => false) {
    this.#registry = registry;
    this.#log = log;
    this.#events = events;
    this.#policy = policy;
  }

  /** The services whose leases self-preservation holds right now, by name. */
  get preserved(): ReadonlyMap<string, PreservedService> {
    return this.#preserved;
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
    const policy = this.#policy();
    if (policy !== false || this.#preserved.size > 0) this.#preserve(policy, now);
    for (const inst of this.#leased) {
      if (inst.ttl === undefined || inst.lastHeartbeat === undefined) continue;
      if (this.#held.size > 0 && this.#held.has(inst.source)) continue;
      if (now - inst.lastHeartbeat <= inst.ttl) continue;
      if (this.#preserved.size > 0 && this.#preserved.has(inst.service)) continue;
      const verifier = this.#verifiers.get(inst.source);
      if (verifier === undefined) this.#expire(inst);
      else if (!this.#verifying.has(inst)) void this.#verify(inst, verifier);
    }
  }

  /** Counts each service's silent leases and starts or ends its preservation. */
  #preserve(policy: SelfPreservationPolicy, now: number): void {
    const counts = new Map<string, { silent: number; leased: number }>();
    if (policy !== false) {
      for (const inst of this.#leased) {
        if (inst.ttl === undefined || inst.lastHeartbeat === undefined) continue;
        if (this.#held.size > 0 && this.#held.has(inst.source)) continue;
        let count = counts.get(inst.service);
        if (count === undefined) counts.set(inst.service, (count = { silent: 0, leased: 0 }));
        count.leased++;
        if (now - inst.lastHeartbeat > inst.ttl / 2) count.silent++;
      }
    }
    for (const [service, preserved] of this.#preserved) {
      const count = counts.get(service);
      if (policy !== false && count !== undefined && count.silent * 100 > policy.threshold * count.leased) {
        preserved.silent = count.silent;
        preserved.leased = count.leased;
        continue;
      }
      this.#preserved.delete(service);
      // Heartbeats are back (or the policy is off): the instances still silent get one TTL to show up.
      for (const inst of this.#leased) {
        if (inst.service === service && inst.ttl !== undefined && inst.lastHeartbeat !== undefined && now - inst.lastHeartbeat > inst.ttl / 2) inst.lastHeartbeat = now;
      }
      this.#log.warn({ service, silent: count?.silent ?? 0, leased: count?.leased ?? 0 }, 'self-preservation over: heartbeats are back, leases expire again');
      this.#events.emit('service:preserved', service, null);
    }
    if (policy === false) return;
    for (const [service, count] of counts) {
      if (this.#preserved.has(service) || count.leased < policy.minInstances || count.silent * 100 <= policy.threshold * count.leased) continue;
      const preserved = { ...count, since: now };
      this.#preserved.set(service, preserved);
      this.#log.warn(
        { service, silent: count.silent, leased: count.leased, threshold: policy.threshold },
        'self-preservation: most of this service\'s instances went silent together, likelier a network problem on this side; their leases do not expire until heartbeats come back',
      );
      this.#events.emit('service:preserved', service, preserved);
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
