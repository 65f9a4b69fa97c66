import koaCors from '@koa/cors';
import type { Context } from 'koa';
import { definePlugin, type GatewayPlugin } from '../../lib/index.js';
import { corsSections, type CorsPolicy } from './config.js';

export { corsSchema, type CorsConfig, type CorsPolicy } from './config.js';

type KoaMiddleware = (ctx: Context, next: () => Promise<unknown>) => Promise<unknown>;

/**
 * CORS per route (`routes[i].cors`), with @koa/cors doing the protocol: an allowed origin gets
 * `Access-Control-Allow-Origin` (and the rest) on its answers; a preflight (`OPTIONS` with
 * `Access-Control-Request-Method`) is answered by the gateway, 204, and never reaches an instance,
 * whether its origin is allowed (with the CORS headers) or not (without any); a request from an
 * origin not allowed gets no CORS headers, so the browser keeps the answer from the page.
 */
export function cors(): GatewayPlugin<unknown, unknown, unknown, unknown, unknown, CorsPolicy> {
  return definePlugin({
    name: 'cors',
    config: corsSections,
    setup(gateway, scope) {
      // One @koa/cors middleware per prepared policy: a reload with the same section keeps it.
      const made = new WeakMap<CorsPolicy, KoaMiddleware>();
      const middlewareFor = (policy: CorsPolicy): KoaMiddleware => {
        let middleware = made.get(policy);
        if (middleware === undefined) {
          middleware = koaCors({
            origin: (ctx: Context) => policy.allow(ctx.get('origin')),
            allowMethods: policy.methods,
            ...(policy.headers === undefined ? {} : { allowHeaders: policy.headers }),
            ...(policy.exposeHeaders === undefined ? {} : { exposeHeaders: policy.exposeHeaders }),
            credentials: policy.credentials,
            ...(policy.maxAge === undefined ? {} : { maxAge: Math.round(policy.maxAge / 1000) }),
          }) as unknown as KoaMiddleware;
          made.set(policy, middleware);
        }
        return middleware;
      };
      gateway.addMiddleware('onRequest', async (ctx, next) => {
        const policy = scope.route(ctx);
        if (policy === undefined) return next();
        const preflight = ctx.method === 'OPTIONS' && ctx.get('access-control-request-method') !== '';
        await middlewareFor(policy)(ctx, async () => {
          // A preflight from an origin that is not allowed: answered here too, without CORS headers.
          if (preflight) ctx.status = 204;
          else await next();
        });
      });
    },
  });
}
