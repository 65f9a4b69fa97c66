import type { Balancer } from '../balancers/balancer.js';
import type { ServiceConfig } from '../config/schema.js';

/**
 * A service as one config snapshot sees it: its validated config and the plugins' prepared
 * sections. The registry's `Service` holds what outlives configs (instances, their health); this
 * holds what a config decides. A request reads the policy of the snapshot it started with.
 */
export interface ServicePolicy {
  readonly name: string;
  readonly config: ServiceConfig;
  /** The plugins' prepared sections of this service, by plugin slot (see `PluginScope.service`). */
  readonly sections: readonly unknown[];
  /**
   * The service's balancer, made on first use and handed on to the next snapshot when the
   * balancer settings stay the same (so its state, a round-robin position or EWMA scores, does).
   * @internal kept by the gateway's balancer registry.
   */
  balancer: Balancer | null;
}
