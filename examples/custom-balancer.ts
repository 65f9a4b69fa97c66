/**
 * A custom balancer, registered by a plugin: `zone-local` keeps traffic in the gateway's own zone
 * and fails over to the other zones only when no local instance can take the request.
 *
 * ```ts
 * const gateway = createGateway({ services: { api: { balancer: 'zone-local', instances: [...] } }, ... });
 * gateway.use(zoneLocalBalancer({ zone: 'eu-west-1a' }));
 * ```
 *
 * Run the demo (two upstreams in two zones, a gateway in front, then a failover):
 * `node --import tsx examples/custom-balancer.ts`
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { createGateway, definePlugin, PluginError, type GatewayPlugin, type Instance } from '../lib/index.js';

/** The name services use: `services.<name>.balancer: zone-local`. */
export const ZONE_LOCAL = 'zone-local';

/** Options of {@link zoneLocalBalancer}. */
export interface ZoneLocalBalancerOptions {
  /** The zone this gateway runs in. Instances whose `zone` equals it are preferred. */
  zone: string;
}

/**
 * Registers the `zone-local` balancer: a uniform random pick among the candidates in `zone`; when
 * none of them is usable (all unhealthy, open circuits, or already tried by this request), among
 * the candidates of every zone. Picks use the gateway's random source, so a seeded gateway
 * routes reproducibly. O(1) per pick; the zone's share of a candidate list is computed once per
 * list (the registry hands out a new list on every change).
 * @example gateway.use(zoneLocalBalancer({ zone: process.env.ZONE ?? 'eu-west-1a' }));
 */
export function zoneLocalBalancer(options: ZoneLocalBalancerOptions): GatewayPlugin {
  const zone = options?.zone;
  if (typeof zone !== 'string' || zone === '') throw new PluginError('zoneLocalBalancer: `zone` must be a non-empty string');
  return definePlugin({
    name: 'zone-local-balancer',
    // Declared, not defined in setup: `meshgate validate` then knows the name.
    balancers: {
      [ZONE_LOCAL]: (_service, { random }) => {
        let localFor: readonly Instance[] | null = null;
        let local: readonly Instance[] = [];
        const any = (list: readonly Instance[]): Instance => list[Math.floor(random() * list.length)]!;
        return {
          pick(candidates, _ctx, exclude) {
            if (candidates !== localFor) {
              localFor = candidates;
              local = candidates.filter((c) => c.zone === zone);
            }
            if (exclude === undefined || exclude.size === 0) return any(local.length > 0 ? local : candidates);
            // A retry: stay local if a local instance is left untried, else try another zone.
            const localLeft = local.filter((c) => !exclude.has(c));
            if (localLeft.length > 0) return any(localLeft);
            const left = candidates.filter((c) => !exclude.has(c));
            return any(left.length > 0 ? left : candidates);
          },
        };
      },
    },
    setup() {},
  });
}

/** Two upstreams in two zones, a gateway in zone `eu-1`, and what happens when the local zone goes down. */
async function main(): Promise<void> {
  const upstream = async (name: string): Promise<{ server: Server; url: string }> => {
    const server = createServer((_req, res) => res.end(name));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  };
  const local = await upstream('api-eu-1');
  const remote = await upstream('api-eu-2');
  const gateway = createGateway({
    listen: { host: '127.0.0.1', port: 0 },
    logLevel: 'silent',
    services: {
      api: {
        balancer: ZONE_LOCAL,
        instances: [
          { url: local.url, zone: 'eu-1' },
          { url: remote.url, zone: 'eu-2' },
        ],
      },
    },
    routes: [{ prefix: '/api', service: 'api' }],
  });
  gateway.use(zoneLocalBalancer({ zone: 'eu-1' }));
  const { url } = await gateway.listen();

  const round = async (label: string): Promise<void> => {
    const seen: Record<string, number> = {};
    for (let i = 0; i < 10; i++) {
      const body = await (await fetch(`${url}/api/hello`)).text();
      seen[body] = (seen[body] ?? 0) + 1;
    }
    process.stdout.write(`${label.padEnd(34)} ${JSON.stringify(seen)}\n`);
  };

  process.stdout.write(`gateway in zone eu-1 on ${url}, instances: api-eu-1 (zone eu-1), api-eu-2 (zone eu-2)\n`);
  await round('10 requests, both zones healthy:');
  const localInstance = [...gateway.registry.requireService('api').instances.values()].find((i) => i.zone === 'eu-1')!;
  gateway.registry.setHealth(localInstance, 'unhealthy', 'demo');
  await round('10 requests, eu-1 unhealthy:');
  gateway.registry.setHealth(localInstance, 'healthy', 'demo');
  await round('10 requests, eu-1 healthy again:');

  await gateway.close();
  local.server.close();
  remote.server.close();
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
