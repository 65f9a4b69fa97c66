import type { Context } from 'koa';
import type { Instance, Service } from '../registry/registry.js';

/**
 * Picks one instance for a request. `candidates` are the service's usable instances, never empty.
 * `exclude` holds instances already tried by earlier attempts of the same request (retries go
 * elsewhere); a balancer avoids them when it can and may ignore them when nothing else is left.
 */
export interface Balancer {
  pick(candidates: readonly Instance[], ctx: Context, exclude?: ReadonlySet<Instance>): Instance;
  /** Told after every attempt: time to response headers (or to the failure) in ms. */
  observe?(instance: Instance, durationMs: number, failed: boolean): void;
  /** Called when the balancer is replaced or the gateway closes. */
  close?(): void;
}

/** What a balancer factory gets besides its service. */
export interface BalancerContext {
  /** Uniform random in [0, 1). Seedable through `GatewayOptions.random` for reproducible tests. */
  random: () => number;
}

/** Creates the balancer of one service. Registered by name with `gateway.defineBalancer(name, factory)`. */
export type BalancerFactory = (service: Service, context: BalancerContext) => Balancer;
