import { z } from 'zod';
import { defineSections } from '../../lib/config/index.js';

/** `tracing`: W3C traceparent and x-request-id propagation. On unless `false`. */
export const tracingSchema = z.union([z.boolean(), z.strictObject({ requestIdHeader: z.string().min(1).optional() })]);

/** The sections the trace-context plugin owns. */
export const traceContextSections = defineSections({ global: { key: 'tracing', schema: tracingSchema } });

declare module '../../lib/config/index.js' {
  interface GlobalSections {
    tracing: typeof tracingSchema;
  }
}
