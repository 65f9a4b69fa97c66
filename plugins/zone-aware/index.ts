import { definePlugin, type GatewayPlugin, type Instance, type Service } from '../../lib/index.js';
import { zoneAwareSections, type ZoneAwarePolicy } from './config.js';

export { zoneAwareSchema, type ZoneAwarePolicy } from './config.js';

/** Options of {@link zoneAware}. */
export interface ZoneAwareOptions {
  /** The gateway's zone. @default `listen.zone`, else `$MESHGATE_ZONE` */
  zone?: string;
}

/**
 * Zone-aware routing (Envoy's, simplified), for services with `zoneAware` on. Instances carry a
 * `zone`; so does the gateway (`listen.zone` or `MESHGATE_ZONE`). The rule:
 * - while at least `minHealthyPercent` (70) of the local zone's instances are usable, requests
 *   stay in the zone;
 * - below that, a request stays local with a probability equal to the zone's usable share
 *   (usable / all local instances), and otherwise goes to the other zones' usable instances,
 *   which the balancer then picks among: the spill is spread over the zones in proportion to
 *   their usable instances;
 * - a zone with no usable instance sends everything elsewhere; a service with no instance in the
 *   gateway's zone is not narrowed at all; a retry that has tried every local instance may leave.
 * It narrows the candidates in the `select` stage, so it works with every balancer.
 */
export function zoneAware(options: ZoneAwareOptions = {}): GatewayPlugin<unknown, boolean | { minHealthyPercent: number }, unknown, unknown, ZoneAwarePolicy | false> {
  return definePlugin({
    name: 'zone-aware',
    config: zoneAwareSections,
    setup(gateway, scope) {
      const zone = options.zone ?? gateway.config.listen.zone ?? process.env.MESHGATE_ZONE;
      if (!zone) {
        gateway.log.warn('zoneAware is on for some service, but the gateway has no zone (listen.zone or MESHGATE_ZONE): requests are not kept in a zone');
        return;
      }
      /** The local zone's instance count, per service, recounted when membership changes. */
      const localTotals = new WeakMap<Service, { version: number; total: number }>();
      const localTotal = (service: Service): number => {
        let entry = localTotals.get(service);
        if (entry === undefined || entry.version !== service.membershipVersion) {
          let total = 0;
          for (const inst of service.instances.values()) if (inst.zone === zone && inst.health !== 'draining') total++;
          entry = { version: service.membershipVersion, total };
          localTotals.set(service, entry);
        }
        return entry.total;
      };

      gateway.addMiddleware('select', (ctx, next) => {
        const policy = scope.service(ctx);
        if (!policy) return next();
        const mesh = ctx.state.mesh;
        const total = localTotal(mesh.service);
        if (total === 0) return next();
        const local: Instance[] = [];
        const remote: Instance[] = [];
        for (const inst of mesh.candidates) (inst.zone === zone ? local : remote).push(inst);
        const tried = mesh.tried;
        const localLeft = tried === null ? local.length : local.filter((i) => !tried.has(i)).length;
        if (localLeft === 0) {
          // Nothing local left to try: anywhere else.
          if (remote.length > 0) mesh.candidates = remote;
          return next();
        }
        const usable = local.length / total;
        const stayLocal = remote.length === 0 || usable * 100 >= policy.minHealthyPercent || gateway.random() < usable;
        mesh.candidates = stayLocal ? local : remote;
        return next();
      });
    },
  });
}
