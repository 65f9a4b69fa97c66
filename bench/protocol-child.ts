/**
 * The processes `bench/protocols.ts` measures, one per process, each reporting its port over IPC:
 * - `upstream-h2`: an h2c server answering every stream with a small body and a trailer;
 * - `upstream-grpc`: a @grpc/grpc-js server with one unary method;
 * - `bare-h2`: the floor for an HTTP/2 proxy in Node: an h2c server that forwards each stream over
 *   one node:http2 client session (per instance), headers, body and trailers, and nothing else;
 * - `meshgate-h2`: meshgate's core stack with `listen.http2: true` and `protocol: h2c` to the
 *   instance (argument: the instance's URL); the same config serves the gRPC rows.
 */
import { connect, constants, createServer, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createGateway } from '../lib/index.js';

export const PROTO = fileURLToPath(new URL('../test/fixtures/echo.proto', import.meta.url));
const BODY = Buffer.from('{"ok":true,"bench":"protocols"}');

function report(port: number): void {
  process.send?.({ port });
}

const [kind, upstream] = process.argv.slice(2);

if (kind === 'upstream-h2') {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.addTrailers({ 'x-done': '1' });
    res.end(BODY);
  });
  server.listen(0, '127.0.0.1', () => report((server.address() as AddressInfo).port));
} else if (kind === 'upstream-grpc') {
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO, { keepCase: true, defaults: true })) as unknown as { meshtest: { Echo: grpc.ServiceClientConstructor } };
  const server = new grpc.Server();
  server.addService(pkg.meshtest.Echo.service, {
    Unary: (call: grpc.ServerUnaryCall<{ text: string; n: number }, unknown>, callback: grpc.sendUnaryData<unknown>) => callback(null, call.request),
  });
  server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) throw err;
    report(port);
  });
} else if (kind === 'bare-h2') {
  // gRPC calls to the gRPC instance, the rest to the HTTP/2 one, one session each.
  const origins = upstream!.split(',');
  const sessions = origins.map((origin) => connect(origin));
  const live = (path: string) => {
    const i = path.startsWith('/meshtest.Echo') ? 1 : 0;
    const current = sessions[i]!;
    return current.closed || current.destroyed ? (sessions[i] = connect(origins[i]!)) : current;
  };
  const server = createServer();
  server.on('stream', (stream, headers: IncomingHttpHeaders) => {
    const out: OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(headers)) if (name !== ':scheme' && name !== ':authority') out[name] = value;
    const up = live(String(headers[':path'])).request(out, { endStream: stream.readableEnded || (headers[':method'] === 'GET' && stream.endAfterHeaders) });
    up.on('response', (h) => {
      const head: OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(h)) head[name] = value;
      stream.respond(head, { waitForTrailers: true });
      up.pipe(stream);
    });
    let trailers: IncomingHttpHeaders = {};
    up.on('trailers', (t) => (trailers = t));
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    up.on('error', () => stream.close(constants.NGHTTP2_INTERNAL_ERROR));
    stream.on('error', () => up.close());
    if (!stream.endAfterHeaders) stream.pipe(up);
  });
  server.listen(0, '127.0.0.1', () => report((server.address() as AddressInfo).port));
} else if (kind === 'meshgate-h2') {
  const [h2, grpcUrl] = upstream!.split(',');
  const gateway = createGateway({
    listen: { host: '127.0.0.1', port: 0, http2: true },
    logLevel: 'silent',
    tracing: false,
    services: { h2: { protocol: 'h2c', instances: [{ url: h2! }] }, grpc: { protocol: 'h2c', instances: [{ url: grpcUrl! }] } },
    routes: [
      { prefix: '/meshtest.Echo', service: 'grpc' },
      { prefix: '/', service: 'h2' },
    ],
  });
  const info = await gateway.listen();
  report(info.port);
} else {
  throw new Error(`unknown target ${kind}`);
}
process.on('SIGTERM', () => process.exit(0));
