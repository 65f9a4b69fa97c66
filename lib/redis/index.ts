/**
 * `meshgate/redis`: the fleet's Redis, as plugins share it: connections (single node, Sentinel,
 * Cluster), the registry's key schema and store. Loads ioredis; import it only where Redis is used.
 */
export * from './store.js';
export * from './fleet-config.js';
