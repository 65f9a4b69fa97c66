import { promises as dns } from 'node:dns';
import { definePlugin, type GatewayPlugin, type InstanceSpec, type Service } from '../../lib/index.js';
import { dnsDiscoverySections, type DnsServicePolicy } from './config.js';

export { dnsDiscoverySchema, dnsServiceSchema, type DnsServicePolicy } from './config.js';

/** Options of {@link dnsDiscovery}; per-service settings come from `services.<name>.dns`, the resolver from `discovery.dns`. */
export interface DnsDiscoveryOptions {
  /**
   * DNS servers (`"127.0.0.1:5353"`) to ask instead of the system resolver. Without them, A/AAAA
   * names go through `getaddrinfo` (so /etc/hosts works) and SRV through the system's servers.
   * @default `discovery.dns.servers`
   */
  servers?: string[];
}

const SOURCE = 'dns';

/**
 * DNS discovery: for every service with a `dns` section, resolves `name` every `refresh` and
 * diffs the answer into the registry: new addresses become instances, vanished ones leave,
 * and the ones that stay keep their health and breaker state. A/AAAA names use the system
 * resolver (`/etc/hosts` works) with `port`; with `srv: true` the SRV records give target, port
 * and weight. A failed lookup keeps the last answer (DNS hiccups must not empty a service).
 */
export function dnsDiscovery(options: DnsDiscoveryOptions = {}): GatewayPlugin<{ servers?: string[] }, DnsServicePolicy, unknown> {
  return definePlugin({
    name: 'dns-discovery',
    config: dnsDiscoverySections,
    async setup(gateway, scope) {
      const servers = options.servers ?? scope.global()?.servers;
      const resolver = servers ? new dns.Resolver() : null;
      if (resolver && servers) resolver.setServers(servers);
      const timers = new Map<Service, NodeJS.Timeout>();
      let closed = false;

      const resolve = async (service: Service, cfg: DnsServicePolicy): Promise<InstanceSpec[]> => {
        const scheme = service.policy.tls ? 'https' : 'http';
        if (cfg.srv) {
          // A target of "." (RFC 2782) says the service is not available here.
          const records = (await (resolver ?? dns).resolveSrv(cfg.name)).filter((r) => r.name !== '' && r.name !== '.');
          // RFC 2782: only the lowest priority is used; higher ones are backups for when it is empty.
          const best = Math.min(...records.map((r) => r.priority));
          return records.filter((r) => r.priority === best).map((r) => ({ url: `${scheme}://${hostForUrl(r.name)}:${r.port}`, weight: Math.max(1, r.weight), source: SOURCE }));
        }
        const port = cfg.port ?? (scheme === 'https' ? 443 : 80);
        let addresses: string[];
        if (resolver) {
          const [v4, v6] = await Promise.allSettled([resolver.resolve4(cfg.name), resolver.resolve6(cfg.name)]);
          addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
          if (addresses.length === 0 && v4.status === 'rejected') throw v4.reason;
        } else {
          addresses = (await dns.lookup(cfg.name, { all: true })).map((a) => a.address);
        }
        return [...new Set(addresses)].map((address) => ({ url: `${scheme}://${hostForUrl(address)}:${port}`, source: SOURCE }));
      };

      const refresh = async (service: Service): Promise<void> => {
        // The service's settings in the config in force.
        const cfg = scope.forService(service.name);
        if (cfg === undefined) return;
        let specs: InstanceSpec[];
        try {
          specs = await resolve(service, cfg);
        } catch (err) {
          gateway.log.warn({ service: service.name, name: cfg.name, err: (err as Error).message }, 'DNS lookup failed; keeping the last answer');
          return;
        }
        if (closed) return;
        const wanted = new Set<string>();
        for (const spec of specs) {
          try {
            wanted.add(gateway.registry.upsertInstance(service.name, spec).id);
          } catch (err) {
            // One bad record must not stop the others, nor the refresh loop.
            gateway.log.warn({ service: service.name, url: spec.url, err: (err as Error).message }, 'ignoring a DNS answer');
          }
        }
        if (wanted.size === 0 && specs.length > 0) return; // every record was bad: keep the last answer
        for (const inst of [...service.instances.values()]) {
          if (inst.source === SOURCE && !wanted.has(inst.id)) gateway.registry.removeInstance(service.name, inst.id, 'discovery');
        }
      };

      /** Resolves a service's name every `refresh`, while the service is in the config with a `dns` section. */
      const watch = (service: Service): void => {
        const loop = (): void => {
          const timer = setTimeout(() => {
            if (gateway.registry.getService(service.name) !== service || scope.forService(service.name) === undefined) {
              // A reload removed the service or its dns section: its DNS instances go with it.
              timers.delete(service);
              for (const inst of [...service.instances.values()]) if (inst.source === SOURCE) gateway.registry.removeInstance(service.name, inst.id, 'config');
              return;
            }
            refresh(service).finally(() => {
              if (!closed && timers.has(service)) loop();
            });
          }, scope.forService(service.name)?.refresh ?? 5000);
          timer.unref();
          timers.set(service, timer);
        };
        loop();
      };

      const services = [...gateway.registry.services()].filter((s) => scope.forService(s.name) !== undefined);
      // The first answer is awaited, so a DNS-only service has instances when the gateway starts.
      await Promise.all(services.map(refresh));
      services.forEach(watch);
      // A reload may give a service a dns section: resolve it now, then keep it fresh.
      gateway.onConfig(() => {
        for (const service of gateway.registry.services()) {
          if (timers.has(service) || scope.forService(service.name) === undefined) continue;
          void refresh(service);
          watch(service);
        }
      });
      gateway.onClose(() => {
        closed = true;
        for (const timer of timers.values()) clearTimeout(timer);
      });
    },
  });
}

function hostForUrl(host: string): string {
  const bare = host.endsWith('.') ? host.slice(0, -1) : host;
  return bare.includes(':') ? `[${bare}]` : bare;
}
