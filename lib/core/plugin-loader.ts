import { pathToFileURL } from 'node:url';
import type { GatewayConfig } from '../config/schema.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { checkPlugin, type GatewayPlugin } from './plugin.js';

/**
 * Loads the `plugins:` section: each `module` (a path relative to the config file, or a package
 * name) exports a plugin factory, which is called with `options`. The factory is the default
 * export, else an export named `plugin`, else the module's only exported function (so a file
 * written as `export function myPlugin(...)` works as it is). Every problem is reported at once,
 * at its entry's path.
 */
export async function loadPluginModules(
  entries: GatewayConfig['plugins'],
  resolvePath: (path: string) => string,
  registered: ReadonlySet<string>,
): Promise<GatewayPlugin[]> {
  const issues: ConfigIssue[] = [];
  const plugins: GatewayPlugin[] = [];
  const names = new Set(registered);
  for (const [i, entry] of entries.entries()) {
    const local = entry.module.startsWith('.') || entry.module.startsWith('/');
    const specifier = local ? pathToFileURL(resolvePath(entry.module)).href : entry.module;
    let mod: Record<string, unknown>;
    try {
      mod = (await import(specifier)) as Record<string, unknown>;
    } catch (err) {
      issues.push({ path: `plugins[${i}].module`, message: `cannot load ${JSON.stringify(entry.module)}: ${(err as Error).message}` });
      continue;
    }
    const factory = pluginFactory(mod);
    if (factory === undefined) {
      const functions = Object.keys(mod).filter((k) => typeof mod[k] === 'function');
      issues.push({
        path: `plugins[${i}].module`,
        message: `${JSON.stringify(entry.module)} must export a plugin factory: as default, as "plugin", or as its only function (it exports ${functions.length === 0 ? 'no function' : functions.join(', ')})`,
      });
      continue;
    }
    try {
      const plugin = (await factory(entry.options ?? {})) as GatewayPlugin;
      checkPlugin(plugin, names, false);
      names.add(plugin.name);
      plugins.push(plugin);
    } catch (err) {
      issues.push({ path: `plugins[${i}]`, message: (err as Error).message });
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return plugins;
}

function pluginFactory(mod: Record<string, unknown>): ((options: unknown) => unknown) | undefined {
  for (const name of ['default', 'plugin']) {
    if (typeof mod[name] === 'function') return mod[name] as (options: unknown) => unknown;
  }
  const functions = Object.values(mod).filter((v) => typeof v === 'function');
  return functions.length === 1 ? (functions[0] as (options: unknown) => unknown) : undefined;
}
