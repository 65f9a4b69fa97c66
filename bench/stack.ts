/**
 * The gateway configurations the benchmarks measure, in one place.
 * - `core`: one route, round-robin, no plugin beyond static discovery (issue 2's yardstick).
 * - `standard`: what a production user turns on: least-request, circuit breaker, health checks,
 *   metrics and the dashboard on the admin port, retries and trace context; access log off (issue 8's yardstick).
 * - `standard+log`: the same with the JSON access log on (written to /dev/null by the bench).
 */
import type { GatewayConfigInput } from '../lib/index.js';

export type StackName = 'core' | 'standard' | 'standard+log';

/** The plugins of the standard stack that {@link stackConfig} can leave out, to price each one. */
export const STANDARD_PLUGINS = ['trace-context', 'metrics', 'dashboard', 'health-check', 'circuit-breaker', 'retries'] as const;
export type StandardPlugin = (typeof STANDARD_PLUGINS)[number];

/** `stack`'s config; with `without`, the same stack minus that one plugin (core has none to leave out). */
export function stackConfig(stack: StackName, upstream: string, port = 0, without?: StandardPlugin): GatewayConfigInput {
  const config = fullStackConfig(stack, upstream, port);
  if (without === undefined || stack === 'core') return config;
  const service = config.services!.bench as { healthCheck?: unknown; circuitBreaker?: unknown; retries?: unknown };
  if (without === 'trace-context') config.tracing = false;
  else if (without === 'metrics') config.metrics = false;
  else if (without === 'dashboard') config.dashboard = false;
  else if (without === 'health-check') delete service.healthCheck;
  else if (without === 'circuit-breaker') delete service.circuitBreaker;
  else delete service.retries;
  return config;
}

function fullStackConfig(stack: StackName, upstream: string, port: number): GatewayConfigInput {
  const base: GatewayConfigInput = {
    listen: { host: '127.0.0.1', port },
    routes: [{ prefix: '/', service: 'bench' }],
    logLevel: 'silent',
  };
  if (stack === 'core') {
    return { ...base, tracing: false, services: { bench: { balancer: 'round-robin', instances: [{ url: upstream }] } } };
  }
  return {
    ...base,
    admin: { host: '127.0.0.1', port: 0, token: 'bench' },
    accessLog: stack === 'standard+log',
    services: {
      bench: {
        balancer: 'least-request',
        instances: [{ url: upstream }],
        circuitBreaker: {},
        healthCheck: { path: '/health', interval: '1s' },
        retries: { attempts: 2 },
      },
    },
  };
}
