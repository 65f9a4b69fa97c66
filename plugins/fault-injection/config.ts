import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

const percent = z.number().min(0).max(100);

/** `routes[i].fault`: Envoy's fault injection, to prove that retries, timeouts and breakers work. */
export const faultSchema = z
  .strictObject({
    /** Holds `percent` of the requests for `duration` before they go on. */
    delay: z.strictObject({ percent, duration }).optional(),
    /** Answers `percent` of the requests with `status` at once. */
    abort: z.strictObject({ percent, status: z.number().int().min(400).max(599).default(503) }).optional(),
    /**
     * Only requests carrying this header get faults (a tester's own requests in production):
     * a name (any value), or `{ name, value }`.
     */
    header: z.union([z.string().min(1), z.strictObject({ name: z.string().min(1), value: z.string() })]).optional(),
  })
  .refine((fault) => fault.delay !== undefined || fault.abort !== undefined, { message: 'needs a delay or an abort' });

/** A route's faults, prepared. */
export interface FaultPolicy {
  delay: { percent: number; ms: number } | null;
  abort: { percent: number; status: number } | null;
  /** Lower-case header name, and the value it must have (null: any). */
  header: { name: string; value: string | null } | null;
}

/** The sections the fault-injection plugin owns. */
export const faultSections = defineSections({
  route: {
    key: 'fault',
    schema: faultSchema,
    prepare: (fault): FaultPolicy => ({
      delay: fault.delay === undefined ? null : { percent: fault.delay.percent, ms: fault.delay.duration },
      abort: fault.abort ?? null,
      header:
        fault.header === undefined
          ? null
          : typeof fault.header === 'string'
            ? { name: fault.header.toLowerCase(), value: null }
            : { name: fault.header.name.toLowerCase(), value: fault.header.value },
    }),
  },
});

declare module '../../lib/config/index.js' {
  interface RouteSections {
    fault: typeof faultSchema;
  }
}
