import { PluginError } from '../errors.js';
import { compose, type Middleware } from './compose.js';
import type { StageChain } from './pipeline.js';
import { STAGES, checkPlugin, type GatewayPlugin, type MeshCarrier, type PluginScope, type Stage } from './plugin.js';
import type { Route } from './router.js';
import type { ConfigSnapshot } from './snapshot.js';

/**
 * The plugin host's bookkeeping: the registered plugins in order, their stage middleware, shared
 * decorators and the close and config hooks. A plugin's slot (its index here) is where the
 * snapshots keep its prepared sections.
 */
export class PluginRegistry {
  readonly #plugins: GatewayPlugin[] = [];
  /** Each plugin's place in the stage chains, by slot (see {@link register}). */
  readonly #ranks: number[] = [];
  readonly #names = new Set<string>();
  readonly #stages = new Map<Stage, { middleware: Middleware; rank: number; seq: number; slot: number }[]>(STAGES.map((s) => [s, []]));
  #seq = 0;
  /** The slot of the plugin whose setup is running (its middleware is ranked as it is), or -1. */
  #settingUp = -1;
  readonly #decorators = new Map<string, unknown>();
  /** Hooks, with the slot of the plugin whose setup added them (-1 outside a setup). */
  readonly #closeHooks: { fn: () => unknown; slot: number }[] = [];
  readonly #configHooks: { fn: (snapshot: ConfigSnapshot, previous: ConfigSnapshot) => unknown; slot: number }[] = [];
  #sealed = false;

