import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `services.<name>.dns`: where a service's instances are looked up. */
export const dnsServiceSchema = z.strictObject({
  /** The name to resolve (A/AAAA, or SRV with `srv: true`). */
  name: z.string().min(1),
  /** The instances' port (SRV records carry their own). */
  port: z.number().int().min(0).max(65535).optional(),
  /** How often the name is resolved again. @default 5s */
  refresh: duration.default(5000),
  /** Resolve SRV records instead of addresses. @default false */
  srv: z.boolean().default(false),
});

/** `discovery.dns`: the resolver every DNS-discovered service uses. */
export const dnsDiscoverySchema = z.strictObject({
  /** DNS servers to ask instead of the system resolver, as `host` or `host:port`. */
  servers: z.array(z.string().min(1)).min(1).optional(),
});

/** A service's DNS settings, parsed. */
export type DnsServicePolicy = z.output<typeof dnsServiceSchema>;

/** The sections the dns-discovery plugin owns. */
export const dnsDiscoverySections = defineSections({
  global: { key: 'discovery.dns', schema: dnsDiscoverySchema },
  service: { key: 'dns', schema: dnsServiceSchema },
});

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    dns: typeof dnsServiceSchema;
  }
  interface DiscoverySections {
    dns: typeof dnsDiscoverySchema;
  }
}
