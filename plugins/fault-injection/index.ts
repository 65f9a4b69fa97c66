import { setTimeout as sleep } from 'node:timers/promises';
import { MeshError, definePlugin, type GatewayPlugin } from '../../lib/index.js';
import { faultSections, type FaultPolicy } from './config.js';

export { faultSchema, type FaultPolicy } from './config.js';

/**
 * Fault injection (`routes[i].fault`, Envoy's): before an instance is chosen (the `resolve`
 * stage, after authentication and rate limits), `delay.percent` of the requests wait
 * `delay.duration` (the route's timeout starts after the delay, as Envoy's does) and
 * `abort.percent` are answered `abort.status` with `MESH_ERR_FAULT_INJECTED`; both draws are
 * independent, so a request may be delayed and then aborted. With `header`, only requests carrying
 * it get faults. The access log flags them `DI` (delay) and `FI` (abort); metrics count them in
 * `meshgate_faults_injected_total`.
 */
export function faultInjection(): GatewayPlugin<unknown, unknown, unknown, unknown, unknown, FaultPolicy> {
  return definePlugin({
    name: 'fault-injection',
    config: faultSections,
    setup(gateway, scope) {
      gateway.addMiddleware('resolve', async (ctx, next) => {
        const fault = scope.route(ctx);
        if (fault === undefined) return next();
        if (fault.header !== null) {
          const value = ctx.req.headers[fault.header.name];
          if (value === undefined || (fault.header.value !== null && value !== fault.header.value)) return next();
        }
        const mesh = ctx.state.mesh;
        const { delay, abort } = fault;
        if (delay !== null && gateway.random() * 100 < delay.percent) {
          mesh.addFlag('DI');
          await sleep(delay.ms);
          mesh.deadline += delay.ms;
        }
        if (abort !== null && gateway.random() * 100 < abort.percent) {
          mesh.addFlag('FI');
          throw new MeshError('MESH_ERR_FAULT_INJECTED', abort.status, `fault injected by route "${mesh.route.name}"`);
        }
        return next();
      });
    },
  });
}
