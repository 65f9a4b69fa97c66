import type Router from '@koa/router';
import { z } from 'zod';
import { zodIssues } from '../config/issues.js';
import { CORE_KEYS, duration, httpUrl } from '../config/schema.js';
import type { Route, ValueCondition } from '../core/router.js';
import { BadRequestError } from '../errors.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { MeshError } from '../errors.js';
import type { AdminHost } from './host.js';
import { cidrList, inList } from '../http/net.js';
import { TokenBuckets } from '../kit/token-bucket.js';
import { readJsonBody } from './body.js';

/** Largest `metadata` of a registration, as JSON bytes. */
export const MAX_METADATA_BYTES = 4096;

const registration = z.strictObject({
  url: httpUrl,
  id: z
    .string()
    .regex(/^[A-Za-z0-9._:@-]{1,128}$/, 'expected 1-128 letters, digits or . _ : @ -')
    // `.` and `..` are dot segments: a URL with them as the id could never reach the instance again.
    .refine((id) => id !== '.' && id !== '..', { message: 'must not be "." or ".."' })
    .optional(),
  weight: z.number().int().min(1).max(10_000).optional(),
  zone: z.string().max(64).optional(),
  metadata: z
    .record(z.string(), z.unknown())
    .refine((m) => Buffer.byteLength(JSON.stringify(m)) <= MAX_METADATA_BYTES, { message: `must be at most ${MAX_METADATA_BYTES} bytes of JSON` })
    .optional(),
  ttl: duration.refine((ms) => ms >= 100 && ms <= 86_400_000, { message: 'must be between 100ms and 24h' }).optional(),
});

/** A 400 whose message names every bad field; `fields` lists them for programs. */
class ValidationError extends BadRequestError {
  readonly fields: { path: string; message: string }[];
  constructor(fields: { path: string; message: string }[]) {
    super(fields.map((f) => (f.path ? `${f.path}: ${f.message}` : f.message)).join('; '), 'MESH_ERR_VALIDATION');
    this.fields = fields;
  }
  override toJSON(): { error: string; message: string; fields: { path: string; message: string }[] } {
    return { ...super.toJSON(), fields: this.fields };
  }
}

/**
 * Registered URLs must point into the allowed networks, every address the host resolves to
 * included: otherwise anyone holding the token could aim the gateway at internal services.
 */
async function checkNetwork(url: string, allowed: ReturnType<typeof cidrList>): Promise<void> {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
  let addresses: string[];
  if (isIP(host)) addresses = [host];
  else {
    try {
      addresses = (await lookup(host, { all: true })).map((a) => a.address);
    } catch {
      throw new ValidationError([{ path: 'url', message: `cannot resolve ${host}` }]);
    }
  }
  const outside = addresses.find((a) => !inList(allowed, a));
  if (outside !== undefined) throw new ValidationError([{ path: 'url', message: `${host} (${outside}) is outside admin.allowedNetworks` }]);
}

/**
 * Refuses an instance URL that reaches this gateway's own listener: every request to it would go
 * round the loop until the gateway ran out of sockets. (A loop through another gateway is caught
 * per request, by the gateway's entry in `Via`.)
 */
async function checkNotSelf(url: string, server: import('node:http').Server | null): Promise<void> {
  const bound = server?.address();
  if (!bound || typeof bound === 'string') return;
  const target = new URL(url);
  const port = Number(target.port || (target.protocol === 'https:' ? 443 : 80));
  if (port !== bound.port) return;
  const host = target.hostname.replace(/^\[|\]$/g, '');
  let addresses: string[];
  try {
    addresses = isIP(host) ? [host] : (await lookup(host, { all: true })).map((a) => a.address);
  } catch {
    return; // does not resolve here: it cannot reach this listener either
  }
  const wildcard = bound.address === '0.0.0.0' || bound.address === '::';
  const local = new Set(['127.0.0.1', '::1', '0.0.0.0', '::', ...Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address))]);
  const self = addresses.find((a) => (wildcard ? local.has(a) || a.startsWith('127.') : a === bound.address || (bound.address.startsWith('127.') && a.startsWith('127.'))));
  if (self !== undefined) throw new ValidationError([{ path: 'url', message: `${target.host} is this gateway's own listener: requests to it would loop` }]);
}

/**
 * The control-plane routes (see ARCHITECTURE.md): register, heartbeat, deregister, inspect.
 * Writes go through `gateway.registrar`, so a fleet-wide registrar (Redis) serves them unchanged.
 */
