import type { ServiceConfig } from '../config/schema.js';
import { MeshError } from '../errors.js';

/** Why an instance left the registry. */
export type RemovalReason = 'deregistered' | 'expired' | 'discovery' | 'shutdown' | 'config' | (string & {});

/** The events the registry emits (on the gateway), with their arguments. */
export interface RegistryEvents {
  'service:added': [service: Service];
  /** A reload took the service out of the config; its instances were removed first. */
  'service:removed': [service: Service];
  'instance:added': [instance: Instance];
  'instance:removed': [instance: Instance, reason: RemovalReason];
  'instance:updated': [instance: Instance];
  'instance:health': [instance: Instance, previous: Health, reason: string];
  'circuit:state': [instance: Instance, previous: CircuitState];
  /** Outlier detection took the instance out of the candidates until `instance.ejectedUntil`. */
  'instance:ejected': [instance: Instance, reason: string];
  /** An ejected instance is a candidate again. */
  'instance:returned': [instance: Instance];
  'instance:heartbeat': [instance: Instance];
  /** Self-preservation began holding the service's leases (`preserved`), or stopped (`null`). */
  'service:preserved': [service: string, preserved: PreservedService | null];
}

/** A service whose leases are held by self-preservation: how many of its leased instances are silent. */
export interface PreservedService {
  silent: number;
  leased: number;
  /** When preservation began, ms since the epoch. */
  since: number;
}

/** Where the registry's events go: the gateway. */
export interface RegistryEmitter {
  emit<K extends keyof RegistryEvents>(event: K, ...args: RegistryEvents[K]): boolean;
}

/** Health as decided by health checks, heartbeats or an operator. */
export type Health = 'healthy' | 'unhealthy' | 'draining';
/** Circuit breaker state, kept on the instance so balancers can skip open circuits. */
export type CircuitState = 'closed' | 'open' | 'half-open';

/** What a discovery source knows about an instance. */
export interface InstanceSpec {
  url: string;
  /** Defaults to the URL's `host:port` (plus path, if any): stable across gateways and restarts. */
  id?: string;
  /** @default 1 */
  weight?: number;
  metadata?: Record<string, unknown>;
  zone?: string;
  /** Lease length in ms: the instance leaves when no heartbeat renews it within this time. */
  ttl?: number;
  /** Which discovery source owns it: `static`, `admin`, `redis`, `dns`, ... */
  source?: string;
}

/** One running copy of a service. Change `health` and `circuit` through the {@link Registry} so events fire. */
export class Instance {
  readonly id: string;
  readonly service: string;
  readonly url: string;
  /** `protocol://host:port`, the key of the connection pool. */
  readonly origin: string;
  /** Path prefix of the URL without trailing slash (`''` for none), prepended to forwarded paths. */
  readonly basePath: string;
  weight: number;
  metadata: Record<string, unknown>;
  zone: string | undefined;
  ttl: number | undefined;
  source: string;
  health: Health = 'healthy';
  circuit: CircuitState = 'closed';
  /** While outlier detection has ejected it: when it comes back (epoch ms); 0 when it is not ejected. */
  ejectedUntil = 0;
  /** When a heartbeat last renewed the lease (epoch ms). */
  lastHeartbeat: number | undefined;
  /** When this gateway learnt of the instance (epoch ms). */
  readonly addedAt = Date.now();
  /** When the instance last became usable: added, or back to healthy (epoch ms). Slow start counts from here. */
  readySince = this.addedAt;
  /** Requests this gateway has in flight to the instance, maintained by the proxy. */
  inflight = 0;

  constructor(service: string, spec: InstanceSpec) {
    const url = new URL(spec.url);
    this.service = service;
    this.url = spec.url;
    this.origin = url.origin;
    this.basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/+$/, '');
    this.id = spec.id ?? defaultInstanceId(url);
    this.weight = spec.weight ?? 1;
    this.metadata = spec.metadata ?? {};
    this.zone = spec.zone;
    this.ttl = spec.ttl;
    this.source = spec.source ?? 'static';
    if (spec.ttl !== undefined) this.lastHeartbeat = Date.now();
  }

  /** A plain-object view for the admin API and events. */
  toJSON(): Record<string, unknown> {
    return {
      id: this.id,
      service: this.service,
      url: this.url,
      weight: this.weight,
      zone: this.zone,
      metadata: this.metadata,
      health: this.health,
      circuit: this.circuit,
      ejectedUntil: this.ejectedUntil === 0 ? undefined : new Date(this.ejectedUntil).toISOString(),
      inflight: this.inflight,
      source: this.source,
      ttl: this.ttl,
      lastHeartbeat: this.lastHeartbeat === undefined ? undefined : new Date(this.lastHeartbeat).toISOString(),
    };
  }
}

