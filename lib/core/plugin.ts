import type { Gateway } from './gateway.js';
import { PluginDependencyError, PluginError } from '../errors.js';

/**
 * The pipeline stages, outermost first. Each is its own middleware chain; plugins add to a stage
 * by name, so the order of `use` calls between stages does not matter.
 * - `onRequest`: wraps the whole exchange, the response included (auth, rate limits, ids, logs, metrics).
 * - `resolve`: the route and service are known; adjust the request before any attempt.
 * - `retry`: wraps the attempts; its `next()` may be called again for another attempt.
 * - `select`: one attempt; narrows `mesh.candidates` or sets `mesh.instance` (the balancer picks otherwise).
 * - `guard`: wraps the call to the chosen instance (circuit breakers, per-try accounting).
 */
export const STAGES = ['onRequest', 'resolve', 'retry', 'select', 'guard'] as const;
export type Stage = (typeof STAGES)[number];

/** A plugin: a plain object from a factory. `setup` runs once, awaited, in registration order. */
export interface GatewayPlugin {
  /** Unique name; others name it in `dependencies`. */
  name: string;
  /** Plugins that must be registered before this one. */
  dependencies?: readonly string[];
  setup(gateway: Gateway): void | Promise<void>;
}

/**
 * Identity helper that gives a plugin object its type.
 * @example
 * export const hello = (opts: { name?: string } = {}) =>
 *   definePlugin({ name: 'hello', setup(gw) { gw.use('onRequest', async (ctx, next) => { ctx.set('x-hello', opts.name ?? 'world'); await next(); }); } });
 */
export function definePlugin<P extends GatewayPlugin>(plugin: P): P {
  return plugin;
}

/** Checks a plugin's shape, that its name is new, and (at boot) that its dependencies came before it. */
export function checkPlugin(plugin: unknown, registered: ReadonlySet<string>, dependencies = true): asserts plugin is GatewayPlugin {
  const p = plugin as Partial<GatewayPlugin> | null;
  if (!p || typeof p !== 'object' || typeof p.name !== 'string' || !p.name || typeof p.setup !== 'function') {
    throw new PluginError('a plugin must be an object with a non-empty `name` and a `setup(gateway)` function');
  }
  if (registered.has(p.name)) throw new PluginError(`plugin "${p.name}" is registered twice`, 'MESH_ERR_PLUGIN_DUPLICATE');
  if (!dependencies) return;
  for (const dep of p.dependencies ?? []) {
    if (!registered.has(dep)) throw new PluginDependencyError(p.name, dep);
  }
}