export function controlPlaneRoutes(router: Router, gateway: AdminHost): void {
  const admin = gateway.config.admin;
  const allowed = admin?.allowedNetworks ? cidrList(admin.allowedNetworks) : null;
  const rate = admin?.registrationRate ?? 50;
  const registrations = new TokenBuckets(rate, Math.max(1, Math.ceil(rate)));

  router.post('/services/:name/instances', async (ctx) => {
    const name = ctx.params.name!;
    if (!registrations.take('all').allowed) {
      ctx.set('retry-after', '1');
      throw new MeshError('MESH_ERR_RATE_LIMITED', 429, `more than ${rate} registrations per second`);
    }
    gateway.registry.requireService(name);
    const parsed = registration.safeParse(await readJsonBody(ctx));
    if (!parsed.success) throw new ValidationError(zodIssues(parsed.error));
    if (allowed) await checkNetwork(parsed.data.url, allowed);
    await checkNotSelf(parsed.data.url, gateway.server);
    const result = await gateway.registrar.register(name, { ...parsed.data, source: 'admin' });
    ctx.status = 201;
    ctx.set('location', `/services/${encodeURIComponent(name)}/instances/${encodeURIComponent(result.id)}`);
    ctx.body = result;
  });

  router.put('/services/:name/instances/:id/heartbeat', async (ctx) => {
    ctx.body = await gateway.registrar.heartbeat(ctx.params.name!, ctx.params.id!);
  });

  router.delete('/services/:name/instances/:id', async (ctx) => {
    const name = ctx.params.name!;
    const id = ctx.params.id!;
    if (!(await gateway.registrar.deregister(name, id))) {
      ctx.status = 404;
      ctx.body = { error: 'MESH_ERR_UNKNOWN_INSTANCE', message: `service "${name}" has no instance "${id}"` };
      return;
    }
    ctx.status = 204;
  });

  router.get('/services', (ctx) => {
    ctx.body = {
      services: [...gateway.registry.services()].map((s) => {
        let healthy = 0;
        for (const inst of s.instances.values()) if (inst.health === 'healthy' && inst.circuit !== 'open') healthy++;
        return { name: s.name, balancer: s.policy.balancer, instances: s.instances.size, healthy };
      }),
    };
  });

  router.get('/services/:name', (ctx) => {
    ctx.body = gateway.registry.requireService(ctx.params.name!).toJSON();
  });

  router.get('/routes', (ctx) => {
    const snapshot = gateway.snapshot;
    ctx.body = { version: snapshot.version, routes: snapshot.router.routes().map(describeRoute), warnings: snapshot.warnings() };
  });
}

/** A compiled route as `GET /routes` shows it: what it matches, where it sends, what it changes. */
function describeRoute(route: Route): Record<string, unknown> {
  const match = route.match;
  const condition = (c: ValueCondition): unknown => (c.kind === 'exact' ? c.value : c.kind === 'regex' ? { regex: c.value } : { present: c.kind === 'present' });
  const total = route.totalWeight;
  return {
    index: route.index,
    name: route.name,
    match: {
      [match.kind === 'exact' ? 'path' : match.kind === 'regex' ? 'pathRegex' : 'prefix']: match.path,
      ...(match.methods === null ? {} : { methods: [...match.methods] }),
      ...(match.hosts === null ? {} : { hosts: match.hosts }),
      ...(match.headers.length === 0 ? {} : { headers: Object.fromEntries(match.headers.map((c) => [c.name, condition(c)])) }),
      ...(match.query.length === 0 ? {} : { query: Object.fromEntries(match.query.map((c) => [c.name, condition(c)])) }),
    },
    backends: route.backends.map((b) => ({
      name: b.name,
      service: b.service,
      weight: b.weight,
      percent: total === 0 ? 0 : Math.round((b.weight / total) * 10_000) / 100,
      ...(b.subset === null ? {} : { subset: Object.fromEntries(b.subset.labels), fallback: b.fallback }),
    })),
    ...(route.config.stickyOn === undefined ? {} : { stickyOn: route.config.stickyOn }),
    ...(route.retryOtherBackends ? { retryOtherBackends: true } : {}),
    ...(route.stripPrefix ? { stripPrefix: true } : {}),
    ...(route.config.rewrite === undefined ? {} : { rewrite: route.config.rewrite }),
    ...(route.hostRewrite === null ? {} : { hostRewrite: route.hostRewrite }),
    ...(route.config.requestHeaders === undefined ? {} : { requestHeaders: route.config.requestHeaders }),
    ...(route.config.responseHeaders === undefined ? {} : { responseHeaders: route.config.responseHeaders }),
    ...(route.redirect === null ? {} : { redirect: route.redirect }),
    plugins: Object.keys(route.config).filter((key) => !CORE_KEYS.route.has(key)),
  };
}
