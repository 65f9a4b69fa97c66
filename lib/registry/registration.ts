import { defaultInstanceId } from './registry.js';
import { parseDuration } from '../config/duration.js';
import { MeshError } from '../errors.js';

/** Options of {@link registerInstance}. */
export interface RegisterOptions {
  /** The admin API's base URL (`http://127.0.0.1:9901`), or the fleet's Redis (`redis://127.0.0.1:6379`). */
  registry: string;
  /** Key prefix, with a `redis://` registry. @default 'meshgate:' */
  prefix?: string;
  service: string;
  /** This instance's URL, as the gateway should reach it. */
  url: string;
  /** Lease length: heartbeats go every ttl/3; without them the instance leaves after ttl. @default '10s' */
  ttl?: string | number;
  /** Admin token. @default process.env.MESHGATE_ADMIN_TOKEN */
  token?: string;
  id?: string;
  weight?: number;
  zone?: string;
  metadata?: Record<string, unknown>;
  /** Keep the process alive while registered (the sidecar CLI does; a service has its own server). @default false */
  ref?: boolean;
  /**
   * Told about every failed registration attempt, heartbeat or re-registration; the client keeps
   * trying. For a first registration that will be tried again, `retryInMs` says when.
   */
  onError?: (err: Error, retryInMs?: number) => void;
  /** Stops a first registration that is still being tried (the registry is not up yet): the promise then rejects. */
  signal?: AbortSignal;
  /** Told when the instance had to be registered again (its lease was gone). */
  onReregister?: (id: string) => void;
}

/** A live registration: renews its lease until {@link close}. */
export interface Registration {
  /** The id the registry gave the instance. */
  readonly id: string;
  /** Stops heartbeats and deregisters (a 404 is fine: the lease may have run out). Idempotent. */
  close(): Promise<void>;
}

/**
 * Registers an instance and keeps its lease: heartbeats every ttl/3, registers again when a
 * heartbeat finds the instance gone (the lease expired, or Redis restarted empty), and deregisters
 * on close. If the process dies, the lease simply runs out. The registry is a gateway's admin API
 * (`http(s)://`) or the fleet's Redis (`redis://`, with the key schema in README).
 * @example
 * const reg = await registerInstance({ registry: 'http://127.0.0.1:9901', service: 'api', url: 'http://10.0.0.7:3000', ttl: '5s' });
 * process.on('SIGTERM', () => reg.close());
 */
export async function registerInstance(options: RegisterOptions): Promise<Registration> {
  const ttl = parseDuration(options.ttl ?? '10s');
  if (ttl === undefined || ttl < 100) throw new MeshError('MESH_ERR_BAD_OPTION', 400, `ttl: expected a duration of at least 100ms, got ${JSON.stringify(options.ttl)}`);
  const client = /^redis(s|-sentinel|-cluster)?:\/\//.test(options.registry) ? await redisClient(options, ttl) : await httpClient(options, ttl);

  let id: string;
  try {
    id = await firstRegistration(client, ttl, options);
  } catch (err) {
    await client.close();
    throw err;
  }
  let closed = false;
  let timer: NodeJS.Timeout | null = null;
  let beating: Promise<void> = Promise.resolve();

  const beat = async (): Promise<void> => {
    try {
      if (!(await client.heartbeat(id)) && !closed) {
        id = await client.register();
        options.onReregister?.(id);
      }
    } catch (err) {
      options.onError?.(err as Error);
    }
  };
  const schedule = (): void => {
    if (closed) return;
    timer = setTimeout(() => {
      beating = beat().finally(schedule);
    }, ttl / 3);
    if (!options.ref) timer.unref();
  };
  schedule();

  let closing: Promise<void> | null = null;
  return {
    get id() {
      return id;
    },
    close: () =>
      (closing ??= (async () => {
        closed = true;
        if (timer) clearTimeout(timer);
        // Bounded: a registry that cannot be reached must not keep a stopping service alive
        // (its lease runs out anyway).
        try {
          await withDeadline(
            (async () => {
              await beating;
              await client.deregister(id);
            })(),
            CLOSE_DEADLINE_MS,
          );
        } catch (err) {
          options.onError?.(err as Error);
        } finally {
          await client.close();
        }
      })()),
  };
}

/** How long {@link Registration.close} tries to deregister before it gives up. */
const CLOSE_DEADLINE_MS = 2000;

