import { Agent, request } from 'undici';
import { parseDuration } from './config/duration.js';
import { MeshError } from './errors.js';

/** Options of {@link registerInstance}. */
export interface RegisterOptions {
  /** The admin API's base URL, as `http://127.0.0.1:9901`. */
  registry: string;
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
  /** Told about every failed heartbeat or re-registration; the client keeps trying. */
  onError?: (err: Error) => void;
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
 * Registers an instance with a gateway's admin API and keeps its lease: heartbeats every ttl/3,
 * registers again when a heartbeat answers 404 (the lease expired or the registry restarted),
 * and deregisters on close. If the process dies, the lease simply runs out.
 * @example
 * const reg = await registerInstance({ registry: 'http://127.0.0.1:9901', service: 'api', url: 'http://10.0.0.7:3000', ttl: '5s' });
 * process.on('SIGTERM', () => reg.close());
 */
export async function registerInstance(options: RegisterOptions): Promise<Registration> {
  const ttl = parseDuration(options.ttl ?? '10s');
  if (ttl === undefined || ttl < 100) throw new MeshError('MESH_ERR_BAD_OPTION', 400, `ttl: expected a duration of at least 100ms, got ${JSON.stringify(options.ttl)}`);
  const base = options.registry.replace(/\/+$/, '');
  const token = options.token ?? process.env.MESHGATE_ADMIN_TOKEN;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const dispatcher = new Agent({ keepAliveTimeout: Math.min(4000, ttl), connect: { timeout: Math.max(1000, Math.min(ttl / 3, 5000)) } });
  const service = encodeURIComponent(options.service);
  const body = JSON.stringify({ url: options.url, ttl, id: options.id, weight: options.weight, zone: options.zone, metadata: options.metadata });
  const timeout = Math.max(1000, Math.floor(ttl / 3));

  const call = async (method: 'POST' | 'PUT' | 'DELETE', path: string, payload?: string) => {
    const res = await request(`${base}${path}`, { method, headers, body: payload, dispatcher, headersTimeout: timeout, bodyTimeout: timeout });
    const text = await res.body.text();
    return { status: res.statusCode, json: () => (text ? JSON.parse(text) : {}) as Record<string, unknown>, text };
  };

  const register = async (): Promise<string> => {
    const res = await call('POST', `/services/${service}/instances`, body);
    if (res.status !== 201) throw new MeshError('MESH_ERR_REGISTRATION', res.status, `registration of ${options.url} in "${options.service}" failed: ${res.status} ${res.text}`);
    return String(res.json().id);
  };

  let id = await register().catch(async (err) => {
    await dispatcher.close();
    throw err;
  });
  let closed = false;
  let timer: NodeJS.Timeout | null = null;
  let beating: Promise<void> = Promise.resolve();

  const beat = async (): Promise<void> => {
    try {
      const res = await call('PUT', `/services/${service}/instances/${encodeURIComponent(id)}/heartbeat`);
      if (res.status === 404 && !closed) {
        id = await register();
        options.onReregister?.(id);
      } else if (res.status >= 400) {
        throw new MeshError('MESH_ERR_HEARTBEAT', res.status, `heartbeat for ${id} failed: ${res.status} ${res.text}`);
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
        await beating;
        try {
          const res = await call('DELETE', `/services/${service}/instances/${encodeURIComponent(id)}`);
          if (res.status !== 204 && res.status !== 404) options.onError?.(new Error(`deregistration failed: ${res.status} ${res.text}`));
        } catch (err) {
          options.onError?.(err as Error);
        } finally {
          await dispatcher.close();
        }
      })()),
  };
}