/** The default instance id: `host:port`, plus the path when the URL has one. */
export function defaultInstanceId(url: URL): string {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  const path = url.pathname === '/' ? '' : url.pathname;
  return `${url.hostname}:${port}${path}`;
}

/** A named service: its instances, and its config in force (`policy`). */
export class Service {
  readonly name: string;
  /** The service's config in force; a new config snapshot replaces it (requests read their own snapshot's). */
  policy: ServiceConfig;
  readonly instances = new Map<string, Instance>();
  /** Requests in flight to the service (from the resolve stage to their end): what `maxRequests` limits. */
  active = 0;
  /** Bumped whenever an instance joins, leaves or changes weight: balancers that precompute (rings) rebuild on change. */
  membershipVersion = 0;
  #candidates: Instance[] | null = null;
  #subsets: Map<InstanceSubset, Instance[]> | null = null;

  constructor(name: string, policy: ServiceConfig) {
    this.name = name;
    this.policy = policy;
  }

  /**
   * The instances a request may go to: healthy, not behind an open circuit, not ejected. When fewer than
   * `panicThreshold` percent of the instances are usable, all instances but draining ones are
   * candidates (Envoy's panic mode): better a chance of success than a certain 503.
   * Cached; the registry invalidates it on every change.
   */
  candidates(): readonly Instance[] {
    if (this.#candidates === null) {
      const [candidates, panic] = this.#computeCandidates(null);
      this.#candidates = candidates;
      this.panic = panic;
    }
    return this.#candidates;
  }

  /**
   * The usable instances among those whose metadata carries every label of `subset` (a route
   * backend's subset). No panic mode here: a subset pins a version, and an empty one answers 503
   * (or falls back to the whole service, if the backend says so) rather than send to instances
   * known to be down. Cached per subset until the next change.
   */
  subsetCandidates(subset: InstanceSubset): readonly Instance[] {
    let candidates = this.#subsets?.get(subset);
    if (candidates === undefined) {
      candidates = this.#computeCandidates(subset)[0];
      (this.#subsets ??= new Map()).set(subset, candidates);
    }
    return candidates;
  }

  /** Whether the last {@link candidates} computation fell into panic mode. */
  panic = false;

  /** @internal called by the registry whenever an instance, its health or its circuit changes. */
  invalidate(): void {
    this.#candidates = null;
    this.#subsets = null;
  }

  #computeCandidates(subset: InstanceSubset | null): [Instance[], boolean] {
    const all: Instance[] = [];
    const usable: Instance[] = [];
    for (const inst of this.instances.values()) {
      if (inst.health === 'draining' || (subset !== null && !inSubset(inst, subset))) continue;
      all.push(inst);
      if (inst.health === 'healthy' && inst.circuit !== 'open' && inst.ejectedUntil === 0) usable.push(inst);
    }
    const panic = subset === null && all.length > 0 && usable.length * 100 < all.length * this.policy.panicThreshold;
    return [panic ? all : usable, panic];
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      balancer: this.policy.balancer,
      instances: [...this.instances.values()].map((i) => i.toJSON()),
    };
  }
}

/** Instances whose metadata has all these label values (a route backend's `subset`). */
export interface InstanceSubset {
  readonly labels: readonly (readonly [string, string])[];
}

function inSubset(instance: Instance, subset: InstanceSubset): boolean {
  const metadata = instance.metadata;
  for (const [key, value] of subset.labels) {
    const actual = metadata[key];
    if (actual === undefined || String(actual) !== value) return false;
  }
  return true;
}

/** The instance asked for is not known (404 from the admin API). */
export class UnknownInstanceError extends MeshError {
  constructor(service: string, id: string) {
    super('MESH_ERR_UNKNOWN_INSTANCE', 404, `service "${service}" has no instance "${id}"`);
  }
}

/** The service asked for is not known (404 from the admin API). */
export class UnknownServiceError extends MeshError {
  constructor(service: string) {
    super('MESH_ERR_UNKNOWN_SERVICE', 404, `unknown service "${service}"`);
  }
}

/**
 * The in-memory catalog every request reads. Discovery plugins write to it; everything that
 * changes it emits an event on the gateway. Never touched by I/O on the request path.
 */
export class Registry {
  readonly #services = new Map<string, Service>();
  readonly #events: RegistryEmitter;

