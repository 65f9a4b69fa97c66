/**
 * Errors with stable `MESH_ERR_*` codes. The gateway answers any of them as
 * `{ "error": code, "message": text }` with the error's HTTP status.
 */

/** What the catalogue says of an error code. */
export interface ErrorCodeInfo {
  /** The HTTP status it is answered with (499: the client went away; nothing is answered). */
  readonly status: number;
  /** Envoy's response flag in the access log (`UF`, `UT`, `NR`, ...), for codes that have one. */
  readonly flag?: string;
  /** How an attempt that failed with it is counted in metrics (`meshgate_upstream_attempts_total{outcome}`). */
  readonly outcome?: string;
}

/**
 * Every error code the gateway and its built-in plugins use, in one place: its status, its
 * response flag, its metrics outcome. The access log, metrics and the proxy read them from here;
 * nothing compares the strings by hand.
 */
export const ERROR_CODES = {
  MESH_ERR_NO_ROUTE: { status: 404, flag: 'NR' },
  MESH_ERR_NO_HEALTHY_INSTANCE: { status: 503, flag: 'UH' },
  MESH_ERR_UPSTREAM_CONNECT: { status: 502, flag: 'UF', outcome: 'connect_error' },
  MESH_ERR_UPSTREAM_RESET: { status: 502, flag: 'UC', outcome: 'reset' },
  MESH_ERR_UPSTREAM_TIMEOUT: { status: 504, flag: 'UT', outcome: 'timeout' },
  MESH_ERR_CIRCUIT_OPEN: { status: 503, flag: 'UO' },
  MESH_ERR_OVERLOADED: { status: 503, flag: 'UO' },
  MESH_ERR_RATE_LIMITED: { status: 429, flag: 'RL' },
  MESH_ERR_BAD_PATH: { status: 400, flag: 'DPE' },
  MESH_ERR_CLIENT_ABORTED: { status: 499, flag: 'DC', outcome: 'client_abort' },
  MESH_ERR_BAD_REQUEST: { status: 400 },
  MESH_ERR_BAD_HOST: { status: 400 },
  MESH_ERR_HEADERS_TOO_MANY: { status: 431 },
  MESH_ERR_NOT_IMPLEMENTED: { status: 501 },
  MESH_ERR_UPSTREAM_PROTOCOL: { status: 502, flag: 'UPE', outcome: 'protocol_error' },
  MESH_ERR_LOOP: { status: 508, flag: 'LD' },
  MESH_ERR_FAULT_INJECTED: { status: 503 },
  MESH_ERR_PAYLOAD_TOO_LARGE: { status: 413 },
  MESH_ERR_UNAUTHORIZED: { status: 401 },
  MESH_ERR_METHOD_NOT_ALLOWED: { status: 405 },
  MESH_ERR_UPGRADE_REFUSED: { status: 403 },
  MESH_ERR_CLOSING: { status: 503 },
  MESH_ERR_INTERNAL: { status: 500 },
  MESH_ERR_CONFIG: { status: 500 },
  MESH_ERR_PLUGIN: { status: 500 },
  MESH_ERR_PLUGIN_DEPENDENCY: { status: 500 },
  MESH_ERR_PLUGIN_DUPLICATE: { status: 500 },
  MESH_ERR_DECORATOR_DUPLICATE: { status: 500 },
  MESH_ERR_DECORATOR_MISSING: { status: 500 },
  MESH_ERR_NOT_READY: { status: 500 },
  MESH_ERR_ALREADY_LISTENING: { status: 500 },
  MESH_ERR_NOT_FOUND: { status: 404 },
  MESH_ERR_VALIDATION: { status: 400 },
  MESH_ERR_BAD_JSON: { status: 400 },
  MESH_ERR_BAD_OPTION: { status: 400 },
  MESH_ERR_UNKNOWN_SERVICE: { status: 404 },
  MESH_ERR_UNKNOWN_INSTANCE: { status: 404 },
  MESH_ERR_REGISTRY_UNAVAILABLE: { status: 503 },
  MESH_ERR_REGISTRATION: { status: 502 },
  MESH_ERR_HEARTBEAT: { status: 502 },
} as const satisfies Record<string, ErrorCodeInfo>;

