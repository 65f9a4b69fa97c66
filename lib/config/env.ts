import type { ConfigIssue } from '../errors.js';
import { formatPath } from './path.js';
import { yaml } from './yaml.js';

const REFERENCE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
const WHOLE_REFERENCE = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$/;

/**
 * Replaces `${NAME}` and `${NAME:-default}` in every string of a parsed document.
 * Substitution happens after YAML parsing, so a value can never inject YAML structure.
 * A string that is exactly one reference takes the type of the value (`port: ${PORT}` gives a number).
 * A reference to an unset variable without default is an issue naming the field.
 */
export function substituteEnv(
  value: unknown,
  env: NodeJS.ProcessEnv,
  issues: ConfigIssue[],
  path: (string | number)[] = [],
): unknown {
  if (typeof value === 'string') {
    if (!value.includes('${')) return value;
    const whole = WHOLE_REFERENCE.exec(value);
    if (whole) {
      const resolved = lookup(whole[1]!, whole[2], env, issues, path);
      return resolved === undefined ? value : parseScalar(resolved);
    }
    return value.replace(REFERENCE, (ref, name: string, fallback: string | undefined) => {
      return lookup(name, fallback, env, issues, path) ?? ref;
    });
  }
  if (Array.isArray(value)) return value.map((item, i) => substituteEnv(item, env, issues, [...path, i]));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) out[key] = substituteEnv(item, env, issues, [...path, key]);
    return out;
  }
  return value;
}

function lookup(
  name: string,
  fallback: string | undefined,
  env: NodeJS.ProcessEnv,
  issues: ConfigIssue[],
  path: (string | number)[],
): string | undefined {
  const found = env[name];
  if (found !== undefined && found !== '') return found;
  if (fallback !== undefined) return fallback;
  issues.push({ path: formatPath(path), message: `environment variable ${name} is not set` });
  return undefined;
}

function parseScalar(text: string): unknown {
  // Only plain scalars change type; anything YAML would read as a structure stays a string.
  // Loaded outside the try: a yaml package that fails to load must not pass for a string value.
  const { parse } = yaml();
  try {
    const parsed: unknown = parse(text);
    // Only numbers and booleans change type: for anything else YAML would eat comments, quotes and spaces.
    return typeof parsed === 'number' || typeof parsed === 'boolean' ? parsed : text;
  } catch {
    return text; // not a valid YAML scalar: keep the text as the user wrote it
  }
}
