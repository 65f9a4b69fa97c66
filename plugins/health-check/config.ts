import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `services.<name>.healthCheck`: Envoy's HTTP health checking. */
export const healthCheckSchema = z.strictObject({
  /** Path probed with GET on every instance. @default /health */
  path: z.string().startsWith('/').default('/health'),
  /** Time between probes of one instance. @default 5s */
  interval: duration.default(5000),
  /** Time a probe may take. @default 1s */
  timeout: duration.default(1000),
  /** Failed probes in a row that make an instance unhealthy. @default 2 */
  unhealthyThreshold: z.number().int().min(1).default(2),
  /** Passed probes in a row that make it healthy again. @default 1 */
  healthyThreshold: z.number().int().min(1).default(1),
  /**
   * Probe with the gRPC health checking protocol (`grpc.health.v1.Health/Check` over HTTP/2)
   * instead of `GET path`: `true` asks about the whole server, `{ service }` about one service.
   * Only SERVING passes. @default off
   */
  grpc: z
    .union([z.boolean(), z.strictObject({ service: z.string().default('') })])
    .transform((value) => (value === false ? undefined : value === true ? { service: '' } : value))
    .optional(),
});

/** A service's health-check settings, parsed. */
export type HealthCheckPolicy = z.output<typeof healthCheckSchema>;

/** The sections the health-check plugin owns. */
export const healthCheckSections = defineSections({ service: { key: 'healthCheck', schema: healthCheckSchema } });

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    healthCheck: typeof healthCheckSchema;
  }
}
