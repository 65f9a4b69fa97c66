import { definePlugin, type GatewayPlugin, type Instance, type Service } from '../../lib/index.js';
import { outlierDetectionSections, type OutlierDetectionPolicy } from './config.js';

export { outlierDetectionSchema, type OutlierDetectionPolicy } from './config.js';

/** What outlier detection knows of one instance. */
interface Record {
  /** 5xx answers (and failures) in a row. */
  consecutive5xx: number;
  /** Gateway failures (502, 503, 504 and failures) in a row. */
  consecutiveGateway: number;
  /** Times ejected; the next ejection lasts this many base times (it goes down while the instance stays in). */
  ejections: number;
  /** This interval's answers, for success-rate detection. */
  requests: number;
  successes: number;
  timer: NodeJS.Timeout | null;
}

const GATEWAY_FAILURES = new Set([502, 503, 504]);

/**
 * Outlier detection, as Envoy's: for services with an `outlierDetection` section, an instance that
 * answers `consecutive5xx` 5xx in a row, or `consecutiveGatewayFailure` gateway failures in a row
 * (502, 503, 504, or a connect failure, reset or timeout), leaves the candidates for
 * `baseEjectionTime` times the number of times it was ejected (at most `maxEjectionTime`), then
 * comes back by itself. With `successRate`, every `interval` the instances whose success rate is
 * below the service's mean by more than `stdevFactor` deviations are ejected too. At most
 * `maxEjectionPercent` of a service's instances are out at once, but one may always be. A client
 * hanging up says nothing of an instance. Ejections and returns are `instance:ejected` and
 * `instance:returned` events; the breaker and health checks work alongside (a candidate must pass
 * all three), and panic mode (`panicThreshold`) lets ejected instances take traffic again.
 */
