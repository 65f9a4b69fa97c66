/** The answer of one token-bucket check. */
export interface BucketResult {
  allowed: boolean;
  /** Whole tokens left after this request. */
  remaining: number;
  /** Seconds until the next token (what Retry-After says when refused). */
  retryAfter: number;
  /** Seconds until the bucket is full again. */
  reset: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * In-memory token buckets: `rate` tokens a second up to `burst`, one per request. Idle buckets
 * are forgotten by {@link sweep} (a full bucket needs no memory), so memory follows the number of
 * recently active keys.
 */
export class TokenBuckets {
  readonly #buckets = new Map<string, Bucket>();
  readonly rate: number;
  readonly burst: number;

  constructor(rate: number, burst: number) {
    this.rate = rate;
    this.burst = burst;
  }

  take(key: string, now = performance.now()): BucketResult {
    let bucket = this.#buckets.get(key);
    if (bucket === undefined) {
      bucket = { tokens: this.burst, at: now };
      this.#buckets.set(key, bucket);
    } else {
      bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) * this.rate) / 1000);
      bucket.at = now;
    }
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    return bucketResult(allowed, bucket.tokens, this.rate, this.burst);
  }

  /** Drops buckets that have refilled completely. */
  sweep(now = performance.now()): void {
    for (const [key, bucket] of this.#buckets) {
      if (bucket.tokens + ((now - bucket.at) * this.rate) / 1000 >= this.burst) this.#buckets.delete(key);
    }
  }

  get size(): number {
    return this.#buckets.size;
  }
}

/**
 * Token buckets kept elsewhere and shared (a cluster's primary holds them for its workers):
 * `take` draws one token from the bucket `key` of a `rate`/`burst` limit, or rejects when the
 * keeper cannot answer (the caller then decides with a local bucket).
 */
export interface SharedBuckets {
  take(key: string, rate: number, burst: number): Promise<BucketResult>;
}

/**
 * The keeper's side of {@link SharedBuckets}: one set of buckets per `rate`/`burst` pair, swept of
 * full buckets every 10 s.
 */
export class BucketKeeper {
  readonly #limits = new Map<string, TokenBuckets>();
  readonly #sweep: NodeJS.Timeout;

  constructor() {
    this.#sweep = setInterval(() => {
      for (const buckets of this.#limits.values()) buckets.sweep();
    }, 10_000);
    this.#sweep.unref();
  }

  take(key: string, rate: number, burst: number): BucketResult {
    const limit = `${rate}/${burst}`;
    let buckets = this.#limits.get(limit);
    if (buckets === undefined) this.#limits.set(limit, (buckets = new TokenBuckets(rate, burst)));
    return buckets.take(key);
  }

  close(): void {
    clearInterval(this.#sweep);
  }
}

/** Builds the result for `tokens` left after a check. */
export function bucketResult(allowed: boolean, tokens: number, rate: number, burst: number): BucketResult {
  return {
    allowed,
    remaining: Math.max(0, Math.floor(tokens)),
    retryAfter: tokens >= 1 ? 0 : Math.max(1, Math.ceil((1 - tokens) / rate)),
    reset: Math.max(0, Math.ceil((burst - tokens) / rate)),
  };
}

/**
 * The same bucket as one atomic Redis script, shared by every gateway. Time comes from the Redis
 * server (TIME), so gateways with skewed clocks agree. Returns `{allowed, tokens}`.
 */
export const REDIS_TOKEN_BUCKET = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return { allowed, tostring(tokens) }`;
