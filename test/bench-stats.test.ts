/**
 * bench/stats.ts' relativeSpread decides whether `npm run bench` warns that the machine changed
 * speed during a run (the bare proxy's req/s over the rounds).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { relativeSpread } from '../bench/stats.js';

test('relativeSpread is (max - min) / median, 0 with fewer than two values', () => {
  assert.equal(relativeSpread([]), 0);
  assert.equal(relativeSpread([14_000]), 0);
  assert.equal(relativeSpread([10_000, 10_000, 10_000]), 0);
  // A quiet run of the bare proxy (2026-12-01): 17% around a median of 14,175.
  assert.ok(Math.abs(relativeSpread([12_878, 14_000, 14_350, 15_300]) - 2_422 / 14_175) < 1e-9);
  // The run whose VM slowed down by half midway: far above the 30% at which bench/run.ts warns.
  assert.ok(relativeSpread([11_035, 10_900, 6_700, 6_820, 5_224, 5_300]) > 0.8);
});