export function outlierDetection(): GatewayPlugin<unknown, OutlierDetectionPolicy, unknown> {
  return definePlugin({
    name: 'outlier-detection',
    config: outlierDetectionSections,
    setup(gateway, scope) {
      const records = new Map<Instance, Record>();
      let closed = false;

      const recordOf = (instance: Instance): Record => {
        let record = records.get(instance);
        if (record === undefined) {
          record = { consecutive5xx: 0, consecutiveGateway: 0, ejections: 0, requests: 0, successes: 0, timer: null };
          records.set(instance, record);
        }
        return record;
      };

      const ejectedIn = (service: Service): number => {
        let n = 0;
        for (const inst of service.instances.values()) if (inst.ejectedUntil !== 0) n++;
        return n;
      };

      const eject = (instance: Instance, policy: OutlierDetectionPolicy, reason: string): void => {
        const service = gateway.registry.getService(instance.service);
        if (service === undefined || instance.ejectedUntil !== 0 || closed) return;
        const out = ejectedIn(service);
        // maxEjectionPercent holds, except that one instance may always be ejected.
        if (out > 0 && ((out + 1) * 100) / service.instances.size > policy.maxEjectionPercent) return;
        const record = recordOf(instance);
        record.ejections++;
        const ms = Math.min(policy.baseEjectionTime * record.ejections, Math.max(policy.baseEjectionTime, policy.maxEjectionTime));
        record.consecutive5xx = 0;
        record.consecutiveGateway = 0;
        gateway.registry.setEjected(instance, Date.now() + ms, reason);
        gateway.log.warn({ service: instance.service, instance: instance.id, reason, ejectedForMs: ms, times: record.ejections }, 'instance ejected');
        record.timer = setTimeout(() => bringBack(instance), ms);
        record.timer.unref();
      };

      const bringBack = (instance: Instance): void => {
        const record = records.get(instance);
        if (record?.timer) clearTimeout(record.timer);
        if (record) record.timer = null;
        if (instance.ejectedUntil === 0) return;
        gateway.registry.setEjected(instance, 0);
        gateway.log.info({ service: instance.service, instance: instance.id }, 'instance returned from ejection');
      };

      gateway.on('upstream:response', (instance, info) => {
        if (closed) return;
        const policy = scope.forService(instance.service);
        if (policy === undefined) return;
        // An attempt that outlived its instance, or a client that hung up: nothing to learn.
        if (gateway.registry.getInstance(instance.service, instance.id) !== instance || info.error === 'MESH_ERR_CLIENT_ABORTED') return;
        const record = recordOf(instance);
        record.requests++;
        const failed = info.error !== undefined || info.status >= 500;
        if (!failed) {
          record.successes++;
          record.consecutive5xx = 0;
          record.consecutiveGateway = 0;
          return;
        }
        record.consecutive5xx++;
        if (info.error !== undefined || GATEWAY_FAILURES.has(info.status)) record.consecutiveGateway++;
        else record.consecutiveGateway = 0;
        if (record.consecutiveGateway >= policy.consecutiveGatewayFailure) eject(instance, policy, `${record.consecutiveGateway} gateway failures in a row`);
        else if (record.consecutive5xx >= policy.consecutive5xx) eject(instance, policy, `${record.consecutive5xx} 5xx answers in a row`);
      });

      // The request whose answer ejected its instance says so (the access log's OE flag).
      gateway.addMiddleware('guard', (ctx, next) => {
        if (scope.service(ctx) === undefined) return next();
        const mesh = ctx.state.mesh;
        const instance = mesh.instance;
        if (instance.ejectedUntil !== 0) return next();
        const mark = (): void => {
          if (instance.ejectedUntil !== 0) mesh.addFlag('OE');
        };
        return next().then(mark, (err: unknown) => {
          mark();
          throw err;
        });
      });

      // A passing health check brings an instance back early only where configured.
      gateway.on('instance:probe', (instance, ok) => {
        if (ok && instance.ejectedUntil !== 0 && scope.forService(instance.service)?.unejectOnHealthCheck === true) bringBack(instance);
      });

      gateway.on('instance:removed', (instance) => {
        const record = records.get(instance);
        if (record?.timer) clearTimeout(record.timer);
        records.delete(instance);
      });

      /** Each interval: success-rate outliers, and the multipliers of instances that stayed in go down. */
      const analyse = (name: string, policy: OutlierDetectionPolicy): void => {
        const service = gateway.registry.getService(name);
        if (service === undefined) return;
        const judged: [Instance, number][] = [];
        for (const inst of service.instances.values()) {
          const record = records.get(inst);
          if (record === undefined) continue;
          if (inst.ejectedUntil === 0 && record.ejections > 0) record.ejections--;
          if (policy.successRate && inst.ejectedUntil === 0 && record.requests >= policy.successRate.requestVolume) judged.push([inst, record.successes / record.requests]);
          record.requests = 0;
          record.successes = 0;
        }
        const rule = policy.successRate;
        if (rule === undefined || judged.length < rule.minimumHosts) return;
        const mean = judged.reduce((sum, [, rate]) => sum + rate, 0) / judged.length;
        const stdev = Math.sqrt(judged.reduce((sum, [, rate]) => sum + (rate - mean) ** 2, 0) / judged.length);
        const floor = mean - rule.stdevFactor * stdev;
        for (const [inst, rate] of judged) {
          if (rate < floor) eject(inst, policy, `success rate ${(rate * 100).toFixed(1)}% below the service's ${(floor * 100).toFixed(1)}%`);
        }
      };
      const timers = new Map<string, NodeJS.Timeout>();
      const schedule = (): void => {
        for (const timer of timers.values()) clearInterval(timer);
        timers.clear();
        for (const { name, options } of scope.services()) {
          const timer = setInterval(() => analyse(name, scope.forService(name) ?? options), options.interval);
          timer.unref();
          timers.set(name, timer);
        }
      };
      schedule();
      gateway.onConfig(schedule);

      gateway.onClose(() => {
        closed = true;
        for (const timer of timers.values()) clearInterval(timer);
        for (const record of records.values()) if (record.timer) clearTimeout(record.timer);
        records.clear();
      });
    },
  });
}
