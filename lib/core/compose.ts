import type { Context } from 'koa';

/** `next` in a gateway middleware: runs the rest of the pipeline. */
export type Next = () => Promise<void>;
/** A gateway middleware: Koa's shape, with `ctx.state.mesh` always present. */
export type Middleware = (ctx: Context, next: Next) => unknown;

/**
 * Composes middleware like koa-compose. With `reentrant`, the last middleware's `next` may be
 * called more than once (each call runs the rest of the pipeline again): that is how the `retry`
 * stage makes another attempt. Elsewhere a second `next()` call is a bug and rejects, as in Koa.
 */
export function compose(middleware: readonly Middleware[], reentrant = false): (ctx: Context, next: Next) => Promise<void> {
  const stack = [...middleware];
  if (stack.length === 0) return (_ctx, next) => next();
  // One middleware, the usual case for a stage: no dispatch closure per call.
  if (stack.length === 1) return reentrant ? composeReentrantOne(stack[0]!) : composeOne(stack[0]!);
  return function composed(ctx, next) {
    let index = -1;
    function dispatch(i: number): Promise<void> {
      if (i <= index && !(reentrant && i === stack.length)) {
        return Promise.reject(new Error('next() called multiple times'));
      }
      index = i;
      if (i === stack.length) return next();
      try {
        return Promise.resolve(stack[i]!(ctx, () => dispatch(i + 1))) as Promise<void>;
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return dispatch(0);
  };
}

function composeOne(middleware: Middleware): (ctx: Context, next: Next) => Promise<void> {
  return function composed(ctx, next) {
    let called = false;
    try {
      return Promise.resolve(
        middleware(ctx, () => {
          if (called) return Promise.reject(new Error('next() called multiple times'));
          called = true;
          return next();
        }),
      ) as Promise<void>;
    } catch (err) {
      return Promise.reject(err);
    }
  };
}

/** The `retry` stage's: its one middleware gets `next` itself, to call as often as it retries. */
function composeReentrantOne(middleware: Middleware): (ctx: Context, next: Next) => Promise<void> {
  return function composed(ctx, next) {
    try {
      return Promise.resolve(middleware(ctx, next)) as Promise<void>;
    } catch (err) {
      return Promise.reject(err);
    }
  };
}
