import assert from 'node:assert/strict';
import { request, type IncomingMessage } from 'node:http';
import { test } from 'node:test';
import { startGateway, startUpstream, waitFor } from './helpers.js';

/** An upstream of server-sent events: `count` events `everyMs` apart (then quiet when `quietAfter` is set); records when its request closed. */
async function eventSource(t: Parameters<typeof startUpstream>[0], count: number, everyMs: number, quietAfter = Infinity) {
  const state = { closed: 0 };
  const upstream = await startUpstream(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let n = 0;
    const timer = setInterval(() => {
      if (n >= quietAfter) return;
      res.write(`id: ${n}\ndata: event ${n}\n\n`);
      if (++n === count) {
        clearInterval(timer);
        res.end();
      }
    }, everyMs);
    res.on('close', () => {
      clearInterval(timer);
      state.closed++;
    });
  });
  return { upstream, state };
}

/** Opens an event stream through the gateway; resolves with the response. */
function open(url: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => request(url, resolve).on('error', reject).end());
}

test('server-sent events stream through one by one, past the service timeout; a client that leaves ends the upstream request; streamTimeout cuts a quiet stream', { timeout: 30_000 }, async (t) => {
  const live = await eventSource(t, 6, 150);
  const endless = await eventSource(t, 1000, 100);
  const quiet = await eventSource(t, 1000, 50, 1);
  const { url } = await startGateway(t, {
    services: { live: { instances: [{ url: live.upstream.url }], timeout: '300ms' }, endless: { instances: [{ url: endless.upstream.url }] }, quiet: { instances: [{ url: quiet.upstream.url }] } },
    routes: [
      { prefix: '/live', service: 'live' },
      { prefix: '/endless', service: 'endless' },
      { prefix: '/quiet', service: 'quiet', streamTimeout: '300ms' },
    ],
  });

  // One by one, time-stamped at the client: six events over ~900 ms, through a 300 ms timeout.
  const started = Date.now();
  const arrivals: number[] = [];
  const res = await open(`${url}/live/events`);
  assert.equal(res.headers['content-type'], 'text/event-stream');
  let text = '';
  res.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk;
    for (let i = arrivals.length; i < (text.match(/\n\n/g) ?? []).length; i++) arrivals.push(Date.now() - started);
  });
  await new Promise((resolve) => res.on('end', resolve));
  t.diagnostic(`event arrival ms: ${arrivals.join(', ')}`);
  assert.equal(arrivals.length, 6);
  assert.ok(arrivals[5]! - arrivals[0]! >= 500, `events were not held back and sent together: ${arrivals.join(', ')}`);
  for (let i = 1; i < 6; i++) assert.ok(arrivals[i]! > arrivals[i - 1]!, 'each event on its own');

  // The client leaves after two events: the upstream request ends too.
  const leaving = await open(`${url}/endless/events`);
  let seen = '';
  await new Promise<void>((resolve) => {
    leaving.setEncoding('utf8').on('data', (chunk: string) => {
      seen += chunk;
      if ((seen.match(/\n\n/g) ?? []).length >= 2) {
        leaving.destroy();
        resolve();
      }
    });
  });
  await waitFor(() => endless.state.closed === 1, 3000, 'the upstream request to end');

  // A stream quiet for longer than streamTimeout is cut, upstream and downstream.
  const cut = await open(`${url}/quiet/events`);
  const ended = await new Promise<string>((resolve) => {
    cut.on('error', () => resolve('error'));
    cut.on('aborted', () => resolve('aborted'));
    cut.on('end', () => resolve('end'));
    cut.resume();
  });
  assert.ok(['error', 'aborted', 'end'].includes(ended));
  await waitFor(() => quiet.state.closed === 1, 3000, 'the quiet upstream request to be cut');
});
