import { createHash, createPublicKey, createSecretKey, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError, defineSections, duration, httpUrl, type SectionContext } from '../../lib/config/index.js';

/** JWT algorithms that may be allowed; `none` is not one of them. */
export const JWT_ALGORITHMS = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

const jwtSchema = z.strictObject({
  /** Shared secret for HS* algorithms. */
  secret: z.string().min(1).optional(),
  /** PEM public key (or a path to one) for RS*, PS*, ES*, EdDSA. */
  publicKey: z.string().min(1).optional(),
  /** JWKS endpoint; keys are fetched and cached. */
  jwksUrl: httpUrl.optional(),
  /**
   * After a JWKS fetch, how long a token with an unknown `kid` waits for the next one (a rotated
   * key is picked up then), so forged `kid`s cannot make the gateway hammer the endpoint. @default 30s
   */
  jwksCooldown: duration.default(30_000),
  algorithms: z.array(z.enum(JWT_ALGORITHMS, { message: `expected one of ${JWT_ALGORITHMS.join(', ')} ("none" is never allowed)` })).min(1),
  issuer: z.union([z.string(), z.array(z.string())]).optional(),
  audience: z.union([z.string(), z.array(z.string())]).optional(),
  /** Allowed clock skew for exp/nbf. @default 30s */
  clockTolerance: duration.default(30_000),
  /** Claims forwarded upstream as headers, `{ claim: header }`; any such header from the client is removed first. */
  forwardClaims: z.record(z.string(), z.string().regex(/^[A-Za-z0-9-]+$/, 'expected a header name')).default({}),
});

const keyText = z.union([z.string(), z.number()]).transform(String).pipe(z.string().min(8, 'an API key must be at least 8 characters'));

const apiKeysSchema = z.strictObject({
  /**
   * Accepted keys (use `${ENV}` to keep them out of the file): `{ name, key }`, whose name is the
   * request's principal (`ci-bot`), or a plain key, named `key-1`, `key-2`... by its position.
   */
  keys: z
    .array(
      z.union([keyText, z.strictObject({ name: z.string().regex(/^[A-Za-z0-9._:@/-]{1,128}$/, 'expected 1-128 letters, digits or . _ : @ / -'), key: keyText })], {
        error: 'expected a key (8 characters or more) or { name, key }',
      }),
    )
    .min(1)
    .superRefine((keys, ctx) => {
      const seen = new Set<string>();
      keys.forEach((k, i) => {
        if (typeof k === 'string') return;
        if (seen.has(k.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `"${k.name}" names two keys` });
        seen.add(k.name);
      });
    }),
  /** The header the key comes in. @default x-api-key */
  header: z.string().min(1).default('x-api-key'),
});

/** `routes[i].auth`: a request passes with any of the configured methods. */
export const authSchema = z
  .strictObject({ jwt: jwtSchema.optional(), apiKeys: apiKeysSchema.optional() })
  .refine((a) => a.jwt !== undefined || a.apiKeys !== undefined, { message: 'expected jwt and/or apiKeys' });

/** A route's auth settings, parsed. */
export type AuthConfig = z.output<typeof authSchema>;

/** A route's JWT settings, parsed. */
export type JwtConfig = z.output<typeof jwtSchema>;

/** A route's auth settings with its keys loaded: what the plugin checks requests against. */
export interface AuthPolicy {
  jwt: (JwtConfig & { secretKey: KeyObject | null; publicKeyObject: KeyObject | null }) | null;
  apiKeys: { header: string; keys: { name: string; digest: Buffer }[] } | null;
}

/**
 * Loads a route's keys once per config: an HS* algorithm needs `secret`, the others `publicKey`
 * (PEM, inline or a file) or `jwksUrl`; API keys are kept as SHA-256 digests only.
 */
export function prepareAuth(config: AuthConfig, context: SectionContext): AuthPolicy {
  let jwt: AuthPolicy['jwt'] = null;
  if (config.jwt) {
    const path = `${context.path}.jwt`;
    const hmac = config.jwt.algorithms.filter((a) => a.startsWith('HS'));
    const asymmetric = config.jwt.algorithms.filter((a) => !a.startsWith('HS'));
    if (hmac.length > 0 && !config.jwt.secret) throw new ConfigError([{ path: `${path}.secret`, message: `required for ${hmac.join(', ')}` }]);
    if (asymmetric.length > 0 && !config.jwt.publicKey && !config.jwt.jwksUrl) {
      throw new ConfigError([{ path: `${path}.publicKey`, message: `publicKey or jwksUrl is required for ${asymmetric.join(', ')}` }]);
    }
    let publicKeyObject: KeyObject | null = null;
    if (config.jwt.publicKey) {
      const pem = config.jwt.publicKey.includes('-----BEGIN') ? config.jwt.publicKey : readKeyFile(context.resolvePath(config.jwt.publicKey), `${path}.publicKey`);
      try {
        publicKeyObject = createPublicKey(pem);
      } catch (err) {
        throw new ConfigError([{ path: `${path}.publicKey`, message: `not a PEM public key: ${(err as Error).message}` }]);
      }
    }
    jwt = { ...config.jwt, secretKey: config.jwt.secret ? createSecretKey(Buffer.from(config.jwt.secret)) : null, publicKeyObject };
  }
  const apiKeys = config.apiKeys
    ? {
        header: config.apiKeys.header.toLowerCase(),
        keys: config.apiKeys.keys.map((k, i) => (typeof k === 'string' ? { name: `key-${i + 1}`, digest: sha256(k) } : { name: k.name, digest: sha256(k.key) })),
      }
    : null;
  return { jwt, apiKeys };
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function readKeyFile(file: string, path: string): string {
  if (!existsSync(file)) throw new ConfigError([{ path, message: `no PEM key and no file at ${file}` }]);
  return readFileSync(file, 'utf8');
}

/** The sections the auth plugin owns. */
export const authSections = defineSections({ route: { key: 'auth', schema: authSchema, prepare: prepareAuth } });

declare module '../../lib/config/index.js' {
  interface RouteSections {
    auth: typeof authSchema;
  }
}
