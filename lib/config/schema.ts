import { matchSignature, routeIssues, routeShape as routeFields } from './route-schema.js';
import { z } from 'zod';
import { cidrList } from '../http/net.js';
import { normalizeTarget } from '../http/path.js';
import { parseDuration } from './duration.js';
import type { StandardSchemaV1 } from './standard-schema.js';

/** A duration: `"250ms"`, `"2s"`, `"1m"`, or milliseconds. Parsed to milliseconds. */
export const duration = z.union([z.string(), z.number()], { error: 'expected a duration like "500ms", "2s", "1m" or milliseconds' }).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a duration like "500ms", "2s", "1m" or milliseconds, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

export const httpUrl = z.string().refine((value) => {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}, { message: 'expected an http:// or https:// URL' });

/** `listen.http2: true` (or TLS with `http2` unset) means these. */
export const HTTP2_LISTENER_DEFAULTS = { maxConcurrentStreams: 100, maxResetsPerSecond: 100 } as const;

const port = z.number().int().min(0).max(65535);
const positiveInt = z.number().int().min(1);

/** `header:NAME | cookie:NAME | query:NAME | ip | path` */
export const HASH_ON = /^(?:(?:header|cookie|query):[^\s:]+|ip|path)$/;

const tlsServer = z
  .strictObject({
    cert: z.string(),
    key: z.string(),
    ca: z.string().optional(),
    /** CA bundle that signs client certificates (mutual TLS). */
    clientCa: z.string().optional(),
    /** `require`: no verified client certificate, no handshake; `request`: asked for, anonymous without. */
    clientCert: z.enum(['request', 'require']).optional(),
  })
  .refine((t) => t.clientCert === undefined || t.clientCa !== undefined, { message: 'clientCert needs clientCa, the CA that signs client certificates', path: ['clientCa'] });

const instance = z.strictObject({
  url: httpUrl,
  id: z.string().min(1).optional(),
  weight: positiveInt.default(1),
  zone: z.string().optional(),
  metadata: z.record(z.string(), z.unknown()).default({}),
});

const serviceShape = {
    /**
     * How the gateway talks to the instances: HTTP/1.1, or HTTP/2 (`h2` over TLS to `https://`
     * instances, `h2c` by prior knowledge to `http://` ones; the URL's scheme decides). gRPC
     * services need `h2c` or `h2`. @default http1
     */
    protocol: z.enum(['http1', 'h2', 'h2c']).default('http1'),
    balancer: z.string().min(1).default('round-robin'),
    hashOn: z.string().regex(HASH_ON, 'expected header:NAME, cookie:NAME, query:NAME, ip or path').optional(),
    instances: z.array(instance).default([]),
    timeout: duration.default(15_000),
    slowStart: duration.optional(),
    /** Most connections the gateway opens to one instance; more requests wait for one (Envoy's max_connections). @default unlimited */
    maxConnections: positiveInt.optional(),
    /** Most requests waiting for a connection across the service (with `maxConnections`); more get 503 at once. @default unlimited */
    maxPendingRequests: z.number().int().min(0).optional(),
    /** Most requests in flight to the service; more get 503 at once (Envoy's max_requests). @default unlimited */
    maxRequests: positiveInt.optional(),
    panicThreshold: z.number().min(0).max(100).default(50),
    tls: z
      .strictObject({
        ca: z.string().optional(),
        cert: z.string().optional(),
        key: z.string().optional(),
        servername: z.string().optional(),
        rejectUnauthorized: z.boolean().default(true),
        /**
         * The identity the instances' certificates must carry as a SAN URI
         * (`spiffe://example.internal/billing`), checked instead of the host name, as Istio does.
         */
        expectedIdentity: z.string().regex(/^[a-z][a-z0-9+.-]*:\/\/\S+$/, 'expected a URI such as spiffe://example.internal/billing').optional(),
      })
      .optional(),
};
// Loose: the keys it does not know are plugins' sections (circuitBreaker, retries, ...), checked by lib/config/sections.ts.
const service = z.preprocess((value) => value ?? {}, z.looseObject(serviceShape));
/** The service entry's type: the core's fields (the sections' types come from ServiceSections). */
const serviceType = z.object(serviceShape);

