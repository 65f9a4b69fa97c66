import type { IncomingMessage } from 'node:http';
import { Transform } from 'node:stream';
import type { Context } from 'koa';
import { PayloadTooLargeError } from '../errors.js';

/** What a request sends upstream: the client's stream, a replayable buffer or string, or nothing. */
export type RequestBody = IncomingMessage | Buffer | string | null;

/**
 * The body to send upstream. Normally the client's stream, untouched. When a body parser in the
 * host app already read the stream, the parsed body is sent instead (re-serialized), so the
 * request does not hang waiting for bytes that will never come.
 */
export function requestBody(ctx: Context): RequestBody {
  const req = ctx.req;
  const parsed = (ctx.request as { body?: unknown; rawBody?: unknown }).body;
  if (parsed !== undefined && (req.readableEnded || req.readableDidRead)) {
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw === 'string' || Buffer.isBuffer(raw)) return raw;
    if (typeof parsed === 'string' || Buffer.isBuffer(parsed)) return parsed;
    const type = String(req.headers['content-type'] ?? '');
    if (type.includes('application/x-www-form-urlencoded') && parsed && typeof parsed === 'object') {
      return new URLSearchParams(parsed as Record<string, string>).toString();
    }
    return JSON.stringify(parsed);
  }
  const headers = req.headers;
  // HTTP/2 has no framing headers: a request has a body unless its HEADERS frame ended the stream.
  if (req.httpVersionMajor === 2) return (req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders ? null : req;
  const length = headers['content-length'];
  if (headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) return req;
  return null;
}

/**
 * Applies a route's `maxBodySize` (when `limit` is set) and counts a body without a declared
 * length as it streams (`counted(total)` after each chunk): a declared length over the limit is
 * refused before any upstream is dialed; a chunked body is cut off with 413 when it passes it.
 * Bodies with a declared length pass untouched (Node's parser enforces the length itself).
 */
export function meterBody(req: IncomingMessage, body: RequestBody, limit: number | undefined, counted: (total: number) => void): RequestBody {
  if (body === null) return null;
  if (body !== req) {
    if (limit !== undefined && Buffer.byteLength(body as Buffer | string) > limit) throw new PayloadTooLargeError(limit);
    return body;
  }
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    if (limit !== undefined && Number(declared) > limit) throw new PayloadTooLargeError(limit);
    return body;
  }
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      seen += chunk.length;
      counted(seen);
      if (limit !== undefined && seen > limit) callback(new PayloadTooLargeError(limit));
      else callback(null, chunk);
    },
  });
  req.on('error', (err) => counter.destroy(err));
  req.pipe(counter);
  return standIn(counter, req);
}

const SAFE_TO_REPEAT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** An idempotent request whose body (if any) can be sent again. */
export function isReplayable(method: string, body: RequestBody): boolean {
  return SAFE_TO_REPEAT.has(method) && (body === null || typeof body === 'string' || Buffer.isBuffer(body));
}

/**
 * Copies a body as it streams to the upstream, up to `limit` bytes, without holding it back:
 * `done` gets the whole body once it has passed, or null when it was larger than `limit` or
 * failed. A buffered body is handed over at once. Returns the body to send in its place.
 */
export function teeBody(body: RequestBody, limit: number, done: (copy: Buffer | null) => void): RequestBody {
  if (body === null) {
    done(Buffer.alloc(0));
    return null;
  }
  if (typeof body === 'string' || Buffer.isBuffer(body)) {
    const copy = Buffer.isBuffer(body) ? body : Buffer.from(body);
    done(copy.length > limit ? null : copy);
    return body;
  }
  const declared = body.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    done(null);
    return body;
  }
  const chunks: Buffer[] = [];
  let seen = 0;
  let settled = false;
  const settle = (copy: Buffer | null): void => {
    if (settled) return;
    settled = true;
    chunks.length = 0;
    done(copy);
  };
  const tee = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      if (!settled) {
        seen += chunk.length;
        if (seen > limit) settle(null);
        else chunks.push(chunk);
      }
      callback(null, chunk);
    },
    flush(callback) {
      if (!settled) settle(Buffer.concat(chunks, seen));
      callback();
    },
  });
  body.on('error', (err) => {
    settle(null);
    tee.destroy(err);
  });
  tee.on('close', () => settle(null));
  body.pipe(tee);
  return standIn(tee, body);
}

/**
 * A stream sent upstream in place of the client's request: it carries the request's headers, and
 * its trailers once the body has ended (what an HTTP/2 instance gets after the last DATA frame).
 */
function standIn(stream: Transform, req: IncomingMessage): IncomingMessage {
  return Object.defineProperties(stream, {
    headers: { value: req.headers },
    rawTrailers: { get: () => req.rawTrailers },
  }) as unknown as IncomingMessage;
}
