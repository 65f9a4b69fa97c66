import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/** `overload`: the gateway sheds new requests before it falls over (Envoy's overload manager, simplified). */
export const overloadSchema = z.strictObject({
  /** Shed while the event loop's p99 delay over the last `window` is above this. @default 100ms */
  maxEventLoopDelay: duration.default(100),
  /** Shed while more requests than this are in flight. @default none */
  maxInflight: z.number().int().min(1).optional(),
  /** How often the delay is read (and the decision taken). @default 100ms */
  window: duration.default(100),
  /** `Retry-After` of a shed request, in seconds. @default 1 */
  retryAfter: z.number().int().min(0).default(1),
});

/** The overload settings, parsed. */
export type OverloadPolicy = z.output<typeof overloadSchema>;

/** The sections the load-shedding plugin owns. */
export const loadSheddingSections = defineSections({ global: { key: 'overload', schema: overloadSchema } });

declare module '../../lib/config/index.js' {
  interface GlobalSections {
    overload: typeof overloadSchema;
  }
}
