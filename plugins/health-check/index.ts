import { definePlugin, type GatewayPlugin, type Instance } from '../../lib/index.js';
import { grpcHealthCheck } from './grpc.js';
import { healthCheckSections, type HealthCheckPolicy } from './config.js';

export { healthCheckSchema, type HealthCheckPolicy } from './config.js';

/** Options of {@link healthChecks}; per-service settings come from `services.<name>.healthCheck`. */
export interface HealthCheckOptions {
  /**
   * Spread of each interval, as a fraction of it, so checks of many gateways and instances do
   * not fire in lockstep.
   * @default 0.1
   */
  jitter?: number;
  /** User-Agent of the check requests. @default 'meshgate-health-check' */
  userAgent?: string;
}

interface Checker {
  timer: NodeJS.Timeout | null;
  successes: number;
  failures: number;
  stopped: boolean;
  abort: AbortController | null;
}

/**
 * Active health checks (Envoy's HTTP health checking): every instance of a service with a
 * `healthCheck` section gets `GET path` every `interval` (jittered) with `timeout`. Only a 2xx
 * answer counts as healthy. `unhealthyThreshold` consecutive failures mark the instance unhealthy
 * (out of the candidates); `healthyThreshold` consecutive successes bring it back. New instances
 * start healthy and are checked right away.
 */
export function healthChecks(options: HealthCheckOptions = {}): GatewayPlugin<unknown, HealthCheckPolicy, unknown> {
  const jitter = options.jitter ?? 0.1;
  const userAgent = options.userAgent ?? 'meshgate-health-check';
  return definePlugin({
    name: 'health-check',
    config: healthCheckSections,
    setup(gateway, scope) {
      const checkers = new Map<Instance, Checker>();
      let closed = false;

      const schedule = (instance: Instance, checker: Checker, delay: number): void => {
        checker.timer = setTimeout(() => void run(instance, checker), delay);
        checker.timer.unref();
      };

      const run = async (instance: Instance, checker: Checker): Promise<void> => {
        const policy = scope.forService(instance.service);
        if (checker.stopped) return;
        if (!policy) {
          // A reload took the service's healthCheck away: no more checks, and no verdict of theirs stands.
          stop(instance);
          if (instance.health === 'unhealthy') gateway.registry.setHealth(instance, 'healthy', 'health check removed from the config');
          return;
        }
        const abort = new AbortController();
        checker.abort = abort;
        const timer = setTimeout(() => abort.abort(new Error(`timed out after ${policy.timeout}ms`)), policy.timeout);
        timer.unref();
        let failure: string | null = null;
        try {
          if (policy.grpc !== undefined) {
            failure = await grpcHealthCheck(gateway.http2For(instance), instance.basePath, policy.grpc.service, userAgent, abort.signal);
          } else {
            const { statusCode, body } = await gateway.poolFor(instance).request({
              path: instance.basePath + policy.path,
              method: 'GET',
              headers: { 'user-agent': userAgent },
              signal: abort.signal,
            });
            await body.dump();
            if (statusCode < 200 || statusCode > 299) failure = `status ${statusCode}`;
          }
        } catch (err) {
          const e = err as Error & { code?: string };
          failure = abort.signal.aborted ? `timeout (${policy.timeout}ms)` : (e.code ?? e.message);
        } finally {
          clearTimeout(timer);
          checker.abort = null;
        }
        if (checker.stopped) return;
        gateway.emit('instance:probe', instance, failure === null);
        if (failure === null) {
          checker.failures = 0;
          checker.successes++;
          if (instance.health === 'unhealthy' && checker.successes >= policy.healthyThreshold) {
            gateway.registry.setHealth(instance, 'healthy', `health check passed ${checker.successes} time(s)`);
            gateway.log.info({ service: instance.service, instance: instance.id }, 'instance healthy again');
          }
        } else {
          checker.successes = 0;
          checker.failures++;
          if (instance.health === 'healthy' && checker.failures >= policy.unhealthyThreshold) {
            gateway.registry.setHealth(instance, 'unhealthy', `health check failed ${checker.failures} time(s): ${failure}`);
            gateway.log.warn({ service: instance.service, instance: instance.id, reason: failure }, 'instance unhealthy');
          }
        }
        schedule(instance, checker, policy.interval * (1 - jitter / 2 + Math.random() * jitter));
      };

      const start = (instance: Instance): void => {
        const policy = scope.forService(instance.service);
        if (!policy || closed || checkers.has(instance)) return;
        const checker: Checker = { timer: null, successes: 0, failures: 0, stopped: false, abort: null };
        checkers.set(instance, checker);
        schedule(instance, checker, Math.random() * Math.min(policy.interval * jitter, 1000));
      };

      const stop = (instance: Instance): void => {
        const checker = checkers.get(instance);
        if (!checker) return;
        checker.stopped = true;
        if (checker.timer) clearTimeout(checker.timer);
        checker.abort?.abort(new Error('instance removed'));
        checkers.delete(instance);
      };

      for (const service of gateway.registry.services()) for (const inst of service.instances.values()) start(inst);
      gateway.on('instance:added', start);
      gateway.on('instance:removed', stop);
      // A reload may give a service a healthCheck (or change it: the next run reads the new one).
      gateway.onConfig(() => {
        for (const service of gateway.registry.services()) for (const inst of service.instances.values()) start(inst);
      });
      gateway.onClose(() => {
        closed = true;
        for (const inst of [...checkers.keys()]) stop(inst);
      });
    },
  });
}