function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the registry did not answer within ${ms} ms; the lease will run out`)), ms);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

/**
 * The first registration, tried until it succeeds while the failure is one that passes (the
 * registry not up yet: refused, timed out, 5xx, 429), with capped exponential backoff and jitter,
 * so a sidecar may start before its gateway. A refusal that will not pass (a wrong token, a bad
 * URL: other 4xx) fails at once.
 */
async function firstRegistration(client: RegistryClient, ttl: number, options: RegisterOptions): Promise<string> {
  const cap = Math.max(1000, Math.min(5000, ttl / 3));
  for (let attempt = 0; ; attempt++) {
    options.signal?.throwIfAborted();
    try {
      return await client.register();
    } catch (err) {
      if (!passing(err)) throw err;
      const delay = Math.round(Math.min(cap, 100 * 2 ** attempt) * (0.5 + Math.random() / 2));
      options.onError?.(err as Error, delay);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, delay);
        if (!options.ref) timer.unref();
        options.signal?.addEventListener('abort', () => {
          clearTimeout(timer);
          reject(options.signal!.reason);
        }, { once: true });
      });
    }
  }
}

/** A registration failure that may pass by itself: the registry unreachable, overloaded or failing. */
function passing(err: unknown): boolean {
  if (err instanceof MeshError) return err.status >= 500 || err.status === 429;
  return true; // a network error (ECONNREFUSED, a connect timeout, a reset) or Redis not connected yet
}

/** The three calls a registration needs, over one transport. */
interface RegistryClient {
  register(): Promise<string>;
  /** Resolves false when the registry no longer knows the instance. */
  heartbeat(id: string): Promise<boolean>;
  deregister(id: string): Promise<void>;
  close(): Promise<void>;
}

async function httpClient(options: RegisterOptions, ttl: number): Promise<RegistryClient> {
  // Loaded on use: undici's index is all of undici (fetch, WebSocket, caches), which a gateway
  // that never registers itself should not carry (its proxy loads only undici's Pool).
  const { Agent, request } = await import('undici');
  const base = options.registry.replace(/\/+$/, '');
  const token = options.token ?? process.env.MESHGATE_ADMIN_TOKEN;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const timeout = Math.max(1000, Math.floor(ttl / 3));
  const dispatcher = new Agent({ keepAliveTimeout: Math.min(4000, ttl), connect: { timeout } });
  const service = encodeURIComponent(options.service);
  const body = JSON.stringify({ url: options.url, ttl, id: options.id, weight: options.weight, zone: options.zone, metadata: options.metadata });
  const call = async (method: 'POST' | 'PUT' | 'DELETE', path: string, payload?: string) => {
    const res = await request(`${base}${path}`, { method, headers, body: payload, dispatcher, headersTimeout: timeout, bodyTimeout: timeout });
    const text = await res.body.text();
    return { status: res.statusCode, text };
  };
  return {
    async register() {
      const res = await call('POST', `/services/${service}/instances`, body);
      if (res.status !== 201) throw new MeshError('MESH_ERR_REGISTRATION', res.status, `registration of ${options.url} in "${options.service}" failed: ${res.status} ${res.text}`);
      return String((JSON.parse(res.text) as { id: unknown }).id);
    },
    async heartbeat(id) {
      const res = await call('PUT', `/services/${service}/instances/${encodeURIComponent(id)}/heartbeat`);
      if (res.status === 404) return false;
      if (res.status >= 400) throw new MeshError('MESH_ERR_HEARTBEAT', res.status, `heartbeat for ${id} failed: ${res.status} ${res.text}`);
      return true;
    },
    async deregister(id) {
      const res = await call('DELETE', `/services/${service}/instances/${encodeURIComponent(id)}`);
      if (res.status !== 204 && res.status !== 404) throw new MeshError('MESH_ERR_REGISTRATION', res.status, `deregistration failed: ${res.status} ${res.text}`);
    },
    close: () => dispatcher.close(),
  };
}

async function redisClient(options: RegisterOptions, ttl: number): Promise<RegistryClient> {
  // Loaded on use: a service that registers over HTTP never loads ioredis.
  const { RedisRegistryStore, connectRedis, parseRedisTarget } = await import('../redis/store.js');
  // Reconnect at least once a heartbeat, so a restarted Redis sees us again within two heartbeats.
  const redis = connectRedis(
    parseRedisTarget(options.registry),
    { lazyConnect: false, enableOfflineQueue: true, maxRetriesPerRequest: 0, retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), ttl / 3) },
  );
  // Reconnects are ioredis's job; failures surface through the calls below.
  redis.on('error', () => {});
  const store = new RedisRegistryStore(redis, options.prefix ?? 'meshgate:');
  const id = options.id ?? defaultInstanceId(new URL(options.url));
  return {
    async register() {
      await store.register(options.service, { id, url: options.url, ttl, weight: options.weight, zone: options.zone, metadata: options.metadata });
      return id;
    },
    async heartbeat(current) {
      return (await store.heartbeat(options.service, current)) >= 0;
    },
    async deregister(current) {
      await store.deregister(options.service, current);
    },
    async close() {
      redis.disconnect();
    },
  };
}
