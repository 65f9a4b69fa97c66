import assert from 'node:assert/strict';
import { Agent, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import type { Gateway, GatewayConfigInput, Instance } from '../lib/index.js';
import { echo, send, sleep, startGateway, startUpstream, waitFor, type Upstream } from './helpers.js';

/** Fails a test that hangs (a regression to catch, not a speed limit). */
const LIMIT = { timeout: 25_000 };

/** An upstream that answers `/health` 200 and echoes its name on every other path. */
async function serviceInstance(t: TestContext, name: string): Promise<Upstream & { traffic(): number }> {
  const serve = echo(name);
  const upstream = await startUpstream(t, (req, res) => {
    if (req.url === '/health') {
      res.writeHead(200);
      res.end('ok');
      return;
    }
    serve(req, res);
  });
  return Object.assign(upstream, { traffic: () => upstream.seen.filter((s) => s.url !== '/health').length });
}

function instanceAt(gateway: Gateway, url: string): Instance {
  const inst = [...gateway.registry.getService('api')!.instances.values()].find((i) => i.url === url);
  assert.ok(inst, `no instance with url ${url}`);
  return inst;
}

/** `request:retry` events as `{ attempt, reason }`. */
function recordRetries(gateway: Gateway): { attempt: number; reason: string }[] {
  const events: { attempt: number; reason: string }[] = [];
  gateway.on('request:retry', (_service, info) => events.push(info));
  return events;
}

/** One POST with `body` over a keep-alive agent; never rejects (status 0 on a failure). */
function post(url: string, body: string, agent: Agent): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent, method: 'POST', headers: { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      res.on('error', () => resolve({ status: 0, body: 'response cut' }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: 0, body: err.code ?? err.message }));
    req.end(body);
  });
}

/** One GET over a keep-alive agent; never rejects: a failure resolves with status 0 and the error. */
function get(url: string, agent: Agent): Promise<{ status: number; body: string; complete: boolean; error?: string }> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent }, (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', () => {
        // a cut response shows as complete: false on 'close'
      });
      res.on('close', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString(), complete: res.complete }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: 0, body: '', complete: false, error: err.code ?? err.message }));
    req.end();
  });
}

describe('failover', () => {
  /** The scenario of issue 16: five instances, checks every 300 ms, a breaker, two attempts, the default retry budget. */
  const resilient = (urls: string[]): GatewayConfigInput => ({
    services: {
      api: {
        instances: urls.map((url) => ({ url })),
        retries: { attempts: 2 },
        circuitBreaker: { errorThresholdPercentage: 50, volumeThreshold: 5, resetTimeout: 1500 },
        healthCheck: { path: '/health', interval: 300, timeout: 200, unhealthyThreshold: 2, healthyThreshold: 1 },
        timeout: 5000,
      },
    },
    routes: [{ prefix: '/api', service: 'api' }],
  });

  for (const CLIENTS of [16, 64]) {
    test(`one of five instances killed under ${CLIENTS} concurrent GET clients: every answer is a 200`, LIMIT, async (t) => {
      const RUN_MS = 2000;
      const ups = await Promise.all(['a', 'b', 'c', 'd', 'victim'].map((name) => serviceInstance(t, name)));
      const victim = ups[4]!;
      const { gateway, url } = await startGateway(t, resilient(ups.map((u) => u.url)));
      const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
      t.after(() => agent.destroy());

      const failures: string[] = [];
      let ok = 0;
      let killedAt = Infinity;
      let afterKill = 0;
      const started = Date.now();
      const client = async (c: number): Promise<void> => {
        for (let i = 0; Date.now() - started < RUN_MS; i++) {
          const res = await get(`${url}/api/c${c}/${i}`, agent);
          if (res.status !== 200 || !res.complete) failures.push(`client ${c} request ${i}: ${res.status} ${res.error ?? res.body}`);
          else {
            ok++;
            if (Date.now() > killedAt) afterKill++;
          }
        }
      };
      const load = Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));

      await sleep(RUN_MS / 3);
      assert.ok(victim.traffic() > 0, 'the victim took its share before it died');
      // Gone without a goodbye: its open sockets are destroyed and its port closes.
      killedAt = Date.now();
      await victim.close();
      await load;

      assert.deepEqual(failures.slice(0, 10), [], `${failures.length} failed GETs out of ${failures.length + ok}`);
      assert.ok(afterKill > 0, 'requests kept flowing after the kill');
      for (const up of ups.slice(0, 4)) assert.ok(up.traffic() > 0);
      // The dead instance is out of the rotation: marked unhealthy by its checks (or its circuit opened).
      const inst = instanceAt(gateway, victim.url);
      await waitFor(() => inst.health === 'unhealthy', 2000, 'the killed instance to be marked unhealthy');
    });

    test(`POSTs to a dead instance the gateway still lists, ${CLIENTS} concurrent clients: each goes to another instance, whatever the budget`, LIMIT, async (t) => {
      const ups = await Promise.all(['a', 'b', 'c', 'd', 'victim'].map((name) => serviceInstance(t, name)));
      const victim = ups[4]!;
      const { gateway, url } = await startGateway(t, resilient(ups.map((u) => u.url)));
      const retried = recordRetries(gateway);
      // Dead before anyone noticed: the next health check is up to 300 ms away, so for now the
      // victim is still a candidate, and every POST sent its way meets a refused connection.
      await victim.close();
      const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
      t.after(() => agent.destroy());
      const failures: string[] = [];
      const bodies = new Set<string>();
      await Promise.all(
        Array.from({ length: CLIENTS }, async (_, c) => {
          for (let i = 0; i < 5; i++) {
            const body = `order ${c}-${i}`;
            const res = await post(`${url}/api/orders`, body, agent);
            if (res.status !== 200) failures.push(`client ${c} request ${i}: ${res.status} ${res.body}`);
            else bodies.add(JSON.parse(res.body).body);
          }
        }),
      );
      assert.deepEqual(failures.slice(0, 10), [], `${failures.length} failed POSTs out of ${CLIENTS * 5}`);
      assert.equal(bodies.size, CLIENTS * 5, 'each POST reached an instance with its body');
      assert.ok(retried.some((r) => r.reason === 'MESH_ERR_UPSTREAM_CONNECT'), `POSTs met the dead instance and went elsewhere (retries: ${JSON.stringify(retried.slice(0, 3))})`);
      assert.equal(victim.traffic(), 0);
    });
  }

  test('keep-alive race: an upstream that closes idle sockets after 50 ms, hit every ~50 ms, gives no 502', LIMIT, async (t) => {
    // Like nginx: `Connection: keep-alive` without a Keep-Alive timeout hint, and idle sockets
    // closed after 50 ms. (Node's own server.keepAliveTimeout waits an extra second before it
    // closes and advertises its timeout, which makes the pool stop reusing the socket.) A request
    // sent as the upstream closes the socket meets a reset before any answer; the core sends it
    // again, once, on a fresh connection. No retries plugin here: the core alone must cope.
    const IDLE = 50;
    const idleTimers = new WeakMap<Socket, NodeJS.Timeout>();
    let connections = 0;
    const upstream = await startUpstream(t, (req, res: ServerResponse) => {
      const socket = req.socket;
      clearTimeout(idleTimers.get(socket));
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { connection: 'keep-alive', 'content-type': 'text/plain', 'content-length': '2' });
        res.end('ok');
      });
      res.on('finish', () => idleTimers.set(socket, setTimeout(() => socket.destroy(), IDLE)));
    });
    upstream.server.keepAliveTimeout = IDLE;
    upstream.server.on('connection', () => connections++);
    const { url } = await startGateway(t, {
      services: { api: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'api' }],
    });

    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      statuses.push((await send(`${url}/api/ka/${i}`)).status);
      // Spaced around the idle timeout so some requests meet a socket being closed.
      await sleep(IDLE - 6 + (i % 7));
    }
    assert.deepEqual(
      statuses.filter((s) => s !== 200),
      [],
    );
    assert.equal(upstream.seen.length, 60, 'each request reached the upstream once');
    assert.ok(connections > 1, 'the upstream closed idle sockets during the run');
  });
});

