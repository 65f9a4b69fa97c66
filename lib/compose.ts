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