  constructor(events: RegistryEmitter) {
    this.#events = events;
  }

  /** Adds a service with its policy. Adding an existing name returns the existing service. */
  addService(name: string, policy: ServiceConfig): Service {
    let service = this.#services.get(name);
    if (service) return service;
    service = new Service(name, policy);
    this.#services.set(name, service);
    this.#events.emit('service:added', service);
    return service;
  }

  /**
   * Removes a service and its instances (each with an `instance:removed` event, so its pool is
   * released once its requests in flight finish). Returns it, or `undefined` when it was not there.
   */
  removeService(name: string, reason: RemovalReason = 'config'): Service | undefined {
    const service = this.#services.get(name);
    if (service === undefined) return undefined;
    for (const id of [...service.instances.keys()]) this.removeInstance(name, id, reason);
    this.#services.delete(name);
    this.#events.emit('service:removed', service);
    return service;
  }

  getService(name: string): Service | undefined {
    return this.#services.get(name);
  }

  /** Like {@link getService}, but throws {@link UnknownServiceError}. */
  requireService(name: string): Service {
    const service = this.#services.get(name);
    if (!service) throw new UnknownServiceError(name);
    return service;
  }

  services(): IterableIterator<Service> {
    return this.#services.values();
  }

  getInstance(service: string, id: string): Instance | undefined {
    return this.#services.get(service)?.instances.get(id);
  }

  /**
   * Adds an instance, or updates the one with the same id (weight, metadata, lease) while
   * keeping its health and circuit state: re-registration is idempotent.
   */
  upsertInstance(serviceName: string, spec: InstanceSpec): Instance {
    const service = this.requireService(serviceName);
    const fresh = new Instance(serviceName, spec);
    let existing = service.instances.get(fresh.id);
    if (existing && existing.url !== fresh.url) {
      // Same id, new address (a pod back with a new IP): a new instance, with fresh state.
      this.removeInstance(serviceName, existing.id, 'replaced');
      existing = undefined;
    }
    if (existing) {
      existing.weight = fresh.weight;
      existing.metadata = fresh.metadata;
      existing.zone = fresh.zone;
      existing.ttl = fresh.ttl;
      existing.source = fresh.source;
      if (fresh.ttl !== undefined) existing.lastHeartbeat = Date.now();
      service.membershipVersion++;
      service.invalidate();
      this.#events.emit('instance:updated', existing);
      return existing;
    }
    service.instances.set(fresh.id, fresh);
    service.membershipVersion++;
    service.invalidate();
    this.#events.emit('instance:added', fresh);
    return fresh;
  }

  /** Removes an instance; returns it, or `undefined` when it was not there. */
  removeInstance(serviceName: string, id: string, reason: RemovalReason = 'deregistered'): Instance | undefined {
    const service = this.#services.get(serviceName);
    const instance = service?.instances.get(id);
    if (!service || !instance) return undefined;
    service.instances.delete(id);
    service.membershipVersion++;
    service.invalidate();
    this.#events.emit('instance:removed', instance, reason);
    return instance;
  }

  /** Renews an instance's lease. Throws {@link UnknownInstanceError} so the caller re-registers. */
  heartbeat(serviceName: string, id: string): Instance {
    const instance = this.getInstance(serviceName, id);
    if (!instance) throw new UnknownInstanceError(serviceName, id);
    instance.lastHeartbeat = Date.now();
    this.#events.emit('instance:heartbeat', instance);
    return instance;
  }

  setHealth(instance: Instance, health: Health, reason: string): void {
    if (instance.health === health) return;
    const previous = instance.health;
    instance.health = health;
    if (health === 'healthy') instance.readySince = Date.now();
    this.#services.get(instance.service)?.invalidate();
    this.#events.emit('instance:health', instance, previous, reason);
  }

  /** Ejects an instance until `until` (epoch ms), or returns it (`until` 0). Events fire on changes. */
  setEjected(instance: Instance, until: number, reason = ''): void {
    const was = instance.ejectedUntil !== 0;
    instance.ejectedUntil = until;
    if (was === (until !== 0)) return;
    this.#services.get(instance.service)?.invalidate();
    if (until !== 0) this.#events.emit('instance:ejected', instance, reason);
    else this.#events.emit('instance:returned', instance);
  }

  setCircuit(instance: Instance, circuit: CircuitState): void {
    if (instance.circuit === circuit) return;
    const previous = instance.circuit;
    instance.circuit = circuit;
    this.#services.get(instance.service)?.invalidate();
    this.#events.emit('circuit:state', instance, previous);
  }

}
