import type { Context } from 'koa';
import { BadRequestError, PayloadTooLargeError } from '../errors.js';

/** Largest admin request body. @default 64 KiB */
export const ADMIN_BODY_LIMIT = 64 * 1024;

/**
 * Reads a JSON object body with a size cap: 413 past `limit` (checked against Content-Length
 * before reading, and while reading), 400 for malformed JSON or a non-object.
 */
export async function readJsonBody(ctx: Context, limit = ADMIN_BODY_LIMIT): Promise<Record<string, unknown>> {
  // The body is read as JSON whatever its Content-Type says: `curl -d` labels JSON as a form.
  const declared = Number(ctx.get('content-length') || 0);
  if (declared > limit) throw new PayloadTooLargeError(limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new PayloadTooLargeError(limit);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BadRequestError(`malformed JSON body: ${(err as Error).message}`, 'MESH_ERR_BAD_JSON');
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    throw new BadRequestError('body must be a JSON object', 'MESH_ERR_BAD_JSON');
  }
  return value as Record<string, unknown>;
}
