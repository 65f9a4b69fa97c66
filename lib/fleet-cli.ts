import { readFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import pino from 'pino';
import { substituteEnv } from './config/env.js';
import type { Cluster, Redis } from 'ioredis';
import { configVersion, fleetPart, withLocalPart } from './config/fleet.js';
import { readConfigFile } from './config/load.js';
import type { GatewayConfigInput } from './config/schema.js';
import { ConfigError } from './errors.js';
import { createGateway } from './index.js';
import { FleetConfigStore, connectRedis, parseRedisTarget, type GatewayConfigStatus, type StoredConfig } from './redis/index.js';

export { parseRedisTarget } from './redis/index.js';

/** A gateway that has not reported for this long is shown as gone. */
const GONE_AFTER_MS = 15_000;

/** What the fleet commands share: their Redis, their output. */
export interface FleetCommandContext {
  redis: string;
  prefix: string;
  out: (line: string) => void;
  err: (line: string) => void;
  /** How long to wait for the gateways to report the new version. */
  waitMs: number;
}

async function withStore<T>(ctx: FleetCommandContext, run: (store: FleetConfigStore) => Promise<T>): Promise<T> {
  // Patient: a command sent while Sentinel fails the master over waits for the new master.
  // Commands queue until a connection is ready (ioredis reconnects every 250 ms, 20 times at most).
  const client: Redis | Cluster = connectRedis(parseRedisTarget(ctx.redis), { enableOfflineQueue: true, commandTimeout: 20_000, maxRetriesPerRequest: 20, retryStrategy: (times: number) => (times > 20 ? null : 250) });
  client.on('error', () => {});
  try {
    return await run(new FleetConfigStore(client, ctx.prefix));
  } finally {
    client.disconnect();
  }
}

/**
 * Validates a fleet document as a gateway of the fleet would (plugin modules resolve against
 * `baseDir`): with the file's own `discovery` if it has one, else a `discovery.redis` like the
 * gateways have, since every gateway that follows the fleet has one (`rateLimit.redis: true` needs it).
 */
async function validateFleet(document: unknown, ctx: FleetCommandContext, baseDir: string, source?: string): Promise<void> {
  const own = (document as { discovery?: unknown } | null)?.discovery;
  const local = { discovery: own ?? { redis: { url: 'redis://127.0.0.1:6379', prefix: ctx.prefix } } };
  const gateway = createGateway(withLocalPart(document, local) as GatewayConfigInput, { baseDir, source, logger: pino({ level: 'silent' }) });
  await gateway.validate();
}

/** `meshgate apply --config FILE --redis URL`: stores the file's fleet part as the fleet's new version. */
export async function applyCommand(ctx: FleetCommandContext, file: string): Promise<number> {
  const { document, baseDir, source } = await readConfigFile(file);
  await validateFleet(document, ctx, baseDir, source);
  const version = configVersion(document);
  return withStore(ctx, async (store) => {
    const at = Date.now();
    const previous = await store.publish(version, fleetPart(document), 'apply');
    ctx.out(`${file}: stored version ${version} (was ${previous ?? 'none'})`);
    return waitForFleet(ctx, store, version, at);
  });
}

/** `meshgate rollback --redis URL [--to VERSION]`: the previous stored version (or the one named) becomes current. */
export async function rollbackCommand(ctx: FleetCommandContext, to: string | undefined): Promise<number> {
  return withStore(ctx, async (store) => {
    const current = await store.current();
    const history = await store.history();
    const target = to === undefined ? history.find((s) => s.version !== current?.version) : history.find((s) => s.version === to);
    if (target === undefined) {
      ctx.err(to === undefined ? 'meshgate rollback: no earlier version stored' : `meshgate rollback: version ${to} is not in the history (${history.map((s) => s.version).join(', ') || 'empty'})`);
      return 1;
    }
    const at = Date.now();
    await store.publish(target.version, target.document, 'rollback');
    ctx.out(`rolled back to ${target.version} (stored ${new Date(target.storedAt).toISOString()} by ${target.origin}; was ${current?.version ?? 'none'})`);
    return waitForFleet(ctx, store, target.version, at);
  });
}

/** `meshgate shift --route NAME --backend SERVICE --weight N --redis URL`: one backend weight, as a new fleet version. */
export async function shiftCommand(ctx: FleetCommandContext, routeName: string, backend: string, weight: number): Promise<number> {
  return withStore(ctx, async (store) => {
    const current = await store.current();
    if (current === null) {
      ctx.err('meshgate shift: no fleet config in Redis yet; store one with meshgate apply first');
      return 1;
    }
    const document = structuredClone(current.document) as { routes?: Record<string, unknown>[] };
    const routes = document.routes ?? [];
    const route = routes.find((r) => (r.name ?? r.prefix ?? r.path) === routeName);
    if (route === undefined) {
      ctx.err(`meshgate shift: no route named ${JSON.stringify(routeName)} (routes: ${routes.map((r) => String(r.name ?? r.prefix ?? r.path)).join(', ')})`);
      return 1;
    }
    const backends = route.backends as { service: string; weight?: number | string; subset?: Record<string, string> }[] | undefined;
    // A backend by its service, or by its name when one service has several subsets (`users{version=v2}`).
    const nameOf = (b: { service: string; subset?: Record<string, string> }): string =>
      b.subset === undefined || Object.keys(b.subset).length === 0 ? b.service : `${b.service}{${Object.entries(b.subset).sort(([x], [y]) => (x < y ? -1 : 1)).map(([k, v]) => `${k}=${v}`).join(',')}}`;
    const matching = backends?.filter((b) => nameOf(b) === backend || b.service === backend) ?? [];
    if (backends === undefined || matching.length !== 1) {
      ctx.err(
        backends === undefined
          ? `meshgate shift: route ${routeName} sends to one service; give it backends first`
          : matching.length > 1
            ? `meshgate shift: route ${routeName} has several backends of ${JSON.stringify(backend)}; name one: ${matching.map(nameOf).join(', ')}`
            : `meshgate shift: route ${routeName} has no backend ${JSON.stringify(backend)} (backends: ${backends.map(nameOf).join(', ')})`,
      );
      return 1;
    }
    const target = matching[0]!;
    const before = target.weight ?? 1;
    target.weight = weight;
    try {
      await validateFleet(document, ctx, process.cwd());
    } catch (err) {
      ctx.err(`meshgate shift: the result would not be valid:\n${err instanceof ConfigError ? err.message : (err as Error).message}`);
      return 1;
    }
    const numeric = backends.every((b) => typeof (b.weight ?? 1) === 'number');
    const total = numeric ? backends.reduce((sum, b) => sum + Number(b.weight ?? 1), 0) : 0;
    const shares = backends.map((b) => `${nameOf(b)} ${String(b.weight ?? 1)}${numeric ? ` (${total === 0 ? 0 : Math.round((Number(b.weight ?? 1) / total) * 1000) / 10}%)` : ''}`).join(', ');
    const changed = `route ${routeName}: ${nameOf(target)} weight ${String(before)} -> ${weight}; now ${shares}`;
    const version = configVersion(document);
    const at = Date.now();
    await store.publish(version, document, 'shift');
    ctx.out(`${changed}; version ${version} (was ${current.version})`);
    return waitForFleet(ctx, store, version, at);
  });
}

/** Waits until every live gateway runs `version` (or refused it), printing each; 1 when one refused it. */
async function waitForFleet(ctx: FleetCommandContext, store: FleetConfigStore, version: string, publishedAt: number): Promise<number> {
  const deadline = Date.now() + ctx.waitMs;
  let gateways: GatewayConfigStatus[] = [];
  const settled = (g: GatewayConfigStatus): boolean => g.version === version || g.refused?.version === version;
  for (;;) {
    gateways = (await store.gateways()).filter((g) => Date.now() - g.seenAt < GONE_AFTER_MS);
    if (gateways.every(settled) || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (gateways.length === 0) {
    ctx.out('no gateway is running; each applies it when it starts');
    return 0;
  }
  let refused = 0;
  for (const g of gateways) {
    if (g.version === version) ctx.out(`  ${g.id} (${g.host}:${g.pid}) runs ${version}${g.appliedAt >= publishedAt ? `, applied ${g.appliedAt - publishedAt} ms after it was stored` : ''}`);
    else if (g.refused?.version === version) {
      refused++;
      ctx.out(`  ${g.id} (${g.host}:${g.pid}) REFUSED it, still runs ${g.version}: ${g.refused.error}`);
    } else ctx.out(`  ${g.id} (${g.host}:${g.pid}) still runs ${g.version} after ${ctx.waitMs} ms`);
  }
  return refused > 0 ? 1 : 0;
}

/** `meshgate status --redis URL [--json]`: the fleet's gateways, what each runs, how each is. */
export async function statusCommand(ctx: FleetCommandContext, json: boolean): Promise<number> {
  return withStore(ctx, async (store) => {
    const [current, gateways] = await Promise.all([store.current(), store.gateways()]);
    const now = Date.now();
    if (json) {
      ctx.out(JSON.stringify({ version: current?.version ?? null, storedAt: current?.storedAt ?? null, gateways: gateways.map((g) => ({ ...g, gone: now - g.seenAt >= GONE_AFTER_MS })) }, null, 2));
      return 0;
    }
    ctx.out(current === null ? 'fleet config: none stored (gateways run their local files)' : `fleet config: ${current.version}, stored ${ago(now - current.storedAt)} ago by ${current.origin}`);
    const rows = [['GATEWAY', 'HOST', 'VERSION', 'SOURCE', 'APPLIED', 'READY', 'INSTANCES', 'SEEN', 'NOTE']];
    for (const g of gateways) {
      const gone = now - g.seenAt >= GONE_AFTER_MS;
      const note = [gone ? 'gone?' : '', current !== null && g.version !== current.version && !gone ? 'not on the fleet version' : '', g.refused ? `refused ${g.refused.version}: ${g.refused.error.split('\n')[0]}` : '']
        .filter(Boolean)
        .join('; ');
      rows.push([g.id, `${g.host}:${g.pid}`, g.version, g.source, `${ago(now - g.appliedAt)} ago`, g.ready ? 'yes' : 'no', `${g.instances.healthy}/${g.instances.total} healthy`, `${ago(now - g.seenAt)} ago`, note]);
    }
    if (gateways.length === 0) ctx.out('no gateway has reported');
    else for (const line of table(rows)) ctx.out(line);
    return 0;
  });
}

function ago(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)}s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m`;
  return `${Math.round(ms / 3_600_000)}h`;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd());
}

export type { StoredConfig };

/**
 * The document `meshgate start` begins with: a gateway whose file has `discovery.redis` starts
 * from its fleet's current config (over its own local part), or, when Redis does not answer
 * within a moment, from the fleet config it cached on disk, so that the plugins and settings only
 * a start can change (`plugins`, `metrics`, `tracing`, `accessLog`) come from the fleet too. A
 * fleet config this host cannot run is not started from: the file is, and the gateway reports the
 * refusal once it runs. Returns the file's document when there is no fleet config to use.
 */
export async function startingDocument(document: unknown, baseDir: string, source: string, log: (line: string) => void): Promise<unknown> {
  const issues: { path: string; message: string }[] = [];
  const raw = (document as { discovery?: { redis?: unknown } } | null)?.discovery?.redis;
  if (raw === undefined || raw === null || typeof raw !== 'object') return document;
  const redis = substituteEnv(raw, process.env, issues) as { url?: string; options?: Record<string, unknown>; cluster?: string[]; prefix?: string; configCache?: string | false };
  if (issues.length > 0 || typeof redis.url !== 'string') return document;
  let stored: StoredConfig | null = null;
  let from = 'fleet';
  // One try, bounded: no reconnects, no Sentinel retries (ioredis retries Sentinels forever by default).
  const client = connectRedis(
    { url: redis.url, options: redis.options, cluster: redis.cluster },
    { lazyConnect: true, connectTimeout: 1500, commandTimeout: 1500, maxRetriesPerRequest: 0, retryStrategy: () => null, sentinelRetryStrategy: () => null },
  );
  client.on('error', () => {});
  let deadline: NodeJS.Timeout | undefined;
  try {
    const read = (async () => {
      await client.connect();
      return new FleetConfigStore(client, redis.prefix ?? 'meshgate:').current();
    })();
    read.catch(() => {});
    stored = await Promise.race([read, new Promise<never>((_, reject) => (deadline = setTimeout(() => reject(new Error('Redis did not answer in time')), 3000)))]);
    if (stored === null) return document;
  } catch {
    const cache = redis.configCache ?? '.meshgate-fleet-cache.json';
    if (cache === false) return document;
    try {
      stored = JSON.parse(await readFile(isAbsolute(cache) ? cache : join(baseDir, cache), 'utf8')) as StoredConfig;
      from = `the cache ${cache} (Redis did not answer)`;
    } catch {
      return document;
    }
  } finally {
    clearTimeout(deadline);
    client.disconnect();
  }
  const merged = withLocalPart(stored.document, document);
  try {
    await createGateway(merged as GatewayConfigInput, { baseDir, source, logger: pino({ level: 'silent' }) }).check();
  } catch (err) {
    log(`the fleet config ${stored.version} from ${from} cannot run here, starting from ${source}: ${(err as Error).message.split('\n').slice(0, 3).join(' ')}`);
    return document;
  }
  log(`starting from the fleet config ${stored.version} (${from}), with listen, admin and discovery from ${source}`);
  return merged;
}

/** An instance as `GET /services/:name` shows it. */
interface AdminInstance {
  id: string;
  url: string;
  weight: number;
  zone?: string;
  metadata?: Record<string, unknown>;
  health: string;
  circuit: string;
  ejectedUntil?: string;
  inflight: number;
  source?: string;
  ttl?: number;
  lastHeartbeat?: string;
}

/**
 * `meshgate status --admin URL [--token T] [--json] [--watch]`: one gateway's services and
 * instances from its admin API, as an aligned table (coloured when stdout is a terminal), JSON,
 * or a table redrawn every second until Ctrl-C.
 */
export async function adminStatusCommand(options: { admin: string; token?: string; json: boolean; watch: boolean; out: (text: string) => void; color: boolean; signal?: AbortSignal }): Promise<number> {
  const base = options.admin.replace(/\/+$/, '');
  const headers: Record<string, string> = options.token ? { authorization: `Bearer ${options.token}` } : {};
  const get = async (path: string): Promise<unknown> => {
    const res = await fetch(`${base}${path}`, { headers, signal: AbortSignal.timeout(5000) });
    if (res.status === 401) throw new Error(`${base} needs the admin token (--token or $MESHGATE_ADMIN_TOKEN)`);
    if (!res.ok) throw new Error(`${base}${path} answered ${res.status}`);
    return res.json();
  };
  const read = async (): Promise<{ name: string; balancer: string; instances: AdminInstance[] }[]> => {
    const list = (await get('/services')) as { services: { name: string }[] };
    return Promise.all(list.services.map(async (s) => (await get(`/services/${encodeURIComponent(s.name)}`)) as { name: string; balancer: string; instances: AdminInstance[] }));
  };
  const render = (services: Awaited<ReturnType<typeof read>>): string => {
    if (options.json) return `${JSON.stringify({ admin: base, services }, null, 2)}\n`;
    const paint = (text: string, code: number): string => (options.color ? `\u001b[${code}m${text}\u001b[0m` : text);
    const rows: string[][] = [['SERVICE', 'INSTANCE', 'URL', 'HEALTH', 'CIRCUIT', 'INFLIGHT', 'WEIGHT', 'ZONE', 'VERSION', 'SOURCE', 'LEASE']];
    const colours: number[][] = [[]];
    for (const service of services) {
      if (service.instances.length === 0) {
        rows.push([service.name, '-', '-', 'no instances', '', '', '', '', '', '', '']);
        colours.push([0, 0, 0, 33]);
      }
      for (const inst of service.instances) {
        const health = inst.ejectedUntil ? 'ejected' : inst.health;
        const lease = inst.ttl === undefined ? '' : inst.lastHeartbeat ? `${Math.max(0, Math.round((Date.parse(inst.lastHeartbeat) + inst.ttl - Date.now()) / 1000))}s left` : '';
        rows.push([service.name, inst.id, inst.url, health, inst.circuit, String(inst.inflight), String(inst.weight), inst.zone ?? '', String(inst.metadata?.version ?? ''), inst.source ?? '', lease]);
        colours.push([0, 0, 0, health === 'healthy' ? 32 : health === 'draining' ? 33 : 31, inst.circuit === 'closed' ? 32 : inst.circuit === 'half-open' ? 33 : 31]);
      }
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
    return `${rows
      .map((r, y) => r.map((cell, i) => {
        const padded = i === r.length - 1 ? cell : cell.padEnd(widths[i]!);
        const code = colours[y]?.[i] ?? 0;
        return code === 0 ? padded : paint(padded, code);
      }).join('  ').trimEnd())
      .join('\n')}\n`;
  };
  if (!options.watch) {
    options.out(render(await read()));
    return 0;
  }
  while (!options.signal?.aborted) {
    let frame: string;
    try {
      frame = render(await read());
    } catch (err) {
      frame = `${(err as Error).message}\n`;
    }
    // Clear the screen and draw again: the table redrawn in place, once a second.
    options.out(`${options.color ? '\u001b[2J\u001b[H' : ''}${new Date().toISOString()}  ${base}\n${frame}`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return 0;
}
