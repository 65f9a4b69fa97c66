import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** How a tunnel ended, and what went through it. */
export interface TunnelEnd {
  /** Bytes from the client to the instance (after the handshake). */
  bytesIn: number;
  /** Bytes from the instance to the client (after the handshake). */
  bytesOut: number;
  /** Why it closed: a side hung up, it went idle, or the gateway cut it (close() after the drain). */
  reason: 'client' | 'upstream' | 'idle' | 'shutdown';
}

/** TCP keep-alive probes on both legs, so a peer that vanished without a FIN is found even with no idle timeout. */
const KEEP_ALIVE_MS = 30_000;
/** How long a half-closed tunnel waits for its other side's FIN. */
const HALF_CLOSE_MS = 5_000;

/**
 * Two connections joined after a protocol switch (a WebSocket's 101, or the 200 to an extended
 * CONNECT on an HTTP/2 stream): bytes go both ways as they come, with backpressure (`pipe` pauses
 * the side whose peer's buffer is full), and neither side outlives the other. The frames are not
 * parsed: what one side sends the other gets, so any subprotocol and extension
 * (permessage-deflate) passes through.
 */
export class Tunnel {
  readonly #client: Duplex;
  readonly #upstream: Socket;
  #bytesIn = 0;
  #bytesOut = 0;
  #reason: TunnelEnd['reason'] | null = null;
  /** Settles once both sides are closed. */
  readonly closed: Promise<TunnelEnd>;

  /**
   * `client` is the client's socket, or its HTTP/2 stream. `clientHead` is what the client sent
   * after its handshake (already read by the HTTP parser); the instance's early bytes are still in
   * its socket (undici puts them back). `idleTimeout` in ms, 0 for none.
   */
  constructor(client: Socket | Duplex, upstream: Socket, clientHead: Buffer, idleTimeout: number) {
    this.#client = client;
    this.#upstream = upstream;
    for (const socket of [client, upstream]) {
      // An HTTP/2 stream has no TCP options of its own: its connection's are the listener's.
      if (!('setNoDelay' in socket)) continue;
      socket.setNoDelay(true);
      socket.setKeepAlive(true, KEEP_ALIVE_MS);
    }
    // The client's side sees every byte either way: its timeout is the tunnel's idle timeout.
    (client as Socket).setTimeout(idleTimeout);
    if (idleTimeout > 0) client.once('timeout', () => this.#close('idle'));
    let open = 2;
    this.closed = new Promise((resolve) => {
      const onClose = (): void => {
        if (--open > 0) return;
        resolve({ bytesIn: this.#bytesIn, bytesOut: this.#bytesOut, reason: this.#reason ?? 'client' });
      };
      const clientClosed = (): void => {
        this.#reason ??= 'client';
        upstream.destroy();
        onClose();
      };
      const upstreamClosed = (): void => {
        this.#reason ??= 'upstream';
        client.destroy();
        onClose();
      };
      // A side that closed while the handshake's answer was on its way has no 'close' left to emit.
      if (client.closed) clientClosed();
      else client.once('close', clientClosed);
      if (upstream.closed) upstreamClosed();
      else upstream.once('close', upstreamClosed);
    });
    // An error on either side (a reset) ends both; 'close' follows it.
    client.on('error', noop);
    upstream.on('error', noop);
    // One side finished sending (FIN, END_STREAM): the other gets HALF_CLOSE_MS to finish too, then
    // both close, so a peer that never answers a half-close does not hold the tunnel open.
    const halfClosed = (): void => void setTimeout(() => this.#close(this.#reason ?? 'client'), HALF_CLOSE_MS).unref();
    client.once('end', halfClosed);
    upstream.once('end', halfClosed);
    client.on('data', (chunk: Buffer) => void (this.#bytesIn += chunk.length));
    upstream.on('data', (chunk: Buffer) => void (this.#bytesOut += chunk.length));
    if (clientHead.length > 0) {
      this.#bytesIn += clientHead.length;
      upstream.write(clientHead);
    }
    // A FIN from one side is passed on (pipe ends the other's writable side); the close follows.
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Cuts the tunnel now (both sockets closed at once). */
  close(): void {
    this.#close('shutdown');
  }

  #close(reason: TunnelEnd['reason']): void {
    this.#reason ??= reason;
    this.#client.destroy();
    this.#upstream.destroy();
  }
}

function noop(): void {}
