import { createServer, type Server } from 'node:http';
import { isIPv4, type AddressInfo } from 'node:net';
import Router from '@koa/router';
import Koa from 'koa';
import { ConfigError, MeshError } from '../errors.js';
import type { AdminHost } from './host.js';
import { bearerToken, tokenMatches } from './auth.js';
import { compressResponses } from './compress.js';
import { configRoutes } from './config.js';
import { eventStreamRoute } from './events.js';
import { controlPlaneRoutes } from './routes.js';

/** Admin paths anyone on the admin network may read: probes and the metrics scrape. */
export const PUBLIC_ADMIN_PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * The control-plane server on `admin.host:admin.port` (loopback by default). Every route but
 * `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <admin.token>`; errors answer
 * `{ error, message }` like the proxy. Answers of 1 KiB or more are compressed (brotli or gzip) for
 * clients that accept it, streams excepted. Plugins add routes to {@link router} during setup.
 */
export class AdminServer {
  /** The admin routes; plugins add theirs in `setup`. */
  readonly router = new Router();
  readonly #gateway: AdminHost;
  readonly #anonymous = new Set<string>(PUBLIC_ADMIN_PATHS);
  #server: Server | null = null;

  constructor(gateway: AdminHost) {
    this.#gateway = gateway;
    this.router.get('/healthz', (ctx) => {
      ctx.body = { status: 'ok' };
    });
    this.router.get('/readyz', (ctx) => {
      const ready = gateway.isReady;
      ctx.status = ready ? 200 : 503;
      const body: Record<string, unknown> = { status: ready ? 'ready' : 'not ready' };
      // Still ready: the gateway serves its last view of these services, which is the point.
      if (gateway.leases.preserved.size > 0) body.selfPreservation = Object.fromEntries(gateway.leases.preserved);
      ctx.body = body;
    });
    controlPlaneRoutes(this.router, gateway);
    configRoutes(this.router, gateway);
    eventStreamRoute(this.router, gateway);
  }

  /**
   * Lets requests for exactly `path` through without the admin token, as `/healthz` is: for what
   * holds no data (a page and its scripts, which then ask for the token). Call it in `setup`.
   */
  allowAnonymous(path: string): void {
    this.#anonymous.add(path);
  }

  /** The token admin requests must present: `admin.token`, else `MESHGATE_ADMIN_TOKEN`. */
  get token(): string | undefined {
    return this.#gateway.config.admin?.token ?? (process.env.MESHGATE_ADMIN_TOKEN || undefined);
  }

  /** The admin Koa app, for tests or to mount under another server. */
  app(): Koa {
    const app = new Koa();
    app.silent = true;
    const gateway = this.#gateway;
    // Outermost, so error answers are compressed too when they are large (a config's list of problems).
    app.use(compressResponses());
    app.use(async (ctx, next) => {
      try {
        await next();
        if (ctx.status === 404 && ctx.body === undefined) {
          ctx.status = 404;
          ctx.body = { error: 'MESH_ERR_NOT_FOUND', message: `no admin route ${ctx.method} ${ctx.path}` };
        }
      } catch (err) {
        const error = err instanceof MeshError ? err : new MeshError('MESH_ERR_INTERNAL', 500, 'internal error', { cause: err, expose: false });
        if (!(err instanceof MeshError)) gateway.emit('gateway:error', err as Error);
        ctx.status = error.status;
        ctx.body = error.toJSON();
        if (error.status === 401) ctx.set('www-authenticate', 'Bearer realm="meshgate-admin"');
      }
    });
    app.use(async (ctx, next) => {
      if (this.#anonymous.has(ctx.path)) return next();
      const token = this.token;
      if (token !== undefined && !tokenMatches(bearerToken(ctx.get('authorization') || undefined), token)) {
        throw new MeshError('MESH_ERR_UNAUTHORIZED', 401, 'missing or wrong admin token');
      }
      return next();
    });
    app.use(this.router.routes());
    app.use(this.router.allowedMethods({ throw: false }));
    return app;
  }

  /** Listens on `admin.host:admin.port`. */
  async listen(): Promise<{ url: string; port: number }> {
    const admin = this.#gateway.config.admin;
    if (!admin) throw new ConfigError([{ path: 'admin', message: 'the admin server is not configured' }]);
    if (this.token === undefined) {
      if (!isLoopback(admin.host)) {
        throw new ConfigError([{ path: 'admin.token', message: `required when admin.host (${admin.host}) is not a loopback address (or set MESHGATE_ADMIN_TOKEN)` }]);
      }
      this.#gateway.log.warn('admin API has no token: anyone on this host can change the registry (set admin.token or MESHGATE_ADMIN_TOKEN)');
    }
    const server = createServer(this.app().callback());
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(admin.port, admin.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    const host = admin.host.includes(':') ? `[${admin.host}]` : admin.host;
    return { url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`, port };
  }

  get server(): Server | null {
    return this.#server;
  }

  /** Stops the admin server; long-lived streams (server-sent events) are cut. */
  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'));
}
