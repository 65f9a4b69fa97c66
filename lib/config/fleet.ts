import { createHash } from 'node:crypto';

/**
 * The keys of a config that belong to one gateway, never to the fleet: its own ports and
 * addresses, its Redis, its process count. A reload cannot change them (they need a restart), and
 * a fleet config stored in Redis neither holds nor overrides them.
 */
export const LOCAL_KEYS = ['listen', 'admin', 'discovery', 'workers'] as const;

/**
 * Keys whose plugins read them once, when they start (the metrics registry, the dashboard's series, the trace exporter,
 * the access log's destination, the plugin modules): a reload that changes them is refused with a
 * restart message rather than half-applied.
 */
export const RESTART_KEYS = [...LOCAL_KEYS, 'plugins', 'metrics', 'tracing', 'accessLog', 'dashboard'] as const;

/** The fleet's part of a config document: everything but {@link LOCAL_KEYS}. */
export function fleetPart(document: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (document === null || typeof document !== 'object' || Array.isArray(document)) return out;
  for (const [key, value] of Object.entries(document)) if (!(LOCAL_KEYS as readonly string[]).includes(key)) out[key] = value;
  return out;
}

/** A gateway's document made of its local part (`local`'s {@link LOCAL_KEYS}) and a fleet config. */
export function withLocalPart(fleet: unknown, local: unknown): Record<string, unknown> {
  const out = fleetPart(fleet);
  if (local !== null && typeof local === 'object') {
    for (const key of LOCAL_KEYS) if (key in local) out[key] = (local as Record<string, unknown>)[key];
  }
  return out;
}

/** `document` with the {@link LOCAL_KEYS} it lacks taken from `local`: those it has are its own (a reload refuses to change them). */
export function fillLocalPart(document: Record<string, unknown>, local: unknown): Record<string, unknown> {
  const out = { ...document };
  if (local !== null && typeof local === 'object') {
    for (const key of LOCAL_KEYS) if (!(key in out) && key in local) out[key] = (local as Record<string, unknown>)[key];
  }
  return out;
}

/**
 * The version of a config document: a hash of its fleet part as written (keys sorted, `${ENV}`
 * references unexpanded), so gateways with different ports that run the same fleet config report
 * the same version, and a document reformatted but unchanged keeps its version.
 */
export function configVersion(document: unknown): string {
  return createHash('sha256').update(canonicalJson(fleetPart(document))).digest('hex').slice(0, 12);
}

/** JSON with object keys sorted at every level. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]));
  });
}

const SECRET_KEY = /^(token|secret|password|passphrase|key|keys|apiKey|credentials?)$/i;

/**
 * A config document with its secrets replaced by `"[redacted]"`: values under secret-looking
 * keys (`token`, `secret`, `password`, `key`, `keys`), API key lists, and passwords in URLs. A
 * `${ENV}` reference is not a secret and is kept, so a document read back can be sent back.
 */
export function redactSecrets(value: unknown, key = ''): unknown {
  if (typeof value === 'string') {
    if (/^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$/.test(value)) return value;
    if (SECRET_KEY.test(key)) return REDACTED;
    return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/@\s]*):([^/@\s]*)@/i, (_m, scheme: string, user: string) => `${scheme}${user}:${REDACTED}@`);
  }
  if (Array.isArray(value)) return value.map((item) => (SECRET_KEY.test(key) && typeof item !== 'object' ? redactSecrets(item, key) : redactSecrets(item, '')));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactSecrets(v, k)]));
  }
  return value;
}

/** What {@link redactSecrets} puts where a secret was. */
export const REDACTED = '[redacted]';

/**
 * A document sent back after `GET /config` has `"[redacted]"` where the running one has secrets:
 * each is put back from the running document, so a read-change-write round trip keeps them. An
 * item of a list is matched to the running item it came from by its `name`, or (a route) by what
 * it matches on, or by being unchanged but for its secrets, never by position alone: a secret
 * never moves to another entry when entries are removed or reordered. A `"[redacted]"` with no
 * such origin is a problem at its path: it is never taken as a secret. Plain list items (API keys)
 * are matched by position only while the list keeps its length.
 */
export function restoreRedacted(value: unknown, running: unknown, path: (string | number)[] = [], issues: { path: string; message: string }[] = []): unknown {
  const where = (): string => path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
  if (typeof value === 'string' && value.includes(REDACTED)) {
    // The value itself, or a URL whose password was shown redacted: the running one, if it is the same but for that.
    if (value === REDACTED && (typeof running === 'string' || typeof running === 'number')) return running;
    if (typeof running === 'string' && redactSecrets(running) === value) return running;
    issues.push({ path: where(), message: `"${REDACTED}" is what GET /config shows in place of a secret; give the secret (or a \${ENV} reference)` });
    return value;
  }
  if (Array.isArray(value)) {
    const before = Array.isArray(running) ? running : [];
    return value.map((item, i) => restoreRedacted(item, originOf(item, i, value.length, before), [...path, i], issues));
  }
  if (value !== null && typeof value === 'object') {
    const from = running !== null && typeof running === 'object' && !Array.isArray(running) ? (running as Record<string, unknown>) : {};
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, restoreRedacted(v, from[k], [...path, k], issues)]));
  }
  return value;
}

/** The running list item a sent-back item came from (see {@link restoreRedacted}), or undefined. */
function originOf(item: unknown, index: number, length: number, running: readonly unknown[]): unknown {
  if (item === null || typeof item !== 'object' || Array.isArray(item)) return running.length === length ? running[index] : undefined;
  const key = identity(item as Record<string, unknown>);
  if (key !== null) return running.find((r) => r !== null && typeof r === 'object' && identity(r as Record<string, unknown>) === key);
  const shown = canonicalJson(item);
  const same = running.filter((r) => canonicalJson(redactSecrets(r)) === shown);
  return same.length === 1 ? same[0] : undefined;
}

/** What names a list item across edits: its `name`, or, for a route, what it matches on. */
function identity(item: Record<string, unknown>): string | null {
  if (typeof item.name === 'string') return `name:${item.name}`;
  if (item.prefix !== undefined || item.path !== undefined || item.pathRegex !== undefined) {
    return `route:${canonicalJson({ prefix: item.prefix, path: item.path, pathRegex: item.pathRegex, hosts: item.hosts, methods: item.methods, headers: item.headers, query: item.query })}`;
  }
  return null;
}
