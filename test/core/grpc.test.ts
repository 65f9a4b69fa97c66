/**
 * gRPC through the gateway: @grpc/grpc-js clients and servers as real peers, HTTP/2 on both sides
 * of the gateway (h2c), each call kind, the gateway's own errors as gRPC statuses, retries and
 * outlier detection on gRPC failures.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test, type TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { send, startGateway, waitFor } from '../helpers.js';

const LIMIT = { timeout: 30_000 };
const PROTO = fileURLToPath(new URL('../fixtures/echo.proto', import.meta.url));
const definition = protoLoader.loadSync(PROTO, { keepCase: true, defaults: true });
const loaded = grpc.loadPackageDefinition(definition) as unknown as { meshtest: { Echo: grpc.ServiceClientConstructor } };
const Echo = loaded.meshtest.Echo;
const health = grpc.loadPackageDefinition(protoLoader.loadSync(fileURLToPath(new URL('../fixtures/health.proto', import.meta.url)), { keepCase: true, enums: String, defaults: true })) as unknown as {
  grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
};

interface Msg {
  text: string;
  n: number;
}

/** A gRPC instance: every call answers with its name; `fail` makes unary calls fail with that status. */
interface GrpcInstance {
  name: string;
  url: string;
  calls: number;
  fail: grpc.status | null;
  hang: boolean;
  /** How long unary calls wait before they answer (or fail), in ms. */
  delay: number;
  /** The deadline each unary call arrived with, as ms left (Infinity for none). */
  deadlinesLeft: number[];
  /** What grpc.health.v1.Health/Check answers, per service name ('' for the server). */
  serving: Map<string, string>;
  healthChecks: string[];
  close(): Promise<void>;
}

