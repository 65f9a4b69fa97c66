import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { ZodError } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { substituteEnv } from './env.js';
import { formatPath } from './path.js';
import { configSchema, crossCheck, type GatewayConfig } from './schema.js';
import { yaml } from './yaml.js';

export { parseDuration } from './duration.js';
export { formatPath } from './path.js';
export * from './schema.js';

/** Where a config came from; relative paths in it (TLS files, plugin modules) resolve against `baseDir`. */
export interface LoadedConfig {
  config: GatewayConfig;
  baseDir: string;
  source?: string;
}

/**
 * Validates a config object (already parsed; `${ENV}` references are substituted).
 * Throws a {@link ConfigError} listing every problem with its path.
 */
export function validateConfig(input: unknown, options: { env?: NodeJS.ProcessEnv; source?: string } = {}): GatewayConfig {
  const issues: ConfigIssue[] = [];
  const substituted = substituteEnv(input ?? {}, options.env ?? process.env, issues);
  const result = configSchema.safeParse(substituted);
  if (!result.success) issues.push(...zodIssues(result.error));
  for (const issue of crossCheck(substituted)) issues.push({ path: formatPath(issue.path), message: issue.message });
  if (issues.length > 0) throw new ConfigError(issues, options.source);
  return result.data!;
}

/** Parses YAML (or JSON) text and validates it. */
export function parseConfig(text: string, options: { env?: NodeJS.ProcessEnv; source?: string } = {}): GatewayConfig {
  const doc = yaml().parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({ path: '', message: `YAML: ${e.message.split('\n')[0]}` })),
      options.source,
    );
  }
  return validateConfig(doc.toJS(), options);
}

/** Reads, parses and validates a config file. */
export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<LoadedConfig> {
  const path = resolve(file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError([{ path: '', message: `cannot read ${path}: ${(err as Error).message}` }]);
  }
  return { config: parseConfig(text, { env, source: path }), baseDir: dirname(path), source: path };
}

/** Turns zod's issues into `{ path, message }` with user-facing paths and messages. */
export function zodIssues(error: ZodError): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: formatPath([...issue.path, key]), message: 'unknown field' });
      continue;
    }
    if (issue.code === 'invalid_key') {
      out.push({ path: formatPath(issue.path), message: cleanMessage(issue.issues[0]?.message ?? issue.message, false) });
      continue;
    }
    if (issue.code === 'invalid_union' && issue.errors.length > 0) {
      // Our only unions are duration-like; report the first branch's problem.
      out.push({ path: formatPath(issue.path), message: 'expected a duration like "500ms", "2s", "1m" or milliseconds' });
      continue;
    }
    out.push({ path: formatPath(issue.path), message: cleanMessage(issue.message, issue.path.length === 0) });
  }
  return out;
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
