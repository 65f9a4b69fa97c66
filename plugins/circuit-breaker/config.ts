import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `services.<name>.circuitBreaker`, with opossum's option names. */
export const circuitBreakerSchema = z.strictObject({
  /** Error percentage in the rolling window at which the circuit opens. @default 50 */
  errorThresholdPercentage: z.number().min(0).max(100).default(50),
  /** Attempts in the window before the percentage counts. @default 10 */
  volumeThreshold: z.number().int().min(0).default(10),
  /** How long an open circuit waits before one probe. @default 10s */
  resetTimeout: duration.default(10_000),
  /** Length of the rolling window. @default 10s */
  rollingCountTimeout: duration.default(10_000),
  /** Buckets of the rolling window. @default 10 */
  rollingCountBuckets: z.number().int().min(1).default(10),
});

/** A service's breaker settings, parsed. */
export type CircuitBreakerPolicy = z.output<typeof circuitBreakerSchema>;

/** The sections the circuit-breaker plugin owns. */
export const circuitBreakerSections = defineSections({ service: { key: 'circuitBreaker', schema: circuitBreakerSchema } });

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    circuitBreaker: typeof circuitBreakerSchema;
  }
}
