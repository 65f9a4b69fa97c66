import { definePlugin, type GatewayPlugin } from '../../lib/index.js';
import { dashboardRoutes } from './admin.js';
import { collectFromWorkers, reportToPrimary } from './cluster.js';
import { dashboardSections, type DashboardSection } from './config.js';
import { DashboardLive } from './live.js';

export { dashboardSchema } from './config.js';

/** Options of {@link dashboard}; each defaults to the config's `dashboard` section. */
export interface DashboardOptions {
  /** How far back the charts go, in ms. @default 900000 (15 minutes) */
  window?: number;
  /** One chart point, in ms: requests are counted per bucket of this length. @default 5000 */
  resolution?: number;
}

/**
 * The web dashboard on the admin port: `GET /` (or `/dashboard`) serves a page that shows the
 * services and their instances, per service and per route requests per second, error rate and
 * p50/p99 latency over the last 15 minutes, the route table and the live event stream, kept
 * current over one stream. The counts live here, in a ring of fixed-size buckets per series fed
 * by `request:end` (no Prometheus needed); in cluster mode the workers count and the primary, which
 * serves the admin API, adds their counts up.
 * @example
 * createGateway({ admin: { port: 9901, token: 'T' }, dashboard: { window: '30m' } })
 */
export function dashboard(given: DashboardOptions = {}): GatewayPlugin<DashboardSection, unknown, unknown> {
  return definePlugin({
    name: 'dashboard',
    config: dashboardSections,
    setup(gateway, scope) {
      const section = scope.global();
      const configured: DashboardOptions = typeof section === 'object' ? section : {};
      const window = given.window ?? configured.window ?? 900_000;
      const resolution = given.resolution ?? configured.resolution ?? 5000;
      // A worker's book keeps the current and the previous bucket, which it reports: the primary keeps the window.
      const worker = gateway.role === 'worker';
      const live = new DashboardLive(gateway, window, resolution, worker ? 2 : undefined);
      gateway.on('request:end', (ctx, status) => {
        const mesh = ctx.state.mesh;
        live.record(mesh.route?.name, mesh.backend?.service ?? mesh.service?.name, mesh.endedAt - mesh.startedAt, status >= 500);
      });
      if (worker) {
        const stop = reportToPrimary(gateway, live);
        gateway.onClose(() => {
          stop();
          live.close();
        });
        return;
      }
      live.watchEvents();
      const stopCollecting = gateway.role === 'primary' ? collectFromWorkers(gateway, live) : () => {};
      const stopRoutes = dashboardRoutes(gateway, live, window);
      // Series of services and routes a new config no longer has would be shown for nothing.
      gateway.on('service:removed', (service) => live.book.services.delete(service.name));
      gateway.onConfig((snapshot) => {
        const names = new Set(snapshot.router.routes().map((r) => r.name));
        for (const name of live.book.routes.keys()) if (!names.has(name)) live.book.routes.delete(name);
      });
      gateway.onClose(() => {
        stopRoutes();
        stopCollecting();
        live.close();
      });
    },
  });
}
