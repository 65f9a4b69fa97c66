import type { Counter, Registry } from 'prom-client';
import { MeshError, definePlugin, type GatewayPlugin, type MeshState } from '../../lib/index.js';
import { inList } from '../../lib/kit/index.js';
import { authorizationSections, type AuthorizationPolicy, type CompiledRule } from './config.js';

export { authorizationSchema, type AuthorizationConfig, type AuthorizationPolicy } from './config.js';

/** A policy denied the request (403). The answer never names the rule; the access log does. */
export class ForbiddenError extends MeshError {
  constructor() {
    super('MESH_ERR_FORBIDDEN', 403, 'this request is not allowed');
  }
}

/** What a policy decided, and which rule decided it (null: allowed because no allow rule exists). */
interface Decision {
  allowed: boolean;
  rule: CompiledRule | null;
}

/**
 * Authorization policies (`authorization`, global and per route), with Istio's
 * AuthorizationPolicy semantics: deny rules first (any match denies, 403 `MESH_ERR_FORBIDDEN`);
 * then, when any allow rule exists, one must match, else 403; no rules, allowed. The global
 * policy's rules and the route's are one set. A rule's `when` conditions must all hold:
 * `principals`, `claims`, `sourceIps`, `methods`, `paths` (globs on the normalized path),
 * `headers`. A policy in `audit` mode decides nothing: what it would deny is logged (and counted)
 * while the request goes on. Runs in `onRequest` after authentication, before rate limits, so a
 * denied request costs no token and never reaches an instance. The access log's `authorization`
 * (rule, action) and flag `RBAC` say what decided; `meshgate_authorization_decisions_total{route,
 * action}` counts `allow`, `deny` and `audit_deny`.
 */
export function authorization(): GatewayPlugin<unknown, unknown, unknown, AuthorizationPolicy, unknown, AuthorizationPolicy> {
  return definePlugin({
    name: 'authorization',
    config: authorizationSections,
    async setup(gateway, scope) {
      let counter: Counter<'route' | 'action'> | null = null;
      if (gateway.has('metricsRegistry')) {
        const { Counter } = await import('prom-client');
        counter = new Counter({
          name: 'meshgate_authorization_decisions_total',
          help: 'Authorization decisions by route and action: allow, deny, audit_deny (audit mode: would have been denied).',
          labelNames: ['route', 'action'] as const,
          registers: [gateway.get<Registry>('metricsRegistry')],
        });
      }
      const log = gateway.log.child({ plugin: 'authorization' });

      gateway.addMiddleware('onRequest', (ctx, next) => {
        const global = scope.global(ctx);
        const route = scope.route(ctx);
        if (global === undefined && route === undefined) return next();
        const mesh = ctx.state.mesh;
        const rules = global === undefined ? route!.rules : route === undefined ? global.rules : [...global.rules, ...route.rules];
        const routeName = mesh.route?.name ?? '';
        const enforced = decide(rules, mesh, ctx.req.method ?? 'GET', ctx.req.headers, true);
        if (!enforced.allowed) {
          const rule = enforced.rule?.name ?? 'no allow rule matched';
          mesh.set('authorization', { rule, action: 'deny', enforced: true });
          mesh.addFlag('RBAC');
          counter?.inc({ route: routeName, action: 'deny' });
          throw new ForbiddenError();
        }
        // Audit rules decide nothing; what they would have denied is logged.
        if (rules.some((r) => !r.enforced)) {
          const audited = decide(rules, mesh, ctx.req.method ?? 'GET', ctx.req.headers, false);
          if (!audited.allowed) {
            const rule = audited.rule?.name ?? 'no allow rule matched';
            mesh.set('authorization', { rule, action: 'deny', enforced: false });
            counter?.inc({ route: routeName, action: 'audit_deny' });
            log.warn({ route: routeName, rule, principal: mesh.get('principal')?.id, path: mesh.path, method: ctx.req.method }, `audit: would deny (rule ${rule})`);
            return next();
          }
        }
        if (enforced.rule !== null) mesh.set('authorization', { rule: enforced.rule.name, action: 'allow', enforced: true });
        counter?.inc({ route: routeName, action: 'allow' });
        return next();
      });
    },
  });
}

/** Istio's order: a matching deny rule denies; else, if allow rules exist, one must match. `enforcedOnly`: audit rules left out. */
function decide(rules: readonly CompiledRule[], mesh: MeshState, method: string, headers: Record<string, string | string[] | undefined>, enforcedOnly: boolean): Decision {
  let allowRules = 0;
  for (const rule of rules) {
    if (enforcedOnly && !rule.enforced) continue;
    if (rule.action === 'allow') {
      allowRules++;
      continue;
    }
    if (matches(rule, mesh, method, headers)) return { allowed: false, rule };
  }
  if (allowRules === 0) return { allowed: true, rule: null };
  for (const rule of rules) {
    if (enforcedOnly && !rule.enforced) continue;
    if (rule.action === 'allow' && matches(rule, mesh, method, headers)) return { allowed: true, rule };
  }
  return { allowed: false, rule: null };
}

function matches(rule: CompiledRule, mesh: MeshState, method: string, headers: Record<string, string | string[] | undefined>): boolean {
  if (rule.methods !== null && !rule.methods.has(method)) return false;
  if (rule.paths !== null && !rule.paths.some((glob) => glob(mesh.path))) return false;
  if (rule.sourceIps !== null && !inList(rule.sourceIps, mesh.clientIp)) return false;
  if (rule.headers !== null) {
    for (const [name, glob] of rule.headers) {
      const value = headers[name];
      if (value === undefined || !glob(Array.isArray(value) ? value.join(', ') : value)) return false;
    }
  }
  if (rule.principals !== null || rule.claims !== null) {
    const principal = mesh.get('principal');
    if (principal === undefined) return false;
    if (rule.principals !== null && !rule.principals.some((glob) => glob(principal.id))) return false;
    if (rule.claims !== null) {
      for (const [claim, glob] of rule.claims) if (!claimHolds(principal.claims[claim], claim, glob)) return false;
    }
  }
  return true;
}

/** A string claim equal to (or matching) the value; an array claim, or a space-separated `scope`/`scp`, containing it. */
function claimHolds(value: unknown, claim: string, glob: (value: string) => boolean): boolean {
  if (Array.isArray(value)) return value.some((item) => typeof item === 'string' && glob(item));
  if (typeof value === 'number' || typeof value === 'boolean') return glob(String(value));
  if (typeof value !== 'string') return false;
  if (glob(value)) return true;
  return (claim === 'scope' || claim === 'scp') && value.split(' ').some((item) => glob(item));
}
