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
  if (depthOf(value) > MAX_JSON_DEPTH) throw new BadRequestError(`body is nested more than ${MAX_JSON_DEPTH} levels deep`, 'MESH_ERR_BAD_JSON');
  return value as Record<string, unknown>;
}

/** Deepest nesting an admin body may have: deeper ones are refused before anything recurses into them. */
export const MAX_JSON_DEPTH = 32;

/** How deep a parsed JSON value nests, counted without recursion (a deep value would overflow the stack). */
function depthOf(value: unknown): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    deepest = Math.max(deepest, depth);
    if (deepest > MAX_JSON_DEPTH) return deepest;
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  return deepest;
}
