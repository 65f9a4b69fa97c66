import CircuitBreaker from 'opossum';
import { CircuitOpenError, ClientAbortedError, MeshError, definePlugin, type GatewayPlugin, type Instance, type Service } from '../../lib/index.js';
import { circuitBreakerSections, type CircuitBreakerPolicy } from './config.js';
import { CountingWindow, WindowClock } from './window.js';

export { circuitBreakerSchema, type CircuitBreakerPolicy } from './config.js';

/** Options of {@link circuitBreaker}; per-service settings come from `services.<name>.circuitBreaker`. */
export interface CircuitBreakerOptions {
  /**
   * Which upstream statuses count as failures.
   * @default status >= 500
   */
  isFailure?: (status: number) => boolean;
}

/** What opossum counts as a failure: a 5xx answer, or (counted for a closed circuit) the attempt's error code. */
class FailedAttempt extends Error {}

type Run = () => Promise<void>;

/**
 * The attempt as opossum's action, for a breaker that is not closed: fire() lets one half-open
 * probe through and rejects the rest with EOPENBREAKER, which becomes MESH_ERR_CIRCUIT_OPEN.
 */
async function fireThrough(breaker: CircuitBreaker<[Run], void>, next: () => Promise<void>, failed: () => boolean, instance: Instance): Promise<void> {
  try {
    await breaker.fire(async () => {
      await next();
      if (failed()) throw new FailedAttempt();
    });
  } catch (err) {
    // The answer came and is held for the retry stage or the client: it only had to count.
    if (err instanceof FailedAttempt) return;
    if (!(err instanceof MeshError) && (err as { code?: string }).code === 'EOPENBREAKER') {
      throw new CircuitOpenError(instance.url);
    }
    throw err;
  }
}

/**
 * One opossum circuit breaker per instance, for services with a `circuitBreaker` section
 * (opossum's option names). Connect errors, resets, timeouts and 5xx answers are failures. An open
 * circuit takes the instance out of the candidates; after `resetTimeout` it turns half-open and one
 * request goes through as a probe (the others go elsewhere); success closes it. Every transition
 * is a `circuit:state` event. Breakers of instances that leave are shut down (timers and
 * listeners with them). In panic mode (see `panicThreshold`) breakers let everything through.
 * While a circuit is closed, attempts are counted from the gateway's `upstream:response` event
 * (no wrapper per request); a circuit that is not closed wraps the attempt in opossum's `fire()`.
 */
