#!/usr/bin/env node
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import { parseArgs } from 'node:util';
import { ConfigError, MeshError } from './errors.js';
import cluster from 'node:cluster';
import { runClusterPrimary, runClusterWorker, workerCount } from './cluster.js';
import { readConfigFile } from './config/load.js';
import type { GatewayConfigInput } from './config/schema.js';
import { watchConfigFile } from './config/watch.js';
import type { Gateway } from './core/gateway.js';
import { createGateway } from './index.js';
import { createLogger } from './kit/logger.js';
import { adminStatusCommand, applyCommand, parseRedisTarget, rollbackCommand, shiftCommand, startingDocument, statusCommand } from './fleet-cli.js';
import { parseDuration } from './config/duration.js';
import { registerInstance } from './registry/registration.js';

const HELP = `meshgate: a service-mesh gateway

Usage:
  meshgate start --config FILE [--watch]
                                      run the gateway from a YAML (or JSON) config; SIGHUP (or,
                                      with --watch, saving the file) reloads it without a restart
  meshgate validate --config FILE     check a config as start would, short of binding ports;
                                      prints every problem with its path, exit 1 if any
                                      (start and validate also take the file as their argument)
  meshgate register --registry URL --service NAME --url URL [--ttl 10s] [--token T]
                                      sidecar: register an instance, keep its lease, deregister on SIGTERM
  meshgate apply --config FILE --redis URL
                                      store a config as the fleet's new version; every gateway applies it
  meshgate shift --route NAME --backend SERVICE --weight N --redis URL
                                      change one backend weight of the fleet config (a canary step)
  meshgate rollback --redis URL [--to VERSION]
                                      make the previous fleet config version (or VERSION) current again
  meshgate status --redis URL [--json]
                                      the fleet: each gateway, the version it runs, its health
  meshgate status --admin URL [--token T] [--json] [--watch]
                                      one gateway's services and instances, live with --watch
  meshgate ca init --trust-domain DOMAIN [--out DIR]
                                      create a mesh CA (SPIFFE trust domain)
  meshgate ca issue --service NAME [--ca DIR] [--out DIR] [--ttl 24h] [--dns NAME,...]
                                      issue a short-lived certificate with spiffe://DOMAIN/NAME
  meshgate --version                  print the version
  meshgate --help                     this text; meshgate COMMAND --help for one command

Options:
  -c, --config FILE   config file (default: meshgate.yaml)
  -p, --port N        override listen.port (start)
  --registry URL      a gateway's admin API (http://127.0.0.1:9901) or the fleet's Redis (redis://127.0.0.1:6379) (register)
  --prefix PREFIX     Redis key prefix (register with redis://, default meshgate:)
  --service NAME      service to join (register)
  --url URL           this instance's URL (register)
  --ttl DURATION      lease length; heartbeats every ttl/3 (register, default 10s)
  --token TOKEN       admin token (register; default $MESHGATE_ADMIN_TOKEN)
  --weight N, --id ID, --metadata JSON   optional registration fields (register)
  --redis URL         the fleet's Redis: redis://host:port, redis-sentinel://host:port,.../MASTER,
                      redis-cluster://host:port,... (apply, shift, rollback, status)

Signals: SIGTERM or SIGINT stops taking requests, drains in-flight ones (drainTimeout), exits 0.
SIGHUP reloads the config file (an invalid one is refused and logged; the running config stays).
Docs: README.md, and the config reference in it.`;

/** The --redis and --prefix options of the fleet commands. */
const FLEET_REDIS = `  --redis URL         the fleet's Redis: redis://host:port, rediss://..., a Sentinel group
                      redis-sentinel://host:port,host:port/MASTERNAME or a Cluster
                      redis-cluster://host:port,host:port
  --prefix PREFIX     key prefix (default meshgate:, as discovery.redis.prefix)`;

