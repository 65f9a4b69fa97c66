import type { Cluster, Redis } from 'ioredis';
import type { Context } from 'koa';
import { MeshError, definePlugin, type GatewayPlugin, type MeshState } from '../../lib/index.js';
import { REDIS_TOKEN_BUCKET, bucketResult, type BucketResult } from '../../lib/kit/index.js';
import { connectRedis } from '../../lib/redis/index.js';
import { rateLimitSections, type RateLimitConfig, type RateLimitPolicy } from './config.js';

export { rateLimitSchema, type RateLimitConfig, type RateLimitPolicy } from './config.js';

/** Too many requests for this key (429). */
export class RateLimitedError extends MeshError {
  constructor(retryAfter: number) {
    super('MESH_ERR_RATE_LIMITED', 429, `rate limit exceeded; retry in ${retryAfter}s`);
  }
}

/** Options of {@link rateLimit}. */
export interface RateLimitOptions {
  /** How long a shared (Redis) check may take before the local bucket decides instead, ms. @default 50 */
  redisTimeout?: number;
  /** Key prefix in Redis. @default discovery.redis.prefix, else 'meshgate:' */
  prefix?: string;
}

/**
 * Per-route rate limits (`routes[].rateLimit: { rps, burst, key, redis }`): token buckets keyed
 * by client IP (default), a header, or a JWT claim. Over the limit: 429 with `Retry-After`; every
 * answer carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
 * `RateLimit-Policy`. Local buckets by default; with `redis` set, one atomic Lua script per check
 * shares the buckets across the fleet, and when Redis is slow or down the local bucket decides
 * (limits loosen to per-gateway, requests are never refused because Redis is).
 */
export function rateLimit(options: RateLimitOptions = {}): GatewayPlugin<unknown, unknown, RateLimitConfig, unknown, unknown, RateLimitPolicy> {
  return definePlugin({
    name: 'rate-limit',
    config: rateLimitSections,
    setup(gateway, scope) {
      const prefix = options.prefix ?? gateway.config.discovery?.redis?.prefix ?? 'meshgate:';
      const timeout = options.redisTimeout ?? 50;
      /** One connection per Redis URL the routes share buckets on, made on first use. */
      const connections = new Map<string, Redis | Cluster>();
      const redisFor = (url: string): Redis | Cluster => {
        let redis = connections.get(url);
        if (redis === undefined) {
          const shared = gateway.config.discovery?.redis;
          const fleet = shared?.url === url ? shared : undefined;
          redis = connectRedis({ url, options: fleet?.options, cluster: fleet?.cluster }, { commandTimeout: timeout, maxRetriesPerRequest: 0 });
          redis.on('error', (err: Error) => gateway.log.debug({ err: err.message }, 'rate-limit redis error'));
          connections.set(url, redis);
        }
        return redis;
      };
      // Connect now to the Redis of every route that shares its buckets, so the first requests need not wait.
      const connectAll = (): void => {
        for (const { options } of scope.routes()) if (options.redis !== null) redisFor(options.redis);
      };
      connectAll();
      gateway.onConfig(connectAll);

      const sweep = setInterval(() => {
        for (const { options } of scope.routes()) options.local.sweep();
      }, 10_000);
      sweep.unref();
      gateway.onClose(() => {
        clearInterval(sweep);
        for (const redis of connections.values()) redis.disconnect();
      });

      // In a cluster worker, buckets without Redis are the primary's, shared by every worker.
      const shared = gateway.has('sharedBuckets') ? gateway.get('sharedBuckets') : null;

      const check = async (limiter: RateLimitPolicy, key: string): Promise<BucketResult> => {
        const redis = limiter.redis === null ? null : redisFor(limiter.redis);
        if (redis !== null && redis.status === 'ready') {
          try {
            const [allowed, tokens] = (await redis.eval(REDIS_TOKEN_BUCKET, 1, `${prefix}rl:{${limiter.route}}:${key}`, limiter.local.rate, limiter.local.burst)) as [number, string];
            return bucketResult(allowed === 1, Number(tokens), limiter.local.rate, limiter.local.burst);
          } catch {
            // Redis slow or gone: the local bucket decides; a limit is a guard, not a dependency.
          }
        } else if (limiter.redis === null && shared !== null) {
          try {
            return await shared.take(`${limiter.route}\u0000${key}`, limiter.local.rate, limiter.local.burst);
          } catch {
            // The primary is busy or gone: the local bucket decides, as for Redis.
          }
        }
        return limiter.local.take(key);
      };

      gateway.addMiddleware('onRequest', async (ctx, next) => {
        const limiter = scope.route(ctx);
        if (limiter === undefined) return next();
        const mesh = ctx.state.mesh;
        const result = await check(limiter, keyOf(limiter.key, ctx, mesh));
        mesh.responseHeaders.push(
          'ratelimit-limit', String(limiter.local.burst),
          'ratelimit-remaining', String(result.remaining),
          'ratelimit-reset', String(result.reset),
          'ratelimit-policy', limiter.policy,
        );
        if (!result.allowed) {
          mesh.responseHeaders.push('retry-after', String(result.retryAfter));
          throw new RateLimitedError(result.retryAfter);
        }
        return next();
      });
    },
  });
}

/** The bucket a request draws from: by client IP (default), a header, or a JWT claim (`jwt:sub`). */
function keyOf(spec: string, ctx: Context, mesh: MeshState): string {
  if (spec === 'ip') return `ip:${mesh.clientIp}`;
  const colon = spec.indexOf(':');
  const name = spec.slice(colon + 1);
  if (spec.startsWith('header:')) {
    const value = ctx.req.headers[name.toLowerCase()];
    return typeof value === 'string' && value !== '' ? `h:${value}` : `ip:${mesh.clientIp}`;
  }
  // jwt:CLAIM: needs the auth plugin; unauthenticated requests share their IP's bucket.
  const value = mesh.get('principal')?.claims[name];
  return value === undefined || value === null ? `ip:${mesh.clientIp}` : `c:${String(value)}`;
}
