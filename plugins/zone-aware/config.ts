import { z } from 'zod';
import { defineSections } from '../../lib/config/index.js';

/** `services.<name>.zoneAware`: keep requests in the gateway's zone (`listen.zone` or `MESHGATE_ZONE`). */
export const zoneAwareSchema = z.union([
  z.boolean(),
  z.strictObject({
    /** Below this share of the local zone's instances usable, requests spill to other zones. @default 70 */
    minHealthyPercent: z.number().min(0).max(100).default(70),
  }),
]);

/** A service's zone-aware settings, prepared: off (`false`) or the threshold. */
export interface ZoneAwarePolicy {
  minHealthyPercent: number;
}

/** The sections the zone-aware plugin owns. */
export const zoneAwareSections = defineSections({
  service: {
    key: 'zoneAware',
    schema: zoneAwareSchema,
    prepare: (options): ZoneAwarePolicy | false => (options === false ? false : { minHealthyPercent: options === true ? 70 : options.minHealthyPercent }),
  },
});

declare module '../../lib/config/index.js' {
  interface ServiceSections {
    zoneAware: typeof zoneAwareSchema;
  }
}
