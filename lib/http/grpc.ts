import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import type { MeshError } from '../errors.js';
import { http2Fields, http2Head } from './headers.js';

/**
 * gRPC on the gateway's side of things: recognising a call, the status an instance answered with,
 * the gateway's own errors in gRPC form, and deadlines. The calls themselves are HTTP/2 streams
 * the proxy passes through (PROTOCOL-HTTP2.md in grpc/grpc).
 */

/** gRPC status codes the gateway names. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** Whether a request is a gRPC call: HTTP/2 with `content-type: application/grpc` (or `application/grpc+proto`, ...). */
export function isGrpcRequest(req: IncomingMessage): boolean {
  if (req.httpVersionMajor !== 2) return false;
  const type = req.headers['content-type'];
  return type !== undefined && type.startsWith('application/grpc');
}

/** The `grpc-status` in a flat raw header (or trailer) list, or null when there is none. */
export function grpcStatusIn(raw: readonly (Buffer | string)[]): number | null {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 11 && name.toString().toLowerCase() === 'grpc-status') {
      const code = Number(raw[i + 1]!.toString());
      return Number.isInteger(code) ? code : GrpcStatus.UNKNOWN;
    }
  }
  return null;
}

/**
 * The HTTP status a gRPC status counts as for breakers, outlier detection, retries and metrics
 * outcomes, though the call's HTTP status is 200: the server's failures (UNAVAILABLE, INTERNAL,
 * UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED) as 5xx, the caller's as 4xx.
 */
export function grpcOutcomeStatus(code: number): number {
  switch (code) {
    case GrpcStatus.OK:
      return 200;
    case GrpcStatus.UNAVAILABLE:
      return 503;
    case GrpcStatus.DEADLINE_EXCEEDED:
      return 504;
    case GrpcStatus.UNKNOWN:
    case GrpcStatus.INTERNAL:
    case GrpcStatus.DATA_LOSS:
      return 500;
    case GrpcStatus.CANCELLED:
      return 499;
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return 429;
    case GrpcStatus.UNAUTHENTICATED:
      return 401;
    case GrpcStatus.PERMISSION_DENIED:
      return 403;
    case GrpcStatus.NOT_FOUND:
    case GrpcStatus.UNIMPLEMENTED:
      return 404;
    default:
      return 400;
  }
}

/**
 * The gRPC status for one of the gateway's own errors: no instance, an open circuit, a failed
 * connection are UNAVAILABLE (so clients retry them), a timeout DEADLINE_EXCEEDED, authentication
 * UNAUTHENTICATED, authorization PERMISSION_DENIED, a rate limit or an overload RESOURCE_EXHAUSTED
 * or UNAVAILABLE, no route UNIMPLEMENTED.
 */
export function grpcStatusForError(error: MeshError): number {
  switch (error.code) {
    case 'MESH_ERR_RATE_LIMITED':
    case 'MESH_ERR_PAYLOAD_TOO_LARGE':
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case 'MESH_ERR_NO_ROUTE':
      return GrpcStatus.UNIMPLEMENTED;
    case 'MESH_ERR_CLIENT_ABORTED':
      return GrpcStatus.CANCELLED;
  }
  switch (error.status) {
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 504:
      return GrpcStatus.DEADLINE_EXCEEDED;
    case 502:
    case 503:
      return GrpcStatus.UNAVAILABLE;
    case 400:
    case 431:
      return GrpcStatus.INVALID_ARGUMENT;
    default:
      return GrpcStatus.INTERNAL;
  }
}

/**
 * Answers a gRPC client with one of the gateway's errors: a trailers-only response (HTTP 200,
 * `grpc-status`, `grpc-message` percent-encoded as the spec asks), never a JSON body. `head` are
 * headers plugins set, sent along.
 */
export function answerGrpcError(res: ServerResponse, error: MeshError, head: string[]): void {
  // The plugins' headers, but the gRPC fields are the gateway's.
  const fields: string[] = [];
  for (let i = 0; i < head.length; i += 2) if (!GRPC_FIELDS.has(head[i]!.toLowerCase())) fields.push(head[i]!, head[i + 1]!);
  fields.push('content-type', 'application/grpc', 'grpc-status', String(grpcStatusForError(error)));
  fields.push('grpc-message', encodeURIComponent(`${error.code}: ${error.expose ? error.message : 'internal error'}`));
  const out = http2Head(fields);
  if (respondHeadersOnly(res, 200, out)) return;
  res.writeHead(200, out);
  res.end();
}

/**
 * Answers an HTTP/2 client with headers only, in one HEADERS frame that ends the stream: how a
 * gRPC server sends a status without a message (trailers-only), which gRPC clients read as the
 * call's status only in that form. Returns false for an HTTP/1.1 response.
 */
export function respondHeadersOnly(res: ServerResponse, status: number, head: readonly string[]): boolean {
  const stream = (res as unknown as Http2ServerResponse).stream;
  if (stream === undefined || stream.headersSent || stream.destroyed) return false;
  // What the access log and metrics read: the compatibility response is bypassed.
  res.statusCode = status;
  stream.respond(http2Fields(status, head), { endStream: true });
  return true;
}

/** The fields of a gRPC status the gateway writes itself. */
const GRPC_FIELDS: ReadonlySet<string> = new Set(['content-type', 'grpc-status', 'grpc-message']);

const TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** `grpc-timeout` (`100m`, `5S`, up to 8 digits and a unit) in ms, or undefined when absent or malformed. */
export function grpcTimeout(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string') return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (match === null) return undefined;
  return Number(match[1]) * TIMEOUT_UNITS[match[2]!]!;
}

/** ms as a `grpc-timeout` value: whole milliseconds while they fit the 8 digits, else whole seconds (rounded up). */
export function grpcTimeoutValue(ms: number): string {
  const whole = Math.max(1, Math.ceil(ms));
  return whole < 1e8 ? `${whole}m` : `${Math.min(Math.ceil(whole / 1000), 99_999_999)}S`;
}