/** A code of the catalogue. */
export type MeshErrorCode = keyof typeof ERROR_CODES;

/** The catalogue's entry for a code; undefined for a code a plugin made up. */
export function errorCodeInfo(code: string): ErrorCodeInfo | undefined {
  return Object.hasOwn(ERROR_CODES, code) ? ERROR_CODES[code as MeshErrorCode] : undefined;
}

/** Every error the gateway raises on purpose. `expose` says whether `message` is safe to send to the client. */
export class MeshError extends Error {
  /** Stable machine-readable code: one of {@link ERROR_CODES}, or a plugin's own `MESH_ERR_*`. */
  readonly code: MeshErrorCode | (string & {});
  /** HTTP status the gateway answers with. */
  readonly status: number;
  /** Whether the message may be sent to the client as is. */
  readonly expose: boolean;

  constructor(code: MeshErrorCode | (string & {}), status: number, message: string, options?: { cause?: unknown; expose?: boolean }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.expose = options?.expose ?? (status < 500 || status === 502 || status === 503 || status === 504);
  }

  /** The JSON body the gateway answers with. */
  toJSON(): { error: string; message: string } {
    return { error: this.code, message: this.expose ? this.message : 'internal error' };
  }
}

/** No route matches the request path (404). */
export class NoRouteError extends MeshError {
  constructor(path: string) {
    super('MESH_ERR_NO_ROUTE', 404, `no route matches ${JSON.stringify(path)}`);
  }
}

/** The route's service has no instance that can take the request (503). */
export class NoHealthyInstanceError extends MeshError {
  constructor(service: string, detail = 'no healthy instance') {
    super('MESH_ERR_NO_HEALTHY_INSTANCE', 503, `service "${service}": ${detail}`);
  }
}

/** The instance could not be reached: refused, unreachable, DNS, TLS handshake (502). */
export class UpstreamConnectError extends MeshError {
  constructor(instanceUrl: string, cause?: unknown) {
    super('MESH_ERR_UPSTREAM_CONNECT', 502, `cannot connect to ${instanceUrl}${describeCause(cause)}`, { cause });
  }
}

/** The connection broke or the upstream answered something that is not HTTP (502). */
export class UpstreamResetError extends MeshError {
  constructor(instanceUrl: string, cause?: unknown) {
    super('MESH_ERR_UPSTREAM_RESET', 502, `connection to ${instanceUrl} was reset${describeCause(cause)}`, { cause });
  }
}

/** The upstream did not answer in time (504). */
export class UpstreamTimeoutError extends MeshError {
  constructor(instanceUrl: string, timeoutMs: number, cause?: unknown) {
    super('MESH_ERR_UPSTREAM_TIMEOUT', 504, `${instanceUrl} did not answer within ${timeoutMs}ms`, { cause });
  }
}

/** The instance's circuit breaker is open (503). */
export class CircuitOpenError extends MeshError {
  constructor(instanceUrl: string) {
    super('MESH_ERR_CIRCUIT_OPEN', 503, `circuit for ${instanceUrl} is open`);
  }
}

/** A limit that protects the service or the gateway is reached (503): the request is refused at once. */
export class OverloadedError extends MeshError {
  /** Which limit refused it: a service's `maxRequests` or `maxPendingRequests`, or the gateway's `overload`. */
  readonly limit: OverloadLimit;
  /** Seconds the client should wait before trying again. */
  readonly retryAfter: number;
  constructor(limit: OverloadLimit, message: string, retryAfter = 1) {
    super('MESH_ERR_OVERLOADED', 503, message);
    this.limit = limit;
    this.retryAfter = retryAfter;
  }
}

