import { randomBytes } from 'node:crypto';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { InstanceSpec } from '../registry/registry.js';

/**
 * The registry's Redis key schema (documented in README, so any language can register):
 * - instance: `<prefix>svc:{<service>}:inst:<id>` = JSON `{ id, service, url, weight, metadata, zone, ttl, registeredAt }`,
 *   with `PX <ttl>` when the instance has a lease. The `{service}` hash tag keeps a service's keys in one Cluster slot.
 * - changes: PUBLISH on `<prefix>events` with JSON `{ op: "register" | "heartbeat" | "deregister", service, id, instance? }`.
 * A heartbeat is `PEXPIRE` of the instance key (only if it still exists) plus a `heartbeat` message.
 */
export function instanceKey(prefix: string, service: string, id: string): string {
  return `${prefix}svc:{${service}}:inst:${id}`;
}

/** The pub/sub channel of registry changes. */
export function eventsChannel(prefix: string): string {
  return `${prefix}events`;
}

/** The SCAN pattern that finds every instance key. */
export function instancePattern(prefix: string): string {
  return `${escapeGlob(prefix)}svc:*:inst:*`;
}

/** An instance as stored in Redis. */
export interface StoredInstance {
  id: string;
  service: string;
  url: string;
  weight?: number;
  metadata?: Record<string, unknown>;
  zone?: string;
  /** Lease in ms; absent for instances without one. */
  ttl?: number;
  registeredAt?: number;
  /** Which registration wrote the key (random): lets a registration that was reported failed be taken back. */
  nonce?: string;
}

/** A registry change message. */
export interface RegistryMessage {
  op: 'register' | 'heartbeat' | 'deregister';
  service: string;
  id: string;
  instance?: StoredInstance;
}

const REGISTER = `
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`;

// Renews a lease only while the key exists: a heartbeat never resurrects an expired instance.
const HEARTBEAT = `
local value = redis.call('GET', KEYS[1])
if not value then return -1 end
local lease = tonumber(cjson.decode(value).ttl or 0)
if lease > 0 then redis.call('PEXPIRE', KEYS[1], lease) end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return lease`;

// Takes back one registration, and only that one: a later registration of the same id stays.
const TAKE_BACK = `
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
if cjson.decode(value).nonce ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`;

const DEREGISTER = `
local removed = redis.call('DEL', KEYS[1])
if removed == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return removed`;

/** What to connect to: a URL, or Cluster nodes, plus ioredis options (Sentinel goes in `options`). */
export interface RedisConnection {
  url: string;
  cluster?: readonly string[];
  options?: Record<string, unknown>;
}

/**
 * Options that keep Redis off every request's critical path: no offline queue (a command while
 * disconnected fails at once), a command timeout, and reconnects with capped backoff.
 */
export const FAIL_FAST: RedisOptions = {
  enableOfflineQueue: false,
  commandTimeout: 1000,
  connectTimeout: 2000,
  maxRetriesPerRequest: 1,
  retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
};

/**
 * A Redis target as the CLI takes it (`--redis`, `--registry`): `redis://host:port` (or `rediss://`), a Sentinel
 * group `redis-sentinel://host:port,host:port/mastername`, or a Cluster
 * `redis-cluster://host:port,host:port`.
 */
export function parseRedisTarget(target: string): RedisConnection {
  const [, scheme, rest] = /^([a-z-]+):\/\/(.*)$/.exec(target) ?? [];
  if (scheme === 'redis' || scheme === 'rediss') return { url: target };
  const hosts = (list: string): { host: string; port: number }[] =>
    list.split(',').map((hp) => {
      const [host, port] = hp.split(':');
      if (!host || !port || !/^\d+$/.test(port)) throw new Error(`expected host:port in ${JSON.stringify(target)}, got ${JSON.stringify(hp)}`);
      return { host, port: Number(port) };
    });
  if (scheme === 'redis-sentinel' && rest !== undefined) {
    const slash = rest.indexOf('/');
    if (slash === -1) throw new Error(`expected redis-sentinel://host:port,.../MASTERNAME, got ${JSON.stringify(target)}`);
    return { url: 'redis://', options: { sentinels: hosts(rest.slice(0, slash)), name: rest.slice(slash + 1) } };
  }
  if (scheme === 'redis-cluster' && rest !== undefined) return { url: 'redis://', cluster: hosts(rest).map((h) => `redis://${h.host}:${h.port}`) };
  throw new Error(`expected redis://, rediss://, redis-sentinel:// or redis-cluster://, got ${JSON.stringify(target)}`);
}

