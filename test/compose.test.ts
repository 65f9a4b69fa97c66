import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Context } from 'koa';
import { compose, type Middleware, type Next } from '../lib/core/compose.js';

const ctx = {} as Context;

/** Middleware that logs its way in and out, for stacks of every length the core specializes. */
function onion(log: string[], n: number): Middleware[] {
  return Array.from({ length: n }, (_, i) => async (_ctx: Context, next: Next) => {
    log.push(`in ${i}`);
    await next();
    log.push(`out ${i}`);
  });
}

describe('compose', () => {
  for (const n of [0, 1, 3]) {
    test(`${n} middleware: onion order around next, for both kinds`, async () => {
      for (const reentrant of [false, true]) {
        const log: string[] = [];
        await compose(onion(log, n), reentrant)(ctx, async () => void log.push('end'));
        const ins = Array.from({ length: n }, (_, i) => `in ${i}`);
        const outs = Array.from({ length: n }, (_, i) => `out ${n - 1 - i}`);
        assert.deepEqual(log, [...ins, 'end', ...outs]);
      }
    });
  }

  for (const n of [1, 3]) {
    test(`${n} middleware: a second next() rejects, unless the stage is reentrant, where the last one may retry`, async () => {
      const twice: Middleware = async (_ctx, next) => {
        await next();
        await next();
      };
      const stack = [...onion([], n - 1), twice];
      let ends = 0;
      await assert.rejects(compose(stack)(ctx, async () => void ends++), /next\(\) called multiple times/);
      assert.equal(ends, 1);
      ends = 0;
      await compose(stack, true)(ctx, async () => void ends++);
      assert.equal(ends, 2);
    });

    test(`${n} middleware: a synchronous throw becomes a rejection, for both kinds`, async () => {
      const boom: Middleware = () => {
        throw new Error('boom');
      };
      for (const reentrant of [false, true]) {
        const run = compose([...onion([], n - 1), boom], reentrant)(ctx, async () => {});
        assert.ok(run instanceof Promise);
        await assert.rejects(run, /boom/);
      }
    });
  }

  test('a middleware that does not call next ends the chain', async () => {
    let ended = false;
    const stop: Middleware = () => 42;
    assert.equal(await compose([stop])(ctx, async () => void (ended = true)), 42);
    assert.equal(ended, false);
  });
});
