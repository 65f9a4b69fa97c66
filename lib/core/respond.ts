import type { ServerResponse } from 'node:http';
import { Transform, pipeline, type Readable } from 'node:stream';
import type { Context } from 'koa';
import { MeshError } from '../errors.js';
import { writeHead } from '../http/headers.js';
import { answerGrpcError } from '../http/grpc.js';
import type { MeshState } from './state.js';

/**
 * Headers already set on the response (by the host app, or plugins with `ctx.set`), taken off
 * it as a flat list so `writeHead` can send them with the upstream's without collapsing
 * repeated upstream headers such as `Set-Cookie`.
 */
export function takeSetHeaders(res: ServerResponse): string[] {
  const names = res.getHeaderNames();
  const out: string[] = [];
  for (const name of names) {
    const value = res.getHeader(name);
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else if (value !== undefined) out.push(name, String(value));
    res.removeHeader(name);
  }
  return out;
}

/** The error a request is answered with: a MeshError as it is, anything else as a 500 that does not leak its message. */
export function asMeshError(err: unknown): MeshError {
  return err instanceof MeshError ? err : new MeshError('MESH_ERR_INTERNAL', 500, String((err as Error)?.message ?? err), { cause: err, expose: false });
}

/**
 * Whether the connection can take another request after this answer: not while the gateway
 * drains, and not while the request body is still arriving (it would have to be read first).
 */
function keepAlive(ctx: Context, closing: boolean): void {
  if (closing || !ctx.req.complete) ctx.res.shouldKeepAlive = false;
}

/**
 * Answers `{ "error": code, "message": text }` with the error's status, plus the headers plugins
 * set (`ctx.set` or `mesh.responseHeaders`). When the answer already started, the connection is
 * cut instead: the only honest signal left.
 */
export function answerError(ctx: Context, mesh: MeshState, error: MeshError, closing: boolean): void {
  const res = ctx.res;
  ctx.respond = false;
  if (res.headersSent || res.destroyed || res.writableEnded || mesh.clientGone) {
    if (!res.destroyed && !res.writableEnded) res.destroy();
    return;
  }
  const head = takeSetHeaders(res);
  const headersWereSet = head.length > 0;
  for (let i = 0; i < mesh.responseHeaders.length; i++) head.push(mesh.responseHeaders[i]!);
  if (mesh.grpc) {
    // A gRPC client reads a status, not a body: a trailers-only answer.
    answerGrpcError(res, error, head);
    return;
  }
  const body = JSON.stringify(error.toJSON());
  // A refusal that says when to come back (overload, a rate limit's own header aside).
  const retryAfter = (error as MeshError & { retryAfter?: number }).retryAfter;
  if (typeof retryAfter === 'number') head.push('retry-after', String(retryAfter));
  head.push('content-type', 'application/json; charset=utf-8', 'content-length', String(Buffer.byteLength(body)));
  keepAlive(ctx, closing);
  try {
    writeHead(res, error.status, head, headersWereSet);
  } catch {
    // A header a plugin set that Node will not send (CR or LF in it): the error goes out without the plugins' headers.
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    mesh.bytesOut = Buffer.byteLength(body);
    answerBareError(res, error);
    return;
  }
  mesh.bytesOut = Buffer.byteLength(body);
  res.end(body);
}

/**
 * Answers `{ "error": code, "message": text }` before any request state exists (a handshake the
 * listener refuses before the pipeline): no plugins' headers, and the connection's fate is the caller's.
 */
export function answerBareError(res: ServerResponse, error: MeshError): void {
  const body = JSON.stringify(error.toJSON());
  res.writeHead(error.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) }).end(body);
}

/** Puts the headers of `mesh.responseHeaders` on the response: they replace earlier ones, except the list headers. */
export function applyResponseHeaders(res: ServerResponse, headers: readonly string[]): void {
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    const lower = name.toLowerCase();
    if (lower === 'set-cookie' || lower === 'server-timing') res.appendHeader(name, headers[i + 1]!);
    else res.setHeader(name, headers[i + 1]!);
  }
}

const EMPTY_STATUSES = new Set([204, 205, 304]);

/**
 * Writes the answer a plugin left on `ctx` (`ctx.status`, `ctx.body`: a string, a Buffer, a
 * stream or JSON), as Koa's own respond() does, for the standalone listener, where Koa's
 * callback does not run. Resolves when the last byte is handed to the socket.
 */
export function respondLikeKoa(ctx: Context, mesh: MeshState, closing: boolean): Promise<void> | undefined {
  const res = ctx.res;
  ctx.respond = false;
  // A middleware that wrote to ctx.res itself (Node's way) has answered already.
  if (res.writableEnded || res.destroyed) return undefined;
  if (res.headersSent) {
    res.end();
    return undefined;
  }
  applyResponseHeaders(res, mesh.responseHeaders);
  keepAlive(ctx, closing);
  const status = ctx.status;
  let body: unknown = ctx.body;
  if (EMPTY_STATUSES.has(status)) {
    ctx.body = null;
    res.end();
    return undefined;
  }
  if (ctx.method === 'HEAD') {
    if (!res.hasHeader('content-length') && Number.isInteger(ctx.response.length)) ctx.length = ctx.response.length!;
    res.end();
    return undefined;
  }
  if (body === null || body === undefined) {
    if ((ctx.response as { _explicitNullBody?: boolean })._explicitNullBody) {
      ctx.response.remove('Content-Type');
      ctx.length = 0;
      res.end();
      return undefined;
    }
    body = ctx.message || String(status);
    ctx.type = 'text';
    ctx.length = Buffer.byteLength(body as string);
    mesh.bytesOut = ctx.length;
    res.end(body);
    return undefined;
  }
  if (typeof body === 'string' || Buffer.isBuffer(body)) {
    mesh.bytesOut = Buffer.byteLength(body);
    res.end(body);
    return undefined;
  }
  if (isReadable(body)) {
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        mesh.bytesOut += chunk.length;
        callback(null, chunk);
      },
    });
    return new Promise<void>((resolve) => {
      // A stream that fails midway cuts the connection (pipeline destroys the response): the client sees a truncated answer, not a complete one.
      pipeline(body as Readable, counter, res, () => resolve());
    });
  }
  const json = JSON.stringify(body);
  ctx.length = Buffer.byteLength(json);
  mesh.bytesOut = ctx.length;
  res.end(json);
  return undefined;
}

function isReadable(value: unknown): value is Readable {
  return typeof (value as Readable | null)?.pipe === 'function' && typeof (value as Readable).on === 'function';
}
