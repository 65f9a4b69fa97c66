import type { Context } from 'koa';
import type { Next } from './compose.js';
import { MeshError } from '../errors.js';

/**
 * The status a request ended with, as the client saw it: the response's status, the error's when
 * the pipeline threw (500 for a non-MeshError), or 499 when the client went away first (nginx's
 * convention, also what Envoy logs as DC).
 */
export function finalStatus(ctx: Context, error?: unknown): number {
  const mesh = ctx.state.mesh;
  if (error === undefined) {
    // An upstream answer still held (observers in onRequest see it before it is written) goes out with its own status.
    const exchange = mesh.exchange;
    const status = exchange !== null && exchange.state === 'headers' ? exchange.statusCode : ctx.res.statusCode;
    return mesh.clientGone && status < 400 ? 499 : status;
  }
  if (mesh.clientGone) return 499;
  return error instanceof MeshError ? error.status : 500;
}

/**
 * For onRequest middleware that reports on the whole exchange (logs, metrics, spans): runs the
 * rest of the pipeline and then calls `done` with the final status (and the error, if one was
 * thrown, which is recorded on `mesh.error` and rethrown). `done` runs exactly once.
 */
export async function observeOutcome(ctx: Context, next: Next, done: (status: number, error?: unknown) => void): Promise<void> {
  try {
    await next();
  } catch (err) {
    if (err instanceof MeshError) ctx.state.mesh.error ??= err;
    done(finalStatus(ctx, err), err);
    throw err;
  }
  done(finalStatus(ctx));
}
