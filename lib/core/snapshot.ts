import { createHash } from 'node:crypto';
import type { GatewayConfig, ServiceConfig } from '../config/schema.js';
import type { SectionContext, SectionOwner, SectionSpec } from '../config/sections.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { compileTrust, type ProxyTrust } from '../http/net.js';
import type { ServicePolicy } from './policy.js';
import { Router } from './router.js';

/**
 * One immutable view of the config, and everything derived from it: the route table, each
 * service's policy, and every plugin's prepared sections. A request takes the snapshot in force
 * when it starts and reads only that one to its end, so swapping in a new snapshot (a reload) is
 * one assignment: requests in flight finish on the config they started with.
 */
export class ConfigSnapshot {
  /** The validated config. */
  readonly config: GatewayConfig;
  /** A hash of the config document's fleet part (`configVersion`): equal documents have equal versions. */
  readonly version: string;
  /** When the snapshot was made (epoch ms). */
  readonly createdAt = Date.now();
  /** When it was put in force (epoch ms); 0 until then. */
  appliedAt = 0;
  readonly router: Router;
  /** Each service's policy, by name. */
  readonly services: ReadonlyMap<string, ServicePolicy>;
  /** The plugins' prepared global sections, by plugin slot. */
  readonly global: readonly unknown[];
  /** How far to believe X-Forwarded-For (`listen.trustProxy`, compiled). */
  readonly trust: ProxyTrust;
  /** @internal every prepared section by where it sits, with the options it came from: what the next snapshot may reuse. */
  readonly prepared: ReadonlyMap<string, { json: string; value: unknown }>;

  constructor(parts: {
    config: GatewayConfig;
    router: Router;
    services: ReadonlyMap<string, ServicePolicy>;
    global: readonly unknown[];
    prepared: ReadonlyMap<string, { json: string; value: unknown }>;
    version?: string;
  }) {
    this.config = parts.config;
    this.version = parts.version ?? createHash('sha256').update(JSON.stringify(parts.config)).digest('hex').slice(0, 12);
    this.router = parts.router;
    this.services = parts.services;
    this.global = parts.global;
    this.trust = compileTrust(parts.config.listen.trustProxy);
    this.prepared = parts.prepared;
  }

  /** What is valid but probably not meant: routes that can never match. `meshgate validate` prints these; the gateway logs them at start. */
  warnings(): string[] {
    return this.router
      .unreachable()
      .map(({ route, shadowedBy }) => `routes[${route.index}] ("${route.name}") can never match: routes[${shadowedBy.index}] ("${shadowedBy.name}") ranks before it and matches every request it would`);
  }
}

/** How a config reached `Gateway.reload()`. */
export interface ReloadOptions {
  /** The file it came from, named in errors. */
  source?: string;
  /** `file`, `admin`, `fleet`, `api` (the default): in the events and the log line. */
  origin?: string;
  /** Apply only if this is still the running version when the reload's turn comes (else a 409 `MESH_ERR_CONFIG_CONFLICT`). */
  ifMatch?: string;
}

/** What {@link buildSnapshot} needs besides the config. */
export interface SnapshotOptions {
  /** The registered plugins; a plugin's slot is its index here. */
  plugins: readonly SectionOwner[];
  resolvePath(path: string): string;
  /** The snapshot in force: sections whose options did not change keep its prepared values (and their state). */
  previous?: ConfigSnapshot | null;
  /** The document's version (`configVersion`); by default a hash of the validated config. */
  version?: string;
}

/**
 * Builds the snapshot of a validated config: compiles the routes, makes each service's policy and
 * runs every plugin section's `prepare`. Throws one {@link ConfigError} with every problem a
 * `prepare` found, each at its section's path.
 */
export function buildSnapshot(config: GatewayConfig, options: SnapshotOptions): ConfigSnapshot {
  const issues: ConfigIssue[] = [];
  const previous = options.previous ?? null;
  const prepared = new Map<string, { json: string; value: unknown }>();
  /** The prepared values of one place (the top level, a service, a route), by plugin slot. */
  const sectionsAt = (
    level: 'global' | 'service' | 'route',
    place: string,
    read: (key: string) => unknown,
    pathOf: (key: string) => string,
    where: Pick<SectionContext, 'route' | 'service'> = {},
  ): unknown[] => {
    const values: unknown[] = [];
    options.plugins.forEach((plugin, slot) => {
      const spec = plugin.config?.[level] as SectionSpec | undefined;
      if (spec === undefined) return;
      const raw = read(spec.key);
      if (raw === undefined) return;
      const id = `${slot}|${place}`;
      const json = JSON.stringify(raw) ?? '';
      const before = previous?.prepared.get(id);
      if (before !== undefined && before.json === json) {
        values[slot] = before.value;
        prepared.set(id, before);
        return;
      }
      try {
        const value = spec.prepare === undefined ? raw : spec.prepare(raw, { path: pathOf(spec.key), config, resolvePath: options.resolvePath, ...where });
        values[slot] = value;
        prepared.set(id, { json, value });
      } catch (err) {
        if (err instanceof ConfigError) issues.push(...err.issues);
        else issues.push({ path: pathOf(spec.key), message: (err as Error)?.message ?? String(err) });
      }
    });
    return values;
  };

  const global = sectionsAt(
    'global',
    'global',
    (key) => (key.startsWith('discovery.') ? config.discovery?.[key.slice('discovery.'.length)] : (config as Record<string, unknown>)[key]),
    (key) => key,
  );
  const services = new Map<string, ServicePolicy>();
  for (const [name, service] of Object.entries(config.services)) {
    const before = previous?.services.get(name);
    services.set(name, {
      name,
      config: service,
      sections: sectionsAt('service', `service:${name}`, (key) => (service as Record<string, unknown>)[key], (key) => `services.${name}.${key}`, { service: name }),
      balancer: before !== undefined && sameBalancing(before.config, service) ? before.balancer : null,
    });
  }
  const router = new Router();
  config.routes.forEach((route, i) => {
    const sections = sectionsAt('route', `route:${route.name ?? i}`, (key) => (route as Record<string, unknown>)[key], (key) => `routes[${i}].${key}`, { route });
    router.add(route, { policyOf: (service) => services.get(service) ?? null, sections });
  });
  if (issues.length > 0) throw new ConfigError(issues);
  return new ConfigSnapshot({ config, router, services, global, prepared, version: options.version });
}

/** Whether a service's balancer can carry on from one config to the next. */
function sameBalancing(a: ServiceConfig, b: ServiceConfig): boolean {
  return a.balancer === b.balancer && a.hashOn === b.hashOn && a.slowStart === b.slowStart;
}
