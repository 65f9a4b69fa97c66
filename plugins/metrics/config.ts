import { z } from 'zod';
import { defineSections } from '../../lib/config/index.js';

/** `metrics`: Prometheus metrics on the admin port (`GET /metrics`). On whenever `admin` is configured; `false` turns it off. */
export const metricsSchema = z.union([
  z.boolean(),
  z.strictObject({
    /** Node's process metrics (prom-client's default ones). @default true */
    defaultMetrics: z.boolean().default(true),
    /** Latency histogram buckets, in seconds. */
    buckets: z.array(z.number().positive()).min(1).optional(),
  }),
]);

/** The sections the metrics plugin owns. */
export const metricsSections = defineSections({ global: { key: 'metrics', schema: metricsSchema } });

declare module '../../lib/config/index.js' {
  interface GlobalSections {
    metrics: typeof metricsSchema;
  }
}
