import type { Http2Connection } from '../../lib/index.js';

/**
 * The gRPC health checking protocol (grpc/grpc doc/health-checking.md): one unary call of
 * `grpc.health.v1.Health/Check` with `HealthCheckRequest { string service = 1 }`, answered by
 * `HealthCheckResponse { ServingStatus status = 1 }`. The two messages have one field each, so they
 * are encoded here by hand rather than with a protobuf library the gateway would load for this alone.
 */
const SERVING_STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

/** Probes one instance: null when it is SERVING, else why not. */
export function grpcHealthCheck(connection: Http2Connection, basePath: string, service: string, userAgent: string, signal: AbortSignal): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const stream = connection.session().request({
      ':method': 'POST',
      ':path': `${basePath}/grpc.health.v1.Health/Check`,
      'content-type': 'application/grpc',
      te: 'trailers',
      'user-agent': userAgent,
    });
    const onAbort = (): void => {
      stream.close();
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    let status: string | undefined;
    let message: string | undefined;
    const chunks: Buffer[] = [];
    stream.on('response', (headers) => {
      // A trailers-only answer carries its status in the headers.
      status = headers['grpc-status'] as string | undefined;
      message = headers['grpc-message'] as string | undefined;
    });
    stream.on('trailers', (trailers) => {
      status = trailers['grpc-status'] as string | undefined;
      message = trailers['grpc-message'] as string | undefined;
    });
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('error', (err) => {
      signal.removeEventListener('abort', onAbort);
      reject(err);
    });
    stream.on('end', () => {
      signal.removeEventListener('abort', onAbort);
      if (status !== '0') return resolve(`grpc-status ${status ?? 'missing'}${message ? ` (${percentDecoded(message)})` : ''}`);
      const serving = servingStatus(Buffer.concat(chunks));
      resolve(serving === 1 ? null : SERVING_STATUS[serving] ?? `serving status ${serving}`);
    });
    stream.end(requestFrame(service));
  });
}

/** A gRPC message frame (uncompressed, length-prefixed) holding `HealthCheckRequest { service }`. */
function requestFrame(service: string): Buffer {
  const name = Buffer.from(service, 'utf8');
  // Field 1, wire type 2 (length-delimited): tag 0x0a, a varint length, the bytes. Empty: no field at all.
  const message = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a]), varint(name.length), name]);
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt8(0, 0);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

/** `HealthCheckResponse.status` from a response frame (field 1, a varint); 0 (UNKNOWN) when absent or malformed. */
function servingStatus(frame: Buffer): number {
  if (frame.length < 5 || frame.readUInt8(0) !== 0) return 0;
  const message = frame.subarray(5, 5 + frame.readUInt32BE(1));
  for (let i = 0; i < message.length; ) {
    const tag = message[i++]!;
    if (tag === 0x08) return message[i] ?? 0;
    // Skip a field we do not know: varints, or length-delimited bytes.
    if ((tag & 7) === 0) while (i < message.length && (message[i++]! & 0x80) !== 0);
    else if ((tag & 7) === 2) i += 1 + (message[i] ?? 0);
    else return 0;
  }
  return 0;
}

/** `grpc-message` is percent-encoded; an instance's malformed one is shown as it came. */
function percentDecoded(message: string): string {
  try {
    return decodeURIComponent(message);
  } catch {
    return message;
  }
}

function varint(value: number): Buffer {
  const bytes: number[] = [];
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80);
    value >>>= 7;
  }
  bytes.push(value);
  return Buffer.from(bytes);
}
