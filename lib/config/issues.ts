import type { ZodError } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { formatPath } from './path.js';
import type { StandardSchemaV1 } from './standard-schema.js';

/** Turns zod's issues into `{ path, message }` with user-facing paths and messages; `prefix` is where the schema sits in the document. */
export function zodIssues(error: ZodError, prefix: readonly PropertyKey[] = []): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    const path = [...prefix, ...issue.path];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: formatPath([...path, key]), message: 'unknown field' });
      continue;
    }
    if (issue.code === 'invalid_key') {
      out.push({ path: formatPath(path), message: cleanMessage(issue.issues[0]?.message ?? issue.message, false) });
      continue;
    }
    if (issue.code === 'invalid_union' && issue.errors.length > 0) {
      out.push(...unionIssues(issue.errors as ZodIssueLike[][], path, issue.message));
      continue;
    }
    out.push({ path: formatPath(path), message: cleanMessage(issue.message, path.length === 0) });
  }
  return out;
}

type ZodIssueLike = ZodError['issues'][number];

/**
 * A value no branch of a union took. The branch that got furthest into the value (a `{ name, key }`
 * object with a bad `key`) says what is wrong there; when every branch failed on the value's type,
 * the union's own message (a duration says so), or else the types it could have been.
 */
function unionIssues(branches: ZodIssueLike[][], path: PropertyKey[], message: string): ConfigIssue[] {
  const depth = (branch: ZodIssueLike[]): number => Math.max(0, ...branch.map((i) => i.path.length));
  const deepest = branches.reduce((best, branch) => (depth(branch) > depth(best) ? branch : best));
  if (depth(deepest) > 0) return zodIssues({ issues: deepest } as ZodError, path);
  const expected = [...new Set(branches.flatMap((branch) => branch.filter((i) => i.code === 'invalid_type').map((i) => String((i as { expected?: unknown }).expected))))];
  // A union that says what it is (a duration) says so.
  if (!/^Invalid input/.test(message)) return [{ path: formatPath(path), message }];
  if (expected.length === branches.length) return [{ path: formatPath(path), message: `expected ${expected.join(' or ')}` }];
  return zodIssues({ issues: branches[0]! } as ZodError, path);
}

function cleanMessage(message: string, root: boolean): string {
  const text = message
    .replace(/^Invalid input: /, '')
    .replace(/^Invalid option: /, '')
    .replace(/^Too (?:small|big): /, '')
    .replace(/, received /, ', got ')
    .replace(/^expected int, got number$/, 'expected an integer');
  if (root && /expected object/.test(text)) return 'the config must be a mapping (key: value) at the top level';
  return text;
}

/** What checking one value against a schema gave: the parsed value, or the problems with their paths. */
export type Checked<T> = { ok: true; value: T } | { ok: false; issues: ConfigIssue[] };

interface ZodLike {
  safeParse(value: unknown): { success: true; data: unknown } | { success: false; error: ZodError };
  _zod: unknown;
}

/**
 * Checks `value` against any Standard Schema (zod 4, valibot, arktype, ...), with the issues'
 * paths prefixed by where the value sits in the document. zod schemas go through zod directly, so
 * their messages read like the core's own (`unknown field`, `expected number, got string`).
 */
export function checkSchema<T>(schema: StandardSchemaV1<unknown, T>, value: unknown, prefix: readonly PropertyKey[]): Checked<T> {
  const zod = schema as unknown as Partial<ZodLike>;
  if (typeof zod.safeParse === 'function' && zod._zod !== undefined) {
    const result = zod.safeParse(value);
    return result.success ? { ok: true, value: result.data as T } : { ok: false, issues: zodIssues(result.error, prefix) };
  }
  const result = schema['~standard'].validate(value);
  if (result instanceof Promise) {
    return { ok: false, issues: [{ path: formatPath(prefix), message: 'the plugin declares an asynchronous schema; config sections must validate synchronously' }] };
  }
  if (result.issues === undefined) return { ok: true, value: result.value };
  return {
    ok: false,
    issues: result.issues.map((issue) => ({
      path: formatPath([...prefix, ...(issue.path ?? []).map((segment) => (typeof segment === 'object' ? segment.key : segment))]),
      message: issue.message,
    })),
  };
}
