import type { Cluster, Redis } from 'ioredis';
import { MeshError, UnknownInstanceError, definePlugin, defaultInstanceId, type GatewayPlugin, type InstanceSpec, type Registrar, type RegistrationResult } from '../../lib/index.js';
import { RedisRegistryStore, connectRedis, eventsChannel, type RedisConnection, type RegistryMessage, type StoredInstance } from '../../lib/redis/index.js';
import { redisDiscoverySections, type RedisDiscoveryConfig } from './config.js';
import { FleetFollower } from './fleet.js';

export { redisDiscoverySchema, type RedisDiscoveryConfig } from './config.js';

/** Options of {@link redisDiscovery}; by default the config's `discovery.redis`. */
export interface RedisDiscoveryOptions extends RedisConnection {
  /** Key prefix. @default 'meshgate:' */
  prefix?: string;
  /** Full re-read of the registry, besides the one after every (re)connect, ms. @default 5000 */
  resyncInterval?: number;
  /** The last applied fleet config, for a start while Redis is down (relative to the config file); false for none. @default '.meshgate-fleet-cache.json' */
  configCache?: string | false;
  /** Fleet config versions kept in Redis for rollback. @default 10 */
  configHistory?: number;
}

/** The registry (Redis) cannot take writes right now (503). */
export class RegistryUnavailableError extends MeshError {
  constructor(cause?: unknown) {
    super('MESH_ERR_REGISTRY_UNAVAILABLE', 503, 'the registry (Redis) is unavailable; the gateway keeps routing with its last view', { cause });
  }
}

const SOURCE = 'redis';

/**
 * A fleet-wide registry on Redis. Registrations through any gateway's admin API (or the
 * registration client, or plain Redis commands) are stored with a TTL lease; every gateway applies
 * changes pushed over pub/sub within a moment, and re-reads everything with SCAN after each
 * (re)connect and every `resyncInterval`, because pub/sub drops what is sent while a connection is
 * down. Redis is never on the request path: routing reads the in-memory view. While Redis is
 * down, gateways keep serving their last view (leases of Redis instances are held, not expired),
 * admin writes answer 503, and reconnects use capped backoff; on return they resync and every held
 * instance gets one fresh TTL to heartbeat again.
 */
