import type { Balancer, BalancerFactory } from '../balancers/balancer.js';
import { BUILTIN_BALANCERS } from '../balancers/index.js';
import { ConfigError, PluginError, type ConfigIssue } from '../errors.js';
import type { Service } from '../registry/registry.js';
import type { ServicePolicy } from './policy.js';

/**
 * The balancers a gateway knows by name (the built-ins, and those plugins define), and each
 * service's balancer, made on first use and kept on the service's policy.
 */
export class BalancerRegistry {
  readonly #factories = new Map<string, BalancerFactory>();
  readonly #random: () => number;
  /** Every policy that got a balancer, so a redefinition or close() reaches them. */
  readonly #made = new Set<ServicePolicy>();
  #sealed = false;

  constructor(random: () => number) {
    this.#random = random;
    for (const [name, factory] of Object.entries(BUILTIN_BALANCERS)) this.#factories.set(name, factory);
  }

  /** Makes a balancer available by name. A plugin may replace a built-in before the gateway starts. */
  define(name: string, factory: BalancerFactory): void {
    if (this.#factories.has(name) && this.#sealed) throw new PluginError(`balancer "${name}" is already defined`);
    this.#factories.set(name, factory);
    for (const policy of this.#made) {
      if (policy.config.balancer === name) this.#drop(policy);
    }
  }

  names(): string[] {
    return [...this.#factories.keys()];
  }

  /** No more redefinitions: the gateway started. */
  seal(): void {
    this.#sealed = true;
  }

  /** The balancer of `service` under `policy`, made on first use. */
  for(service: Service, policy: ServicePolicy): Balancer {
    if (policy.balancer !== null) return policy.balancer;
    const factory = this.#factories.get(policy.config.balancer);
    if (!factory) throw new ConfigError([{ path: `services.${service.name}.balancer`, message: `unknown balancer "${policy.config.balancer}"` }]);
    const balancer = factory(service, { random: this.#random });
    policy.balancer = balancer;
    this.#made.add(policy);
    return balancer;
  }

  /** The problems of `policies` that name a balancer nobody defined. */
  check(policies: Iterable<ServicePolicy>): ConfigIssue[] {
    const issues: ConfigIssue[] = [];
    for (const policy of policies) {
      if (!this.#factories.has(policy.config.balancer)) {
        issues.push({ path: `services.${policy.name}.balancer`, message: `unknown balancer "${policy.config.balancer}" (known: ${this.names().join(', ')})` });
      }
    }
    return issues;
  }

  /**
   * Forgets the balancers of policies no longer in force, except those `next` carries on (same
   * balancer settings: the new policy holds the same balancer).
   */
  retire(previous: Iterable<ServicePolicy>, next: ReadonlyMap<string, ServicePolicy>): void {
    for (const policy of previous) {
      const carried = policy.balancer !== null && next.get(policy.name)?.balancer === policy.balancer;
      if (carried) this.#made.delete(policy);
      else this.#drop(policy);
    }
  }

  close(): void {
    for (const policy of this.#made) this.#drop(policy);
  }

  #drop(policy: ServicePolicy): void {
    policy.balancer?.close?.();
    policy.balancer = null;
    this.#made.delete(policy);
  }
}