/** Opens an ioredis client (standalone, Sentinel through options, or Cluster). */
export function connectRedis(conn: RedisConnection, extra: RedisOptions = {}): Redis | Cluster {
  const options = { ...FAIL_FAST, ...extra, ...(conn.options as RedisOptions | undefined) };
  if (conn.cluster && conn.cluster.length > 0) {
    return new Cluster(
      conn.cluster.map((u) => {
        const url = new URL(u);
        return { host: url.hostname, port: Number(url.port || 6379) };
      }),
      { redisOptions: options, enableOfflineQueue: options.enableOfflineQueue, lazyConnect: options.lazyConnect },
    );
  }
  return new Redis(conn.url, options);
}

/** Registry operations on Redis, shared by the discovery plugin and the registration client. */
export class RedisRegistryStore {
  readonly client: Redis | Cluster;
  readonly prefix: string;

  constructor(client: Redis | Cluster, prefix: string) {
    this.client = client;
    this.prefix = prefix;
  }

  /**
   * Stores a registration. Rejects with the registration it tried (`err.stored`) when Redis did not
   * answer, so the caller can take it back with {@link takeBack}.
   */
  async register(service: string, spec: InstanceSpec & { id: string }): Promise<StoredInstance> {
    const stored: StoredInstance = {
      id: spec.id,
      service,
      url: spec.url,
      weight: spec.weight,
      metadata: spec.metadata,
      zone: spec.zone,
      ttl: spec.ttl,
      registeredAt: Date.now(),
      nonce: randomBytes(8).toString('hex'),
    };
    const message: RegistryMessage = { op: 'register', service, id: spec.id, instance: stored };
    try {
      await this.client.eval(REGISTER, 1, instanceKey(this.prefix, service, spec.id), JSON.stringify(stored), String(spec.ttl ?? 0), eventsChannel(this.prefix), JSON.stringify(message));
    } catch (err) {
      throw Object.assign(err as Error, { stored });
    }
    return stored;
  }

  /**
   * Takes back the registration `stored` (by its nonce): for a registration whose answer never
   * came, which the registry was told did not happen. Sent on the same connection, it runs after
   * the registration if Redis ever runs that, so the registration never takes effect.
   */
  async takeBack(stored: StoredInstance): Promise<boolean> {
    const message: RegistryMessage = { op: 'deregister', service: stored.service, id: stored.id };
    return Number(await this.client.eval(TAKE_BACK, 1, instanceKey(this.prefix, stored.service, stored.id), stored.nonce ?? '', eventsChannel(this.prefix), JSON.stringify(message))) === 1;
  }

  /** Renews a lease; resolves to the lease in ms (0 for none), or -1 when the instance is gone. */
  async heartbeat(service: string, id: string): Promise<number> {
    const message: RegistryMessage = { op: 'heartbeat', service, id };
    return Number(await this.client.eval(HEARTBEAT, 1, instanceKey(this.prefix, service, id), eventsChannel(this.prefix), JSON.stringify(message)));
  }

  async deregister(service: string, id: string): Promise<boolean> {
    const message: RegistryMessage = { op: 'deregister', service, id };
    return Number(await this.client.eval(DEREGISTER, 1, instanceKey(this.prefix, service, id), eventsChannel(this.prefix), JSON.stringify(message))) === 1;
  }

  /** Remaining lease of an instance's key in ms: -1 for a key without expiry, -2 when it is gone. */
  async pttl(service: string, id: string): Promise<number> {
    return this.client.pttl(instanceKey(this.prefix, service, id));
  }

  /**
   * Every stored instance with its remaining lease (`pttl`, -1 for none), read with SCAN (never
   * KEYS, which blocks Redis) in pages, each page fetched in one pipeline.
   */
  async scan(): Promise<{ instance: StoredInstance; pttl: number }[]> {
    const nodes = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    const found: { instance: StoredInstance; pttl: number }[] = [];
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', instancePattern(this.prefix), 'COUNT', 500);
        cursor = next;
        if (keys.length === 0) continue;
        const pipeline = node.pipeline();
        for (const key of keys) pipeline.get(key).pttl(key);
        const results = (await pipeline.exec()) ?? [];
        for (let i = 0; i < keys.length; i++) {
          const [getErr, value] = results[i * 2] ?? [];
          const [, pttl] = results[i * 2 + 1] ?? [];
          if (getErr || typeof value !== 'string') continue; // expired between SCAN and GET
          try {
            found.push({ instance: JSON.parse(value) as StoredInstance, pttl: Number(pttl) });
          } catch {
            // not ours or corrupted: skipping it is better than failing the whole sync
          }
        }
      } while (cursor !== '0');
    }
    return found;
  }
}

function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}