/** The limits behind an {@link OverloadedError}. */
export type OverloadLimit = 'maxRequests' | 'maxPendingRequests' | 'gateway' | 'websocket.maxConnections' | 'routes.websocket.maxConnections';

/** The request is malformed (400). */
export class BadRequestError extends MeshError {
  constructor(message: string, code: MeshErrorCode | (string & {}) = 'MESH_ERR_BAD_REQUEST') {
    super(code, 400, message);
  }
}

/** The request uses something the gateway does not implement (501), such as a transfer coding other than chunked. */
export class NotImplementedError extends MeshError {
  constructor(message: string) {
    super('MESH_ERR_NOT_IMPLEMENTED', 501, message);
  }
}

/** The instance answered something that is not valid HTTP for a proxy to pass on (502). */
export class UpstreamProtocolError extends MeshError {
  constructor(instanceUrl: string, detail: string) {
    super('MESH_ERR_UPSTREAM_PROTOCOL', 502, `${instanceUrl} answered ${detail}`);
  }
}

/** The request came back to the gateway that sent it (508): an instance URL points at the gateway. */
export class LoopDetectedError extends MeshError {
  constructor() {
    super('MESH_ERR_LOOP', 508, 'the request passed this gateway before: an instance of the route points back at the gateway');
  }
}

/** The request body is larger than allowed (413). */
export class PayloadTooLargeError extends MeshError {
  constructor(limit: number) {
    super('MESH_ERR_PAYLOAD_TOO_LARGE', 413, `request body exceeds ${limit} bytes`);
  }
}

/** The client went away before the response was complete. Never answered; used to abort the upstream. */
export class ClientAbortedError extends MeshError {
  constructor() {
    super('MESH_ERR_CLIENT_ABORTED', 499, 'client closed the connection');
  }
}

/** The gateway is shutting down and takes no new requests (503). */
/** A WebSocket handshake on a route that takes none (`routes[].websocket: false`): 403. */
export class UpgradeRefusedError extends MeshError {
  constructor(route: string) {
    super('MESH_ERR_UPGRADE_REFUSED', 403, `route "${route}" does not take WebSocket upgrades`);
  }
}

export class GatewayClosingError extends MeshError {
  constructor() {
    super('MESH_ERR_CLOSING', 503, 'gateway is shutting down');
  }
}

/** One problem in a config file, with the path of the field. */
export interface ConfigIssue {
  /** Path of the bad field, as `routes[0].service`; empty for the document itself. */
  path: string;
  message: string;
}

/** The config is invalid. `issues` lists every problem; `message` has one line per problem. */
export class ConfigError extends MeshError {
  readonly issues: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[], source?: string) {
    const lines = issues.map((i) => (i.path ? `  ${i.path}: ${i.message}` : `  ${i.message}`));
    const head = `invalid config${source ? ` in ${source}` : ''} (${issues.length} problem${issues.length === 1 ? '' : 's'}):`;
    super('MESH_ERR_CONFIG', 500, `${head}\n${lines.join('\n')}`, { expose: true });
    this.issues = issues;
  }
}

/** A plugin names a dependency that was not registered before it, or a plugin is malformed. */
export class PluginError extends MeshError {
  constructor(message: string, code: MeshErrorCode | (string & {}) = 'MESH_ERR_PLUGIN') {
    super(code, 500, message, { expose: false });
  }
}

/** A plugin's dependency is missing at boot. */
export class PluginDependencyError extends PluginError {
  constructor(plugin: string, dependency: string) {
    super(`plugin "${plugin}" depends on "${dependency}", which is not registered before it`, 'MESH_ERR_PLUGIN_DEPENDENCY');
  }
}

function describeCause(cause: unknown): string {
  if (cause && typeof cause === 'object') {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string') return ` (${code})`;
  }
  return '';
}