/** Each command's own --help. */
const COMMAND_HELP: Record<string, string> = {
  start: `meshgate start [FILE | --config FILE] [--port N] [--watch]

Runs the gateway from a YAML (or JSON) config (default: meshgate.yaml). With workers > 1 in the
config it runs in cluster mode. SIGTERM or SIGINT stops taking requests, drains in-flight ones
(drainTimeout) and exits 0; a bad config exits 1 with every problem and its path.

SIGHUP reloads the file without a restart: the whole new config is validated first, an invalid
one is refused (logged with every bad path; the running config stays), a valid one is swapped in
while requests in flight finish on the old one. listen, admin, discovery, workers, plugins,
metrics, tracing and accessLog need a restart: a reload that changes them is refused.

Options:
  -c, --config FILE   the config file
  -p, --port N        override listen.port
  -w, --watch         reload when the file changes (after its writes settle; an empty file is refused)
  --log-format F      json (one JSON object per line) or pretty (for a person); default: pretty when
                      stderr is a terminal, else json, or $MESHGATE_LOG_FORMAT`,
  validate: `meshgate validate [FILE | --config FILE]

Checks a config as \`meshgate start\` would, short of binding ports: the core's fields, every
plugin's sections (the plugins: modules are loaded), the balancers named, the TLS files readable.
Prints "FILE: valid (...)" and exits 0, or every problem with its path and exits 1.

Options:
  -c, --config FILE   the config file (default: meshgate.yaml)`,
  apply: `meshgate apply --config FILE --redis URL [--prefix P] [--wait 5s]

Validates FILE as \`meshgate validate\` does, then stores its fleet part (everything but listen,
admin, discovery and workers, which each gateway keeps from its own file) in Redis as the fleet's
new version, and publishes it: every gateway with discovery.redis on that Redis validates it
itself and applies it within a second. Waits for the gateways to report, printing each one's
time to apply; exit 1 if one refused it (the reason is printed), 0 otherwise. Redis keeps the
last discovery.redis.configHistory versions (10) for \`meshgate rollback\`.

Options:
  -c, --config FILE   the config file
${FLEET_REDIS}
  --wait DURATION     how long to wait for the gateways (default 5s)`,
  shift: `meshgate shift --route NAME --backend SERVICE --weight N --redis URL [--prefix P]

Changes one backend's weight in the fleet config in Redis and stores the result as a new version
(a canary step: --weight 5, then 50, then 100 with the old backend at 0). NAME is the route's
name (or its prefix or path when it has none); SERVICE is the backend's service.

Options:
  --route NAME        the route
  --backend SERVICE   the backend's service
  --weight N          its new weight (0 takes it out)
${FLEET_REDIS}
  --wait DURATION     how long to wait for the gateways (default 5s)`,
  rollback: `meshgate rollback --redis URL [--to VERSION] [--prefix P]

Makes the version before the current one (or VERSION, one of the versions Redis keeps) the
fleet's current config again; every gateway applies it as it applies any new version.

Options:
  --to VERSION        the version to go back to (default: the one before the current)
${FLEET_REDIS}
  --wait DURATION     how long to wait for the gateways (default 5s)`,
  status: `meshgate status --redis URL [--json] [--prefix P]
meshgate status --admin URL [--token T] [--json] [--watch]

With --redis: the fleet: the current config version, and each gateway that reported in the last
minutes with the version it runs (and where it came from: fleet, file or cache), when it applied
it, whether it is ready, its healthy instances, and a version it refused with the reason.

With --admin: one gateway's services and instances from its admin API, as an aligned table:
URL, health (or ejected), circuit, requests in flight, weight, zone, version metadata, source and
lease left; coloured when stdout is a terminal. --watch redraws it every second until Ctrl-C.

Options:
${FLEET_REDIS}
  --admin URL         a gateway's admin API (http://127.0.0.1:9901)
  --token TOKEN       its admin token (default $MESHGATE_ADMIN_TOKEN)
  --json              machine-readable output
  --watch             redraw every second (with --admin)`,
  ca: `meshgate ca init --trust-domain DOMAIN [--out DIR]
meshgate ca issue --service NAME [--ca DIR] [--out DIR] [--ttl 24h] [--dns NAME,...]

init creates a mesh CA for a SPIFFE trust domain in DIR (default ./mesh-ca): ca.crt, ca.key
(mode 600) and trust-domain. issue makes a certificate for a service, signed by that CA, valid for
--ttl (default 24h): SAN URI spiffe://DOMAIN/NAME (the identity policies name and
services.<name>.tls.expectedIdentity checks) and SAN DNS NAME, for server and client use; it
writes NAME.crt and NAME.key in --out (default .). Re-run issue before the ttl ends: the gateway
re-reads certificate files when they change.

Options:
  --trust-domain DOMAIN   the trust domain (init), such as example.internal
  --service NAME          the service the certificate is for (issue)
  --ca DIR                the CA's directory (default ./mesh-ca)
  --out DIR               where to write
  --ttl DURATION          how long the certificate is valid (default 24h)
  --dns NAMES             extra SAN DNS names, comma-separated (issue)`,
  register: `meshgate register --registry URL --service NAME --url URL [--ttl 10s] [--token T]

A sidecar: registers an instance with a gateway's admin API (http://...) or a fleet's Redis
(redis://...), heartbeats every ttl/3, registers again when its lease was lost, and deregisters
on SIGTERM or SIGINT. When the registry cannot be reached it keeps trying, with backoff.

Options:
  --registry URL      a gateway's admin API (http://127.0.0.1:9901) or the fleet's Redis (redis://127.0.0.1:6379,
                      redis-sentinel://host:port,.../MASTER, redis-cluster://host:port,...)
  --service NAME      service to join
  --url URL           this instance's URL
  --ttl DURATION      lease length; heartbeats every ttl/3 (default 10s)
  --token TOKEN       admin token (default $MESHGATE_ADMIN_TOKEN)
  --prefix PREFIX     Redis key prefix (default meshgate:)
  --weight N, --id ID, --metadata JSON   optional registration fields`,
};

