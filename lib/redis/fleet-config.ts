import type { Cluster, Redis } from 'ioredis';
import { MeshError } from '../errors.js';

/**
 * The fleet's config in Redis (documented in README). Every key carries the `{config}` hash tag,
 * so the script that touches several of them runs on one Redis Cluster slot:
 * - `<prefix>{config}:versions`: hash, version -> JSON `{ document, storedAt, origin }` (the fleet
 *   part of a config: no `listen`, `admin`, `discovery`, `workers`);
 * - `<prefix>{config}:history`: list of versions, newest first, at most `keep` long;
 * - `<prefix>{config}:current`: the version the fleet runs;
 * - `<prefix>{config}:gateways`: hash, gateway id -> JSON {@link GatewayConfigStatus};
 * - PUBLISH on `<prefix>config` with the new current version.
 */
export function fleetConfigKeys(prefix: string): { versions: string; history: string; current: string; gateways: string; channel: string } {
  return {
    versions: `${prefix}{config}:versions`,
    history: `${prefix}{config}:history`,
    current: `${prefix}{config}:current`,
    gateways: `${prefix}{config}:gateways`,
    channel: `${prefix}config`,
  };
}

/** A stored fleet config version. */
export interface StoredConfig {
  version: string;
  document: Record<string, unknown>;
  /** Epoch ms. */
  storedAt: number;
  /** Who stored it: `apply`, `admin`, `shift`, `rollback`. */
  origin: string;
}

/** What a gateway reports about the fleet config it runs. */
export interface GatewayConfigStatus {
  id: string;
  /** The version it runs (the fleet's, or its local file's). */
  version: string;
  /** Where its config came from: `fleet`, `file`, `cache`. */
  source: string;
  /** Epoch ms when it applied that version. */
  appliedAt: number;
  /** The last fleet version it refused, and why. */
  refused?: { version: string; error: string };
  /** Epoch ms of its last report (every few seconds while it runs). */
  seenAt: number;
  host: string;
  pid: number;
  url?: string;
  admin?: string;
  ready: boolean;
  /** Healthy instances (not unhealthy, circuit not open) and all instances it routes to. */
  instances: { healthy: number; total: number };
}

// Stores a version and makes it current, in one step: the history keeps `keep` versions and their
// documents. With an expected current version (ARGV[5]), nothing happens unless it is still current
// (a fleet with no version yet has nothing to conflict with: the first gateway's own is expected).
const PUBLISH = `
local current = redis.call('GET', KEYS[3])
if ARGV[5] ~= '' and current and current ~= ARGV[5] then return {err = 'CONFLICT'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
local dropped = redis.call('LRANGE', KEYS[2], tonumber(ARGV[3]), -1)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
for _, v in ipairs(dropped) do
  if v ~= ARGV[1] then redis.call('HDEL', KEYS[1], v) end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return current`;

/** The fleet config's store: what `meshgate apply`, `rollback`, `shift`, `status` and every gateway read and write. */
export class FleetConfigStore {
  readonly client: Redis | Cluster;
  readonly keys: ReturnType<typeof fleetConfigKeys>;
  /** How many versions the history keeps (for `meshgate rollback`). */
  readonly keep: number;

  constructor(client: Redis | Cluster, prefix: string, keep = 10) {
    this.client = client;
    this.keys = fleetConfigKeys(prefix);
    this.keep = keep;
  }

  /**
   * Stores `document` as version `version` and makes it the fleet's; every gateway hears of it.
   * With `expected`, only if the fleet's current version is still that one: otherwise it rejects
   * with `MESH_ERR_CONFIG_CONFLICT` (409). Resolves with the version it replaced.
   */
  async publish(version: string, document: Record<string, unknown>, origin: string, expected = ''): Promise<string | null> {
    const stored = JSON.stringify({ document, storedAt: Date.now(), origin });
    const k = this.keys;
    try {
      return (await this.client.eval(PUBLISH, 3, k.versions, k.history, k.current, version, stored, String(this.keep), k.channel, expected)) as string | null;
    } catch (err) {
      if ((err as Error).message.includes('CONFLICT')) throw new MeshError('MESH_ERR_CONFIG_CONFLICT', 409, `the fleet's config is no longer version ${expected}`);
      throw err;
    }
  }

  /** The fleet's current version, or null when none was ever applied. */
  async current(): Promise<StoredConfig | null> {
    const version = await this.client.get(this.keys.current);
    return version === null ? null : this.get(version);
  }

  async get(version: string): Promise<StoredConfig | null> {
    const text = await this.client.hget(this.keys.versions, version);
    if (text === null) return null;
    const parsed = JSON.parse(text) as Omit<StoredConfig, 'version'>;
    return { version, ...parsed };
  }

  /** The stored versions, newest first. */
  async history(): Promise<StoredConfig[]> {
    const versions = await this.client.lrange(this.keys.history, 0, -1);
    const out: StoredConfig[] = [];
    for (const version of versions) {
      const stored = await this.get(version);
      if (stored !== null) out.push(stored);
    }
    return out;
  }

  async report(status: GatewayConfigStatus): Promise<void> {
    await this.client.hset(this.keys.gateways, status.id, JSON.stringify(status));
  }

  async forget(id: string): Promise<void> {
    await this.client.hdel(this.keys.gateways, id);
  }

  /** What every gateway reported, by id. */
  async gateways(): Promise<GatewayConfigStatus[]> {
    const all = await this.client.hgetall(this.keys.gateways);
    return Object.values(all)
      .map((text) => JSON.parse(text) as GatewayConfigStatus)
      .sort((a, b) => a.id.localeCompare(b.id));
  }
}
