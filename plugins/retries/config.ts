import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `services.<name>.retries`: Envoy's retry policy. */
export const retriesSchema = z.strictObject({
  /** Retries after the first attempt. @default 2 */
  attempts: z.number().int().min(0).default(2),
  /** Deadline of each attempt; the service's `timeout` bounds them all. */
  perTryTimeout: duration.optional(),
  /** Methods retried on any retryable failure. @default the idempotent ones */
  methods: z.array(z.string().toUpperCase()).optional(),
  /** Upstream statuses that are retried. @default [502, 503, 504] */
  retryOn: z.array(z.number().int().min(100).max(599)).default([502, 503, 504]),
  /** Concurrent retries as a share of the service's active requests. @default 20 */
  budgetPercent: z.number().min(0).max(100).default(20),
  /** Concurrent retries always allowed, whatever the budget. @default 3 */
  minRetryConcurrency: z.number().int().min(0).default(3),
});

/** A service's retry policy, parsed. */
export type RetryPolicy = z.output<typeof retriesSchema>;

/** The sections the retries plugin owns. */
export const retriesSections = defineSections({ service: { key: 'retries', schema: retriesSchema } });

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    retries: typeof retriesSchema;
  }
}
