import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import type { GatewayConfigInput } from '../../lib/index.js';
import { send, startGateway, startUpstream, type Upstream } from '../helpers.js';

const LIMIT = { timeout: 15_000 };
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';

/** A gateway with one route `/api` to a real upstream that records what it received. */
async function setup(t: TestContext, extra: Partial<GatewayConfigInput> = {}): Promise<{ url: string; upstream: Upstream }> {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }], ...extra });
  return { url, upstream };
}

/** Sends one request and returns what the client got and the headers the upstream saw. */
async function exchange(url: string, upstream: Upstream, headers: Record<string, string | string[]> = {}) {
  const before = upstream.seen.length;
  const res = await send(`${url}/api/trace`, { headers });
  assert.equal(res.status, 200, res.body);
  assert.equal(upstream.seen.length, before + 1);
  const seen = upstream.seen.at(-1)!;
  return { res, seen, upstreamHeaders: seen.headers };
}

/** How many times a header appears in a raw header list. */
function count(rawHeaders: string[], name: string): number {
  let n = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === name) n++;
  return n;
}

function parseTraceparent(value: unknown): { traceId: string; parentId: string; flags: string } {
  const match = TRACEPARENT.exec(String(value));
  assert.ok(match, `not a valid version-00 traceparent: ${JSON.stringify(value)}`);
  assert.notEqual(match[1], '0'.repeat(32), 'all-zero trace id');
  assert.notEqual(match[2], '0'.repeat(16), 'all-zero parent id');
  return { traceId: match[1]!, parentId: match[2]!, flags: match[3]! };
}

describe('trace context: traceparent', () => {
  test('a valid traceparent is continued: same trace id, a new parent id, same flags', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    for (const flags of ['01', '00']) {
      const { seen } = await exchange(url, upstream, { traceparent: `00-${TRACE_ID}-${PARENT_ID}-${flags}` });
      assert.equal(count(seen.rawHeaders, 'traceparent'), 1);
      const sent = parseTraceparent(seen.headers.traceparent);
      assert.equal(sent.traceId, TRACE_ID);
      assert.notEqual(sent.parentId, PARENT_ID, 'the gateway\'s hop needs a span id of its own');
      assert.equal(sent.flags, flags);
    }
  });

  test('each hop gets its own span id', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const spans = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const { upstreamHeaders } = await exchange(url, upstream, { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01` });
      spans.add(parseTraceparent(upstreamHeaders.traceparent).parentId);
    }
    assert.equal(spans.size, 5);
  });

  test('a later version with extra fields is continued, sent on as version 00', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const { upstreamHeaders } = await exchange(url, upstream, { traceparent: `01-${TRACE_ID}-${PARENT_ID}-01-what-the-future-brings` });
    const sent = parseTraceparent(upstreamHeaders.traceparent);
    assert.equal(sent.traceId, TRACE_ID);
    assert.equal(sent.flags, '01');
  });

  const INVALID: [string, string][] = [
    ['version ff', `ff-${TRACE_ID}-${PARENT_ID}-01`],
    ['an all-zero trace id', `00-${'0'.repeat(32)}-${PARENT_ID}-01`],
    ['an all-zero parent id', `00-${TRACE_ID}-${'0'.repeat(16)}-01`],
    ['a trace id one digit short', `00-${TRACE_ID.slice(1)}-${PARENT_ID}-01`],
    ['a parent id one digit long', `00-${TRACE_ID}-${PARENT_ID}0-01`],
    ['version 00 with a fifth field', `00-${TRACE_ID}-${PARENT_ID}-01-extra`],
    ['uppercase hex', `00-${TRACE_ID.toUpperCase()}-${PARENT_ID.toUpperCase()}-01`],
    ['garbage', 'not-a-traceparent'],
  ];
  for (const [what, value] of INVALID) {
    test(`a traceparent with ${what} starts a new trace`, LIMIT, async (t) => {
      const { url, upstream } = await setup(t);
      const { seen } = await exchange(url, upstream, { traceparent: value });
      assert.equal(count(seen.rawHeaders, 'traceparent'), 1, 'the invalid header must be replaced, not added to');
      const sent = parseTraceparent(seen.headers.traceparent);
      assert.notEqual(sent.traceId, TRACE_ID);
      assert.notEqual(sent.traceId.toUpperCase(), TRACE_ID.toUpperCase());
      assert.notEqual(sent.parentId, PARENT_ID);
      assert.equal(sent.flags, '01', 'a new trace is sampled');
    });
  }

  test('without a traceparent a new valid one is sent, a different trace per request', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const traces = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const { upstreamHeaders } = await exchange(url, upstream);
      const sent = parseTraceparent(upstreamHeaders.traceparent);
      assert.equal(sent.flags, '01');
      traces.add(sent.traceId);
    }
    assert.equal(traces.size, 3);
  });

  test('tracestate passes through untouched', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const tracestate = 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE, vendor@tenant=x_y-z*1/2';
    const { upstreamHeaders } = await exchange(url, upstream, { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`, tracestate });
    assert.equal(upstreamHeaders.tracestate, tracestate);
    assert.equal(parseTraceparent(upstreamHeaders.traceparent).traceId, TRACE_ID);
  });
});

