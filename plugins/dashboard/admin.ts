import cluster from 'node:cluster';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { PassThrough } from 'node:stream';
import type { Context } from 'koa';
import { fileURLToPath } from 'node:url';
import { BadRequestError, MeshError, serverSentEvents, type PluginHost } from '../../lib/index.js';
import type { DashboardEvent, DashboardLive } from './live.js';
import type { SeriesKind } from './series.js';

/** Where the page's files are: next to this module, in the sources and in the build (`npm run build` copies them). */
const PUBLIC = fileURLToPath(new URL('./public/', import.meta.url));
const resolve = createRequire(import.meta.url).resolve;

/** The files under `/dashboard/assets/`: the page's own, and the libraries from their installed packages. */
const ASSETS: Readonly<Record<string, () => string>> = {
  'app.js': () => join(PUBLIC, 'app.js'),
  'app.css': () => join(PUBLIC, 'app.css'),
  'preact.js': () => resolve('preact'),
  'hooks.js': () => resolve('preact/hooks'),
  // htm's package maps its root to CommonJS for require(); its ES module sits beside it.
  'htm.js': () => join(dirname(resolve('htm')), 'htm.module.js'),
  'uplot.js': () => resolve('uplot/dist/uPlot.esm.js'),
  'uplot.css': () => resolve('uplot/dist/uPlot.min.css'),
};

const TYPES: Readonly<Record<string, string>> = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', html: 'text/html; charset=utf-8' };

/** Seconds between updates on the stream: instance counters, the series' current buckets. */
export const TICK_MS = 1000;

/** A file read on first use, with its headers. */
interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/**
 * A file read once, with a weak ETag: the admin server compresses it for clients that accept it
 * (once, then from memory), and one validator serves every coding of the same bytes.
 */
function readAsset(file: string): Asset {
  const body = readFileSync(file);
  return { body, type: TYPES[file.slice(file.lastIndexOf('.') + 1)] ?? TYPES.js!, etag: `W/"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` };
}

