import { PluginError, type ConfigIssue } from '../errors.js';
import { checkSchema } from './issues.js';
import { formatPath } from './path.js';
import { CORE_KEYS, isRecord, type GatewayConfig, type RouteConfig } from './schema.js';
import type { StandardSchemaV1 } from './standard-schema.js';

/** Where a plugin's section sits: the top level (or `discovery`), `services.<name>`, or `routes[i]`. */
export type SectionLevel = 'global' | 'service' | 'route';

/** What a section's `prepare` gets besides its options. */
export interface SectionContext {
  /** The section's path in the document, as errors name it: `routes[2].auth`, `services.users.retries`, `metrics`. */
  readonly path: string;
  /** The whole validated config the section belongs to. */
  readonly config: GatewayConfig;
  /** For a route's section: that route's entry. */
  readonly route?: RouteConfig;
  /** For a service's section: the service's name. */
  readonly service?: string;
  /** Resolves a path written in the config against the config file's directory. */
  resolvePath(path: string): string;
}

/**
 * One config section a plugin owns: its key, its schema, and optionally how its parsed options
 * become what the plugin uses per request.
 * @example
 * { key: 'maintenance', schema: z.strictObject({ enabled: z.boolean(), status: z.number().default(503) }) }
 */
export interface SectionSpec<T = unknown, P = T> {
  /**
   * The key: `circuitBreaker` stands for `services.<name>.circuitBreaker`, `auth` for `routes[i].auth`,
   * `metrics` for the top-level `metrics`. A global section may sit under `discovery`: `discovery.redis`.
   */
  readonly key: string;
  /** Any Standard Schema (zod 4, valibot, arktype, ...); it must validate synchronously. */
  readonly schema: StandardSchemaV1<unknown, T>;
  /**
   * Turns the parsed options into what the plugin reads per request (compiled matchers, token
   * buckets, keys). Runs once per config snapshot for each occurrence of the section, and only when
   * the options changed since the previous snapshot: otherwise the previous result is kept, with
   * whatever state it holds. Throw a `ConfigError` (or any error) to refuse the config; a plain
   * error is reported at the section's path.
   * @default the parsed options as they are
   */
  prepare?(options: T, context: SectionContext): P;
}

/**
 * The sections a plugin declares, at most one per level. `G`, `S`, `R` are the parsed options,
 * `GP`, `SP`, `RP` what `prepare` makes of them.
 */
export interface PluginSections<G = unknown, S = unknown, R = unknown, GP = G, SP = S, RP = R> {
  readonly global?: SectionSpec<G, GP>;
  readonly service?: SectionSpec<S, SP>;
  readonly route?: SectionSpec<R, RP>;
}

/** A plugin as the config schema sees it: a name and the sections it owns. */
export interface SectionOwner {
  readonly name: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  readonly config?: PluginSections<any, any, any, any, any, any>;
}

/** Every declared section by level and key, with its owner. */
export type SectionIndex = Record<SectionLevel | 'discovery', Map<string, { owner: string; spec: SectionSpec }>>;

/**
 * Indexes the sections of `owners`. A key two plugins declare, or one the core owns, is a plugin
 * bug and throws a {@link PluginError} naming both.
 */
export function indexSections(owners: Iterable<SectionOwner>): SectionIndex {
  const index: SectionIndex = { global: new Map(), discovery: new Map(), service: new Map(), route: new Map() };
  for (const owner of owners) {
    for (const level of ['global', 'service', 'route'] as const) {
      const spec = owner.config?.[level];
      if (spec === undefined) continue;
      if (typeof spec.key !== 'string' || spec.key === '' || typeof spec.schema?.['~standard']?.validate !== 'function') {
        throw new PluginError(`plugin "${owner.name}": its ${level} section needs a key and a Standard Schema (zod 4, valibot, arktype, ...)`);
      }
      const [where, key] = level === 'global' && spec.key.startsWith('discovery.') ? (['discovery', spec.key.slice('discovery.'.length)] as const) : ([level, spec.key] as const);
      if (CORE_KEYS[where].has(key)) throw new PluginError(`plugin "${owner.name}" declares the ${level} section "${spec.key}", which is the core's`);
      const taken = index[where].get(key);
      if (taken !== undefined) throw new PluginError(`plugin "${owner.name}" declares the ${level} section "${spec.key}", which plugin "${taken.owner}" declares too`);
      index[where].set(key, { owner: owner.name, spec });
    }
  }
  return index;
}

/** What to do with a key no known plugin declares: an `unknown field` issue, or nothing yet (more plugins may come). */
export type UnknownSections = 'error' | 'ignore';

/**
 * Checks every plugin section of the raw document against its schema and writes the parsed
 * values into `parsed` (the core's validated config, when it validated). Returns the issues, each
 * with its full path, so they are reported together with the core's own.
 */
export function checkSections(raw: unknown, parsed: GatewayConfig | undefined, index: SectionIndex, unknown: UnknownSections): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (!isRecord(raw)) return issues;
  const level = (
    object: Record<string, unknown>,
    core: ReadonlySet<string>,
    sections: SectionIndex[SectionLevel | 'discovery'],
    path: PropertyKey[],
    target: Record<string, unknown> | undefined,
  ): void => {
    for (const [key, value] of Object.entries(object)) {
      if (core.has(key)) continue;
      const section = sections.get(key);
      if (section === undefined) {
        if (unknown === 'error') issues.push({ path: formatPath([...path, key]), message: 'unknown field' });
        continue;
      }
      const checked = checkSchema(section.spec.schema, value, [...path, key]);
      if (!checked.ok) issues.push(...checked.issues);
      else if (target !== undefined) target[key] = checked.value;
    }
  };
  const config = parsed as Record<string, unknown> | undefined;
  level(raw, CORE_KEYS.global, index.global, [], config);
  if (isRecord(raw.discovery)) level(raw.discovery, CORE_KEYS.discovery, index.discovery, ['discovery'], config?.discovery as Record<string, unknown> | undefined);
  if (isRecord(raw.services)) {
    for (const [name, service] of Object.entries(raw.services)) {
      if (isRecord(service)) level(service, CORE_KEYS.service, index.service, ['services', name], parsed?.services[name]);
    }
  }
  if (Array.isArray(raw.routes)) {
    raw.routes.forEach((route: unknown, i) => {
      if (isRecord(route)) level(route, CORE_KEYS.route, index.route, ['routes', i], parsed?.routes[i]);
    });
  }
  return issues;
}

/**
 * Gives a plugin's section declarations their types (the options each schema parses to, and what
 * `prepare` makes of them), for a plugin whose sections are declared apart from its factory.
 */
export function defineSections<G = unknown, S = unknown, R = unknown, GP = G, SP = S, RP = R>(sections: PluginSections<G, S, R, GP, SP, RP>): PluginSections<G, S, R, GP, SP, RP> {
  return sections;
}
