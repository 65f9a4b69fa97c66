import type { Cluster, Redis } from 'ioredis';
import type { Context } from 'koa';
import { MeshError } from '../../lib/errors.js';
import type { Gateway } from '../../lib/core/gateway.js';
import { definePlugin, type GatewayPlugin } from '../../lib/core/plugin.js';
import { connectRedis } from '../../lib/redis/store.js';
import type { Route } from '../../lib/core/router.js';
import type { MeshState } from '../../lib/core/state.js';
import { REDIS_TOKEN_BUCKET, TokenBuckets, bucketResult, type BucketResult } from '../../lib/kit/token-bucket.js';

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

interface Limiter {
  local: TokenBuckets;
  shared: boolean;
  keyOf: (ctx: Context, mesh: MeshState) => string;
  policy: string;
  routeKey: string;
}

/**
 * Per-route rate limits (`routes[].rateLimit: { rps, burst, key, redis }`): token buckets keyed
 * by client IP (default), a header, or a JWT claim. Over the limit: 429 with `Retry-After`; every
 * answer carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
 * `RateLimit-Policy`. Local buckets by default; with `redis` set, one atomic Lua script per check
 * shares the buckets across the fleet, and when Redis is slow or down the local bucket decides
 * (limits loosen to per-gateway, requests are never refused because Redis is).
 */
export function rateLimit(options: RateLimitOptions = {}): GatewayPlugin {
  return definePlugin({
    name: 'rate-limit',
    setup(gateway: Gateway) {
      const limiters = new Map<Route, Limiter>();
      let redisUrl: string | undefined;
      for (const route of gateway.router.routes()) {
        const cfg = route.config.rateLimit;
        if (!cfg) continue;
        const burst = cfg.burst ?? Math.max(1, Math.ceil(cfg.rps));
        const shared = cfg.redis !== undefined && cfg.redis !== false;
        if (shared) redisUrl ??= typeof cfg.redis === 'string' ? cfg.redis : gateway.config.discovery?.redis?.url;
        limiters.set(route, {
          local: new TokenBuckets(cfg.rps, burst),
          shared,
          keyOf: keyReader(cfg.key),
          policy: `${burst};w=${Math.round((burst / cfg.rps) * 1000) / 1000}`,
          routeKey: route.prefix,
        });
      }
      if (limiters.size === 0) return;

      const prefix = options.prefix ?? gateway.config.discovery?.redis?.prefix ?? 'meshgate:';
      const timeout = options.redisTimeout ?? 50;
      let redis: Redis | Cluster | null = null;
      if (redisUrl) {
        redis = connectRedis({ url: redisUrl, options: gateway.config.discovery?.redis?.options }, { commandTimeout: timeout, maxRetriesPerRequest: 0 });
        redis.on('error', (err: Error) => gateway.log.debug({ err: err.message }, 'rate-limit redis error'));
      }

      const sweep = setInterval(() => {
        for (const limiter of limiters.values()) limiter.local.sweep();
      }, 10_000);
      sweep.unref();
      gateway.onClose(() => {
        clearInterval(sweep);
        redis?.disconnect();
      });

      const check = async (limiter: Limiter, key: string): Promise<BucketResult> => {
        if (limiter.shared && redis !== null && redis.status === 'ready') {
          try {
            const [allowed, tokens] = (await redis.eval(REDIS_TOKEN_BUCKET, 1, `${prefix}rl:{${limiter.routeKey}}:${key}`, limiter.local.rate, limiter.local.burst)) as [number, string];
            return bucketResult(allowed === 1, Number(tokens), limiter.local.rate, limiter.local.burst);
          } catch {
            // Redis slow or gone: the local bucket decides; a limit is a guard, not a dependency.
          }
        }
        return limiter.local.take(key);
      };

      gateway.use('onRequest', async (ctx, next) => {
        const mesh = ctx.state.mesh;
        const limiter = mesh.route === null ? undefined : limiters.get(mesh.route);
        if (limiter === undefined) return next();
        const result = await check(limiter, limiter.keyOf(ctx, mesh));
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

function keyReader(spec: string): (ctx: Context, mesh: MeshState) => string {
  if (spec === 'ip') return (_ctx, mesh) => `ip:${mesh.clientIp}`;
  const colon = spec.indexOf(':');
  const kind = spec.slice(0, colon);
  const name = spec.slice(colon + 1);
  if (kind === 'header') {
    const lower = name.toLowerCase();
    return (ctx, mesh) => {
      const value = ctx.req.headers[lower];
      return typeof value === 'string' && value !== '' ? `h:${value}` : `ip:${mesh.clientIp}`;
    };
  }
  // jwt:CLAIM: needs the auth plugin; unauthenticated requests share their IP's bucket.
  return (_ctx, mesh) => {
    const value = mesh.principal?.claims[name];
    return value === undefined || value === null ? `ip:${mesh.clientIp}` : `c:${String(value)}`;
  };
}