async function startGrpcInstance(t: TestContext, name: string): Promise<GrpcInstance> {
  const server = new grpc.Server();
  const state: GrpcInstance = { name, url: '', calls: 0, fail: null, hang: false, delay: 0, deadlinesLeft: [], serving: new Map([['', 'SERVING'], ['meshtest.Echo', 'SERVING']]), healthChecks: [], close: async () => void server.forceShutdown() };
  server.addService(health.grpc.health.v1.Health.service, {
    Check: (call: grpc.ServerUnaryCall<{ service: string }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      state.healthChecks.push(call.request.service);
      const status = state.serving.get(call.request.service);
      if (status === undefined) return callback({ code: grpc.status.NOT_FOUND, details: 'unknown service' });
      callback(null, { status });
    },
  });
  server.addService(Echo.service, {
    Unary: (call: grpc.ServerUnaryCall<Msg, Msg>, callback: grpc.sendUnaryData<Msg>) => {
      state.calls++;
      const deadline = call.getDeadline();
      state.deadlinesLeft.push(deadline instanceof Date ? deadline.getTime() - Date.now() : Number(deadline) - Date.now());
      if (state.hang) return;
      setTimeout(() => {
        if (state.fail !== null) return callback({ code: state.fail, details: `${name} fails` });
        callback(null, { text: `${name}: ${call.request.text}`, n: call.request.n });
      }, state.delay);
    },
    ServerStream: (call: grpc.ServerWritableStream<Msg, Msg>) => {
      state.calls++;
      for (let i = 0; i < call.request.n; i++) call.write({ text: `${name} #${i}`, n: i });
      call.end();
    },
    ClientStream: (call: grpc.ServerReadableStream<Msg, Msg>, callback: grpc.sendUnaryData<Msg>) => {
      state.calls++;
      const texts: string[] = [];
      call.on('data', (msg: Msg) => texts.push(msg.text));
      call.on('end', () => callback(null, { text: `${name}: ${texts.join(',')}`, n: texts.length }));
    },
    Bidi: (call: grpc.ServerDuplexStream<Msg, Msg>) => {
      state.calls++;
      call.on('data', (msg: Msg) => call.write({ text: `${name} echoes ${msg.text}`, n: msg.n }));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  state.url = `http://127.0.0.1:${port}`;
  t.after(() => state.close());
  return state;
}

function client(t: TestContext, gatewayUrl: string): grpc.Client & Record<string, (...args: unknown[]) => unknown> {
  const c = new Echo(new URL(gatewayUrl).host, grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
  t.after(() => c.close());
  return c;
}

function unary(c: grpc.Client, msg: Partial<Msg>, metadata = new grpc.Metadata(), options: grpc.CallOptions = {}): Promise<Msg> {
  return new Promise((resolve, reject) => (c as unknown as { Unary: Function }).Unary(msg, metadata, options, (err: grpc.ServiceError | null, res: Msg) => (err ? reject(err) : resolve(res))));
}

test('all four call kinds go through the gateway, HTTP/2 on both sides', LIMIT, async (t) => {
  const instance = await startGrpcInstance(t, 'a');
  const { url } = await startGateway(t, {
    services: { echo: { protocol: 'h2c', instances: [{ url: instance.url }] } },
    routes: [{ prefix: '/meshtest.Echo', service: 'echo' }],
    listen: { http2: true },
  });
  const c = client(t, url);
  assert.deepEqual(await unary(c, { text: 'hi', n: 7 }), { text: 'a: hi', n: 7 });

  const streamed: Msg[] = await new Promise((resolve, reject) => {
    const out: Msg[] = [];
    const call = (c as unknown as { ServerStream: Function }).ServerStream({ text: 'go', n: 5 }) as grpc.ClientReadableStream<Msg>;
    call.on('data', (m: Msg) => out.push(m));
    call.on('end', () => resolve(out));
    call.on('error', reject);
  });
  assert.deepEqual(streamed.map((m) => m.text), ['a #0', 'a #1', 'a #2', 'a #3', 'a #4']);

  const gathered: Msg = await new Promise((resolve, reject) => {
    const call = (c as unknown as { ClientStream: Function }).ClientStream((err: grpc.ServiceError | null, res: Msg) => (err ? reject(err) : resolve(res))) as grpc.ClientWritableStream<Msg>;
    for (const text of ['x', 'y', 'z']) call.write({ text, n: 0 });
    call.end();
  });
  assert.deepEqual(gathered, { text: 'a: x,y,z', n: 3 });

  // Bidi: each message answered before the next is sent, so both directions stream at once.
  const call = (c as unknown as { Bidi: Function }).Bidi() as grpc.ClientDuplexStream<Msg, Msg>;
  const replies: string[] = [];
  for (let i = 0; i < 3; i++) {
    const reply = new Promise<Msg>((resolve) => call.once('data', resolve));
    call.write({ text: `m${i}`, n: i });
    replies.push((await reply).text);
  }
  call.end();
  await new Promise((resolve) => call.on('end', resolve).resume());
  assert.deepEqual(replies, ['a echoes m0', 'a echoes m1', 'a echoes m2']);
});

test("the gateway's own errors reach gRPC clients as gRPC statuses: no instance is UNAVAILABLE, a timeout DEADLINE_EXCEEDED, auth UNAUTHENTICATED, no route UNIMPLEMENTED", LIMIT, async (t) => {
  const slow = await startGrpcInstance(t, 'slow');
  slow.hang = true;
  const { url } = await startGateway(t, {
    services: { empty: { protocol: 'h2c' }, slow: { protocol: 'h2c', instances: [{ url: slow.url }], timeout: 300 } },
    routes: [
      { path: '/meshtest.Echo/Unary', headers: { 'x-target': 'empty' }, service: 'empty' },
      { path: '/meshtest.Echo/Unary', headers: { 'x-target': 'locked' }, service: 'slow', auth: { apiKeys: { keys: ['grpc-key-1234'] } } },
      { path: '/meshtest.Echo/Unary', service: 'slow' },
    ],
    listen: { http2: true },
  });
  const c = client(t, url);
  const target = (name: string): grpc.Metadata => {
    const md = new grpc.Metadata();
    md.set('x-target', name);
    return md;
  };
  await assert.rejects(unary(c, { text: 'x' }, target('empty')), (err: grpc.ServiceError) => {
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    assert.match(err.details, /MESH_ERR_NO_HEALTHY_INSTANCE/);
    return true;
  });
  await assert.rejects(unary(c, { text: 'x' }), (err: grpc.ServiceError) => err.code === grpc.status.DEADLINE_EXCEEDED && /MESH_ERR_UPSTREAM_TIMEOUT/.test(err.details));
  await assert.rejects(unary(c, { text: 'x' }, target('locked')), (err: grpc.ServiceError) => err.code === grpc.status.UNAUTHENTICATED);
  const other = new (grpc.makeGenericClientConstructor({}, 'x'))(new URL(url).host, grpc.credentials.createInsecure());
  t.after(() => other.close());
  const unknown = await new Promise<grpc.ServiceError>((resolve) =>
    other.makeUnaryRequest('/other.Service/Call', (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), (err) => resolve(err!)),
  );
  assert.equal(unknown.code, grpc.status.UNIMPLEMENTED);
  // A caller's deadline shorter than the route's is the one that counts, at the gateway too.
  const started = performance.now();
  await assert.rejects(unary(c, { text: 'x' }, new grpc.Metadata(), { deadline: Date.now() + 100 }), (err: grpc.ServiceError) => err.code === grpc.status.DEADLINE_EXCEEDED);
  assert.ok(performance.now() - started < 300, 'the call ended at its own deadline');
});

test('UNAVAILABLE from an instance is retried on another and counts as a failure: outlier detection ejects it; metrics carry grpc_code', LIMIT, async (t) => {
  const [good, bad] = [await startGrpcInstance(t, 'good'), await startGrpcInstance(t, 'bad')];
  bad.fail = grpc.status.UNAVAILABLE;
  const { url, adminUrl } = await startGateway(t, {
    admin: {},
    metrics: {},
    services: {
      echo: {
        protocol: 'h2c',
        balancer: 'round-robin',
        instances: [{ url: good.url }, { url: bad.url }],
        retries: { attempts: 1 },
        outlierDetection: { consecutive5xx: 2, interval: '10s', baseEjectionTime: '30s', maxEjectionPercent: 50 },
      },
    },
    routes: [{ name: 'echo', prefix: '/meshtest.Echo', service: 'echo' }],
    listen: { http2: true },
  });
  const c = client(t, url);
  for (let i = 0; i < 6; i++) assert.deepEqual(await unary(c, { text: `call ${i}`, n: i }), { text: `good: call ${i}`, n: i });
  // The bad instance answered UNAVAILABLE twice (each time retried on the good one), then was ejected.
  assert.equal(bad.calls, 2);
  const services = (await send(`${adminUrl}/services/echo`, { headers: {} })).json();
  const ejected = services.instances.find((i: { url: string }) => i.url === bad.url);
  assert.ok(Date.parse(ejected.ejectedUntil) > Date.now(), JSON.stringify(ejected));
  const metrics = (await send(`${adminUrl}/metrics`)).body;
  assert.match(metrics, /meshgate_grpc_requests_total\{route="echo",service="echo",grpc_code="0"\} 6/);
  assert.match(metrics, /meshgate_upstream_requests_total\{service="echo",instance="[^"]+",outcome="5xx"\} 2/);
});

test('the instance gets the time the call has left as grpc-timeout: the caller\'s deadline less what an earlier attempt took, capped by the route\'s timeout', LIMIT, async (t) => {
  const [bad, good] = [await startGrpcInstance(t, 'bad'), await startGrpcInstance(t, 'good')];
  bad.fail = grpc.status.UNAVAILABLE;
  bad.delay = 500;
  const { url } = await startGateway(t, {
    services: {
      echo: { protocol: 'h2c', balancer: 'round-robin', instances: [{ url: bad.url }, { url: good.url }], retries: { attempts: 1 } },
      capped: { protocol: 'h2c', instances: [{ url: good.url }], timeout: 2000 },
    },
    routes: [
      { path: '/meshtest.Echo/Unary', headers: { 'x-target': 'capped' }, service: 'capped' },
      { prefix: '/meshtest.Echo', service: 'echo' },
    ],
    listen: { http2: true },
  });
  const c = client(t, url);
  // Round robin: within two calls one goes to the bad instance first, and is retried on the good one.
  for (let call = 0; bad.calls === 0; call++) {
    assert.ok(call < 2, 'round robin sent a call to the bad instance');
    await unary(c, { text: 'x' }, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
  }
  const retried = good.deadlinesLeft.at(-1)!;
  assert.ok(retried <= 9500 && retried > 5000, `the retry had ${retried} ms left of 10 s, 500 ms of which the first attempt took`);

  const capped = new grpc.Metadata();
  capped.set('x-target', 'capped');
  await unary(c, { text: 'x' }, capped, { deadline: Date.now() + 20_000 });
  const left = good.deadlinesLeft.at(-1)!;
  assert.ok(left <= 2000 && left > 500, `the route's 2 s cap the caller's 20 s: ${left} ms left`);
  // A caller without a deadline: none is made up.
  await unary(c, { text: 'x' }, capped);
  assert.equal(good.deadlinesLeft.at(-1), Infinity);
});

test('an instance\'s trailers-only INVALID_ARGUMENT reaches the client with its details; the caller\'s problem is not retried nor counted against the instance', LIMIT, async (t) => {
  const instance = await startGrpcInstance(t, 'a');
  instance.fail = grpc.status.INVALID_ARGUMENT;
  const { url, gateway } = await startGateway(t, {
    services: { echo: { protocol: 'h2c', instances: [{ url: instance.url }], retries: { attempts: 2 }, outlierDetection: { consecutive5xx: 1 } } },
    routes: [{ prefix: '/meshtest.Echo', service: 'echo' }],
    listen: { http2: true },
  });
  const c = client(t, url);
  for (let i = 0; i < 3; i++) {
    await assert.rejects(unary(c, { text: 'x' }), (err: grpc.ServiceError) => err.code === grpc.status.INVALID_ARGUMENT && err.details === 'a fails');
  }
  assert.equal(instance.calls, 3, 'not retried');
  const inst = [...gateway.registry.getService('echo')!.instances.values()][0]!;
  assert.equal(inst.ejectedUntil, 0);
});

test('gRPC health checks (grpc.health.v1.Health/Check) take a NOT_SERVING instance out and bring it back when SERVING', LIMIT, async (t) => {
  const [a, b] = [await startGrpcInstance(t, 'a'), await startGrpcInstance(t, 'b')];
  const { url, gateway } = await startGateway(t, {
    services: {
      echo: { protocol: 'h2c', instances: [{ url: a.url }, { url: b.url }], healthCheck: { grpc: { service: 'meshtest.Echo' }, interval: '100ms', unhealthyThreshold: 1 } },
    },
    routes: [{ prefix: '/meshtest.Echo', service: 'echo' }],
    listen: { http2: true },
  });
  const instanceOf = (inst: GrpcInstance) => [...gateway.registry.getService('echo')!.instances.values()].find((i) => i.url === inst.url)!;
  await waitFor(() => a.healthChecks.length > 0 && b.healthChecks.length > 0, 5000, 'both instances probed');
  assert.equal(a.healthChecks[0], 'meshtest.Echo', 'the probe names the configured service');
  b.serving.set('meshtest.Echo', 'NOT_SERVING');
  await waitFor(() => instanceOf(b).health === 'unhealthy', 5000, 'b taken out');
  const c = client(t, url);
  for (let i = 0; i < 4; i++) assert.equal((await unary(c, { text: 'x' })).text, 'a: x');
  b.serving.set('meshtest.Echo', 'SERVING');
  await waitFor(() => instanceOf(b).health === 'healthy', 5000, 'b back');
  // A service the instance does not know is a failed probe too.
  a.serving.delete('meshtest.Echo');
  await waitFor(() => instanceOf(a).health === 'unhealthy', 5000, 'a out: service unknown');
  assert.equal((await unary(c, { text: 'y' })).text, 'b: y');
});
