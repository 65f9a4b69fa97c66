import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { send, startGateway, startUpstream } from '../helpers.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT = '00f067aa0ba902b7';

test('without a registered tracer provider no span is made, and ids still propagate', async (t) => {
  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, { services: { api: { instances: [{ url: upstream.url }] } }, routes: [{ prefix: '/api', service: 'api' }] });
  const res = await send(`${url}/api/x`, { headers: { traceparent: `00-${TRACE}-${PARENT}-01` } });
  assert.equal(res.status, 200);
  const sent = String(upstream.seen[0]!.headers.traceparent);
  assert.match(sent, new RegExp(`^00-${TRACE}-[0-9a-f]{16}-01$`));
  assert.notEqual(sent.split('-')[2], PARENT);
});

test('with a registered provider: one SERVER span per request, child of the incoming traceparent, and its id is the hop the upstream sees', async (t) => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);
  after(() => trace.disable());

  const upstream = await startUpstream(t);
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] }, none: {} },
    routes: [
      { prefix: '/api', service: 'api' },
      { prefix: '/none', service: 'none' },
      { prefix: '/keyed', service: 'api', auth: { apiKeys: { keys: [{ name: 'ci-bot', key: 'trace-test-key-1' }] } }, authorization: { rules: [{ name: 'bots', action: 'allow', when: { principals: ['ci-bot'] } }] } },
    ],
  });

  const ok = await send(`${url}/api/users/1`, { headers: { traceparent: `00-${TRACE}-${PARENT}-01` } });
  assert.equal(ok.status, 200);
  const [span] = exporter.getFinishedSpans();
  assert.ok(span, 'a span was exported');
  assert.equal(span.kind, SpanKind.SERVER);
  assert.equal(span.name, 'GET /api');
  assert.equal(span.spanContext().traceId, TRACE);
  assert.equal(span.parentSpanContext?.spanId, PARENT);
  assert.equal(span.attributes['http.response.status_code'], 200);
  assert.equal(span.attributes['http.route'], '/api');
  // The upstream's parent is the gateway's span: the trace has no gap.
  assert.equal(String(upstream.seen[0]!.headers.traceparent), `00-${TRACE}-${span.spanContext().spanId}-01`);

  exporter.reset();
  const failed = await send(`${url}/none/x`);
  assert.equal(failed.status, 503);
  const [errorSpan] = exporter.getFinishedSpans();
  assert.ok(errorSpan);
  assert.equal(errorSpan.status.code, SpanStatusCode.ERROR);
  assert.equal(errorSpan.attributes['http.response.status_code'], 503);
  assert.equal(errorSpan.parentSpanContext, undefined, 'no traceparent came in: a root span');

  exporter.reset();
  assert.equal((await send(`${url}/keyed/x`, { headers: { 'x-api-key': 'trace-test-key-1' } })).status, 200);
  const [keyed] = exporter.getFinishedSpans();
  assert.equal(keyed?.attributes['enduser.id'], 'ci-bot', 'the principal is on the span');
  assert.equal(keyed?.attributes['meshgate.authorization.rule'], 'bots');
});
