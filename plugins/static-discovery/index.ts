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
 * `services.<name>.instances` takes effect); a service may list none. On a reload it registers the
 * instances a service's list gained (an instance it keeps keeps its health and circuit state) and
 * removes those it lost, which finish their requests in flight before their pools close.
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
      if (options.services !== undefined) return;
      gateway.onConfig((snapshot, previous) => {
        for (const [name, policy] of snapshot.services) {
          const before = previous.services.get(name)?.config.instances;
          const after = policy.config.instances;
          if (before !== undefined && JSON.stringify(before) === JSON.stringify(after)) continue;
          const service = gateway.registry.getService(name);
          if (service === undefined) continue;
          const listed = new Set<string>();
          for (const inst of after) listed.add(gateway.registry.upsertInstance(name, { ...inst, source: 'static' }).id);
          for (const inst of [...service.instances.values()]) {
            if (inst.source === 'static' && !listed.has(inst.id)) gateway.registry.removeInstance(name, inst.id, 'config');
          }
        }
      });
    },
  });
}
