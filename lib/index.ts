/**
 * meshgate: a service-mesh gateway as a composable Koa pipeline.
 * @example
 * import { createGateway } from 'meshgate';
 * const gateway = createGateway({ services: { users: { instances: [{ url: 'http://127.0.0.1:3001' }] } }, routes: [{ prefix: '/users', service: 'users' }] });
 * await gateway.listen();
 */
import { builtinPlugins } from './builtins.js';
import { validateConfig, type GatewayConfig, type GatewayConfigInput } from './config/index.js';
import { Gateway, type GatewayOptions } from './core/gateway.js';
import { loadPluginModules } from './core/plugin-loader.js';

export { Gateway } from './core/gateway.js';
export type { GatewayOptions, GatewayRole, GatewayServices, ListenInfo } from './core/gateway.js';
export { definePlugin, STAGES } from './core/plugin.js';
export type { GatewayPlugin, Stage } from './core/plugin.js';
export type { Middleware, Next } from './core/compose.js';
export type { Balancer, BalancerContext, BalancerFactory } from './balancers/balancer.js';
export * from './balancers/index.js';
export { Registry, Service, Instance, UnknownInstanceError, UnknownServiceError } from './registry/registry.js';
export type { Health, CircuitState, InstanceSpec } from './registry/registry.js';
export type { GatewayEvents, RemovalReason } from './core/events.js';
export { MeshState } from './core/state.js';
export type { Route } from './core/router.js';
export * from './errors.js';
export { validateConfig, parseConfig, loadConfigFile, parseDuration } from './config/index.js';
export type { GatewayConfig, GatewayConfigInput, ServiceConfig, RouteConfig } from './config/index.js';
export type { Logger } from './kit/logger.js';
export { registerInstance } from './registry/registration.js';
export { seededRandom } from './kit/random.js';
export type { RegisterOptions, Registration } from './registry/registration.js';
export { LocalRegistrar } from './registry/registrar.js';
export type { Registrar, RegistrationResult } from './registry/registrar.js';

/**
 * Creates a gateway from a config object (validated here: a bad field throws a `ConfigError`
 * naming its path). Built-in plugins for the config's sections are registered; add your own with
 * `gateway.use(plugin)` before `listen()` or the first request.
 */
export function createGateway(config: GatewayConfigInput | GatewayConfig = {}, options: GatewayOptions = {}): Gateway {
  const valid = validateConfig(config);
  const gateway = new Gateway(valid, options);
  for (const plugin of builtinPlugins(valid, options.role)) gateway.use(plugin);
  if (valid.plugins.length > 0) gateway.use(loadPluginModules(valid.plugins));
  return gateway;
}