/** Runs the CLI with `argv` (without node and script). Returns the exit code, or never returns while serving. */
export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        port: { type: 'string', short: 'p' },
        registry: { type: 'string' },
        prefix: { type: 'string' },
        service: { type: 'string' },
        url: { type: 'string' },
        ttl: { type: 'string' },
        token: { type: 'string' },
        weight: { type: 'string' },
        id: { type: 'string' },
        metadata: { type: 'string' },
        'log-format': { type: 'string' },
        watch: { type: 'boolean', short: 'w' },
        redis: { type: 'string' },
        to: { type: 'string' },
        route: { type: 'string' },
        backend: { type: 'string' },
        json: { type: 'boolean' },
        wait: { type: 'string' },
        'trust-domain': { type: 'string' },
        admin: { type: 'string' },
        ca: { type: 'string' },
        out: { type: 'string' },
        dns: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    process.stderr.write(`meshgate: ${(err as Error).message}\n\n${HELP}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    process.stdout.write(`${version()}\n`);
    return 0;
  }
  const command = positionals[0];
  if (values.help && command !== undefined && Object.hasOwn(COMMAND_HELP, command)) {
    process.stdout.write(`${COMMAND_HELP[command]}\n`);
    return 0;
  }
  if (command === 'help' && positionals[1] !== undefined && Object.hasOwn(COMMAND_HELP, positionals[1])) {
    process.stdout.write(`${COMMAND_HELP[positionals[1]]}\n`);
    return 0;
  }
  if (values.help || command === 'help' || command === undefined) {
    process.stdout.write(`${HELP}\n`);
    return command === undefined && !values.help ? 2 : 0;
  }
  const logFormat = values['log-format'];
  if (logFormat !== undefined) {
    if (logFormat !== 'json' && logFormat !== 'pretty') {
      process.stderr.write(`meshgate: --log-format expects json or pretty, got ${JSON.stringify(logFormat)}\n`);
      return 2;
    }
    // Through the environment, so cluster workers log the same way.
    process.env.MESHGATE_LOG_FORMAT = logFormat;
  }
  // The file may come as --config FILE or as the command's argument: `meshgate validate bad.yaml`.
  const configFile = values.config ?? positionals[1] ?? 'meshgate.yaml';
  switch (command) {
    case 'validate':
      return validate(configFile);
    case 'start':
      if (values.port !== undefined && (!/^\d{1,5}$/.test(values.port) || Number(values.port) > 65535)) {
        process.stderr.write(`meshgate: --port expects a port number from 0 to 65535, got ${JSON.stringify(values.port)}\n`);
        return 2;
      }
      return start(configFile, values.port, values.watch === true);
    case 'register':
      return register(values);
    case 'ca':
      return caCommand(positionals[1], values);
    case 'status':
      if (typeof values.admin === 'string') return adminStatus(values);
      return fleetCommand(command, values, configFile);
    case 'apply':
    case 'shift':
    case 'rollback':
      return fleetCommand(command, values, configFile);
    default:
      process.stderr.write(`meshgate: unknown command "${command}"\n\n${HELP}\n`);
      return 2;
  }
}

async function validate(file: string): Promise<number> {
  try {
    const { document, baseDir, source } = await readConfigFile(file);
    // A gateway that never starts: its check() loads the plugin modules and validates every section.
    const gateway = createGateway(document as GatewayConfigInput, { baseDir, source, logger: pino({ level: 'silent' }) });
    const snapshot = await gateway.validate();
    const config = snapshot.config;
    for (const warning of snapshot.warnings()) process.stderr.write(`${file}: warning: ${warning}\n`);
    const services = Object.keys(config.services).length;
    process.stdout.write(`${file}: valid (${services} service${services === 1 ? '' : 's'}, ${config.routes.length} route${config.routes.length === 1 ? '' : 's'})\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${describe(err)}\n`);
    return 1;
  }
}

async function start(file: string, port: string | undefined, watch: boolean): Promise<number> {
  // Listen for the signals first: a SIGTERM that arrives while the gateway starts (its listening
  // line may already be out) must still drain and exit 0, not kill the process mid-start.
  let onSignal: ((signal: string) => void) | null = null;
  const stopped = new Promise<string>((resolve) => (onSignal = resolve));
  const onTerm = (): void => onSignal!('SIGTERM');
  const onInt = (): void => onSignal!('SIGINT');
  process.once('SIGTERM', onTerm);
  process.once('SIGINT', onInt);
  process.on('SIGHUP', holdHangup);
  const unlisten = (): void => {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  };
  let gateway;
  try {
    const { document: fileDocument, baseDir, source } = await readConfigFile(file);
    // Same format as the gateway's own lines (it does not exist yet).
    const startLog = createLogger('info');
    const config = (await startingDocument(fileDocument, baseDir, source, (line) => startLog.info(line))) as GatewayConfigInput;
    if (cluster.isWorker && process.env.MESHGATE_CLUSTER_WORKER === '1') {
      unlisten();
      await runClusterWorker(config, baseDir, source);
      return new Promise<number>(() => {}); // the worker exits on SIGTERM or when the primary goes
    }
    gateway = createGateway(config, { baseDir, source });
    if (workerCount(gateway.config.workers) > 1) {
      gateway = undefined;
      unlisten();
      return await startCluster(config, baseDir, source, port, watch);
    }
    // The gateway logs where it listens; one format on stderr, no plain-text copy of that line.
    await gateway.listen(port === undefined ? {} : { port: Number(port) });
  } catch (err) {
    unlisten();
    process.stderr.write(`${describe(err)}\n`);
    await gateway?.close();
    return 1;
  }
  const gw = gateway;
  const stopReloading = reloadOn(gw, file, watch);
  const signal = await stopped;
  stopReloading();
  unlisten();
  gw.log.info({ signal, inflight: gw.inflight }, `${signal}: draining`);
  await gw.close();
  gw.log.info('stopped');
  return 0;
}

async function register(values: Record<string, string | boolean | undefined>): Promise<number> {
  const missing = ['registry', 'service', 'url'].filter((k) => typeof values[k] !== 'string');
  if (missing.length > 0) {
    process.stderr.write(`meshgate register: missing ${missing.map((m) => `--${m}`).join(', ')}\n`);
    return 2;
  }
  let metadata: Record<string, unknown> | undefined;
  try {
    metadata = typeof values.metadata === 'string' ? (JSON.parse(values.metadata) as Record<string, unknown>) : undefined;
  } catch {
    process.stderr.write('meshgate register: --metadata must be JSON\n');
    return 2;
  }
  // Listen for signals before registering: a SIGTERM while registering (or still waiting for the
  // gateway to come up) must still end cleanly, and deregister what got registered.
  let stopRequested = false;
  const abort = new AbortController();
  const stopped = new Promise<void>((resolve) => {
    const stop = (): void => {
      stopRequested = true;
      abort.abort(new Error('stopped before the registration succeeded'));
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  let registration;
  try {
    registration = await registerInstance({
      registry: values.registry as string,
      prefix: values.prefix as string | undefined,
      service: values.service as string,
      url: values.url as string,
      ttl: (values.ttl as string | undefined) ?? '10s',
      token: values.token as string | undefined,
      id: values.id as string | undefined,
      weight: typeof values.weight === 'string' ? Number(values.weight) : undefined,
      metadata,
      ref: true,
      signal: abort.signal,
      onError: (err, retryInMs) =>
        process.stderr.write(`meshgate register: ${describeFailure(err, values.registry as string)}${retryInMs === undefined ? '' : `; trying again in ${(retryInMs / 1000).toFixed(1)}s`}\n`),
      onReregister: (id) => process.stderr.write(`meshgate register: lease was gone, registered again as ${id}\n`),
    });
  } catch (err) {
    if (stopRequested) return 0;
    process.stderr.write(`meshgate register: ${describeFailure(err, values.registry as string)}\n`);
    return 1;
  }
  if (!stopRequested) process.stderr.write(`meshgate register: ${values.url} registered in "${values.service}" as ${registration.id}\n`);
  await stopped;
  await registration.close();
  process.stderr.write(`meshgate register: deregistered ${registration.id}\n`);
  return 0;
}

/**
 * SIGHUP's default action kills the process: from the moment `start` runs until the gateway can
 * reload, a SIGHUP is held here and carried out once it can.
 */
let hangupWhileStarting = false;
function holdHangup(): void {
  hangupWhileStarting = true;
}

/**
 * Reloads the gateway's config file on SIGHUP and, with `watch`, when the file changes. A reload
 * that fails is logged by the gateway (and counted); it never stops the process.
 */
function reloadOn(gateway: Gateway, file: string, watch: boolean): () => void {
  process.off('SIGHUP', holdHangup);
  const reload = (why: string): void => {
    gateway.log.info({ file, reason: why }, `reloading ${file} (${why})`);
    gateway.reloadFile(file).catch(() => {
      // refused: the gateway logged why, and keeps its config
    });
  };
  const onHup = (): void => reload('SIGHUP');
  process.on('SIGHUP', onHup);
  if (hangupWhileStarting) {
    hangupWhileStarting = false;
    reload('SIGHUP while starting');
  }
  const unwatch = watch ? watchConfigFile(resolve(file), () => reload('file changed'), 250, (err) => gateway.log.error({ err: err.message }, `cannot watch ${file}`)) : () => {};
  if (watch) gateway.log.info({ file }, `watching ${file} for changes`);
  return () => {
    process.off('SIGHUP', onHup);
    unwatch();
  };
}

async function startCluster(config: GatewayConfigInput, baseDir: string, source: string, port: string | undefined, watch: boolean): Promise<number> {
  // Listen for the signals first: a SIGTERM while the workers start must still drain and exit 0.
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  const handle = await runClusterPrimary({
    config,
    baseDir,
    source,
    port: port === undefined ? undefined : Number(port),
    onListening: ({ url, adminUrl, workers }, log) => log.info({ url, admin: adminUrl, workers }, `meshgate ${version()} listening on ${url} with ${workers} workers${adminUrl ? `, admin on ${adminUrl}` : ''}`),
  });
  const stopReloading = reloadOn(handle.gateway, source, watch);
  await stopped;
  stopReloading();
  handle.gateway.log.info('draining the workers');
  await handle.close();
  return 0;
}

async function adminStatus(values: Record<string, string | boolean | undefined>): Promise<number> {
  const stop = new AbortController();
  const onInt = (): void => stop.abort();
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onInt);
  try {
    return await adminStatusCommand({
      admin: values.admin as string,
      token: typeof values.token === 'string' ? values.token : process.env.MESHGATE_ADMIN_TOKEN,
      json: values.json === true,
      watch: values.watch === true,
      color: process.stdout.isTTY === true && process.env.NO_COLOR === undefined,
      out: (text) => process.stdout.write(text),
      signal: stop.signal,
    });
  } catch (err) {
    process.stderr.write(`meshgate status: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onInt);
  }
}