export function circuitBreaker(options: CircuitBreakerOptions = {}): GatewayPlugin<unknown, CircuitBreakerPolicy, unknown> {
  const isFailure = options.isFailure ?? ((status: number) => status >= 500);
  return definePlugin({
    name: 'circuit-breaker',
    config: circuitBreakerSections,
    setup(gateway, scope) {
      const breakers = new Map<Instance, CircuitBreaker<[Run], void>>();
      const clock = new WindowClock();
      let closed = false;
      /** Services with at least one breaker not closed: only they pay for filtering. */
      const notClosed = new Map<Service, number>();

      const breakerFor = (instance: Instance, service: Service, policy: CircuitBreakerPolicy): CircuitBreaker<[Run], void> => {
        let breaker = breakers.get(instance);
        if (breaker) return breaker;
        breaker = new CircuitBreaker<[Run], void>(
          async (run: Run) => {
            await run();
          },
          {
            name: `${service.name}/${instance.id}`,
            errorThresholdPercentage: policy.errorThresholdPercentage,
            volumeThreshold: policy.volumeThreshold,
            resetTimeout: policy.resetTimeout,
            // The rolling window: counts only (latency percentiles are metrics' job), no timer of its own.
            status: new CountingWindow({ rollingCountTimeout: policy.rollingCountTimeout, rollingCountBuckets: policy.rollingCountBuckets, clock }),
            // The gateway runs its own per-try and total deadlines; a second clock would only disagree.
            timeout: false,
            // A client that hangs up says nothing about the instance, except on a half-open probe:
            // opossum counts a filtered error as a success, which would close the circuit on no evidence.
            errorFilter: (err: unknown) => err instanceof ClientAbortedError && !breaker!.halfOpen,
          },
        );
        const track = (state: 'open' | 'half-open' | 'closed'): void => {
          const before = instance.circuit;
          gateway.registry.setCircuit(instance, state);
          if (before === 'closed' && state !== 'closed') notClosed.set(service, (notClosed.get(service) ?? 0) + 1);
          if (before !== 'closed' && state === 'closed') decrement(service);
          if (state === 'open') gateway.log.warn({ service: service.name, instance: instance.id }, 'circuit open');
        };
        breaker.on('open', () => track('open'));
        breaker.on('halfOpen', () => track('half-open'));
        breaker.on('close', () => track('closed'));
        breakers.set(instance, breaker);
        settings.set(breaker, settingsOf(policy));
        return breaker;
      };
      /** Breakers to replace once they close (one listener each, however many reloads come). */
      const retiring = new WeakSet<CircuitBreaker<[Run], void>>();
      /** The settings each breaker was made with: a reload that changes them replaces it. */
      const settings = new WeakMap<CircuitBreaker<[Run], void>, string>();
      const settingsOf = (p: CircuitBreakerPolicy): string =>
        `${p.errorThresholdPercentage}|${p.volumeThreshold}|${p.resetTimeout}|${p.rollingCountTimeout}|${p.rollingCountBuckets}`;

      const decrement = (service: Service): void => {
        const n = (notClosed.get(service) ?? 1) - 1;
        if (n <= 0) notClosed.delete(service);
        else notClosed.set(service, n);
      };

      gateway.on('instance:removed', (instance) => {
        const breaker = breakers.get(instance);
        if (!breaker) return;
        breaker.shutdown();
        breakers.delete(instance);
        const service = gateway.registry.getService(instance.service);
        if (service && instance.circuit !== 'closed') decrement(service);
      });
      // A reload that changes a service's circuitBreaker settings (or removes them): a closed
      // circuit starts afresh under the new ones; a circuit that is open or half-open keeps its
      // state (an open circuit stays open across a reload) and is replaced once it closes.
      gateway.onConfig(() => {
        for (const [instance, breaker] of breakers) {
          const policy = scope.forService(instance.service);
          if (policy !== undefined && settings.get(breaker) === settingsOf(policy)) continue;
          if (breaker.closed) {
            breaker.shutdown();
            breakers.delete(instance);
          } else if (!retiring.has(breaker)) {
            retiring.add(breaker);
            breaker.once('close', () => {
              if (breakers.get(instance) !== breaker) return;
              breaker.shutdown();
              breakers.delete(instance);
            });
          }
        }
      });
      gateway.onClose(() => {
        closed = true;
        for (const breaker of breakers.values()) breaker.shutdown();
        breakers.clear();
        clock.close();
      });

      // A half-open breaker takes one probe; while it runs, the instance takes nothing else.
      gateway.addMiddleware('select', (ctx, next) => {
        const mesh = ctx.state.mesh;
        const service = mesh.service;
        if (notClosed.has(service) && !service.panic && scope.service(ctx) !== undefined) {
          mesh.candidates = mesh.candidates.filter((inst) => {
            const breaker = breakers.get(inst);
            return breaker === undefined || breaker.closed || breaker.pendingClose;
          });
        }
        return next();
      });

      // A closed circuit (the usual state) does not wrap the attempt: its outcome is counted from
      // the core's upstream:response event, which costs no promise or async frame per request.
      // Only a circuit that is not closed needs the guard: opossum's fire() decides who probes.
      gateway.addMiddleware('guard', (ctx, next) => {
        const mesh = ctx.state.mesh;
        const service = mesh.service;
        if (service.panic || scope.service(ctx) === undefined) return next();
        const instance = mesh.instance;
        const breaker = breakers.get(instance);
        if (breaker === undefined || breaker.closed) return next();
        // No exchange after next(): a middleware further in answered itself, which says nothing of the instance.
        return fireThrough(breaker, next, () => mesh.exchange !== null && isFailure(mesh.exchange.outcomeStatus), instance);
      });

      gateway.on('upstream:response', (instance, info) => {
        // After close (a request cut off at the drain timeout) there is nothing left to count into.
        if (closed) return;
        const service = gateway.registry.getService(instance.service);
        const policy = scope.forService(instance.service);
        // Only services with a breaker; in panic mode breakers stand aside, as the guard does.
        if (service === undefined || policy === undefined || service.panic) return;
        let breaker = breakers.get(instance);
        if (breaker === undefined) {
          // No breaker for an instance that already left.
          if (service.instances.get(instance.id) !== instance) return;
          breaker = breakerFor(instance, service, policy);
        }
        // A probe is counted by fire(); an attempt that outlived a state change counts for nothing.
        if (!breaker.closed) return;
        // A client that hung up says nothing about the instance (opossum's errorFilter: a success).
        if (info.error === undefined ? !isFailure(info.status) : info.error === 'MESH_ERR_CLIENT_ABORTED') {
          // Straight into the window: opossum's 'fire' and 'success' events would only count there
          // too (a closed circuit's success changes nothing else), through two emits.
          const window = breaker.status;
          if (window instanceof CountingWindow) window.countSuccess();
          else {
            // Only if opossum did not take our window (two copies of opossum installed).
            breaker.emit('fire');
            breaker.emit('success', undefined, 0);
          }
          return;
        }
        // Through fire(), so opossum alone decides whether the circuit opens.
        breaker.fire(() => Promise.reject(new FailedAttempt(info.error ?? `status ${info.status}`))).catch(() => {
          // counted (or the circuit opened meanwhile and it was not): the answer stands either way
        });
      });
    },
  });
}
