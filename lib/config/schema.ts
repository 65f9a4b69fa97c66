import { z } from 'zod';
import { cidrList } from '../http/net.js';
import { normalizeTarget } from '../http/path.js';
import { parseDuration } from './duration.js';

/** A duration: `"250ms"`, `"2s"`, `"1m"`, or milliseconds. Parsed to milliseconds. */
export const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
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

const port = z.number().int().min(0).max(65535);
const positiveInt = z.number().int().min(1);

/** `header:NAME | cookie:NAME | query:NAME | ip | path` */
export const HASH_ON = /^(?:(?:header|cookie|query):[^\s:]+|ip|path)$/;

const tlsServer = z.strictObject({ cert: z.string(), key: z.string(), ca: z.string().optional() });

const instance = z.strictObject({
  url: httpUrl,
  id: z.string().min(1).optional(),
  weight: positiveInt.default(1),
  zone: z.string().optional(),
  metadata: z.record(z.string(), z.unknown()).default({}),
});

const service = z.preprocess(
  (value) => value ?? {},
  z.strictObject({
    balancer: z.string().min(1).default('round-robin'),
    hashOn: z.string().regex(HASH_ON, 'expected header:NAME, cookie:NAME, query:NAME, ip or path').optional(),
    instances: z.array(instance).default([]),
    dns: z
      .strictObject({
        name: z.string().min(1),
        port: port.optional(),
        refresh: duration.default(5000),
        srv: z.boolean().default(false),
      })
      .optional(),
    healthCheck: z
      .strictObject({
        path: z.string().startsWith('/').default('/health'),
        interval: duration.default(5000),
        timeout: duration.default(1000),
        unhealthyThreshold: positiveInt.default(2),
        healthyThreshold: positiveInt.default(1),
      })
      .optional(),
    circuitBreaker: z
      .strictObject({
        errorThresholdPercentage: z.number().min(0).max(100).default(50),
        volumeThreshold: z.number().int().min(0).default(10),
        resetTimeout: duration.default(10_000),
        rollingCountTimeout: duration.default(10_000),
        rollingCountBuckets: positiveInt.default(10),
      })
      .optional(),
    retries: z
      .strictObject({
        attempts: z.number().int().min(0).default(2),
        perTryTimeout: duration.optional(),
        methods: z.array(z.string().toUpperCase()).optional(),
        retryOn: z.array(z.number().int().min(100).max(599)).default([502, 503, 504]),
        budgetPercent: z.number().min(0).max(100).default(20),
        minRetryConcurrency: z.number().int().min(0).default(3),
      })
      .optional(),
    timeout: duration.default(15_000),
    slowStart: duration.optional(),
    panicThreshold: z.number().min(0).max(100).default(50),
    tls: z
      .strictObject({
        ca: z.string().optional(),
        cert: z.string().optional(),
        key: z.string().optional(),
        servername: z.string().optional(),
        rejectUnauthorized: z.boolean().default(true),
      })
      .optional(),
  }),
);

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

/** JWT algorithms that may be allowed; `none` is not one of them. */
export const JWT_ALGORITHMS = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

const jwtAuth = z.strictObject({
  /** Shared secret for HS* algorithms. */
  secret: z.string().min(1).optional(),
  /** PEM public key (or a path to one) for RS*, PS*, ES*, EdDSA. */
  publicKey: z.string().min(1).optional(),
  /** JWKS endpoint; keys are fetched and cached. */
  jwksUrl: httpUrl.optional(),
  algorithms: z.array(z.enum(JWT_ALGORITHMS, { message: `expected one of ${JWT_ALGORITHMS.join(', ')} ("none" is never allowed)` })).min(1),
  issuer: z.union([z.string(), z.array(z.string())]).optional(),
  audience: z.union([z.string(), z.array(z.string())]).optional(),
  /** Allowed clock skew for exp/nbf. */
  clockTolerance: duration.default(30_000),
  /** Claims forwarded upstream as headers, `{ claim: header }`; any such header from the client is removed first. */
  forwardClaims: z.record(z.string(), z.string().regex(/^[A-Za-z0-9-]+$/, 'expected a header name')).default({}),
});

const apiKeyAuth = z.strictObject({
  /** Accepted keys (use `\${ENV}` to keep them out of the file). */
  keys: z.array(z.union([z.string(), z.number()]).transform(String).pipe(z.string().min(8, 'an API key must be at least 8 characters'))).min(1),
  header: z.string().min(1).default('x-api-key'),
});