describe('panic threshold', () => {
  test('with fewer than panicThreshold % of instances healthy, traffic goes over all of them; with none, 503', LIMIT, async (t) => {
    const ups = await Promise.all(['a', 'b', 'c', 'd'].map((name) => serviceInstance(t, name)));
    const { gateway, url } = await startGateway(t, {
      services: { api: { instances: ups.map((u) => ({ url: u.url })) } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const service = gateway.registry.getService('api')!;
    const [a, b, c, d] = ups.map((u) => instanceAt(gateway, u.url)) as [Instance, Instance, Instance, Instance];
    const trafficOf = (): number[] => ups.map((u) => u.traffic());
    const sendMany = async (n: number): Promise<number[]> => {
      const statuses: number[] = [];
      for (let i = 0; i < n; i++) statuses.push((await send(`${url}/api/p/${i}`)).status);
      return statuses;
    };

    // 3 of 4 healthy (75%): the unhealthy one is skipped.
    gateway.registry.setHealth(a, 'unhealthy', 'test');
    let before = trafficOf();
    assert.ok((await sendMany(30)).every((s) => s === 200));
    let got = trafficOf().map((n, i) => n - before[i]!);
    assert.equal(got[0], 0, 'the unhealthy instance is skipped above the threshold');
    assert.equal(service.panic, false);

    // 1 of 4 healthy (25% < 50%): panic, every instance is a candidate.
    gateway.registry.setHealth(b, 'unhealthy', 'test');
    gateway.registry.setHealth(c, 'unhealthy', 'test');
    before = trafficOf();
    assert.ok((await sendMany(40)).every((s) => s === 200));
    got = trafficOf().map((n, i) => n - before[i]!);
    assert.ok(
      got.every((n) => n > 0),
      `in panic every instance takes traffic, not just the healthy one: ${got.join(',')}`,
    );
    assert.equal(service.panic, true);

    // Draining instances stay out, even in panic.
    gateway.registry.setHealth(d, 'draining', 'test');
    before = trafficOf();
    assert.ok((await sendMany(12)).every((s) => s === 200));
    got = trafficOf().map((n, i) => n - before[i]!);
    assert.equal(got[3], 0, 'a draining instance takes no traffic in panic');

    // No instance at all: 503.
    for (const inst of [a, b, c, d]) gateway.registry.removeInstance('api', inst.id);
    const res = await send(`${url}/api/none`);
    assert.equal(res.status, 503);
    assert.equal(res.json().error, 'MESH_ERR_NO_HEALTHY_INSTANCE');
  });
});