async function caCommand(action: string | undefined, values: Record<string, string | boolean | undefined>): Promise<number> {
  const fail = (message: string): number => {
    process.stderr.write(`meshgate ca: ${message}\n`);
    return 2;
  };
  const { checkTrustDomain, createMeshCa, issueCertificate, readMeshCa, writeMeshCa } = await import('./mesh-ca.js');
  const caDir = typeof values.ca === 'string' ? values.ca : 'mesh-ca';
  if (action === 'init') {
    const domain = values['trust-domain'];
    if (typeof domain !== 'string') return fail('init needs --trust-domain DOMAIN');
    const bad = checkTrustDomain(domain);
    if (bad !== null) return fail(bad);
    const out = typeof values.out === 'string' ? values.out : caDir;
    try {
      await writeMeshCa(out, await createMeshCa(domain));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return fail(`${out}/ already holds a CA; remove it first, or give another --out (a new CA invalidates every certificate the old one issued)`);
      throw err;
    }
    process.stdout.write(`mesh CA for spiffe://${domain} written to ${out}/ (ca.crt, ca.key, trust-domain)\n`);
    return 0;
  }
  if (action === 'issue') {
    const service = values.service;
    if (typeof service !== 'string' || !/^[A-Za-z0-9._-]{1,63}$/.test(service)) return fail('issue needs --service NAME (letters, digits, ".", "-", "_")');
    const ttl = typeof values.ttl === 'string' ? parseDuration(values.ttl) : 86_400_000;
    if (ttl === undefined || ttl < 60_000) return fail(`--ttl expects a duration of at least 1m, got ${JSON.stringify(values.ttl)}`);
    let ca;
    try {
      ca = await readMeshCa(caDir);
    } catch (err) {
      return fail(`cannot read the CA in ${caDir}/ (run meshgate ca init first): ${(err as Error).message}`);
    }
    const dns = typeof values.dns === 'string' ? values.dns.split(',').filter(Boolean) : [];
    const issued = await issueCertificate(ca, service, ttl / 3_600_000, dns);
    const out = typeof values.out === 'string' ? values.out : '.';
    const { mkdir, writeFile, rename } = await import('node:fs/promises');
    const { join } = await import('node:path');
    await mkdir(out, { recursive: true });
    // Key first, then certificate, each renamed into place: a reader never sees half a file.
    for (const [name, text, mode] of [[`${service}.key`, issued.keyPem, 0o600], [`${service}.crt`, issued.certPem, 0o644]] as const) {
      await writeFile(join(out, `${name}.tmp`), text, { mode });
      await rename(join(out, `${name}.tmp`), join(out, name));
    }
    process.stdout.write(`${issued.spiffeId}: ${join(out, `${service}.crt`)} and ${join(out, `${service}.key`)}, valid ${values.ttl ?? '24h'}\n`);
    return 0;
  }
  return fail(`expected init or issue, got ${JSON.stringify(action ?? '')} (meshgate ca --help)`);
}

