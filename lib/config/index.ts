/**
 * `meshgate/config`: what a plugin needs to declare its config sections. The schema helpers are
 * zod 4 schemas; a plugin may use any Standard Schema library instead.
 */
export { parseDuration } from './duration.js';
export { formatPath } from './path.js';
export { duration, byteSize, httpUrl, HASH_ON, routePrefix, normalizePrefix } from './schema.js';
export type {
  GatewayConfig,
  GatewayConfigInput,
  ServiceConfig,
  ServiceConfigInput,
  RouteConfig,
  RouteConfigInput,
  InstanceConfig,
  RouteSections,
  ServiceSections,
  GlobalSections,
  DiscoverySections,
} from './schema.js';
export type { StandardSchemaV1 } from './standard-schema.js';
export { defineSections } from './sections.js';
export { configVersion, fleetPart, withLocalPart, fillLocalPart, redactSecrets, canonicalJson, LOCAL_KEYS, RESTART_KEYS } from './fleet.js';
export type { SectionSpec, SectionContext, PluginSections, SectionLevel } from './sections.js';
export { checkSchema } from './issues.js';
export { ConfigError } from '../errors.js';
export type { ConfigIssue } from '../errors.js';
