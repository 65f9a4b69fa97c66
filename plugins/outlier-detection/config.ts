import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `services.<name>.outlierDetection`: Envoy's outlier detection, with its names where they fit. */
export const outlierDetectionSchema = z.strictObject({
  /** 5xx answers in a row (connect failures, resets and timeouts count as 5xx) that eject an instance. @default 5 */
  consecutive5xx: z.number().int().min(1).default(5),
  /** Gateway failures in a row (502, 503, 504, connect failures, resets, timeouts) that eject an instance. @default 3 */
  consecutiveGatewayFailure: z.number().int().min(1).default(3),
  /** How often the success rates are compared, and the ejection multipliers of instances that stayed in go down. @default 10s */
  interval: duration.default(10_000),
  /** Ejection time, times the number of times the instance was ejected. @default 30s */
  baseEjectionTime: duration.default(30_000),
  /** The longest an ejection lasts. @default 300s */
  maxEjectionTime: duration.default(300_000),
  /** At most this share of a service's instances are ejected at once; one may always be. @default 50 */
  maxEjectionPercent: z.number().min(0).max(100).default(50),
  /**
   * Also eject instances whose success rate over an interval is below the mean of their service's
   * by more than `stdevFactor` standard deviations (Envoy's success-rate outlier detection).
   */
  successRate: z
    .strictObject({
      /** Instances with at least `requestVolume` requests in the interval needed to compare. @default 5 */
      minimumHosts: z.number().int().min(2).default(5),
      /** Requests an instance needs in the interval to be judged. @default 100 */
      requestVolume: z.number().int().min(1).default(100),
      /** How far below the mean, in standard deviations, is an outlier. @default 1.9 */
      stdevFactor: z.number().positive().default(1.9),
    })
    .optional(),
  /** A passing active health check returns an ejected instance before its time is up. @default false */
  unejectOnHealthCheck: z.boolean().default(false),
});

/** A service's outlier-detection settings, parsed. */
export type OutlierDetectionPolicy = z.output<typeof outlierDetectionSchema>;

/** The sections the outlier-detection plugin owns. */
export const outlierDetectionSections = defineSections({ service: { key: 'outlierDetection', schema: outlierDetectionSchema } });

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    outlierDetection: typeof outlierDetectionSchema;
  }
}
