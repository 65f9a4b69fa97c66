import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

const redisUrl = z.string().regex(/^rediss?:\/\//, 'expected a redis:// or rediss:// URL');

/** `discovery.redis`: the fleet's shared registry. */
export const redisDiscoverySchema = z.strictObject({
  url: redisUrl,
  /** Prefix of every key. @default "meshgate:" */
  prefix: z.string().default('meshgate:'),
  /** ioredis options (Sentinel: `sentinels` and `name`). */
  options: z.record(z.string(), z.unknown()).optional(),
  /** Redis Cluster seed nodes, as redis:// URLs; `url` is then ignored. */
  cluster: z.array(redisUrl).optional(),
  /** How often the whole registry is read again, besides the change notifications. @default 5s */
  resyncInterval: duration.default(5000),
});

/** The fleet registry's settings, parsed. */
export type RedisDiscoveryConfig = z.output<typeof redisDiscoverySchema>;

/** The sections the redis-discovery plugin owns. */
export const redisDiscoverySections = defineSections({ global: { key: 'discovery.redis', schema: redisDiscoverySchema } });

declare module '../../lib/config/index.js' {
  interface DiscoverySections {
    redis: typeof redisDiscoverySchema;
  }
}
