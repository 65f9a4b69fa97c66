import { z } from 'zod';
import { ConfigError, defineSections, type SectionContext } from '../../lib/config/index.js';
import { TokenBuckets } from '../../lib/kit/index.js';

/** `routes[i].rateLimit`: token buckets per client. */
export const rateLimitSchema = z.strictObject({
  /** Sustained requests per second per key. */
  rps: z.number().positive(),
  /** Bucket size: how many requests may come at once. @default rps */
  burst: z.number().int().positive().optional(),
  /** What a bucket belongs to: `ip`, `header:NAME` or `jwt:sub` (a claim). @default ip */
  key: z.string().regex(/^(?:ip|header:[A-Za-z0-9-]+|jwt:[A-Za-z0-9_.-]+)$/, 'expected ip, header:NAME or jwt:CLAIM').default('ip'),
  /** Share buckets across gateways through Redis: `true` uses `discovery.redis`, or a redis:// URL. */
  redis: z.union([z.boolean(), z.string().regex(/^rediss?:\/\//, 'expected a redis:// URL')]).optional(),
});

/** A route's rate limit settings, parsed. */
export type RateLimitConfig = z.output<typeof rateLimitSchema>;

/** A route's limiter: its settings, and the local buckets, which live as long as the settings do. */
export interface RateLimitPolicy {
  readonly key: string;
  /** The route the buckets belong to (the Redis key names it). */
  readonly route: string;
  readonly local: TokenBuckets;
  /** The Redis URL whose buckets are shared, or null for local buckets only. */
  readonly redis: string | null;
  /** `RateLimit-Policy`: `burst;w=window`. */
  readonly policy: string;
}

/** Makes a route's buckets; `redis: true` needs `discovery.redis`. */
export function prepareRateLimit(config: RateLimitConfig, context: SectionContext): RateLimitPolicy {
  const burst = config.burst ?? Math.max(1, Math.ceil(config.rps));
  let redis: string | null = null;
  if (typeof config.redis === 'string') redis = config.redis;
  else if (config.redis === true) {
    const shared = context.config.discovery?.redis?.url;
    if (shared === undefined) throw new ConfigError([{ path: `${context.path}.redis`, message: 'true needs discovery.redis (or give a redis:// URL here)' }]);
    redis = shared;
  }
  return {
    key: config.key,
    route: context.route?.name ?? context.route?.prefix ?? context.path,
    local: new TokenBuckets(config.rps, burst),
    redis,
    policy: `${burst};w=${Math.round((burst / config.rps) * 1000) / 1000}`,
  };
}

/** The sections the rate-limit plugin owns. */
export const rateLimitSections = defineSections({ route: { key: 'rateLimit', schema: rateLimitSchema, prepare: prepareRateLimit } });

declare module '../../lib/config/index.js' {
  interface RouteSections {
    rateLimit: typeof rateLimitSchema;
  }
}
