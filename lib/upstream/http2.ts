import { constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import type { IncomingMessage } from 'node:http';
import { UpstreamExchange, type UpstreamRequest } from './exchange.js';
import { kFailure, type Http2Connection } from './http2-connection.js';
import { grpcTimeoutValue } from '../http/grpc.js';
import { TooManyHeadersError, addField, isSingleValue, requestTrailerObject } from '../http/headers.js';

/** Request headers HTTP/2 forbids (RFC 9113 8.2.2), besides those the gateway already dropped as hop-by-hop. */
const NOT_IN_HTTP2 = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

/**
 * Sends one attempt over an HTTP/2 connection and drives the same {@link UpstreamExchange} the
 * undici path does (held at the response headers, backpressure, deadlines, discard), so the
 * pipeline does not see the protocol. The response's trailers are kept on the exchange and
 * sent on to the client after the body (`grpc-status`).
 */
export function dispatchHttp2(connection: Http2Connection, req: UpstreamRequest): UpstreamExchange {
  const exchange = new UpstreamExchange(req.instance, req.timeout, req.deadlines, req.method, undefined, req.grpc);
  let stream: ClientHttp2Stream;
  let session: ClientHttp2Session;
  try {
    session = connection.session();
    // A streamed body ends with the client's trailers (or none): the last frame waits for them.
    stream = session.request(requestHeaders(req), { endStream: req.body === null, waitForTrailers: isStream(req.body) });
  } catch (err) {
    queueMicrotask(() => exchange.onError(err as Error));
    return exchange;
  }
  exchange.onConnect((reason) => {
    if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL);
    // A stream that never got going reports the reason itself.
    if (reason !== undefined) fail(reason);
  });
  let failed = false;
  const fail = (err: Error): void => {
    if (failed) return;
    failed = true;
    exchange.onError(err);
  };
  let trailers: IncomingHttpHeaders | null = null;
  stream.on('response', (headers) => {
    const status = Number(headers[':status']);
    if (status < 200) return;
    // After the headers, a body that goes quiet for the route's streamTimeout is cut (as undici's bodyTimeout).
    if (req.streamTimeout !== undefined && req.streamTimeout > 0) {
      stream.setTimeout(req.streamTimeout, () => {
        fail(Object.assign(new Error(`no body byte from ${req.instance.url} for ${req.streamTimeout} ms`), { code: 'UND_ERR_BODY_TIMEOUT' }));
        stream.close(constants.NGHTTP2_CANCEL);
      });
    }
    exchange.onHeaders(status, rawHeaders(headers), () => stream.resume());
  });
  stream.on('data', (chunk: Buffer) => {
    if (!exchange.onData(chunk)) stream.pause();
  });
  stream.on('trailers', (headers) => (trailers = headers));
  stream.on('end', () => {
    if (failed) return;
    exchange.onComplete(trailers === null ? null : rawHeaders(trailers));
  });
  stream.on('error', (err: Error) => fail((session as { [kFailure]?: Error })[kFailure] ?? err));
  stream.on('close', () => {
    // Reset by the instance (RST_STREAM), or its connection went away, before the end.
    if (stream.readableEnded) return;
    const refused = stream.rstCode === constants.NGHTTP2_REFUSED_STREAM;
    fail(
      (session as { [kFailure]?: Error })[kFailure] ??
        // REFUSED_STREAM: the instance did not process it, so it may go elsewhere at no risk (RFC 9113 8.7).
        Object.assign(new Error(`stream ${refused ? 'refused' : 'reset'} by ${req.instance.url} (code ${stream.rstCode})`), { code: refused ? 'ERR_HTTP2_STREAM_REFUSED' : 'ECONNRESET' }),
    );
  });
  const body = req.body;
  if (body !== null) {
    if (!isStream(body)) {
      exchange.bodyBytesSent = Buffer.byteLength(body);
      stream.end(body);
    } else {
      body.on('data', (chunk: Buffer) => void (exchange.bodyBytesSent += chunk.length));
      body.on('error', (err) => fail(err));
      // The client's trailers follow the body, under the rules its headers keep; none go out as an
      // empty DATA frame that ends the stream. A plugin's own stream has no trailers.
      stream.on('wantTrailers', () => {
        const raw = body.rawTrailers ?? [];
        const max = req.maxHeaders ?? 100;
        if (raw.length > max * 2) {
          fail(new TooManyHeadersError(max, 'request trailers'));
          stream.close(constants.NGHTTP2_CANCEL);
          return;
        }
        stream.sendTrailers(requestTrailerObject(raw, req.headerOverrides ?? null));
      });
      body.pipe(stream);
    }
  }
  return exchange;
}

/** Whether the body streams from the client (rather than being a buffer the gateway holds). */
function isStream(body: UpstreamRequest['body']): body is IncomingMessage {
  return body !== null && typeof body !== 'string' && !Buffer.isBuffer(body);
}

/** The attempt's headers as HTTP/2 wants them: the request line as pseudo-headers, the Host as `:authority`, names in lower case. */
function requestHeaders(req: UpstreamRequest): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = { ':method': req.method, ':path': req.path };
  const headers = req.headers;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!.toLowerCase();
    const value = headers[i + 1]!;
    if (name === 'host') {
      out[':authority'] = value;
      continue;
    }
    if (NOT_IN_HTTP2.has(name) || (name === 'grpc-timeout' && req.grpcTimeout !== undefined)) continue;
    // A repeated single-value header (two User-Agent) keeps its first value: node:http2 refuses repeats.
    if (out[name] === undefined || !isSingleValue(name)) addField(out, name, value);
  }
  // The one TE HTTP/2 allows: the gateway passes trailers on, and gRPC servers insist on it.
  out.te = 'trailers';
  // The caller's deadline less the time already spent (in the gateway, on earlier attempts), capped by the route's.
  if (req.grpcTimeout !== undefined) out['grpc-timeout'] = grpcTimeoutValue(req.grpcTimeout);
  return out;
}

/**
 * Response headers (or trailers) as the flat raw list the exchange works with, pseudo-headers left
 * out. Strings, not Buffers: node:http2 already decoded them, and the exchange reads either.
 */
function rawHeaders(headers: IncomingHttpHeaders): string[] {
  const raw: string[] = [];
  for (const name of Object.keys(headers)) {
    if (name.charCodeAt(0) === 58) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) raw.push(name, v);
    else raw.push(name, String(value));
  }
  return raw;
}
