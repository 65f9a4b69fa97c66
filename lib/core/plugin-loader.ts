import { pathToFileURL } from 'node:url';
import type { GatewayConfig } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { Gateway } from './gateway.js';
import { checkPlugin, type GatewayPlugin } from './plugin.js';

/**
 * A plugin that loads the `plugins:` section: each `module` (a path relative to the config file,
 * or a package name) must export a factory (default export, or a named `plugin`), called with
 * `options`. The loaded plugins are set up right away, in order, after the built-in ones.
 */
export function loadPluginModules(entries: GatewayConfig['plugins']): GatewayPlugin {
  return {
    name: 'plugin-loader',
    async setup(gateway: Gateway) {
      // Config plugins come after every plugin registered with use(): those may be depended on.
      const registered = new Set(gateway.pluginNames());
      for (const [i, entry] of entries.entries()) {
        const specifier = entry.module.startsWith('.') || entry.module.startsWith('/') ? pathToFileURL(gateway.resolvePath(entry.module)).href : entry.module;
        let mod: Record<string, unknown>;
        try {
          mod = (await import(specifier)) as Record<string, unknown>;
        } catch (err) {
          throw new ConfigError([{ path: `plugins[${i}].module`, message: `cannot load ${JSON.stringify(entry.module)}: ${(err as Error).message}` }]);
        }
        const factory = mod.default ?? mod.plugin;
        if (typeof factory !== 'function') {
          throw new ConfigError([{ path: `plugins[${i}].module`, message: `${JSON.stringify(entry.module)} must export a plugin factory as default (or as "plugin")` }]);
        }
        const plugin = (await factory(entry.options ?? {})) as GatewayPlugin;
        try {
          checkPlugin(plugin, registered);
        } catch (err) {
          throw new ConfigError([{ path: `plugins[${i}]`, message: (err as Error).message }]);
        }
        registered.add(plugin.name);
        await plugin.setup(gateway);
      }
    },
  };
}
