import type { InstanceSpec, Registry } from './registry.js';

/** A registration as the admin API and clients see it. */
export interface RegistrationResult {
  id: string;
  /** Lease length in ms, when the instance has one. */
  ttl?: number;
}

/**
 * Where run-time registrations go. The local one writes to this gateway's registry; the Redis
 * discovery plugin replaces it with one that writes to Redis, so every gateway of a fleet sees
 * the change. Admin routes and the registration client only talk to this interface.
 */
export interface Registrar {
  register(service: string, spec: InstanceSpec): Promise<RegistrationResult>;
  /** Renews a lease; rejects with `UnknownInstanceError` when the instance is gone. */
  heartbeat(service: string, id: string): Promise<RegistrationResult>;
  /** Removes an instance; resolves false when it was not there. */
  deregister(service: string, id: string): Promise<boolean>;
}

/** The registrar of a single gateway: straight to its registry. */
export class LocalRegistrar implements Registrar {
  readonly #registry: Registry;

  constructor(registry: Registry) {
    this.#registry = registry;
  }

  async register(service: string, spec: InstanceSpec): Promise<RegistrationResult> {
    const instance = this.#registry.upsertInstance(service, spec);
    return { id: instance.id, ttl: instance.ttl };
  }

  async heartbeat(service: string, id: string): Promise<RegistrationResult> {
    this.#registry.requireService(service);
    const instance = this.#registry.heartbeat(service, id);
    return { id: instance.id, ttl: instance.ttl };
  }

  async deregister(service: string, id: string): Promise<boolean> {
    this.#registry.requireService(service);
    return this.#registry.removeInstance(service, id, 'deregistered') !== undefined;
  }
}
