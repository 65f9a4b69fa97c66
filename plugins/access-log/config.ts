import { z } from 'zod';
import { defineSections } from '../../lib/config/index.js';

/** `accessLog`: one JSON line per request on stdout. Off unless `true` (or an object). */
export const accessLogSchema = z.union([z.boolean(), z.strictObject({})]);

/** The sections the access-log plugin owns. */
export const accessLogSections = defineSections({ global: { key: 'accessLog', schema: accessLogSchema } });

declare module '../../lib/config/index.js' {
  interface GlobalSections {
    accessLog: typeof accessLogSchema;
  }
}
