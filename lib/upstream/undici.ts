import { createRequire } from 'node:module';
import type { Pool as UndiciPool } from 'undici';

/**
 * The parts of undici the gateway runs on, loaded from undici's own modules instead of its index.
 *
 * undici's index loads all of undici: fetch, WebSocket, EventSource, cache stores, mock agents,
 * interceptors. For a gateway that runs none of it, that was about 3 MB of heap and 7 MB of RSS
 * (idle, standard stack: 15.5 against 12.7 MB of heap, 80.6 against 73.5 MB RSS). undici has no
 * `exports` map, so its modules are reachable, and this module does what the index does for the
 * parts we use:
 * - {@link Pool}, with the request API (`request`, `stream`, `pipeline`, `upgrade`, `connect`)
 *   mixed into `Dispatcher.prototype` as the index does, so a pool from `gateway.poolFor()` is a
 *   whole undici Pool for plugins;
 * - {@link headerNameToString}, the index's `util.headerNameToString`.
 *
 * Should a release move one of these modules, the index is loaded instead: the gateway still runs,
 * only bigger, says so once in a process warning, and test/undici.test.ts fails, so we notice.
 *
 * One side effect of the index is gone with it: it installs undici's global dispatcher, which
 * Node's own `fetch` then uses. A host app's `fetch` keeps Node's own dispatcher now.
 */
export const UNDICI_MODULES = {
  pool: 'undici/lib/dispatcher/pool.js',
  dispatcher: 'undici/lib/dispatcher/dispatcher.js',
  api: 'undici/lib/api/index.js',
  util: 'undici/lib/core/util.js',
  connect: 'undici/lib/core/connect.js',
} as const;

/** undici's connector: opens a socket for a pool (`buildConnector(options)`). */
export type Connector = (options: Record<string, unknown>, callback: (err: Error | null, socket: import('node:net').Socket | null) => void) => void;

interface Parts {
  Pool: typeof UndiciPool;
  headerNameToString: (name: Buffer | string) => string;
  buildConnector: (options: Record<string, unknown>) => Connector;
  /** Where the parts came from: undici's own modules, or its index (the fallback). */
  source: 'modules' | 'index';
}

function load(): Parts {
  const require = createRequire(import.meta.url);
  try {
    const Pool = require(UNDICI_MODULES.pool) as typeof UndiciPool;
    const Dispatcher = require(UNDICI_MODULES.dispatcher) as { prototype: object };
    const api = require(UNDICI_MODULES.api) as Record<string, unknown>;
    const { headerNameToString } = require(UNDICI_MODULES.util) as Pick<Parts, 'headerNameToString'>;
    const buildConnector = require(UNDICI_MODULES.connect) as Parts['buildConnector'];
    if (
      typeof Pool !== 'function' ||
      !(Pool.prototype instanceof (Dispatcher as unknown as new () => object)) ||
      typeof api.request !== 'function' ||
      typeof headerNameToString !== 'function' ||
      typeof buildConnector !== 'function'
    ) {
      throw new Error('undici modules are not what they were');
    }
    // What undici's index does (its own copy of this line is idempotent if it is loaded later).
    Object.assign(Dispatcher.prototype, api);
    return { Pool, headerNameToString, buildConnector, source: 'modules' };
  } catch (err) {
    process.emitWarning(`undici's modules are not where meshgate looks for them (${(err as Error).message}); loading all of undici instead, about 3 MB more heap`, {
      code: 'MESHGATE_UNDICI_INDEX',
    });
    const undici = require('undici') as typeof import('undici');
    return { Pool: undici.Pool, headerNameToString: undici.util.headerNameToString, buildConnector: undici.buildConnector as unknown as Parts['buildConnector'], source: 'index' };
  }
}

const parts = load();

/** undici's `Pool`. */
export const Pool = parts.Pool;

/**
 * A header name as a lower-case string: well-known names from undici's lookup tree (an interned
 * string, no allocation), others decoded and lower-cased.
 */
export const headerNameToString = parts.headerNameToString;

/** undici's `buildConnector`: the default way a pool opens its sockets. */
export const buildConnector = parts.buildConnector;

/** Whether the parts came from undici's own modules or, as the fallback, its index. */
export const undiciSource = parts.source;