  /**
   * Registers a plugin (its shape and a new name are checked now, its dependencies at setup).
   * `rank` places its middleware in each stage: lower first, then in the order added. Built-ins
   * have their catalogue's order, so one that a reload turns on runs where it would have at boot.
   * Returns its slot.
   */
  register(plugin: GatewayPlugin, rank = Number.MAX_SAFE_INTEGER): number {
    checkPlugin(plugin, this.#names, false);
    this.#plugins.push(plugin);
    this.#ranks.push(rank);
    this.#names.add(plugin.name);
    return this.#plugins.length - 1;
  }

  /** Runs a plugin's setup: the middleware it adds take its rank; after the gateway started, only then may middleware be added. */
  async setup(slot: number, run: () => void | Promise<void>): Promise<void> {
    this.#settingUp = slot;
    try {
      await run();
    } finally {
      this.#settingUp = -1;
    }
  }

  /** The registered plugins, in order; a plugin's slot is its index. */
  get plugins(): readonly GatewayPlugin[] {
    return this.#plugins;
  }

  has(name: string): boolean {
    return this.#names.has(name);
  }

  names(): string[] {
    return [...this.#names];
  }

  addMiddleware(stage: Stage, middleware: Middleware): void {
    const stack = this.#stages.get(stage);
    if (!stack) throw new PluginError(`unknown stage "${stage}" (stages: ${STAGES.join(', ')})`);
    if (typeof middleware !== 'function') throw new PluginError(`addMiddleware("${stage}", fn): fn must be a function`);
    if (this.#sealed && this.#settingUp === -1) throw new PluginError('middleware must be added from a plugin setup');
    const rank = this.#settingUp === -1 ? Number.MAX_SAFE_INTEGER : this.#ranks[this.#settingUp]!;
    stack.push({ middleware, rank, seq: this.#seq++, slot: this.#settingUp });
  }

  /**
   * Composes each stage's middleware, by rank, then in the order added; empty stages are null.
   * After the first call middleware can be added only by a plugin's setup (a plugin a reload
   * turns on), and the chains are composed again.
   */
  seal(): Record<Stage, StageChain> {
    this.#sealed = true;
    const chains = {} as Record<Stage, StageChain>;
    for (const stage of STAGES) {
      const stack = [...this.#stages.get(stage)!].sort((a, b) => a.rank - b.rank || a.seq - b.seq);
      chains[stage] = stack.length === 0 ? null : compose(stack.map((entry) => entry.middleware), stage === 'retry');
    }
    return chains;
  }

  decorate(key: string, value: unknown): void {
    if (this.#decorators.has(key)) throw new PluginError(`decorator "${key}" is already defined`, 'MESH_ERR_DECORATOR_DUPLICATE');
    this.#decorators.set(key, value);
  }

  decorator(key: string): unknown {
    if (!this.#decorators.has(key)) throw new PluginError(`decorator "${key}" is not defined`, 'MESH_ERR_DECORATOR_MISSING');
    return this.#decorators.get(key);
  }

  hasDecorator(key: string): boolean {
    return this.#decorators.has(key);
  }

  onClose(fn: () => unknown): void {
    this.#closeHooks.push({ fn, slot: this.#settingUp });
  }

  /** The close hooks, last registered first. */
  closeHooks(): (() => unknown)[] {
    return this.#closeHooks.map((h) => h.fn).reverse();
  }

  onConfig(fn: (snapshot: ConfigSnapshot, previous: ConfigSnapshot) => unknown): void {
    this.#configHooks.push({ fn, slot: this.#settingUp });
  }

  configHooks(): ((snapshot: ConfigSnapshot, previous: ConfigSnapshot) => unknown)[] {
    return this.#configHooks.map((h) => h.fn);
  }

  /**
   * Takes back a plugin whose setup failed (one a reload was starting): its middleware and config
   * hooks go, its name is free again (the next reload may start it afresh), and its slot holds an
   * inert placeholder, since snapshots index sections by slot. Returns its close hooks, last
   * first, for the caller to run: they undo what the setup got to start.
   */
  abandon(slot: number): (() => unknown)[] {
    const plugin = this.#plugins[slot]!;
    for (const stack of this.#stages.values()) {
      for (let i = stack.length - 1; i >= 0; i--) if (stack[i]!.slot === slot) stack.splice(i, 1);
    }
    for (let i = this.#configHooks.length - 1; i >= 0; i--) if (this.#configHooks[i]!.slot === slot) this.#configHooks.splice(i, 1);
    const closing: (() => unknown)[] = [];
    for (let i = this.#closeHooks.length - 1; i >= 0; i--) {
      if (this.#closeHooks[i]!.slot === slot) closing.push(this.#closeHooks.splice(i, 1)[0]!.fn);
    }
    this.#names.delete(plugin.name);
    this.#plugins[slot] = { name: `(failed) ${plugin.name}`, setup() {} };
    return closing;
  }

  /** The scope of the plugin in `slot`: its sections in the request's snapshot, or in `current()`. */
  scope(slot: number, current: () => ConfigSnapshot): PluginScope {
    return new Scope(this.#plugins[slot]!.name, slot, current);
  }
}

/** A plugin's view of its sections: reads its slot of the request's snapshot. */
class Scope implements PluginScope {
  readonly name: string;
  readonly #slot: number;
  readonly #current: () => ConfigSnapshot;

  constructor(name: string, slot: number, current: () => ConfigSnapshot) {
    this.name = name;
    this.#slot = slot;
    this.#current = current;
  }

  global(ctx?: MeshCarrier): unknown {
    return (ctx?.state.mesh.snapshot ?? this.#current()).global[this.#slot];
  }

  route(ctx: MeshCarrier): unknown {
    const route = ctx.state.mesh.route;
    return route === null ? undefined : route.sections[this.#slot];
  }

  service(ctx: MeshCarrier): unknown {
    const policy = ctx.state.mesh.policy;
    return policy === null ? undefined : policy.sections[this.#slot];
  }

  forService(name: string): unknown {
    return this.#current().services.get(name)?.sections[this.#slot];
  }

  routes(): { route: Route; options: unknown }[] {
    const out: { route: Route; options: unknown }[] = [];
    for (const route of this.#current().router.routes()) {
      const options = route.sections[this.#slot];
      if (options !== undefined) out.push({ route, options });
    }
    return out;
  }

  services(): { name: string; options: unknown }[] {
    const out: { name: string; options: unknown }[] = [];
    for (const policy of this.#current().services.values()) {
      const options = policy.sections[this.#slot];
      if (options !== undefined) out.push({ name: policy.name, options });
    }
    return out;
  }
}
