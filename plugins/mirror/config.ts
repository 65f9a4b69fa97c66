import { z } from 'zod';
import { byteSize, defineSections, duration } from '../../lib/config/index.js';

/** `routes[i].mirror`: a copy of each request to a shadow service, its answer discarded (Envoy's request mirroring). */
export const mirrorSchema = z.strictObject({
  /** The service that gets the copies. */
  service: z.string().min(1),
  /** Share of the route's requests copied. @default 100 */
  percent: z.number().min(0).max(100).default(100),
  /** Copies in flight at most; past it, copies are dropped (and counted). @default 64 */
  maxInflight: z.number().int().min(1).default(64),
  /** Largest body copied; a larger one is not mirrored (and counted). @default 64kb */
  maxBodySize: byteSize.default(64 * 1024),
  /** How long a copy may take before it is abandoned. @default the mirror service's timeout */
  timeout: duration.optional(),
});

/** A route's mirror settings, parsed. */
export type MirrorPolicy = z.output<typeof mirrorSchema>;

/** The sections the mirror plugin owns. */
export const mirrorSections = defineSections({
  route: {
    key: 'mirror',
    schema: mirrorSchema,
    prepare: (mirror, context) => {
      if (!Object.hasOwn(context.config.services, mirror.service)) throw new Error(`service: unknown service "${mirror.service}"`);
      return mirror;
    },
  },
});

declare module '../../lib/config/index.js' {
  interface RouteSections {
    mirror: typeof mirrorSchema;
  }
}
