import { AggregatorRegistry, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { definePlugin, errorCodeInfo, GrpcStatus, grpcStatusForError, OverloadedError, type Backend, type CircuitState, type GatewayPlugin, type Instance, type MeshState, type Route, type Service } from '../../lib/index.js';
import { metricsSections } from './config.js';
import { FastCounter, FastHistogram, HistogramSeries, type CounterSeries } from './series.js';

export { metricsSchema } from './config.js';

/** Options of {@link metrics}; `buckets` and `defaultMetrics` default to the config's `metrics` section. */
export interface MetricsOptions {
  /**
   * Histogram buckets of request and upstream durations, in seconds.
   * @default [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
   */
  buckets?: number[];
  /** Also export prom-client's process and Node runtime metrics. @default true */
  defaultMetrics?: boolean;
  /** Serve `GET /metrics` on the admin server. @default true */
  adminRoute?: boolean;
  /**
   * Cluster mode: a `worker` reports its registry to the primary over IPC; the `primary` serves
   * the sum over all workers (prom-client's AggregatorRegistry) and records nothing itself.
   */
  cluster?: 'primary' | 'worker';
}

declare module '../../lib/index.js' {
  interface GatewayServices {
    /** The gateway's own prom-client registry (never the global one). */
    metricsRegistry: Registry;
  }
}

/** The access-log flags fault injection adds, and the `kind` label they count under. */
const FAULT_FLAGS: Readonly<Record<string, string>> = { FI: 'abort', DI: 'delay' };

const CIRCUIT_VALUE: Record<CircuitState, number> = { closed: 0, 'half-open': 1, open: 2 };
/** Outcome labels by status class, so counting an attempt builds no string. */
const STATUS_CLASS = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx'];
/** The cache key of requests no route matched. */
const UNMATCHED = {};
const DEFAULT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

interface RequestSeries {
  count: CounterSeries;
  duration: HistogramSeries;
}

/**
 * Prometheus metrics with prom-client, on a registry of this gateway's own, served at
 * `GET /metrics` on the admin port (no token: scrapers rarely carry one; keep the admin port
 * private). Routes are labelled with their configured prefix, never the raw path; series of an
 * instance that leaves are removed, so cardinality stays bounded under churn. The per-request
 * metrics are plain numbers in cached series objects (./series.ts): no label hashing per request.
 */
export function metrics(given: MetricsOptions = {}): GatewayPlugin<boolean | { defaultMetrics: boolean; buckets?: number[] }, unknown, unknown> {
  return definePlugin({
    name: 'metrics',
    config: metricsSections,
    setup(gateway, scope) {
      const section = scope.global();
      const options: MetricsOptions = { ...(typeof section === 'object' ? section : {}), ...given };
      const buckets = options.buckets ?? DEFAULT_BUCKETS;
      const registry = new Registry();
      gateway.decorate('metricsRegistry', registry);
      // Leases are kept where the control plane runs: a standalone gateway, or a cluster's primary.
      if (options.cluster !== 'worker') {
        const preserved = new Gauge({
          name: 'meshgate_self_preservation',
          help: '1 while self-preservation holds the service\'s leases (most of its instances went silent together), else 0.',
          labelNames: ['service'] as const,
          registers: [registry],
        });
        for (const service of gateway.leases.preserved.keys()) preserved.set({ service }, 1);
        gateway.on('service:preserved', (service, state) => preserved.set({ service }, state ? 1 : 0));
      }
      if (options.cluster === 'primary') {
        // The primary proxies nothing: its /metrics is the workers' registries added up, and its own control-plane gauges.
        const aggregator = new AggregatorRegistry();
        gateway.admin.router.get('/metrics', async (ctx) => {
          ctx.set('content-type', aggregator.contentType);
          let workers: string;
          try {
            workers = await aggregator.clusterMetrics();
          } catch (err) {
            // A worker busy past prom-client's 5 s (a loaded machine) fails the whole scrape: ask once more.
            gateway.log.warn({ err: (err as Error).message }, 'collecting the workers\' metrics failed; asking again');
            workers = await aggregator.clusterMetrics();
          }
          ctx.body = workers + (await registry.metrics());
        });
        return;
      }
      // One gateway per worker process, so the process-wide setting is this gateway's.
      if (options.cluster === 'worker') {
        AggregatorRegistry.setRegistries([registry]);
        // prom-client starts answering the primary's IPC requests when an aggregator is constructed.
        new AggregatorRegistry();
      }
      if (options.defaultMetrics !== false) {
        collectDefaultMetrics({ register: registry });
        // Gauges named *_total break Prometheus' naming rules (promtool rejects them); the
        // per-type gauges nodejs_active_{handles,requests,resources} carry the same numbers.
        for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
      }

      // The per-request metrics count in plain numbers (./series.ts); prom-client formats them on scrape.
      const requests = new FastCounter(
        'meshgate_requests_total',
        'Requests answered by the gateway, by route name, service (the backend\'s), method and status code.',
        ['route', 'service', 'method', 'code'] as const,
      );
      const requestDuration = new FastHistogram(
        'meshgate_request_duration_seconds',
        'Time from request arrival to the last response byte handed to the socket.',
        ['route', 'service', 'method', 'code'] as const,
        buckets,
      );
      const upstreamRequests = new FastCounter(
        'meshgate_upstream_requests_total',
        'Attempts sent to instances, by outcome: a status class (2xx..5xx) or an error (connect_error, reset, timeout).',
        ['service', 'instance', 'outcome'] as const,
      );
      const upstreamDuration = new FastHistogram(
        'meshgate_upstream_request_duration_seconds',
        'Time from sending an attempt to the response headers (or the failure).',
        ['service', 'instance'] as const,
        buckets,
      );
      const retries = new FastCounter('meshgate_retries_total', 'Retries made by the retry stage.', ['service'] as const);
      const overloaded = new FastCounter(
        'meshgate_overloaded_total',
        'Requests refused at once by a limit: a service\'s maxRequests or maxPendingRequests, or the gateway\'s overload protection.',
        ['service', 'limit'] as const,
      );
      const backends = new FastCounter('meshgate_backend_requests_total', 'Requests of routes with a split or a subset, by the backend that took them.', ['route', 'backend'] as const);
      const backendSeriesOf = new WeakMap<Backend, CounterSeries>();
      const backendSeries = (route: Route, backend: Backend): CounterSeries => {
        let series = backendSeriesOf.get(backend);
        if (series === undefined) backendSeriesOf.set(backend, (series = backends.series({ route: route.name, backend: backend.name })));
        return series;
      };
      const faults = new FastCounter('meshgate_faults_injected_total', 'Requests a route\'s fault injection delayed or aborted.', ['route', 'kind'] as const);
      const handshakes = new FastCounter(
        'meshgate_websocket_handshakes_total',
        'WebSocket handshakes by route and the status the client got: 101 opened a tunnel (over HTTP/2 too, where the client got 200), anything else refused it.',
        ['route', 'code'] as const,
      );
      const tunnelBytes = new FastCounter(
        'meshgate_websocket_bytes_total',
        'Bytes through closed WebSocket tunnels: upstream (client to instance) and downstream (instance to client).',
        ['route', 'direction'] as const,
      );
      const grpcCalls = new FastCounter(
        'meshgate_grpc_requests_total',
        'gRPC calls answered, by route, service and gRPC status code (the instance\'s grpc-status, or the one the gateway answered with).',
        ['route', 'service', 'grpc_code'] as const,
      );
      for (const metric of [requests, requestDuration, upstreamRequests, upstreamDuration, retries, overloaded, backends, faults, handshakes, tunnelBytes, grpcCalls]) {
        registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
      }
      // Across cluster workers: health and instance counts are the same everywhere (first),
      // a circuit is as bad as its worst worker's breaker (max).
      const healthy = new Gauge({
        name: 'meshgate_instance_healthy',
        help: '1 when the instance is healthy, else 0.',
        labelNames: ['service', 'instance'] as const,
        registers: [registry],
        aggregator: 'first',
      });
      const circuit = new Gauge({
        name: 'meshgate_circuit_state',
        help: 'Circuit breaker state of the instance: 0 closed, 1 half-open, 2 open.',
        labelNames: ['service', 'instance'] as const,
        registers: [registry],
        aggregator: 'max',
      });
      const instances = new Gauge({
        name: 'meshgate_instances',
        help: 'Instances registered per service.',
        labelNames: ['service'] as const,
        registers: [registry],
        aggregator: 'first',
      });

      const websockets = new Gauge({
        name: 'meshgate_websocket_connections',
        help: 'WebSocket tunnels open now, by route.',
        labelNames: ['route'] as const,
        registers: [registry],
        aggregator: 'sum',
      });
      gateway.on('tunnel:open', (ctx) => {
        const route = ctx.state.mesh.route!.name;
        handshakes.series({ route, code: '101' }).value++;
        websockets.inc({ route });
      });
      /** A WebSocket request ended: a refused handshake, or a tunnel that closed. */
      const websocketEnd = (route: string, mesh: MeshState, code: number): void => {
        if (mesh.upgrade!.openedAt === 0) {
          handshakes.series({ route, code: String(code) }).value++;
          return;
        }
        websockets.dec({ route });
        tunnelBytes.series({ route, direction: 'upstream' }).value += mesh.bytesIn;
        tunnelBytes.series({ route, direction: 'downstream' }).value += mesh.bytesOut;
      };

      // Hot-path caches: one entry per (route, method, code) and per (instance, outcome).
      // route -> method -> status code -> series; no key string built per request. Weak: a new
      // config makes new route objects (the series, found by their labels, stay the same).
      const requestSeries = new WeakMap<Backend | Route | typeof UNMATCHED, Map<string, Map<number, RequestSeries>>>();
      const upstreamSeries = new Map<Instance, { outcomes: Map<string, CounterSeries>; duration: HistogramSeries }>();

      // Keyed by the backend (each belongs to one route), else the route: a split's backends count apart.
      const seriesFor = (route: Route | null, backend: Backend | null, method: string, code: number): RequestSeries => {
        const key = backend ?? route ?? UNMATCHED;
        let byMethod = requestSeries.get(key);
        if (!byMethod) requestSeries.set(key, (byMethod = new Map()));
        let byCode = byMethod.get(method);
        if (!byCode) byMethod.set(method, (byCode = new Map()));
        let series = byCode.get(code);
        if (!series) {
          const labels = { route: route?.name ?? '', service: backend?.service ?? '', method, code: String(code) };
          series = { count: requests.series(labels), duration: requestDuration.series(labels) };
          byCode.set(code, series);
        }
        return series;
      };

      gateway.on('request:end', (ctx, code) => {
        const mesh = ctx.state.mesh;
        const route = mesh.route;
        const backend = mesh.backend;
        const series = seriesFor(route, backend, ctx.req.method!, code);
        series.count.value++;
        const upgrade = mesh.upgrade;
        // A WebSocket's request lasts as long as its tunnel: its latency is the handshake's.
        series.duration.observe(((upgrade !== null && upgrade.openedAt > 0 ? upgrade.openedAt : mesh.endedAt) - mesh.startedAt) / 1000);
        if (upgrade !== null) websocketEnd(route?.name ?? '', mesh, code);
        if (mesh.grpc) {
          const exchange = mesh.exchange;
          const grpcCode = mesh.error !== null ? grpcStatusForError(mesh.error) : (exchange?.grpcFinalStatus ?? (code === 200 ? GrpcStatus.OK : GrpcStatus.UNKNOWN));
          grpcCalls.series({ route: route?.name ?? '', service: backend?.service ?? '', grpc_code: String(grpcCode) }).value++;
        }
        // A split or a subset: which backend took it.
        if (backend !== null && (backend.subset !== null || route!.backends.length > 1)) backendSeries(route!, backend).value++;
        if (mesh.error instanceof OverloadedError) overloaded.series({ service: backend?.service ?? '', limit: mesh.error.limit }).value++;
        const flags = mesh.flags;
        if (flags !== null) {
          for (const flag of flags) {
            const kind = FAULT_FLAGS[flag];
            if (kind !== undefined) faults.series({ route: route?.name ?? '', kind }).value++;
          }
        }
      });

      gateway.on('upstream:response', (instance, info) => {
        let entry = upstreamSeries.get(instance);
        if (!entry) {
          // An attempt that finishes after its instance left must not bring its series back.
          if (gateway.registry.getInstance(instance.service, instance.id) !== instance) return;
          entry = { outcomes: new Map(), duration: upstreamDuration.series({ service: instance.service, instance: instance.id }) };
          upstreamSeries.set(instance, entry);
        }
        const outcome = info.error ? errorOutcome(info.error) : (STATUS_CLASS[Math.floor(info.status / 100)] ?? `${Math.floor(info.status / 100)}xx`);
        let child = entry.outcomes.get(outcome);
        if (!child) {
          child = upstreamRequests.series({ service: instance.service, instance: instance.id, outcome });
          entry.outcomes.set(outcome, child);
        }
        child.value++;
        entry.duration.observe(info.durationMs / 1000);
      });

      const retrySeries = new Map<Service, CounterSeries>();
      gateway.on('request:retry', (service: Service) => {
        let series = retrySeries.get(service);
        if (!series) retrySeries.set(service, (series = retries.series({ service: service.name })));
        series.value++;
      });

      const countInstances = (service: string): void => {
        instances.set({ service }, gateway.registry.getService(service)?.instances.size ?? 0);
      };
      const added = (inst: Instance): void => {
        const labels = { service: inst.service, instance: inst.id };
        healthy.set(labels, inst.health === 'healthy' ? 1 : 0);
        circuit.set(labels, CIRCUIT_VALUE[inst.circuit]);
        countInstances(inst.service);
      };
      for (const service of gateway.registry.services()) {
        instances.set({ service: service.name }, service.instances.size);
        for (const inst of service.instances.values()) added(inst);
      }
      gateway.on('service:added', (service) => instances.set({ service: service.name }, service.instances.size));
      gateway.on('instance:added', added);
      gateway.on('instance:health', (inst) => healthy.set({ service: inst.service, instance: inst.id }, inst.health === 'healthy' ? 1 : 0));
      gateway.on('circuit:state', (inst) => circuit.set({ service: inst.service, instance: inst.id }, CIRCUIT_VALUE[inst.circuit]));
      const ejections = new FastCounter('meshgate_outlier_ejections_total', 'Instances ejected by outlier detection.', ['service', 'instance'] as const);
      const ejected = new Gauge({ name: 'meshgate_outlier_ejected', help: 'Instances ejected by outlier detection right now, per service.', labelNames: ['service'] as const, registers: [registry], aggregator: 'max' });
      registry.registerMetric(ejections as unknown as Parameters<Registry['registerMetric']>[0]);
      const countEjected = (service: string): void => {
        let n = 0;
        for (const inst of gateway.registry.getService(service)?.instances.values() ?? []) if (inst.ejectedUntil !== 0) n++;
        ejected.set({ service }, n);
      };
      gateway.on('instance:ejected', (inst) => {
        ejections.series({ service: inst.service, instance: inst.id }).value++;
        countEjected(inst.service);
      });
      gateway.on('instance:returned', (inst) => countEjected(inst.service));
      gateway.on('instance:removed', (inst) => {
        const labels = { service: inst.service, instance: inst.id };
        // Another instance object may carry the same id (re-registered): only drop series it does not use.
        const replacement = gateway.registry.getInstance(inst.service, inst.id);
        const entry = upstreamSeries.get(inst);
        upstreamSeries.delete(inst);
        if (!replacement) {
          healthy.remove(labels);
          circuit.remove(labels);
          upstreamDuration.remove(labels);
          for (const outcome of entry?.outcomes.keys() ?? []) upstreamRequests.remove({ ...labels, outcome });
        }
        countInstances(inst.service);
      });

      // The config: how many reloads were applied or refused, and when the one in force came.
      const reloads = new FastCounter('meshgate_config_reloads_total', 'Config changes applied or refused, by where they came from (file, admin, fleet).', ['origin', 'result'] as const);
      registry.registerMetric(reloads as unknown as Parameters<Registry['registerMetric']>[0]);
      const applied = new Gauge({ name: 'meshgate_config_applied_timestamp_seconds', help: 'When the config in force was applied (Unix time).', registers: [registry], aggregator: 'max' });
      applied.set(gateway.snapshot.appliedAt / 1000);
      gateway.on('config:applied', (info) => {
        reloads.series({ origin: info.origin, result: 'applied' }).value++;
        applied.set(gateway.snapshot.appliedAt / 1000);
      });
      gateway.on('config:rejected', (info) => reloads.series({ origin: info.origin, result: 'rejected' }).value++);
      gateway.on('service:removed', (service) => instances.remove({ service: service.name }));

      if (options.adminRoute !== false) {
        gateway.admin.router.get('/metrics', async (ctx) => {
          ctx.set('content-type', registry.contentType);
          ctx.body = await registry.metrics();
        });
      }
    },
  });
}

/** How an attempt that failed with `code` is counted: the catalogue's outcome, else a reset. */
function errorOutcome(code: string): string {
  return errorCodeInfo(code)?.outcome ?? 'reset';
}