export function redisDiscovery(given?: RedisDiscoveryOptions): GatewayPlugin<RedisDiscoveryConfig, unknown, unknown> {
  return definePlugin({
    name: 'redis-discovery',
    config: redisDiscoverySections,
    async setup(gateway, scope) {
      const options: RedisDiscoveryOptions | undefined = given ?? scope.global();
      if (options === undefined) throw new MeshError('MESH_ERR_CONFIG', 500, 'redis-discovery needs discovery.redis in the config, or its options');
      const prefix = options.prefix ?? 'meshgate:';
      const resyncInterval = options.resyncInterval ?? 5000;
      const log = gateway.log.child({ plugin: 'redis-discovery' });
      const client = connectRedis(options, { lazyConnect: true });
      const subscriber = connectRedis(options, { lazyConnect: true });
      const store = new RedisRegistryStore(client, prefix);
      let closed = false;
      let down = true;
      let syncing: Promise<void> | null = null;

      const apply = (stored: StoredInstance, pttl?: number): void => {
        const service = gateway.registry.getService(stored.service);
        if (!service) return; // a service this gateway does not route
        const spec: InstanceSpec = { id: stored.id, url: stored.url, weight: stored.weight, metadata: stored.metadata, zone: stored.zone, ttl: stored.ttl, source: SOURCE };
        // The lease's last renewal: from the key's remaining TTL on a scan, "now" for a fresh registration.
        const renewed = stored.ttl !== undefined && pttl !== undefined && pttl > 0 ? Date.now() - (stored.ttl - pttl) : Date.now();
        const existing = service.instances.get(stored.id);
        if (existing && existing.url === stored.url && existing.weight === (stored.weight ?? 1) && existing.ttl === stored.ttl) {
          if (stored.ttl !== undefined) existing.lastHeartbeat = Math.max(existing.lastHeartbeat ?? 0, renewed);
          return;
        }
        try {
          const inst = gateway.registry.upsertInstance(stored.service, spec);
          if (stored.ttl !== undefined) inst.lastHeartbeat = renewed;
        } catch (err) {
          log.warn({ err, id: stored.id }, 'ignoring a malformed instance in Redis');
        }
      };

      const resync = (): Promise<void> =>
        (syncing ??= (async () => {
          try {
            const found = await store.scan();
            const seen = new Set<string>();
            for (const { instance, pttl } of found) {
              seen.add(`${instance.service}\u0000${instance.id}`);
              apply(instance, pttl);
            }
            for (const service of gateway.registry.services()) {
              for (const inst of [...service.instances.values()]) {
                // Leased instances missing from Redis leave through their lease (Redis may have
                // restarted empty, and their owners will register again); others leave now.
                if (inst.source === SOURCE && inst.ttl === undefined && !seen.has(`${service.name}\u0000${inst.id}`)) {
                  gateway.registry.removeInstance(service.name, inst.id, 'discovery');
                }
              }
            }
            gateway.leases.release(SOURCE);
          } catch (err) {
            log.warn({ err: (err as Error).message }, 'registry resync failed; keeping the last view');
          } finally {
            syncing = null;
          }
        })());

      const cache = options.configCache ?? '.meshgate-fleet-cache.json';
      const fleet = new FleetFollower({ gateway, client, prefix, cacheFile: cache === false ? null : gateway.resolvePath(cache), keep: options.configHistory ?? 10, log });
      // PUT /config on any gateway stores the fleet's new version here.
      gateway.decorate('fleetConfig', { publish: (document: unknown, origin: string, ifMatch?: string) => fleet.publish(document, origin, ifMatch) });

      subscriber.on('message', (channel: string, text: string) => {
        if (closed) return;
        if (channel === fleet.channel) {
          void fleet.sync();
          return;
        }
        let message: RegistryMessage;
        try {
          message = JSON.parse(text) as RegistryMessage;
        } catch {
          return; // not a registry message
        }
        if (message.op === 'register' && message.instance) apply(message.instance);
        else if (message.op === 'deregister') gateway.registry.removeInstance(message.service, message.id, 'deregistered');
        else if (message.op === 'heartbeat') {
          const inst = gateway.registry.getInstance(message.service, message.id);
          if (inst) inst.lastHeartbeat = Date.now();
        }
      });

      const onDown = (): void => {
        if (down || closed) return;
        down = true;
        gateway.leases.hold(SOURCE);
        log.warn('Redis connection lost: serving from the last view, admin writes answer 503');
      };
      for (const c of [client, subscriber] as (Redis | Cluster)[]) {
        c.on('error', (err: Error) => log.debug({ err: err.message }, 'redis error'));
        c.on('close', onDown);
        c.on('end', onDown);
      }
      // Subscribe on every ready, the first included: a subscriber that could not connect at boot
      // has nothing for ioredis to re-subscribe later. SUBSCRIBE twice to a channel is harmless.
      subscriber.on('ready', () => {
        if (!closed) subscriber.subscribe(eventsChannel(prefix), fleet.channel).catch((err: Error) => log.debug({ err: err.message }, 'subscribe failed'));
      });
      client.on('ready', () => {
        if (closed) return;
        if (down) log.info('Redis connected: resyncing the registry and the fleet config');
        const reconnect = !down || started;
        down = false;
        void resync();
        // After the start, a (re)connect may find a fleet config published while this gateway could not hear it.
        if (reconnect) void fleet.sync();
      });
      let started = false;

      // Before an instance expires here, ask Redis: a service may renew with a plain PEXPIRE
      // and no message. While Redis is down the verifier throws and the instance stays.
      gateway.leases.verifyWith(SOURCE, async (inst) => {
        if (down) throw new RegistryUnavailableError();
        const pttl = await store.pttl(inst.service, inst.id);
        return pttl === -1 ? Number.MAX_SAFE_INTEGER : pttl;
      });
      gateway.leases.hold(SOURCE);
      try {
        await Promise.all([client.connect(), subscriber.connect()]);
        await resync();
      } catch (err) {
        // A gateway must boot without Redis and catch up when it comes: routing does not need it.
        log.warn({ err: (err as Error).message }, 'Redis unavailable at start; will keep retrying');
      }
      await fleet.start(client.status === 'ready');
      started = true;
      fleet.startReporting();
      // A reload may add services whose instances Redis already holds.
      gateway.onConfig(() => void resync());

      const timer = setInterval(() => {
        if (!down) void resync();
      }, resyncInterval);
      timer.unref();

      const registrar: Registrar = {
        async register(service, spec): Promise<RegistrationResult> {
          gateway.registry.requireService(service);
          const id = spec.id ?? defaultInstanceId(new URL(spec.url));
          let stored: StoredInstance;
          try {
            stored = await guard(() => store.register(service, { ...spec, id }));
          } catch (err) {
            // No answer (Redis paused, or gone mid-command): the caller hears "not registered", so
            // make it true. The take-back goes on the same connection, after the registration, and
            // is kept for the next connection if this one is lost.
            const tried = ((err as MeshError).cause as { stored?: StoredInstance } | undefined)?.stored;
            if (tried !== undefined) takeBack(tried);
            throw err;
          }
          apply(stored);
          return { id, ttl: stored.ttl };
        },
        async heartbeat(service, id): Promise<RegistrationResult> {
          gateway.registry.requireService(service);
          const lease = await guard(() => store.heartbeat(service, id));
          if (lease < 0) throw new UnknownInstanceError(service, id);
          const inst = gateway.registry.getInstance(service, id);
          if (inst) inst.lastHeartbeat = Date.now();
          return { id, ttl: lease > 0 ? lease : undefined };
        },
        async deregister(service, id): Promise<boolean> {
          gateway.registry.requireService(service);
          const removed = await guard(() => store.deregister(service, id));
          const local = gateway.registry.removeInstance(service, id, 'deregistered') !== undefined;
          return removed || local;
        },
      };
      /** Registrations reported as failed that may still be in Redis: taken back now, or when Redis is back. */
      const pendingTakeBacks = new Set<StoredInstance>();
      const takeBack = (stored: StoredInstance): void => {
        pendingTakeBacks.add(stored);
        store.takeBack(stored).then(
          () => pendingTakeBacks.delete(stored),
          (err: Error) => log.debug({ err: err.message, id: stored.id }, 'take-back deferred until Redis is back'),
        );
      };
      client.on('ready', () => {
        for (const stored of [...pendingTakeBacks]) takeBack(stored);
      });
      const guard = async <T>(op: () => Promise<T>): Promise<T> => {
        if (down) throw new RegistryUnavailableError();
        try {
          return await op();
        } catch (err) {
          if (err instanceof MeshError) throw err;
          throw new RegistryUnavailableError(err);
        }
      };
      gateway.registrar = registrar;

      gateway.onClose(async () => {
        closed = true;
        clearInterval(timer);
        await fleet.close();
        await Promise.allSettled([syncing]);
        subscriber.disconnect();
        client.disconnect();
      });
    },
  });
}