/** Sizes: a number of bytes, or `"64kb"`, `"10mb"`. */
export const byteSize = z.union([z.number().int().min(0), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value;
  const match = /^(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?$/i.exec(value.trim());
  if (!match) {
    ctx.addIssue({ code: 'custom', message: `expected a size like 65536, "64kb" or "10mb", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  const unit = (match[2] ?? 'b').toLowerCase();
  const factor = unit === 'b' ? 1 : unit.startsWith('k') ? 1024 : unit.startsWith('m') ? 1024 ** 2 : 1024 ** 3;
  return Math.floor(Number(match[1]) * factor);
});

const routeShape = {
  ...routeFields,
  /** Largest request body; bigger ones get 413 before the upstream is dialed. */
  maxBodySize: byteSize.optional(),
  /**
   * The longest an answer's body may go without a byte once its headers came (server-sent events,
   * long polls, downloads): then it is cut. The service's `timeout` only covers the wait for the
   * headers. @default none: a stream may stay quiet as long as it likes
   */
  streamTimeout: duration.optional(),
  /**
   * WebSocket upgrades on this route (on by default): `false` refuses them with 403, or limits
   * that override the top-level `websocket` ones.
   */
  websocket: z
    .union([
      z.literal(false),
      z.strictObject({
        /** A tunnel with no byte either way for this long is closed. @default the top-level `websocket.idleTimeout` */
        idleTimeout: duration.optional(),
        /** Open WebSockets on this route; a handshake past it is answered 503. @default none */
        maxConnections: positiveInt.optional(),
      }),
    ])
    .optional(),
};
// Loose: the keys it does not know are plugins' sections (auth, rateLimit, ...), checked by lib/config/sections.ts.
const route = z.looseObject(routeShape);
/** The route entry's type: the core's fields (the sections' types come from RouteSections). */
const routeType = z.object(routeShape);

const plugin = z.strictObject({
  module: z.string().min(1),
  options: z.unknown().optional(),
});

/**
 * The core's part of the config document. Every level a plugin may add a section to (the top
 * level, `discovery`, `services.<name>` and `routes[i]`) is loose here: lib/config/sections.ts
 * checks the keys the core does not know against the sections plugins declared, so a typo is
 * still an `unknown field`. Absent sections turn their plugin off; see ARCHITECTURE.md.
 */
const configShape = {
  listen: z
    .strictObject({
      host: z.string().default('0.0.0.0'),
      port: port.default(8080),
      tls: tlsServer.optional(),
      /**
       * Which X-Forwarded-For entries to believe: false (none: the socket address is the
       * client), true (all), a number of trusted proxy hops, or a list of proxy CIDRs.
       */
      trustProxy: z.union([z.boolean(), z.number().int().min(0), z.array(z.string().min(1))]).default(false),
      /** Largest request head; bigger ones get 431. */
      maxHeaderSize: byteSize.default(16 * 1024),
      /** Most request header lines (Envoy's default); more get 431, so the gateway's own headers always fit under an upstream's limit. */
      maxHeaders: z.number().int().min(1).max(1000).default(100),
      /**
       * Path parameters (`;x` in a segment, which Tomcat, Jetty and Spring strip before routing):
       * `reject` answers 400; `allow` routes on the path without them and forwards it as sent.
       */
      pathParameters: z.enum(['reject', 'allow']).default('reject'),
      /**
       * Add the gateway to `Via` on every forwarded request (RFC 9110 7.6.3), and refuse (508) a
       * request that comes back with it: loops through other gateways of a fleet. A loop through
       * this gateway itself is caught without it. Off by default, like Envoy's: one more header
       * costs about 1.5% of a request's CPU.
       */
      via: z.boolean().default(false),
      /** The gateway's zone, for zone-aware routing (`services.<name>.zoneAware`). @default $MESHGATE_ZONE */
      zone: z.string().min(1).optional(),
      /** Time to receive a request's headers (slowloris guard). */
      headersTimeout: duration.default(10_000),
      /** Time to receive a whole request. */
      requestTimeout: duration.default(60_000),
      /** Idle time of a client keep-alive connection. */
      keepAliveTimeout: duration.default(5_000),
      /**
       * HTTP/2 on the listener, beside HTTP/1.1 on the same port: over TLS by ALPN (`h2`, else
       * `http/1.1`), and without TLS by prior knowledge (a connection that opens with the HTTP/2
       * preface). `false` turns it off. @default on with `tls`, off without
       */
      http2: z
        .union([
          z.boolean(),
          z.strictObject({
            /** Streams a client may have open on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). @default 100 */
            maxConcurrentStreams: positiveInt.max(2 ** 31 - 1).default(HTTP2_LISTENER_DEFAULTS.maxConcurrentStreams),
            /**
             * Streams a client may reset per second on one connection (a burst of twice that is
             * allowed); past it the connection is closed with ENHANCE_YOUR_CALM: the rapid-reset
             * attack, CVE-2023-44487. @default 100
             */
            maxResetsPerSecond: positiveInt.default(HTTP2_LISTENER_DEFAULTS.maxResetsPerSecond),
          }),
        ])
        .optional(),
    })
    .default({ host: '0.0.0.0', port: 8080, trustProxy: false, maxHeaderSize: 16 * 1024, maxHeaders: 100, pathParameters: 'reject', via: false, headersTimeout: 10_000, requestTimeout: 60_000, keepAliveTimeout: 5_000 }),
  admin: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: port.default(9901),
      // A token of digits arrives from ${ENV} as a number; it is still a token.
      token: z.union([z.string(), z.number()]).transform(String).pipe(z.string().min(1)).optional(),
      /** Registered instance URLs must resolve into these CIDRs (a guard against SSRF through registration). */
      allowedNetworks: z.array(z.string().min(1)).optional(),
      /** Registrations per second the admin API accepts (heartbeats excluded). */
      registrationRate: z.number().positive().default(50),
    })
    .optional(),
  /** Discovery sources beyond static instances: every key is a plugin's section (`redis`, `dns`). */
  discovery: z.looseObject({}).optional(),
  services: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'expected letters, digits, ".", "_" or "-"'), service).default({}),
  routes: z.array(route).default([]),
  plugins: z.array(plugin).default([]),
  /**
   * Worker processes sharing the listener (node:cluster): a number, or `auto` for one per CPU.
   * With more than one, the primary process runs the control plane (admin API, discovery,
   * health checks, aggregated metrics) and the workers proxy.
   */
  workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default(1),
  /**
   * Lease self-preservation (Eureka): when more than `threshold` percent of a service's leased
   * instances have gone silent at once, the gateway has more likely lost the network than the
   * service its instances, and stops expiring that service's leases until heartbeats come back.
   * `false` (the default) expires every lease on time; `true` takes the defaults.
   */
  selfPreservation: z
    .union([
      z.boolean(),
      z.strictObject({
        /** Percent of a service's leased instances that must be silent together. @default 50 */
        threshold: z.number().min(0).max(100).default(50),
        /** Services with fewer leased instances are not preserved: one silent instance is a third of three. @default 2 */
        minInstances: positiveInt.default(2),
      }),
    ])
    .transform((value) => (value === false ? false : value === true ? { threshold: 50, minInstances: 2 } : value))
    .default(false),
  /** pino level for the gateway's own log lines. */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** How long close() waits for in-flight requests before it cuts them off. */
  drainTimeout: duration.default(10_000),
  /** WebSocket tunnels, gateway-wide (a route's `websocket` may lower them). */
  websocket: z
    .strictObject({
      /** Open WebSockets on the whole gateway; a handshake past it is answered 503. @default none */
      maxConnections: positiveInt.optional(),
      /** A tunnel with no byte either way for this long is closed. @default none (TCP keep-alive still finds dead peers) */
      idleTimeout: duration.optional(),
    })
    .default({}),
};
export const configSchema = z.looseObject(configShape);
/** The document's type: the core's fields (the sections' types come from GlobalSections and DiscoverySections). */
const configType = z.object(configShape);

/** The keys the core owns at each level where plugins add sections; every other key there is a plugin's. */
export const CORE_KEYS = {
  global: new Set(Object.keys(configShape)),
  discovery: new Set<string>(),
  service: new Set(Object.keys(serviceShape)),
  route: new Set(Object.keys(routeShape)),
} as const;

/**
 * Checks that span fields (a route's service must exist, prefixes are unique, ...).
 * Runs on the raw document, so these problems are reported together with the schema's own.
 */
export function crossCheck(raw: unknown): { path: PropertyKey[]; message: string }[] {
  const issues: { path: PropertyKey[]; message: string }[] = [];
  if (!isRecord(raw)) return issues;
  const services = isRecord(raw.services) ? raw.services : {};
  if (Array.isArray(raw.routes)) {
    const seen = new Map<string, number>();
    const names = new Map<string, number>();
    raw.routes.forEach((r: unknown, i: number) => {
      if (!isRecord(r)) return;
      for (const issue of routeIssues(r, services)) issues.push({ path: ['routes', i, ...issue.path], message: issue.message });
      if (typeof r.name === 'string') {
        const first = names.get(r.name);
        if (first !== undefined) issues.push({ path: ['routes', i, 'name'], message: `duplicate name "${r.name}" (also routes[${first}])` });
        else names.set(r.name, i);
      }
      const signature = matchSignature(r, routePrefix);
      const first = seen.get(signature);
      const prefixOnly = typeof r.prefix === 'string' && ['path', 'pathRegex', 'methods', 'hosts', 'headers', 'query'].every((key) => r[key] === undefined);
      if (first !== undefined && prefixOnly) issues.push({ path: ['routes', i, 'prefix'], message: `duplicate prefix "${r.prefix}" (also routes[${first}])` });
      else if (first !== undefined) issues.push({ path: ['routes', i], message: `duplicate route: it matches exactly the requests routes[${first}] matches` });
      else seen.set(signature, i);
    });
  }
  const cidrs = (list: unknown, path: PropertyKey[]): void => {
    if (!Array.isArray(list)) return;
    list.forEach((entry, i) => {
      if (typeof entry !== 'string') return;
      try {
        cidrList([entry]);
      } catch (err) {
        issues.push({ path: [...path, i], message: (err as Error).message });
      }
    });
  };
  if (isRecord(raw.listen)) cidrs(raw.listen.trustProxy, ['listen', 'trustProxy']);
  if (isRecord(raw.admin)) cidrs(raw.admin.allowedNetworks, ['admin', 'allowedNetworks']);
  for (const [name, svc] of Object.entries(services)) {
    if (!isRecord(svc)) continue;
    if (svc.balancer === 'consistent-hash' && svc.hashOn === undefined) {
      issues.push({ path: ['services', name, 'hashOn'], message: 'required when balancer is consistent-hash' });
    }
    if (!Array.isArray(svc.instances)) continue;
    const ids = new Map<string, number>();
    svc.instances.forEach((inst: unknown, i: number) => {
      if (!isRecord(inst)) return;
      const id = typeof inst.id === 'string' ? inst.id : inst.url;
      if (typeof id !== 'string') return;
      const first = ids.get(id);
      if (first !== undefined) issues.push({ path: ['services', name, 'instances', i], message: `duplicate instance "${id}" (also instances[${first}])` });
      else ids.set(id, i);
    });
  }
  return issues;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * A configured prefix in the form request paths take after normalization (escapes of unreserved
 * characters decoded, others upper-cased, dot segments resolved, trailing slash dropped), so
 * `/%7Euser` matches a request for `/~user`, and `/a` and `/a/` are one prefix.
 */
export function routePrefix(prefix: string): string {
  try {
    return normalizePrefix(normalizeTarget(prefix).path);
  } catch {
    return normalizePrefix(prefix); // a malformed prefix is reported by the config check
  }
}

/** Strips a trailing slash: `/users/` and `/users` are one prefix. */
export function normalizePrefix(prefix: string): string {
  return prefix.length > 1 && prefix.endsWith('/') ? prefix.replace(/\/+$/, '') || '/' : prefix;
}

/**
 * Sections plugins add, by key, each with its schema's type, so config written in TypeScript is
 * typed for them too. A plugin augments these interfaces next to its declaration:
 * @example
 * declare module 'meshgate' {
 *   interface RouteSections { maintenance: typeof maintenanceSchema }
 * }
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface RouteSections {}
/** Sections under `services.<name>`, by key; see {@link RouteSections}. */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface ServiceSections {}
/** Top-level sections, by key; see {@link RouteSections}. */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface GlobalSections {}
/** Sections under `discovery`, by key; see {@link RouteSections}. */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface DiscoverySections {}

type Inputs<T> = { [K in keyof T]?: T[K] extends StandardSchemaV1 ? StandardSchemaV1.InferInput<T[K]> : never };
type Outputs<T> = { [K in keyof T]?: T[K] extends StandardSchemaV1 ? StandardSchemaV1.InferOutput<T[K]> : never };
type CoreInput = z.input<typeof configType>;
type CoreOutput = z.output<typeof configType>;
/** Keys of plugins the type system does not know (one loaded from a `plugins:` module). */
type Open = { [section: string]: unknown };

/** One `services.<name>` entry as users write it, plugins' sections included. */
export type ServiceConfigInput = z.input<typeof serviceType> & Inputs<ServiceSections> & Open;
/** One `routes[]` entry as users write it, plugins' sections included. */
export type RouteConfigInput = z.input<typeof routeType> & Inputs<RouteSections> & Open;

/** The config as users write it (durations as strings, defaults optional). */
export type GatewayConfigInput = Omit<CoreInput, 'services' | 'routes' | 'discovery'> & {
  services?: Record<string, ServiceConfigInput | null>;
  routes?: RouteConfigInput[];
  discovery?: Inputs<DiscoverySections> & Open;
} & Inputs<GlobalSections> &
  Open;

/** One validated `services.<name>` entry: defaults filled in, durations in milliseconds. */
export type ServiceConfig = z.output<typeof serviceType> & Outputs<ServiceSections> & Open;
/** One validated `routes[]` entry. */
export type RouteConfig = z.output<typeof routeType> & Outputs<RouteSections> & Open;
/** One validated static instance entry. */
export type InstanceConfig = z.output<typeof serviceType>['instances'][number];
/** The validated config: defaults filled in, durations in milliseconds, plugins' sections parsed by their schemas. */
export type GatewayConfig = Omit<CoreOutput, 'services' | 'routes' | 'discovery'> & {
  services: Record<string, ServiceConfig>;
  routes: RouteConfig[];
  discovery?: Outputs<DiscoverySections> & Open;
} & Outputs<GlobalSections> &
  Open;
