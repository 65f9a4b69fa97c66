/**
 * A seeded PRNG (mulberry32): uniform in [0, 1), the same sequence for the same seed. Pass it as
 * `createGateway(config, { random: seededRandom(42) })` for reproducible balancing (tests,
 * benchmarks, simulations). Not for anything secret.
 * @example const random = seededRandom(42); random(); // 0.6011037519201636
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