describe('trace context: x-request-id', () => {
  test('generated ids stay valid and distinct across many requests (past the random batches)', { timeout: 30_000 }, async (t) => {
    const { url, upstream } = await setup(t);
    const requestIds = new Set<string>();
    const traceIds = new Set<string>();
    const spanIds = new Set<string>();
    for (let i = 0; i < 150; i++) {
      const { res, upstreamHeaders } = await exchange(url, upstream);
      const id = String(res.headers['x-request-id']);
      assert.match(id, UUID_V4);
      assert.equal(upstreamHeaders['x-request-id'], id);
      requestIds.add(id);
      const sent = parseTraceparent(upstreamHeaders.traceparent);
      traceIds.add(sent.traceId);
      spanIds.add(sent.parentId);
    }
    assert.equal(requestIds.size, 150);
    assert.equal(traceIds.size, 150);
    assert.equal(spanIds.size, 150);
  });

  test('the client gets the gateway\'s request id once, even when the upstream answers with its own; repeated upstream headers survive', LIMIT, async (t) => {
    const upstream = await startUpstream(t, (_req, res) => {
      res.writeHead(200, ['X-Request-Id', 'upstream-made-this-up', 'set-cookie', 'a=1', 'set-cookie', 'b=2', 'content-length', '2']);
      res.end('ok');
    });
    const { url } = await startGateway(t, { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
    const res = await send(`${url}/api/x`, { headers: { 'x-request-id': 'client-id-1' } });
    assert.equal(res.status, 200);
    assert.equal(count(res.rawHeaders, 'x-request-id'), 1);
    assert.equal(res.headers['x-request-id'], 'client-id-1');
    assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(res.body, 'ok');
  });

  test('an x-request-id from the client is kept, sent upstream and echoed to the client once', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const id = 'client-chosen.id:42_ABC~!';
    const { res, seen } = await exchange(url, upstream, { 'x-request-id': id });
    assert.equal(seen.headers['x-request-id'], id);
    assert.equal(count(seen.rawHeaders, 'x-request-id'), 1);
    assert.equal(res.headers['x-request-id'], id);
    assert.equal(count(res.rawHeaders, 'x-request-id'), 1);
  });

  test('a 200-character id is still kept', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const id = 'r'.repeat(200);
    const { res, upstreamHeaders } = await exchange(url, upstream, { 'x-request-id': id });
    assert.equal(upstreamHeaders['x-request-id'], id);
    assert.equal(res.headers['x-request-id'], id);
  });

  test('without one, a UUID v4 is generated: the same value upstream and to the client, a new one per request', LIMIT, async (t) => {
    const { url, upstream } = await setup(t);
    const ids = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const { res, upstreamHeaders } = await exchange(url, upstream);
      const id = res.headers['x-request-id'];
      assert.match(String(id), UUID_V4);
      assert.equal(upstreamHeaders['x-request-id'], id);
      ids.add(String(id));
    }
    assert.equal(ids.size, 5);
  });

  const HOSTILE: [string, string | string[]][] = [
    ['too long (201 characters)', 'x'.repeat(201)],
    ['a tab inside', 'abc\tdef'],
    ['a space inside', 'abc def'],
    ['non-ASCII bytes', 'abc\u00e9\u00ffdef'],
    ['sent twice', ['first', 'second']],
  ];
  for (const [what, value] of HOSTILE) {
    test(`an x-request-id with ${what} is replaced by a generated one`, LIMIT, async (t) => {
      const { url, upstream } = await setup(t);
      const { res, seen } = await exchange(url, upstream, { 'x-request-id': value });
      const id = res.headers['x-request-id'];
      assert.match(String(id), UUID_V4);
      assert.equal(seen.headers['x-request-id'], id, 'the upstream must get the replacement, not the hostile value');
      assert.equal(count(seen.rawHeaders, 'x-request-id'), 1);
    });
  }
});

describe('trace context: tracing: false', () => {
  test('turns it all off: no traceparent or x-request-id added, the client\'s passed through as they came', LIMIT, async (t) => {
    const { url, upstream } = await setup(t, { tracing: false });
    const plain = await exchange(url, upstream);
    assert.equal(plain.upstreamHeaders.traceparent, undefined);
    assert.equal(plain.upstreamHeaders['x-request-id'], undefined);
    assert.equal(plain.res.headers['x-request-id'], undefined);

    const invalid = `ff-${TRACE_ID}-${PARENT_ID}-01`;
    const hostile = 'x'.repeat(300);
    const given = await exchange(url, upstream, { traceparent: invalid, 'x-request-id': hostile });
    assert.equal(given.upstreamHeaders.traceparent, invalid);
    assert.equal(given.upstreamHeaders['x-request-id'], hostile);
  });

  test('tracing: { requestIdHeader } uses that header instead of x-request-id', LIMIT, async (t) => {
    const { url, upstream } = await setup(t, { tracing: { requestIdHeader: 'X-Correlation-Id' } });
    const { res, upstreamHeaders } = await exchange(url, upstream, { 'x-correlation-id': 'corr-1' });
    assert.equal(upstreamHeaders['x-correlation-id'], 'corr-1');
    assert.equal(res.headers['x-correlation-id'], 'corr-1');
    assert.equal(upstreamHeaders['x-request-id'], undefined);
    parseTraceparent(upstreamHeaders.traceparent);
  });
});
