import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TokenBuckets } from '../../lib/kit/token-bucket.js';

describe('TokenBuckets', () => {
  test('a new key starts full: burst requests pass, the next one is refused with the seconds to wait', () => {
    const buckets = new TokenBuckets(2, 4);
    const results = Array.from({ length: 5 }, () => buckets.take('k', 1000));
    assert.deepEqual(results.map((r) => r.allowed), [true, true, true, true, false]);
    assert.deepEqual(results.map((r) => r.remaining), [3, 2, 1, 0, 0]);
    assert.equal(results[4]!.retryAfter, 1);
  });

  test('tokens come back at `rate` a second, and never past `burst`, however long the key was idle', () => {
    const buckets = new TokenBuckets(2, 4);
    for (let i = 0; i < 4; i++) buckets.take('k', 0);
    assert.equal(buckets.take('k', 0).allowed, false);
    // Half a second at 2/s is one token.
    assert.equal(buckets.take('k', 500).allowed, true);
    assert.equal(buckets.take('k', 500).allowed, false);
    // An hour idle refills to burst (4), not to 7,200.
    const after = Array.from({ length: 6 }, () => buckets.take('k', 3_600_500));
    assert.deepEqual(after.map((r) => r.allowed), [true, true, true, true, false, false]);
    assert.equal(after[0]!.remaining, 3);
  });

  test('keys have their own buckets; sweep forgets only the full ones', () => {
    const buckets = new TokenBuckets(1, 2);
    buckets.take('a', 0);
    buckets.take('b', 0);
    buckets.take('b', 0);
    assert.equal(buckets.size, 2);
    // At 1.5 s, a is full again (1 + 1.5 > 2), b is not (0 + 1.5 < 2).
    buckets.sweep(1500);
    assert.equal(buckets.size, 1);
    assert.equal(buckets.take('b', 1500).remaining, 0);
  });
});