async function fleetCommand(command: 'apply' | 'shift' | 'rollback' | 'status', values: Record<string, string | boolean | undefined>, file: string): Promise<number> {
  const fail = (message: string): number => {
    process.stderr.write(`meshgate ${command}: ${message}\n`);
    return 2;
  };
  if (typeof values.redis !== 'string') return fail('missing --redis URL (the fleet\'s Redis)');
  let waitMs = 5000;
  if (typeof values.wait === 'string') {
    const parsed = parseDuration(values.wait);
    if (parsed === undefined) return fail(`--wait expects a duration such as 5s, got ${JSON.stringify(values.wait)}`);
    waitMs = parsed;
  }
  try {
    parseRedisTarget(values.redis);
  } catch (err) {
    return fail((err as Error).message);
  }
  const ctx = {
    redis: values.redis,
    prefix: typeof values.prefix === 'string' ? values.prefix : 'meshgate:',
    waitMs,
    out: (line: string) => process.stdout.write(`${line}\n`),
    err: (line: string) => process.stderr.write(`${line}\n`),
  };
  try {
    switch (command) {
      case 'apply':
        return await applyCommand(ctx, file);
      case 'rollback':
        return await rollbackCommand(ctx, typeof values.to === 'string' ? values.to : undefined);
      case 'status':
        return await statusCommand(ctx, values.json === true);
      case 'shift': {
        const missing = ['route', 'backend', 'weight'].filter((k) => typeof values[k] !== 'string');
        if (missing.length > 0) return fail(`missing ${missing.map((m) => `--${m}`).join(', ')}`);
        const weight = Number(values.weight);
        if (!Number.isInteger(weight) || weight < 0) return fail(`--weight expects a whole number from 0, got ${JSON.stringify(values.weight)}`);
        return await shiftCommand(ctx, values.route as string, values.backend as string, weight);
      }
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    process.stderr.write(`meshgate ${command}: ${describeFailure(err, values.redis)}\n`);
    return 1;
  }
}

/** One line for a registration failure: the registry's answer, or why it could not be reached. */
function describeFailure(err: unknown, registry: string): string {
  if (err instanceof MeshError) return err.message;
  const e = err as NodeJS.ErrnoException & { errors?: { code?: string }[] };
  const code = e?.code ?? e?.errors?.[0]?.code;
  return `cannot reach ${registry}${code ? ` (${code})` : ''}: ${e?.message || 'no answer'}`;
}

function describe(err: unknown): string {
  if (err instanceof ConfigError) return err.message;
  if (err instanceof MeshError) return `meshgate: ${err.code}: ${err.message}`;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'EADDRINUSE') return `meshgate: address in use: ${e.message}`;
  return `meshgate: ${e?.stack ?? String(err)}`;
}


function version(): string {
  // dist/lib/cli.js and lib/cli.ts sit at different depths below package.json.
  for (const rel of ['../package.json', '../../package.json']) {
    const url = new URL(rel, import.meta.url);
    if (existsSync(url)) {
      const pkg = JSON.parse(readFileSync(url, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'meshgate' && pkg.version) return pkg.version;
    }
  }
  return 'unknown';
}

// Run when executed as a script (npm links the bin through a symlink, hence realpath).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`${describe(err)}\n`);
      process.exit(1);
    },
  );
}
