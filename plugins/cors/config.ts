import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';
import { globMatcher } from '../../lib/kit/index.js';

/** `routes[i].cors`: which browser origins may call the route, and how. */
export const corsSchema = z.strictObject({
  /** Exact origins (`https://app.example.com`), globs (`https://*.example.com`), or `*` for any. */
  origins: z.array(z.string().min(1)).min(1),
  /** Methods a preflight allows. @default GET, HEAD, PUT, POST, DELETE, PATCH */
  methods: z.array(z.string().toUpperCase()).min(1).default(['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'PATCH']),
  /** Request headers a preflight allows; by default the ones it asks for. */
  headers: z.array(z.string()).optional(),
  /** Response headers the browser may read. */
  exposeHeaders: z.array(z.string()).optional(),
  /** Allow cookies and credentials (then the origin is echoed, never `*`). @default false */
  credentials: z.boolean().default(false),
  /** How long a browser may cache a preflight. */
  maxAge: duration.optional(),
}).refine((c) => !(c.credentials && c.origins.includes('*')), { message: 'credentials with any origin (*) would let every site call with the user\'s cookies: list the origins', path: ['origins'] });

export type CorsConfig = z.output<typeof corsSchema>;

/** A route's CORS settings with its origin test compiled. */
export interface CorsPolicy extends CorsConfig {
  /** The origin to allow for a request's `Origin`, or '' for none. */
  allow(origin: string): string;
}

export function prepareCors(config: CorsConfig): CorsPolicy {
  const any = config.origins.includes('*');
  const tests = config.origins.filter((o) => o !== '*').map((o) => globMatcher(o.toLowerCase()));
  return {
    ...config,
    allow: (origin) => {
      if (origin === '') return '';
      if (any) return '*';
      const lower = origin.toLowerCase();
      return tests.some((test) => test(lower)) ? origin : '';
    },
  };
}

/** The sections the cors plugin owns. */
export const corsSections = defineSections({ route: { key: 'cors', schema: corsSchema, prepare: prepareCors } });

declare module '../../lib/config/index.js' {
  interface RouteSections {
    cors: typeof corsSchema;
  }
}
