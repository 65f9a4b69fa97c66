import { promisify } from 'node:util';
import { brotliCompress, constants, gzip } from 'node:zlib';
import type { Middleware } from 'koa';

/** A content coding the admin server sends. */
export type ContentCoding = 'br' | 'gzip' | 'identity';

/** Bodies smaller than this go out as they are: compressing them saves less than its headers and time cost. */
export const MIN_COMPRESSED_BYTES = 1024;

/** Ours first on a tie of the client's weights: brotli is smaller than gzip for the same text. */
const PREFERENCE: readonly ContentCoding[] = ['br', 'gzip', 'identity'];

/** Types worth compressing: JSON, text (Prometheus' format included), scripts, styles. */
const COMPRESSIBLE = /^(?:application\/(?:json|javascript)|text\/)/;

const brotli = promisify(brotliCompress);
const gzipped = promisify(gzip);

/**
 * The coding to answer with, from an `Accept-Encoding` header: the acceptable one (`q` > 0, named
 * or through `*`) the client weighs highest, brotli before gzip before none on a tie. Entries it
 * cannot read (a `q` that is not a number from 0 to 1) count as not accepted; when nothing is
 * acceptable the answer is `identity` anyway (RFC 9110 lets a server send it rather than a 406, and
 * a dashboard that answers is better than one that refuses).
 */
export function preferredCoding(header: string | undefined): ContentCoding {
  if (header === undefined || header.trim() === '') return 'identity';
  const weights = new Map<string, number>();
  for (const entry of header.split(',')) {
    const [name = '', ...params] = entry.split(';');
    const coding = name.trim().toLowerCase();
    if (coding === '' || weights.has(coding)) continue;
    let weight = 1;
    for (const param of params) {
      const [key = '', value = ''] = param.split('=').map((s) => s.trim());
      if (key.toLowerCase() !== 'q') continue;
      weight = /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.test(value) ? Number(value) : 0;
    }
    weights.set(coding === 'x-gzip' ? 'gzip' : coding, weight);
  }
  const star = weights.get('*');
  // Identity is acceptable unless refused by name, or by `*` without naming it (RFC 9110, 12.5.3);
  // unnamed, it comes after any coding the client named (`gzip;q=0.5` still asks for gzip).
  const weightOf = (coding: ContentCoding): number => weights.get(coding) ?? star ?? (coding === 'identity' ? 0.0001 : 0);
  let best: ContentCoding = 'identity';
  let bestWeight = 0;
  for (const coding of PREFERENCE) {
    const weight = weightOf(coding);
    if (weight > bestWeight) [best, bestWeight] = [coding, weight];
  }
  return best;
}

/**
 * `bytes` in `coding`. `quality: 'once'` is for bodies compressed once and kept (brotli's smallest,
 * slow); `'fast'` for each answer (brotli 5 is about as fast as gzip's default and smaller). Both
 * run on libuv's thread pool, not the event loop the proxy shares.
 */
export function compress(bytes: Buffer, coding: Exclude<ContentCoding, 'identity'>, quality: 'once' | 'fast'): Promise<Buffer> {
  if (coding === 'gzip') return gzipped(bytes, { level: quality === 'once' ? 9 : 6 });
  return brotli(bytes, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: quality === 'once' ? constants.BROTLI_MAX_QUALITY : 5,
      [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
      [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
    },
  });
}

/** A body Koa would write as JSON (not a Buffer, string, stream or Blob). */
function isJsonBody(body: unknown): body is object {
  return typeof body === 'object' && body !== null && !Buffer.isBuffer(body) && typeof (body as { pipe?: unknown }).pipe !== 'function' && !(body instanceof Blob) && !(body instanceof ReadableStream) && !(body instanceof Response);
}

/**
 * Koa middleware (outermost) that compresses what the admin server answers, for clients that say
 * they can read it (`Accept-Encoding`: brotli, else gzip): JSON, text, scripts and styles of at
 * least {@link MIN_COMPRESSED_BYTES}, every such answer with `Vary: Accept-Encoding`. Streams (the
 * server-sent events) pass untouched, so no event waits in a compressor's buffer. A Buffer body is
 * taken as immutable and compressed once (at the highest quality), its codings kept for as long as
 * the Buffer lives: that is how the dashboard's files, read once, are compressed once. A strong
 * ETag becomes weak when the body is compressed (the bytes differ by coding; the meaning does not).
 */
export function compressResponses(): Middleware {
  const kept = new WeakMap<Buffer, Map<ContentCoding, Promise<Buffer>>>();
  const once = (bytes: Buffer, coding: Exclude<ContentCoding, 'identity'>): Promise<Buffer> => {
    let codings = kept.get(bytes);
    if (codings === undefined) kept.set(bytes, (codings = new Map()));
    let found = codings.get(coding);
    if (found === undefined) {
      codings.set(coding, (found = compress(bytes, coding, 'once')));
      // A failure is not kept: the next request tries again.
      found.catch(() => codings.delete(coding));
    }
    return found;
  };
  return async (ctx, next) => {
    await next();
    // A 304 stands for an answer that varied by coding, and says so as that answer would.
    if (ctx.status === 304) return void ctx.vary('Accept-Encoding');
    const body: unknown = ctx.body;
    const json = isJsonBody(body);
    if (!json && typeof body !== 'string' && !Buffer.isBuffer(body)) return;
    if (ctx.response.get('content-encoding') || !COMPRESSIBLE.test(ctx.response.type)) return;
    ctx.vary('Accept-Encoding');
    const coding = preferredCoding(ctx.get('accept-encoding') || undefined);
    if (coding === 'identity') return;
    const bytes = Buffer.isBuffer(body) ? body : Buffer.from(json ? JSON.stringify(body) : (body as string));
    if (bytes.length < MIN_COMPRESSED_BYTES) {
      // Serialized already: Koa need not do it again.
      ctx.body = bytes;
      return;
    }
    let compressed: Buffer;
    try {
      compressed = Buffer.isBuffer(body) ? await once(body, coding) : await compress(bytes, coding, 'fast');
    } catch {
      // zlib failed (out of memory, say): the body goes out as it is, which every client reads.
      ctx.body = bytes;
      return;
    }
    ctx.body = compressed;
    ctx.set('content-encoding', coding);
    // Koa's response.get() answers undefined, not '', for a header that is not set.
    const etag: string | undefined = ctx.response.get('etag');
    if (etag?.startsWith('"')) ctx.set('etag', `W/${etag}`);
  };
}
