import type { Counter, Registry } from 'prom-client';
import { definePlugin, teeBody, type GatewayPlugin, type MeshState } from '../../lib/index.js';
import { mirrorSections, type MirrorPolicy } from './config.js';

export { mirrorSchema, type MirrorPolicy } from './config.js';

/** What became of a copy: `meshgate_mirror_requests_total{outcome}`. */
type Outcome = 'answered' | 'failed' | 'dropped_inflight' | 'dropped_body' | 'no_instance';

/**
 * Request mirroring (`routes[i].mirror`, Envoy's shadowing): `percent` of a route's requests are
 * copied to `service`, with the same method, path and headers, the Host made `<host>-shadow` and
 * `x-meshgate-shadow: 1` added. The copy's answer is read and thrown away. The primary never
 * waits for it: a bodyless copy goes at once; a body is teed as it streams to the primary (up to
 * `maxBodySize`, else the copy is not made) and the copy goes when it has passed. At most
 * `maxInflight` copies are out at once; each gives up after the mirror service's timeout; close()
 * aborts what is left. Every copy is counted by outcome in `meshgate_mirror_requests_total`.
 */
export function mirror(): GatewayPlugin<unknown, unknown, MirrorPolicy> {
  return definePlugin({
    name: 'mirror',
    config: mirrorSections,
    async setup(gateway, scope) {
      let inflight = 0;
      const running = new Set<AbortController>();
      let counter: Counter<'route' | 'service' | 'outcome'> | null = null;
      if (gateway.has('metricsRegistry')) {
        const { Counter } = await import('prom-client');
        counter = new Counter({
          name: 'meshgate_mirror_requests_total',
          help: 'Copies of requests sent to mirror services, by outcome: answered, failed, dropped_inflight, dropped_body, no_instance.',
          labelNames: ['route', 'service', 'outcome'] as const,
          registers: [gateway.get<Registry>('metricsRegistry')],
        });
      }
      const count = (mesh: MeshState, policy: MirrorPolicy, outcome: Outcome): void => {
        counter?.inc({ route: mesh.route?.name ?? '', service: policy.service, outcome });
      };

      const send = (mesh: MeshState, policy: MirrorPolicy, method: string, headers: string[], body: Buffer | null): void => {
        const service = gateway.registry.getService(policy.service);
        const candidates = service?.candidates() ?? [];
        if (service === undefined || candidates.length === 0) {
          inflight--;
          count(mesh, policy, 'no_instance');
          return;
        }
        const instance = candidates[Math.floor(gateway.random() * candidates.length)]!;
        const controller = new AbortController();
        running.add(controller);
        const timeout = policy.timeout ?? service.policy.timeout;
        const timer = setTimeout(() => controller.abort(), timeout);
        timer.unref();
        gateway
          .poolFor(instance, service)
          .request({ method, path: instance.basePath + mesh.upstreamPath, headers, body: body === null || body.length === 0 ? null : body, signal: controller.signal })
          .then(async (res) => {
            await res.body.dump();
            count(mesh, policy, 'answered');
          })
          .catch(() => count(mesh, policy, 'failed'))
          .finally(() => {
            clearTimeout(timer);
            running.delete(controller);
            inflight--;
          });
      };

      gateway.addMiddleware('resolve', (ctx, next) => {
        const policy = scope.route(ctx);
        if (policy === undefined || (policy.percent < 100 && gateway.random() * 100 >= policy.percent)) return next();
        const mesh = ctx.state.mesh;
        if (inflight >= policy.maxInflight) {
          count(mesh, policy, 'dropped_inflight');
          return next();
        }
        inflight++;
        const method = ctx.req.method!;
        const headers = shadowHeaders(mesh.upstreamHeaders);
        mesh.body = teeBody(mesh.body, policy.maxBodySize, (copy) => {
          if (copy !== null) return send(mesh, policy, method, headers, copy);
          inflight--;
          count(mesh, policy, 'dropped_body');
        });
        return next();
      });

      gateway.onClose(() => {
        for (const controller of running) controller.abort();
      });
    },
  });
}

/** The primary's upstream headers for the copy: Host made `<host>-shadow` before any port (Envoy's convention), `x-meshgate-shadow: 1` added. */
function shadowHeaders(upstream: readonly string[]): string[] {
  const headers: string[] = [];
  for (let i = 0; i < upstream.length; i += 2) {
    const name = upstream[i]!;
    headers.push(name, name.toLowerCase() === 'host' ? shadowHost(upstream[i + 1]!) : upstream[i + 1]!);
  }
  headers.push('x-meshgate-shadow', '1');
  return headers;
}

/** `api.example.com:8080` -> `api.example.com-shadow:8080`. */
function shadowHost(host: string): string {
  const colon = host.lastIndexOf(':');
  return colon > host.lastIndexOf(']') ? `${host.slice(0, colon)}-shadow${host.slice(colon)}` : `${host}-shadow`;
}
