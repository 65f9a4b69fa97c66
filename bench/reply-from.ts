/**
 * The reply-from target: Fastify with @fastify/reply-from forwarding every request to the
 * upstream, as its README shows it: logger off, the plugin's defaults (an undici Pool, 128
 * connections, keep-alive), one catch-all route. The most common "proxy in Fastify" a user writes.
 */
import replyFrom from '@fastify/reply-from';
import Fastify, { type FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';

/** Starts the Fastify + reply-from proxy on `127.0.0.1:port` in front of `upstream` (an origin URL). */
export async function startReplyFrom(upstream: string, port = 0): Promise<{ app: FastifyInstance; port: number }> {
  const app = Fastify({ logger: false });
  await app.register(replyFrom, { base: upstream });
  app.all('/*', (request, reply) => {
    reply.from(request.url);
  });
  await app.listen({ host: '127.0.0.1', port });
  return { app, port: (app.server.address() as AddressInfo).port };
}
