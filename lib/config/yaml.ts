import { createRequire } from 'node:module';

type Yaml = typeof import('yaml');

let loaded: Yaml | undefined;

/**
 * The `yaml` package, loaded on first use: only a config file or a `${ENV}` reference needs it,
 * and a gateway configured with an object (the Koa middleware, tests, the benchmarks) would
 * otherwise carry it for nothing (about 2 MB of RSS measured on a listening gateway).
 * Synchronous, so `parseConfig` stays so.
 */
export function yaml(): Yaml {
  loaded ??= createRequire(import.meta.url)('yaml') as Yaml;
  return loaded;
}