const rateLimit = z.strictObject({
  /** Sustained requests per second per key. */
  rps: z.number().positive(),
  /** Bucket size: how many requests may come at once. @default rps */
  burst: z.number().int().positive().optional(),
  /** What a bucket belongs to: `ip`, `header:NAME` or `jwt:sub` (a claim). */
  key: z.string().regex(/^(?:ip|header:[A-Za-z0-9-]+|jwt:[A-Za-z0-9_.-]+)$/, 'expected ip, header:NAME or jwt:CLAIM').default('ip'),
  /** Share buckets across gateways through Redis: `true` uses `discovery.redis`, or a redis:// URL. */
  redis: z.union([z.boolean(), z.string().regex(/^rediss?:\/\//, 'expected a redis:// URL')]).optional(),
});

const route = z.strictObject({
  prefix: z.string().startsWith('/', 'expected a path starting with "/"'),
  service: z.string().min(1),
  stripPrefix: z.boolean().default(false),
  auth: z
    .strictObject({ jwt: jwtAuth.optional(), apiKeys: apiKeyAuth.optional() })
    .refine((a) => a.jwt !== undefined || a.apiKeys !== undefined, { message: 'expected jwt and/or apiKeys' })
    .optional(),
  rateLimit: rateLimit.optional(),
  /** Largest request body; bigger ones get 413 before the upstream is dialed. */
  maxBodySize: byteSize.optional(),
});

const plugin = z.strictObject({
  module: z.string().min(1),
  options: z.unknown().optional(),
});

/** The whole config document. Absent sections turn their plugin off; see ARCHITECTURE.md. */
export const configSchema = z
  .strictObject({
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
        /** Time to receive a request's headers (slowloris guard). */
        headersTimeout: duration.default(10_000),
        /** Time to receive a whole request. */
        requestTimeout: duration.default(60_000),
        /** Idle time of a client keep-alive connection. */
        keepAliveTimeout: duration.default(5_000),
      })
      .default({ host: '0.0.0.0', port: 8080, trustProxy: false, maxHeaderSize: 16 * 1024, headersTimeout: 10_000, requestTimeout: 60_000, keepAliveTimeout: 5_000 }),
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
    discovery: z
      .strictObject({
        redis: z
          .strictObject({
            url: z.string().regex(/^rediss?:\/\//, 'expected a redis:// or rediss:// URL'),
            prefix: z.string().default('meshgate:'),
            /** ioredis options (Sentinel: `sentinels` and `name`). */
            options: z.record(z.string(), z.unknown()).optional(),
            /** Redis Cluster seed nodes, as redis:// URLs; `url` is then ignored. */
            cluster: z.array(z.string().regex(/^rediss?:\/\//, 'expected a redis:// or rediss:// URL')).optional(),
            resyncInterval: duration.default(5000),
          })
          .optional(),
        dns: z
          .strictObject({
            /** DNS servers to ask instead of the system resolver, as `host` or `host:port`. */
            servers: z.array(z.string().min(1)).min(1).optional(),
          })
          .optional(),
      })
      .optional(),
    services: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'expected letters, digits, ".", "_" or "-"'), service).default({}),
    routes: z.array(route).default([]),
    plugins: z.array(plugin).default([]),
    /** One JSON line per request on stdout. Off unless `true` (or an object). */
    accessLog: z.union([z.boolean(), z.strictObject({})]).optional(),
    /** Prometheus metrics on the admin port (`GET /metrics`). On whenever `admin` is configured; `false` turns it off. */
    metrics: z
      .union([
        z.boolean(),
        z.strictObject({
          defaultMetrics: z.boolean().default(true),
          buckets: z.array(z.number().positive()).min(1).optional(),
        }),
      ])
      .optional(),
    /** W3C traceparent and x-request-id propagation. On unless `false`. */
    tracing: z.union([z.boolean(), z.strictObject({ requestIdHeader: z.string().min(1).optional() })]).optional(),
    /**
     * Worker processes sharing the listener (node:cluster): a number, or `auto` for one per CPU.
     * With more than one, the primary process runs the control plane (admin API, discovery,
     * health checks, aggregated metrics) and the workers proxy.
     */
    workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default(1),
    /** pino level for the gateway's own log lines. */
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /** How long close() waits for in-flight requests before it cuts them off. */
    drainTimeout: duration.default(10_000),
  });

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
    raw.routes.forEach((r: unknown, i: number) => {
      if (!isRecord(r)) return;
      if (typeof r.service === 'string' && !Object.hasOwn(services, r.service)) {
        issues.push({ path: ['routes', i, 'service'], message: `unknown service "${r.service}"` });
      }
      if (typeof r.prefix !== 'string') return;
      const prefix = routePrefix(r.prefix);
      const first = seen.get(prefix);
      if (first !== undefined) issues.push({ path: ['routes', i, 'prefix'], message: `duplicate prefix "${r.prefix}" (also routes[${first}])` });
      else seen.set(prefix, i);
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
  const sharedRedis = isRecord(raw.discovery) && isRecord(raw.discovery.redis);
  if (Array.isArray(raw.routes)) {
    raw.routes.forEach((r: unknown, i: number) => {
      if (isRecord(r) && isRecord(r.rateLimit) && r.rateLimit.redis === true && !sharedRedis) {
        issues.push({ path: ['routes', i, 'rateLimit', 'redis'], message: 'true needs discovery.redis (or give a redis:// URL here)' });
      }
    });
  }
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

function isRecord(value: unknown): value is Record<string, unknown> {
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

/** The config as users write it (durations as strings, defaults optional). */
export type GatewayConfigInput = z.input<typeof configSchema>;
/** The validated config: defaults filled in, durations in milliseconds. */
export type GatewayConfig = z.output<typeof configSchema>;
/** One validated `services.<name>` entry. */
export type ServiceConfig = GatewayConfig['services'][string];
/** One validated `routes[]` entry. */
export type RouteConfig = GatewayConfig['routes'][number];
/** One validated static instance entry. */
export type InstanceConfig = ServiceConfig['instances'][number];