/** `If-None-Match` holds `etag` (weak comparison: `W/` aside; a list, or `*`). */
function notModified(ifNoneMatch: string, etag: string): boolean {
  const opaque = etag.replace(/^W\//, '');
  return ifNoneMatch.split(',').some((tag) => {
    const t = tag.trim();
    return t === '*' || t.replace(/^W\//, '') === opaque;
  });
}

/**
 * The dashboard's admin routes. The page (`/`, `/dashboard`) and its assets hold no data and
 * need no token; the page then asks for it and sends it as `Authorization: Bearer` with every
 * data request, the stream included (fetch streaming, not EventSource, which cannot send headers):
 * - `GET /dashboard/api/state`: services and their instances, each series' last minute, the last events;
 * - `GET /dashboard/api/series?kind=gateway|service|route&name=N`: one series' whole window;
 * - `GET /dashboard/api/stream`: server-sent events: `event` (a registry, health, circuit or
 *   config change) as it happens, `tick` (what moved without an event) every second.
 */
export function dashboardRoutes(gateway: PluginHost, live: DashboardLive, window: number): () => void {
  const router = gateway.admin.router;
  const cache = new Map<string, Asset>();
  const asset = (name: string): Asset => {
    let found = cache.get(name);
    if (found === undefined) cache.set(name, (found = readAsset(ASSETS[name]!())));
    return found;
  };
  let page: (Asset & { csp: string }) | undefined;
  const pageAsset = (): Asset & { csp: string } => {
    if (page !== undefined) return page;
    const html = readAsset(join(PUBLIC, 'index.html'));
    // The import map is the page's one inline script: allowed by its hash, nothing else inline.
    const map = /<script type="importmap">([\s\S]*?)<\/script>/.exec(html.body.toString('utf8'))?.[1] ?? '';
    const hash = createHash('sha256').update(map).digest('base64');
    return (page = { ...html, csp: `default-src 'none'; script-src 'self' 'sha256-${hash}'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'` });
  };
  const servePage = (ctx: Context): void => {
    const { body, type, etag, csp } = pageAsset();
    ctx.set('content-security-policy', csp);
    ctx.set('x-content-type-options', 'nosniff');
    ctx.set('referrer-policy', 'no-referrer');
    ctx.set('cache-control', 'no-cache');
    ctx.set('etag', etag);
    ctx.type = type;
    ctx.body = body;
  };
  for (const path of ['/', '/dashboard']) {
    gateway.admin.allowAnonymous(path);
    router.get(path, servePage);
  }
  for (const name of Object.keys(ASSETS)) {
    const path = `/dashboard/assets/${name}`;
    gateway.admin.allowAnonymous(path);
    router.get(path, (ctx) => {
      const { body, type, etag } = asset(name);
      ctx.set('etag', etag);
      ctx.set('cache-control', 'no-cache');
      ctx.set('x-content-type-options', 'nosniff');
      if (notModified(ctx.get('if-none-match'), etag)) {
        ctx.status = 304;
        return;
      }
      ctx.type = type;
      ctx.body = body;
    });
  }

  router.get('/dashboard/api/state', (ctx) => {
    const now = Date.now();
    const services = [...gateway.registry.services()].map((s) => ({ name: s.name, balancer: s.policy.balancer, instances: [...s.instances.values()].map((i) => live.view(i)) }));
    const series: [SeriesKind, string, ...ReturnType<DashboardLive['summary']>][] = [];
    for (const [kind, name, s] of live.book.entries()) if (live.recent(s, now)) series.push([kind, name, ...live.summary(s, now)]);
    ctx.set('cache-control', 'no-store');
    ctx.body = {
      now: new Date(now).toISOString(),
      role: gateway.role,
      version: gateway.snapshot.version,
      appliedAt: new Date(gateway.snapshot.appliedAt).toISOString(),
      resolution: live.resolution,
      window,
      // The primary's running workers, not the ones that reported yet: a worker with nothing new to say sends nothing.
      workers: gateway.role === 'primary' ? Object.keys(cluster.workers ?? {}).length : 0,
      services,
      series,
      events: live.events(),
    };
  });

  router.get('/dashboard/api/series', (ctx) => {
    const kind = ctx.query.kind ?? 'gateway';
    const name = ctx.query.name;
    if (kind !== 'gateway' && kind !== 'service' && kind !== 'route') throw new BadRequestError('kind must be gateway, service or route', 'MESH_ERR_VALIDATION');
    if (kind !== 'gateway' && (typeof name !== 'string' || name === '')) throw new BadRequestError(`name is required with kind=${kind}`, 'MESH_ERR_VALIDATION');
    if (kind === 'service') gateway.registry.requireService(name as string);
    if (kind === 'route' && !gateway.snapshot.router.routes().some((r) => r.name === name)) throw new MeshError('MESH_ERR_UNKNOWN_ROUTE', 404, `unknown route ${JSON.stringify(name)}`);
    ctx.set('cache-control', 'no-store');
    ctx.body = { kind, name: kind === 'gateway' ? '' : name, resolution: live.resolution, ...live.chart(kind, kind === 'gateway' ? '' : (name as string)) };
  });

  const streams = new Set<PassThrough>();
  const sent = new Map<string, string>();
  let active = new Set<string>();
  let ticker: NodeJS.Timeout | undefined;
  const broadcast = (text: string): void => {
    for (const stream of streams) stream.write(text);
  };
  const tick = (): void => {
    const now = Date.now();
    const series: unknown[] = [];
    const nowActive = new Set<string>();
    for (const [kind, name, s] of live.book.entries()) {
      const key = `${kind}:${name}`;
      if (!live.recent(s, now) && !active.has(key)) continue;
      nowActive.add(key);
      series.push([kind, name, ...live.summary(s, now), live.latest(s, now)]);
    }
    active = nowActive;
    // What moves without an event: requests in flight, heartbeats; in a cluster the workers' circuits too.
    const instances: unknown[] = [];
    const seen = new Set<string>();
    for (const service of gateway.registry.services()) {
      for (const inst of service.instances.values()) {
        const view = live.view(inst);
        const key = `${inst.service}\u0000${inst.id}`;
        const signature = `${view.inflight} ${view.lastHeartbeat} ${view.circuit} ${view.ejectedUntil}`;
        seen.add(key);
        if (sent.get(key) === signature) continue;
        sent.set(key, signature);
        instances.push(view);
      }
    }
    for (const key of sent.keys()) if (!seen.has(key)) sent.delete(key);
    broadcast(`event: tick\ndata: ${JSON.stringify({ now: new Date(now).toISOString(), series, instances })}\n\n`);
  };
  const stopEvents = live.onEvent((event: DashboardEvent) => broadcast(`event: event\ndata: ${JSON.stringify(event)}\n\n`));

  router.get('/dashboard/api/stream', (ctx) => {
    if (ticker === undefined) {
      // A new first viewer: it gets every instance's counters again.
      sent.clear();
      ticker = setInterval(tick, TICK_MS);
      ticker.unref();
    }
    const hello = `: meshgate dashboard\n\nevent: hello\ndata: ${JSON.stringify({ lastEvent: live.events().at(-1)?.id ?? 0 })}\n\n`;
    const stream = serverSentEvents(ctx, hello, () => {
      streams.delete(stream);
      if (streams.size === 0) {
        clearInterval(ticker);
        ticker = undefined;
      }
    });
    streams.add(stream);
  });

  return () => {
    stopEvents();
    clearInterval(ticker);
    for (const stream of streams) stream.end();
    streams.clear();
  };
}
