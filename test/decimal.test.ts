import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { decimalMs } from '../lib/kit/decimal.js';

test('decimalMs: examples', () => {
  assert.equal(decimalMs(7, 2), '7');
  assert.equal(decimalMs(12.3, 2), '12.3');
  assert.equal(decimalMs(0.05, 2), '0.05');
  assert.equal(decimalMs(1.234, 2), '1.23');
  assert.equal(decimalMs(1.996, 2), '2');
  assert.equal(decimalMs(0.04, 1), '0');
  assert.equal(decimalMs(3.05, 1), '3.1');
  assert.equal(decimalMs(-1, 2), '0');
  assert.equal(decimalMs(Number.NaN, 1), '0');
  assert.equal(decimalMs(Number.POSITIVE_INFINITY, 2), '0');
});

test('decimalMs: the value rounded to the digits, in the shortest plain form', () => {
  fc.assert(
    fc.property(fc.double({ min: 0, max: 1e7, noNaN: true }), fc.constantFrom(1 as const, 2 as const), (ms, digits) => {
      const text = decimalMs(ms, digits);
      assert.match(text, digits === 1 ? /^\d+(\.\d)?$/ : /^\d+(\.\d?[1-9])?$/);
      assert.ok(!/\.\d*0$/.test(text), `trailing zero in ${text}`);
      const scale = 10 ** digits;
      assert.equal(Math.round(Number(text) * scale), Math.round(ms * scale));
    }),
    { numRuns: 2000 },
  );
});
