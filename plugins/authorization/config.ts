import { z } from 'zod';
import { defineSections } from '../../lib/config/index.js';
import { cidrList, globMatcher } from '../../lib/kit/index.js';

const ruleSchema = z.strictObject({
  /** Named in the access log when it decides (default `global[0]`, `routes[2][1]`...). */
  name: z.string().min(1).max(128).optional(),
  action: z.enum(['allow', 'deny']),
  /** Every key given must hold; a rule with no `when` matches every request. */
  when: z
    .strictObject({
      /** Principal ids: an API key's name, a JWT's `sub`, a client certificate's SAN URI; globs allowed. */
      principals: z.array(z.string().min(1)).min(1).optional(),
      /** `{ claim: value }`: a string claim equal to (or matching the glob) value; an array claim, or a space-separated `scope`, containing it. */
      claims: z.record(z.string(), z.string()).optional(),
      /** CIDRs of the client address (after `listen.trustProxy`). */
      sourceIps: z.array(z.string()).min(1).optional(),
      methods: z.array(z.string().toUpperCase()).min(1).optional(),
      /** Globs on the normalized path: `/admin/**`, `/orders/*`. */
      paths: z.array(z.string().startsWith('/', 'expected a path starting with /')).min(1).optional(),
      /** `{ header: value or glob }`. */
      headers: z.record(z.string(), z.string()).optional(),
    })
    .default({}),
});

/** `authorization` (global, or per route): Istio AuthorizationPolicy's semantics. */
export const authorizationSchema = z.strictObject({
  /** `audit` logs what would be denied without denying it. @default enforce */
  mode: z.enum(['enforce', 'audit']).default('enforce'),
  rules: z.array(ruleSchema).default([]),
});

export type AuthorizationConfig = z.output<typeof authorizationSchema>;

/** A rule, compiled: each condition a test of the request. */
export interface CompiledRule {
  name: string;
  action: 'allow' | 'deny';
  enforced: boolean;
  principals: ((id: string) => boolean)[] | null;
  claims: [string, (value: string) => boolean][] | null;
  sourceIps: ReturnType<typeof cidrList> | null;
  methods: ReadonlySet<string> | null;
  paths: ((path: string) => boolean)[] | null;
  headers: [string, (value: string) => boolean][] | null;
}

/** A policy, compiled: its rules in order. */
export interface AuthorizationPolicy {
  rules: CompiledRule[];
}

export function prepareAuthorization(config: AuthorizationConfig, context: { path: string }): AuthorizationPolicy {
  const enforced = config.mode === 'enforce';
  const place = context.path.replace(/\.authorization$/, '') || 'global';
  return {
    rules: config.rules.map((rule, i): CompiledRule => {
      const when = rule.when;
      return {
        name: rule.name ?? `${place}[${i}]`,
        action: rule.action,
        enforced,
        principals: when.principals?.map(globMatcher) ?? null,
        claims: when.claims === undefined ? null : Object.entries(when.claims).map(([claim, value]) => [claim, globMatcher(value)]),
        sourceIps: when.sourceIps === undefined ? null : cidrList(when.sourceIps),
        methods: when.methods === undefined ? null : new Set(when.methods),
        paths: when.paths?.map(globMatcher) ?? null,
        headers: when.headers === undefined ? null : Object.entries(when.headers).map(([name, value]) => [name.toLowerCase(), globMatcher(value)]),
      };
    }),
  };
}

/** The sections the authorization plugin owns: a global policy and one per route. */
export const authorizationSections = defineSections({
  global: { key: 'authorization', schema: authorizationSchema, prepare: prepareAuthorization },
  route: { key: 'authorization', schema: authorizationSchema, prepare: prepareAuthorization },
});

declare module '../../lib/config/index.js' {
  interface RouteSections {
    authorization: typeof authorizationSchema;
  }
  interface GlobalSections {
    authorization: typeof authorizationSchema;
  }
}
