import pino from 'pino';

/** The logger interface the gateway and plugins use: pino's. */
export type Logger = pino.Logger;

/** A pino logger writing JSON lines to stderr (stdout is for access logs). */
export function createLogger(level: string = 'info'): Logger {
  return pino({ level, base: { name: 'meshgate' } }, pino.destination({ fd: 2, sync: true }));
}
