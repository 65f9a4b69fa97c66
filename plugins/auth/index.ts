import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context } from 'koa';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { MeshError, definePlugin, type GatewayPlugin, type MeshState } from '../../lib/index.js';
import { authSections, type AuthConfig, type AuthPolicy } from './config.js';

export { authSchema, JWT_ALGORITHMS, type AuthConfig, type AuthPolicy } from './config.js';

/** The request is not authenticated (401). */
export class UnauthorizedError extends MeshError {
  constructor(message: string) {
    super('MESH_ERR_UNAUTHORIZED', 401, message);
  }
}

type Authenticator = (ctx: Context, mesh: MeshState) => Promise<void>;

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
 * The principal is the request's `principal` variable (`mesh.get('principal')`; rate limits can key on `jwt:sub`).
 */
export function auth(options: AuthOptions = {}): GatewayPlugin<unknown, unknown, AuthConfig, unknown, unknown, AuthPolicy> {
  return definePlugin({
    name: 'auth',
    config: authSections,
    setup(gateway, scope) {
      // A route's verifier (and its JWKS cache) lives as long as the route's prepared policy: a
      // new config with the same auth section keeps both.
      const authenticators = new WeakMap<AuthPolicy, Authenticator>();
      gateway.addMiddleware('onRequest', async (ctx, next) => {
        const policy = scope.route(ctx);
        if (policy !== undefined) {
          let check = authenticators.get(policy);
          if (check === undefined) authenticators.set(policy, (check = compile(policy, options)));
          await check(ctx, ctx.state.mesh);
        }
        return next();
      });
    },
  });
}

function compile(policy: AuthPolicy, options: AuthOptions): Authenticator {
  const jwt = policy.jwt ? jwtAuthenticator(policy.jwt, options) : null;
  const keys = policy.apiKeys;
  const forwardClaims = policy.jwt?.forwardClaims ?? {};
  const claimHeaders = Object.values(forwardClaims);
  return async (ctx, mesh) => {
    // Claim headers are the gateway's to set: whatever the client sent under those names goes.
    for (const header of claimHeaders) mesh.removeUpstreamHeader(header);
    let failure = 'missing credentials';
    if (keys !== null && ctx.req.headers[keys.header] !== undefined) {
      const name = apiKeyName(keys, ctx.req.headers[keys.header]);
      if (name !== undefined) {
        mesh.set('principal', { kind: 'api-key', id: name, subject: name, claims: {} });
        return;
      }
      failure = 'invalid API key';
    }
    if (jwt !== null) {
      const token = bearer(ctx.req.headers.authorization);
      if (token !== undefined) {
        const result = await jwt(token);
        if (typeof result !== 'string') {
          mesh.set('principal', { kind: 'jwt', id: result.sub ?? '', subject: result.sub, claims: result });
          for (const [claim, header] of Object.entries(forwardClaims)) {
            const value = result[claim];
            if (value !== undefined && value !== null) mesh.setUpstreamHeader(header, typeof value === 'string' ? value : JSON.stringify(value));
          }
          return;
        }
        failure = result;
      }
      ctx.set('www-authenticate', `Bearer realm="meshgate"${failure === 'missing credentials' ? '' : `, error="invalid_token", error_description=${quotedString(failure)}`}`);
    }
    throw new UnauthorizedError(failure);
  };
}

function jwtAuthenticator(config: NonNullable<AuthPolicy['jwt']>, options: AuthOptions): (token: string) => Promise<JWTPayload | string> {
  const secret = config.secretKey;
  const publicKey = config.publicKeyObject;
  const jwks: JWTVerifyGetKey | null = config.jwksUrl
    ? createRemoteJWKSet(new URL(config.jwksUrl), { cacheMaxAge: options.jwksCacheMaxAge ?? 600_000, cooldownDuration: config.jwksCooldown })
    : null;
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

/** The name of the key `presented` is, compared with every key in constant time; undefined for none. */
function apiKeyName(keys: NonNullable<AuthPolicy['apiKeys']>, presented: string | string[] | undefined): string | undefined {
  if (typeof presented !== 'string') return undefined;
  const digest = createHash('sha256').update(presented).digest();
  // Compare with every key, always: how long it takes says nothing about which key is close.
  let name: string | undefined;
  for (const key of keys.keys) if (timingSafeEqual(key.digest, digest) && name === undefined) name = key.name;
  return name;
}

/** An RFC 9110 quoted-string: `"` and `\` escaped as quoted-pairs. */
function quotedString(text: string): string {
  return `"${text.replace(/["\\]/g, '\\$&')}"`;
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
