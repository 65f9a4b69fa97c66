import { monitorEventLoopDelay } from 'node:perf_hooks';
import { OverloadedError, definePlugin, type GatewayPlugin } from '../../lib/index.js';
import { loadSheddingSections, type OverloadPolicy } from './config.js';

export { overloadSchema, type OverloadPolicy } from './config.js';

/**
 * Load shedding (`overload` in the config): while the event loop's p99 delay over the last
 * `window` is above `maxEventLoopDelay`, or more than `maxInflight` requests are in flight, new
 * requests are answered 503 `MESH_ERR_OVERLOADED` with `Retry-After` at once, before any other
 * plugin spends anything on them, so the requests already admitted keep their latency. The admin
 * port (probes, metrics) is a server of its own and is never shed. The decision is read from
 * perf_hooks' event-loop delay histogram every `window`: one boolean per request.
 */
export function loadShedding(): GatewayPlugin<OverloadPolicy, unknown, unknown> {
  return definePlugin({
    name: 'load-shedding',
    config: loadSheddingSections,
    setup(gateway, scope) {
      const histogram = monitorEventLoopDelay({ resolution: 10 });
      histogram.enable();
      let shedding = false;
      let policy = scope.global();
      // The first window holds the gateway's own start (module loading, setup): not load.
      let first = true;
      const check = (): void => {
        policy = scope.global();
        if (policy === undefined) return;
        const p99 = histogram.percentile(99) / 1e6;
        histogram.reset();
        if (first) {
          first = false;
          return;
        }
        const before = shedding;
        // Some slack on the way back, so one quiet window does not let the whole backlog in.
        shedding = shedding ? p99 > policy.maxEventLoopDelay * 0.8 : p99 > policy.maxEventLoopDelay;
        if (shedding !== before) gateway.log.warn({ eventLoopDelayP99Ms: Math.round(p99) }, shedding ? 'overloaded: shedding new requests' : 'load back to normal: no more shedding');
      };
      let timer = setInterval(check, policy?.window ?? 100);
      timer.unref();
      gateway.onConfig(() => {
        clearInterval(timer);
        timer = setInterval(check, scope.global()?.window ?? 100);
        timer.unref();
      });
      gateway.onClose(() => {
        clearInterval(timer);
        histogram.disable();
      });
      gateway.addMiddleware('onRequest', (_ctx, next) => {
        if (policy !== undefined && (shedding || (policy.maxInflight !== undefined && gateway.inflight > policy.maxInflight))) {
          throw new OverloadedError('gateway', shedding ? 'the gateway is overloaded; try again later' : `more than ${policy.maxInflight} requests in flight`, policy.retryAfter);
        }
        return next();
      });
    },
  });
}
