import { definePlugin, type GatewayPlugin } from '../../lib/index.js';

/** Options of {@link staticDiscovery}. */
export interface StaticDiscoveryOptions {
  /**
   * Instances per service, as in `services.<name>.instances`. Defaults to the gateway's config.
   * @default the `instances` of every service in the config
   */
  services?: Record<string, readonly { url: string; id?: string; weight?: number; zone?: string; metadata?: Record<string, unknown> }[]>;
}

/**
 * Static discovery: registers the instances listed in config. Always on (it is how
 * `services.<name>.instances` takes effect); a service may list none.
 * @example
 * gateway.use(staticDiscovery()); // createGateway does this for you
 */
export function staticDiscovery(options: StaticDiscoveryOptions = {}): GatewayPlugin {
  return definePlugin({
    name: 'static-discovery',
    setup(gateway) {
      const services = options.services ?? Object.fromEntries(Object.entries(gateway.config.services).map(([name, svc]) => [name, svc.instances]));
      for (const [name, instances] of Object.entries(services)) {
        for (const inst of instances) gateway.registry.upsertInstance(name, { ...inst, source: 'static' });
      }
    },
  });
}
