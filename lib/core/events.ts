import type { Context } from 'koa';
import type { Instance, RegistryEvents, Service } from '../registry/registry.js';

export type { RemovalReason } from '../registry/registry.js';

/** Where a config change came from, and its versions. */
export interface ConfigChange {
  /** `file` (SIGHUP, --watch), `admin` (PUT /config), `fleet` (Redis), `api` (gateway.reload()). */
  origin: string;
  /** The version now in force (after a refusal: still the previous one). */
  version: string;
  /** The version proposed (equal to `version` once applied). */
  proposed: string;
  previous: string;
}

/**
 * Every event the gateway emits, with its arguments. Registry changes, health and circuit
 * transitions all go through here; metrics, the admin `/events` stream and plugins listen.
 */
export interface GatewayEvents extends RegistryEvents {
  /** An attempt to an instance finished: `outcome` is the upstream status, or the error code. */
  'upstream:response': [instance: Instance, info: { status: number; durationMs: number; error?: string }];
  /**
   * A request the gateway handled has ended: answered (the last byte handed to the socket), failed
   * or abandoned by its client. `status` is what the client saw (`finalStatus()`: 499 when it
   * left first); the rest is on `ctx.state.mesh`. Emitted once per request, after the pipeline;
   * metrics and the access log count here. Listeners must be synchronous and cheap.
   */
  'request:end': [ctx: Context, status: number];
  /**
   * A WebSocket handshake succeeded: the 101 went to the client and the tunnel is open. Its
   * `request:end` comes when the tunnel closes (`mesh.upgrade.closedBy` says who closed it).
   */
  'tunnel:open': [ctx: Context];
  /** An active health check of an instance passed (`ok`) or failed, whether or not its health changed. */
  'instance:probe': [instance: Instance, ok: boolean];
  /** The retry stage is about to make another attempt. */
  'request:retry': [service: Service, info: { attempt: number; reason: string }];
  /** A new config is in force (a reload, `PUT /config`, a fleet config from Redis). */
  'config:applied': [info: ConfigChange];
  /** A new config was refused; the running one stays. `issues` name every bad path. */
  'config:rejected': [info: ConfigChange & { error: string; issues: readonly { path: string; message: string }[] }];
  /** The gateway is draining and takes no new requests. */
  'gateway:closing': [];
  /** A plugin or background task failed without a request to answer; the gateway logs it. */
  'gateway:error': [error: Error];
}
