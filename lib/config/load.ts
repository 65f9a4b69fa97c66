import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { substituteEnv } from './env.js';
import { zodIssues } from './issues.js';
import { formatPath } from './path.js';
import { configSchema, crossCheck, type GatewayConfig } from './schema.js';
import { checkSections, indexSections, type SectionIndex, type SectionOwner, type UnknownSections } from './sections.js';
import { yaml } from './yaml.js';

/** Where a config came from; relative paths in it (TLS files, plugin modules) resolve against `baseDir`. */
export interface LoadedConfig {
  config: GatewayConfig;
  baseDir: string;
  source?: string;
}

/** How to validate: which plugins' sections exist, the environment for `${ENV}`, and where the text came from. */
export interface ValidateOptions {
  /** The plugins whose sections the document may hold (their names and `config` declarations). @default none */
  sections?: Iterable<SectionOwner> | SectionIndex;
  /** `error` (the default): a key no plugin declares is an `unknown field`; `ignore`: left for later, when more plugins are known. */
  unknownSections?: UnknownSections;
  env?: NodeJS.ProcessEnv;
  /** The file, named in the error. */
  source?: string;
}

/**
 * Validates a config object (already parsed; `${ENV}` references are substituted): the core's
 * fields, and every section against the schema of the plugin that declares it.
 * Throws a {@link ConfigError} listing every problem with its path.
 */
export function validateConfig(input: unknown, options: ValidateOptions = {}): GatewayConfig {
  const issues: ConfigIssue[] = [];
  const substituted = substituteEnv(input ?? {}, options.env ?? process.env, issues);
  const result = configSchema.safeParse(substituted);
  if (!result.success) issues.push(...zodIssues(result.error));
  const index = isIndex(options.sections) ? options.sections : indexSections(options.sections ?? []);
  const parsed = result.success ? (result.data as GatewayConfig) : undefined;
  issues.push(...checkSections(substituted, parsed, index, options.unknownSections ?? 'error'));
  for (const issue of crossCheck(substituted)) issues.push({ path: formatPath(issue.path), message: issue.message });
  if (issues.length > 0) throw new ConfigError(issues, options.source);
  return parsed!;
}

function isIndex(value: ValidateOptions['sections']): value is SectionIndex {
  return value !== undefined && !(Symbol.iterator in value);
}

/** Parses YAML (or JSON) text and validates it. */
export function parseConfig(text: string, options: ValidateOptions = {}): GatewayConfig {
  return validateConfig(parseYaml(text, options.source), options);
}

/**
 * Parses YAML (or JSON) text into a plain document, without validating it. A syntax error throws a
 * {@link ConfigError}.
 */
export function parseYaml(text: string, source?: string): unknown {
  const doc = yaml().parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    // The first syntax error only: the parser's later ones follow from it and would bury it.
    const where = first.linePos?.[0];
    const head = first.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    const excerpt = first.message.split('\n').slice(1).join('\n').replace(/^\n+|\n+$/g, '');
    throw new ConfigError([{ path: '', message: `YAML syntax error${where ? ` at line ${where.line}, column ${where.col}` : ''}: ${head}${excerpt ? `\n${excerpt}` : ''}` }], source);
  }
  return doc.toJS();
}

/** Reads a config file into a plain document (YAML or JSON), without validating it. */
export async function readConfigFile(file: string): Promise<{ document: unknown; baseDir: string; source: string }> {
  const path = resolve(file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError([{ path: '', message: `cannot read ${path}: ${(err as Error).message}` }]);
  }
  return { document: parseYaml(text, path), baseDir: dirname(path), source: path };
}

/** Reads, parses and validates a config file; `${ENV}` references read `env`. */
export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env, options: Omit<ValidateOptions, 'source' | 'env'> = {}): Promise<LoadedConfig> {
  const { document, baseDir, source } = await readConfigFile(file);
  return { config: validateConfig(document, { ...options, env, source }), baseDir, source };
}
