import { z } from 'zod';
import { defineSections, duration } from '../../lib/config/index.js';

/**
 * `dashboard`: the web dashboard on the admin port (`GET /`, `/dashboard`). On whenever `admin` is
 * configured; `false` turns it off.
 */
export const dashboardSchema = z.union([
  z.boolean(),
  z
    .strictObject({
      /** How far back the charts go. @default 15m */
      window: duration.refine((ms) => ms >= 60_000 && ms <= 86_400_000, { message: 'must be between 1m and 24h' }).default(900_000),
      /** The width of one point of the charts: requests are counted per bucket of this length. @default 5s */
      resolution: duration.refine((ms) => ms >= 1000 && ms <= 300_000, { message: 'must be between 1s and 5m' }).default(5000),
    })
    .refine((d) => d.window / d.resolution <= 2000, { message: 'window / resolution must be at most 2000 points' }),
]);

/** The dashboard section, parsed. */
export type DashboardSection = z.output<typeof dashboardSchema>;

/** The sections the dashboard plugin owns. */
export const dashboardSections = defineSections({ global: { key: 'dashboard', schema: dashboardSchema } });

declare module '../../lib/config/index.js' {
  interface GlobalSections {
    dashboard: typeof dashboardSchema;
  }
}
