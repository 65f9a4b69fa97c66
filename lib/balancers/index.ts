import type { BalancerFactory } from './balancer.js';
import { ConsistentHashBalancer } from './consistent-hash.js';
import { EwmaBalancer } from './ewma.js';
import { LeastRequestBalancer } from './least-request.js';
import { RandomBalancer } from './random.js';
import { RoundRobinBalancer } from './round-robin.js';

export { ConsistentHashBalancer, EwmaBalancer, LeastRequestBalancer, RandomBalancer, RoundRobinBalancer };
export { keyReader } from './hash-key.js';
export { murmur3 } from './hash.js';
export { weightFunction, SLOW_START_FLOOR } from './weights.js';

/** The built-in balancers by their `services.<name>.balancer` name. */
export const BUILTIN_BALANCERS: Readonly<Record<string, BalancerFactory>> = {
  'round-robin': (service) => new RoundRobinBalancer(service),
  random: (service, { random }) => new RandomBalancer(service, random),
  'least-request': (service, { random }) => new LeastRequestBalancer(service, random),
  'consistent-hash': (service) => new ConsistentHashBalancer(service),
  ewma: (_service, { random }) => new EwmaBalancer({ random }),
};
