import { readFile, rename, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import type { Cluster, Redis } from 'ioredis';
import { configVersion, fleetPart, withLocalPart } from '../../lib/config/index.js';
import type { PluginHost } from '../../lib/index.js';
import { FleetConfigStore, type GatewayConfigStatus, type StoredConfig } from '../../lib/redis/index.js';

/** How often a gateway tells the fleet it is alive and which version it runs. */
export const REPORT_INTERVAL_MS = 5000;

/** What {@link followFleetConfig} needs. */
export interface FleetFollowerParts {
  gateway: PluginHost;
  client: Redis | Cluster;
  prefix: string;
  /** Absolute path of the cache file, or null for none. */
  cacheFile: string | null;
  keep: number;
  log: PluginHost['log'];
}

/**
 * A gateway following its fleet's config in Redis: it applies the current version at start
 * (before it listens) and each one published later, validating each itself; it reports what it
 * runs (or why it refused a version) in the fleet's gateways hash; it caches the last applied
 * version on disk, to start from when Redis is down, and converges when Redis is back. Its own
 * `listen`, `admin`, `discovery` and `workers` always come from its local file.
 */
export class FleetFollower {
  readonly store: FleetConfigStore;
  readonly #parts: FleetFollowerParts;
  /** The local file's document: its local part is kept under every fleet config. */
  readonly #local: unknown;
  #source: 'file' | 'fleet' | 'cache' = 'file';
  #appliedAt = Date.now();
  #refused: { version: string; error: string } | undefined;
  #syncing: Promise<void> | null = null;
  #again = false;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  /** The version the cache file holds, once this gateway wrote it. */
  #cachedVersion: string | null = null;

  constructor(parts: FleetFollowerParts) {
    this.#parts = parts;
    this.store = new FleetConfigStore(parts.client, parts.prefix, parts.keep);
    this.#local = parts.gateway.document;
  }

  /** The config channel to subscribe to. */
  get channel(): string {
    return this.store.keys.channel;
  }

  /**
   * At start, in the plugin's setup: the fleet's current version when Redis answers (applied as
   * soon as the gateway is ready, before it listens), else the cached one, else the local file.
   */
  async start(connected: boolean): Promise<void> {
    const { gateway, log, cacheFile } = this.#parts;
    if (connected) {
      try {
        const stored = await this.store.current();
        if (stored !== null && stored.version !== gateway.snapshot.version) {
          void this.#apply(stored, 'fleet');
          return;
        }
        if (stored === null) log.info('no fleet config in Redis yet: serving the local file');
        else {
          // `meshgate start` began from it: the cache must hold it too, for a start while Redis is down.
          this.#source = 'fleet';
          await this.#cache(stored);
        }
        // The fleet knows this gateway from now on (`meshgate status`, `meshgate apply` waits for it).
        await this.report();
        return;
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'cannot read the fleet config from Redis at start');
      }
    }
    const cached = cacheFile === null ? null : await readCache(cacheFile);
    if (cached !== null && cached.version === gateway.snapshot.version) {
      // `meshgate start` already started from it.
      this.#source = 'cache';
      log.warn({ version: cached.version, cache: cacheFile }, `Redis unavailable at start: serving the fleet config cached in ${cacheFile} (version ${cached.version}); will converge when Redis is back`);
    } else if (cached !== null) {
      log.warn({ version: cached.version, cache: cacheFile }, `Redis unavailable at start: serving the fleet config cached in ${cacheFile} (version ${cached.version}); will converge when Redis is back`);
      void this.#apply(cached, 'cache');
    } else {
      log.warn(`Redis unavailable at start and no cached fleet config: serving the local file (version ${gateway.snapshot.version}); will converge when Redis is back`);
    }
  }

  /** Reads the fleet's current version and applies it if this gateway runs another; on connect, on every publish, at every report. */
  sync(): Promise<void> {
    if (this.#syncing !== null) {
      this.#again = true;
      return this.#syncing;
    }
    this.#syncing = (async () => {
      try {
        do {
          this.#again = false;
          const stored = await this.store.current();
          if (stored === null || this.#closed) continue;
          if (stored.version === this.#parts.gateway.snapshot.version) {
            this.#source = 'fleet';
            await this.#cache(stored);
          } else if (stored.version !== this.#refused?.version) await this.#apply(stored, 'fleet');
        } while (this.#again && !this.#closed);
        await this.report();
      } catch (err) {
        this.#parts.log.debug({ err: (err as Error).message }, 'fleet config sync failed; will retry');
      } finally {
        this.#syncing = null;
        // A publish that came while this one was reporting: its turn now, not at the next report.
        if (this.#again && !this.#closed) void this.sync();
      }
    })();
    return this.#syncing;
  }

  async #apply(stored: StoredConfig, source: 'fleet' | 'cache'): Promise<void> {
    const { gateway, log, cacheFile } = this.#parts;
    try {
      await gateway.reload(withLocalPart(stored.document, this.#local), { origin: source });
      this.#source = source;
      this.#appliedAt = Date.now();
      this.#refused = undefined;
      if (source === 'fleet') await this.#cache(stored);
    } catch (err) {
      // The gateway logged every bad path; the fleet hears why too.
      this.#refused = { version: stored.version, error: (err as Error).message };
    }
    await this.report().catch(() => {});
  }

  /** Keeps `stored` in the cache file, once per version. */
  async #cache(stored: StoredConfig): Promise<void> {
    const { cacheFile, log } = this.#parts;
    if (cacheFile === null || this.#cachedVersion === stored.version) return;
    try {
      await writeCache(cacheFile, stored);
      this.#cachedVersion = stored.version;
    } catch (err) {
      log.warn({ err: (err as Error).message }, `cannot write the fleet config cache ${cacheFile}`);
    }
  }

  /** Stores a validated document as the fleet's new version (`PUT /config`, in a fleet). */
  async publish(document: unknown, origin: string, ifMatch?: string): Promise<string> {
    const version = configVersion(document);
    await this.store.publish(version, fleetPart(document), origin, ifMatch);
    return version;
  }

  /** Tells the fleet which version this gateway runs, and how it is. */
  async report(): Promise<void> {
    const { gateway } = this.#parts;
    let healthy = 0;
    let total = 0;
    for (const service of gateway.registry.services()) {
      for (const inst of service.instances.values()) {
        total++;
        if (inst.health === 'healthy' && inst.circuit !== 'open') healthy++;
      }
    }
    const address = gateway.server?.address() as AddressInfo | null | undefined;
    const status: GatewayConfigStatus = {
      id: gateway.name,
      version: gateway.snapshot.version,
      source: this.#source,
      appliedAt: this.#appliedAt,
      ...(this.#refused === undefined ? {} : { refused: this.#refused }),
      seenAt: Date.now(),
      host: hostname(),
      pid: process.pid,
      ...(address ? { url: `${gateway.config.listen.tls ? 'https' : 'http'}://${hostname()}:${address.port}` } : {}),
      ready: gateway.isReady,
      instances: { healthy, total },
    };
    await this.store.report(status);
  }

  /** Reports every {@link REPORT_INTERVAL_MS}, and syncs then too (a missed publish is caught within one period). */
  startReporting(): void {
    this.#timer = setInterval(() => void this.sync(), REPORT_INTERVAL_MS);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    await this.#syncing?.catch(() => {});
    await this.store.forget(this.#parts.gateway.name).catch(() => {});
  }
}

async function readCache(file: string): Promise<StoredConfig | null> {
  try {
    const cached = JSON.parse(await readFile(file, 'utf8')) as StoredConfig;
    return typeof cached.version === 'string' && cached.document !== null && typeof cached.document === 'object' ? cached : null;
  } catch {
    return null;
  }
}

/** Written whole to a temporary file, then renamed: a crash mid-write never leaves half a cache. */
async function writeCache(file: string, stored: StoredConfig): Promise<void> {
  const temporary = `${file}.${process.pid}.tmp`;
  // It may hold secrets (API keys, JWT secrets): for the gateway's user only.
  await writeFile(temporary, JSON.stringify(stored), { mode: 0o600 });
  await rename(temporary, file);
}
