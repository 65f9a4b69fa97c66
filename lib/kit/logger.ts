import { createRequire } from 'node:module';
import pino from 'pino';

/** The logger interface the gateway and plugins use: pino's. */
export type Logger = pino.Logger;

/** How log lines look on stderr: one JSON object per line, or pino-pretty's lines for a person at a terminal. */
export type LogFormat = 'json' | 'pretty';

/** What {@link createLogger} takes besides the level. */
export interface LoggerOptions {
  /** @default `pretty` when stderr is a terminal, else `json` (MESHGATE_LOG_FORMAT overrides both) */
  format?: LogFormat;
  /** Fields on every line (a cluster worker's id, say). */
  fields?: Record<string, unknown>;
}

/** The log format asked for: `MESHGATE_LOG_FORMAT`, else pretty at a terminal, else JSON. */
export function defaultLogFormat(env: NodeJS.ProcessEnv = process.env, tty = process.stderr.isTTY === true): LogFormat {
  const asked = env.MESHGATE_LOG_FORMAT;
  if (asked === 'json' || asked === 'pretty') return asked;
  return tty ? 'pretty' : 'json';
}

/**
 * A pino logger writing to stderr (stdout is for access logs), synchronously, in one format: JSON
 * lines, or pino-pretty's (loaded only then) for a terminal.
 */
export function createLogger(level: string = 'info', options: LoggerOptions = {}): Logger {
  const settings = { level, base: { name: 'meshgate', ...options.fields } };
  if ((options.format ?? defaultLogFormat()) === 'pretty') {
    const pretty = createRequire(import.meta.url)('pino-pretty') as (options: Record<string, unknown>) => pino.DestinationStream;
    return pino(settings, pretty({ destination: 2, sync: true, colorize: process.stderr.isTTY === true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname,name' }));
  }
  return pino(settings, pino.destination({ fd: 2, sync: true }));
}
