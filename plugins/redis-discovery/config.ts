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
  /**
   * Where the gateway keeps the last fleet config it applied, to start from when Redis is down
   * (relative to the config file); `false` keeps none. @default ".meshgate-fleet-cache.json"
   */
  configCache: z.union([z.string().min(1), z.literal(false)]).default('.meshgate-fleet-cache.json'),
  /** How many fleet config versions Redis keeps for `meshgate rollback`. @default 10 */
  configHistory: z.number().int().min(1).max(1000).default(10),
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
