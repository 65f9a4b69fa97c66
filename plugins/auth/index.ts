import { createHash, createPublicKey, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { Context } from 'koa';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { ConfigError, MeshError } from '../../lib/errors.js';
import type { Gateway } from '../../lib/core/gateway.js';
import { definePlugin, type GatewayPlugin } from '../../lib/core/plugin.js';
import type { Route } from '../../lib/core/router.js';
import type { MeshState } from '../../lib/core/state.js';

type RouteAuth = NonNullable<Route['config']['auth']>;

/** The request is not authenticated (401). */
export class UnauthorizedError extends MeshError {
  constructor(message: string) {
    super('MESH_ERR_UNAUTHORIZED', 401, message);
  }
}

interface Authenticator {
  (ctx: Context, mesh: MeshState): Promise<void>;
}

/** Options of {@link auth}. */
export interface AuthOptions {
  /** How long fetched JWKS keys are cached, ms. @default 600000 */
  jwksCacheMaxAge?: number;
}

/**
 * Per-route authentication (`routes[].auth`). A request passes when it satisfies any configured
 * method; otherwise 401 (`WWW-Authenticate: Bearer` when JWTs are accepted).
 * - `jwt`: verified with jose against `secret` (HS*), `publicKey` (PEM, inline or a file) or a
 *   cached `jwksUrl`; only the listed `algorithms` (never `none`); `exp`/`nbf` with
 *   `clockTolerance`; optional `issuer`/`audience`. `forwardClaims: { sub: x-user-id }` sends
 *   claims upstream as headers, after removing any such header the client sent.
 * - `apiKeys`: the `header` (x-api-key) compared with every key in constant time.
 * The principal lands on `ctx.state.mesh.principal` (rate limits can key on `jwt:sub`).
 */
export function auth(options: AuthOptions = {}): GatewayPlugin {
  return definePlugin({
    name: 'auth',
    setup(gateway: Gateway) {
      const byRoute = new Map<Route, Authenticator>();
      gateway.router.routes().forEach((route) => {
        if (!route.config.auth) return;
        const index = gateway.config.routes.indexOf(route.config);
        byRoute.set(route, compile(route.config.auth, `routes[${index}].auth`, gateway, options));
      });
      gateway.use('onRequest', async (ctx, next) => {
        const mesh = ctx.state.mesh;
        const check = mesh.route === null ? undefined : byRoute.get(mesh.route);
        if (check !== undefined) await check(ctx, mesh);
        return next();
      });
    },
  });
}

function compile(config: RouteAuth, path: string, gateway: Gateway, options: AuthOptions): Authenticator {
  const jwt = config.jwt ? jwtAuthenticator(config.jwt, `${path}.jwt`, gateway, options) : null;
  const keys = config.apiKeys ? apiKeyAuthenticator(config.apiKeys) : null;
  const claimHeaders = Object.values(config.jwt?.forwardClaims ?? {});
  return async (ctx, mesh) => {
    // Claim headers are the gateway's to set: whatever the client sent under those names goes.
    for (const header of claimHeaders) mesh.removeUpstreamHeader(header);
    let failure = 'missing credentials';
    if (keys !== null && ctx.req.headers[keys.header] !== undefined) {
      if (keys.check(ctx)) {
        mesh.principal = { kind: 'api-key', subject: undefined, claims: {} };
        return;
      }
      failure = 'invalid API key';
    }
    if (jwt !== null) {
      const token = bearer(ctx.req.headers.authorization);
      if (token !== undefined) {
        const result = await jwt(token);
        if (typeof result !== 'string') {
          mesh.principal = { kind: 'jwt', subject: result.sub, claims: result };
          for (const [claim, header] of Object.entries(config.jwt!.forwardClaims)) {
            const value = result[claim];
            if (value !== undefined && value !== null) mesh.setUpstreamHeader(header, typeof value === 'string' ? value : JSON.stringify(value));
          }
          return;
        }
        failure = result;
      }
      ctx.set('www-authenticate', `Bearer realm="meshgate"${failure === 'missing credentials' ? '' : `, error="invalid_token", error_description="${failure}"`}`);
    }
    throw new UnauthorizedError(failure);
  };
}

function jwtAuthenticator(
  config: NonNullable<RouteAuth['jwt']>,
  path: string,
  gateway: Gateway,
  options: AuthOptions,
): (token: string) => Promise<JWTPayload | string> {
  const hmac = config.algorithms.filter((a) => a.startsWith('HS'));
  const asymmetric = config.algorithms.filter((a) => !a.startsWith('HS'));
  if (hmac.length > 0 && !config.secret) throw new ConfigError([{ path: `${path}.secret`, message: `required for ${hmac.join(', ')}` }]);
  if (asymmetric.length > 0 && !config.publicKey && !config.jwksUrl) {
    throw new ConfigError([{ path: `${path}.publicKey`, message: `publicKey or jwksUrl is required for ${asymmetric.join(', ')}` }]);
  }
  const secret: KeyObject | null = config.secret ? createSecretKey(Buffer.from(config.secret)) : null;
  let publicKey: KeyObject | null = null;
  if (config.publicKey) {
    const pem = config.publicKey.includes('-----BEGIN') ? config.publicKey : readKeyFile(gateway.resolvePath(config.publicKey), `${path}.publicKey`);
    try {
      publicKey = createPublicKey(pem);
    } catch (err) {
      throw new ConfigError([{ path: `${path}.publicKey`, message: `not a PEM public key: ${(err as Error).message}` }]);
    }
  }
  const jwks: JWTVerifyGetKey | null = config.jwksUrl ? createRemoteJWKSet(new URL(config.jwksUrl), { cacheMaxAge: options.jwksCacheMaxAge ?? 600_000 }) : null;
  const verifyOptions = {
    algorithms: config.algorithms as string[],
    issuer: config.issuer,
    audience: config.audience,
    clockTolerance: Math.round(config.clockTolerance / 1000),
  };
  // A key that matches the token's algorithm family; jose checks the algorithm against the allow-list.
  const keyFor: JWTVerifyGetKey = async (header, token) => {
    const alg = header.alg ?? '';
    if (alg.startsWith('HS')) {
      if (!secret) throw new joseErrors.JOSEAlgNotAllowed('HMAC tokens are not accepted here');
      return secret;
    }
    if (publicKey) return publicKey;
    if (jwks) return jwks(header, token);
    throw new joseErrors.JOSEAlgNotAllowed(`"${alg}" tokens are not accepted here`);
  };
  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, keyFor, verifyOptions);
      return payload;
    } catch (err) {
      return describeJwtError(err);
    }
  };
}

function apiKeyAuthenticator(config: NonNullable<RouteAuth['apiKeys']>): { header: string; check: (ctx: Context) => boolean } {
  const header = config.header.toLowerCase();
  const digests = config.keys.map((k) => createHash('sha256').update(k).digest());
  return {
    header,
    check(ctx) {
      const presented = ctx.req.headers[header];
      if (typeof presented !== 'string') return false;
      const digest = createHash('sha256').update(presented).digest();
      // Compare with every key, always: how long it takes says nothing about which key is close.
      let ok = false;
      for (const key of digests) ok = timingSafeEqual(key, digest) || ok;
      return ok;
    },
  };
}

function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer[ \t]+([A-Za-z0-9\-_.~+/]+=*)[ \t]*$/i.exec(header);
  return match?.[1];
}

function describeJwtError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return 'token expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `claim "${err.claim}" check failed`;
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad signature';
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (err instanceof joseErrors.JWKSNoMatchingKey) return 'no matching key';
  return 'malformed token';
}

function readKeyFile(file: string, path: string): string {
  if (!existsSync(file)) throw new ConfigError([{ path, message: `no PEM key and no file at ${file}` }]);
  return readFileSync(file, 'utf8');
}
