import type { Context } from 'koa';
import type { Instance, Service } from './registry.js';

/**
 * Picks one instance for a request. `candidates` are the service's usable instances, never empty.
 * `exclude` holds instances already tried by earlier attempts of the same request (retries go
 * elsewhere); a balancer should avoid them when it can and may ignore them when nothing else is left.
 */
export interface Balancer {
  pick(candidates: readonly Instance[], ctx: Context, exclude?: ReadonlySet<Instance>): Instance;
  /** Called when the balancer is replaced or the gateway closes. */
  close?(): void;
}

/** Creates the balancer of one service. Registered by name with `gateway.defineBalancer(name, factory)`. */
export type BalancerFactory = (service: Service) => Balancer;
