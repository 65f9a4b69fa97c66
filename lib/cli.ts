#!/usr/bin/env node
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfigFile } from './config/index.js';
import { ConfigError, MeshError } from './errors.js';
import { createGateway } from './index.js';

const HELP = `meshgate: a service-mesh gateway

Usage:
  meshgate start --config FILE        run the gateway from a YAML (or JSON) config
  meshgate validate --config FILE     check a config; prints every problem with its path, exit 1 if any
  meshgate --version                  print the version
  meshgate --help                     this text

Options:
  -c, --config FILE   config file (default: meshgate.yaml)
  -p, --port N        override listen.port (start)

Signals: SIGTERM or SIGINT stops taking requests, drains in-flight ones (drainTimeout), exits 0.
Docs: README.md, and the config reference in it.`;

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
  if (values.help || command === 'help' || command === undefined) {
    process.stdout.write(`${HELP}\n`);
    return command === undefined && !values.help ? 2 : 0;
  }
  const configFile = values.config ?? 'meshgate.yaml';
  switch (command) {
    case 'validate':
      return validate(configFile);
    case 'start':
      return start(configFile, values.port);
    default:
      process.stderr.write(`meshgate: unknown command "${command}"\n\n${HELP}\n`);
      return 2;
  }
}

async function validate(file: string): Promise<number> {
  try {
    const { config } = await loadConfigFile(file);
    const services = Object.keys(config.services).length;
    process.stdout.write(`${file}: valid (${services} service${services === 1 ? '' : 's'}, ${config.routes.length} route${config.routes.length === 1 ? '' : 's'})\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${describe(err)}\n`);
    return 1;
  }
}

async function start(file: string, port: string | undefined): Promise<number> {
  let gateway;
  try {
    const { config, baseDir } = await loadConfigFile(file);
    gateway = createGateway(config, { baseDir });
    const info = await gateway.listen(port === undefined ? {} : { port: Number(port) });
    process.stderr.write(`meshgate ${version()} listening on ${info.url}${info.adminUrl ? `, admin on ${info.adminUrl}` : ''}\n`);
  } catch (err) {
    process.stderr.write(`${describe(err)}\n`);
    await gateway?.close();
    return 1;
  }
  const gw = gateway;
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      gw.log.info({ signal, inflight: gw.inflight }, `${signal}: draining`);
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      resolve();
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
  await gw.close();
  gw.log.info('stopped');
  return 0;
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
