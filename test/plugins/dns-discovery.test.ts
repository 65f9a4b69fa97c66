/**
 * DNS discovery against a real DNS server (a tiny UDP one run by the test, see ../dns-server.ts)
 * and real upstreams on loopback addresses, plus the system resolver path (getaddrinfo).
 */
import assert from 'node:assert/strict';
import { promises as dns } from 'node:dns';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { describe, test, type TestContext } from 'node:test';
import pino from 'pino';
import type { Gateway, Logger } from '../../lib/index.js';
import { startDnsServer } from '../dns-server.js';
import { send, startGateway, trackProcessErrors, waitFor } from '../helpers.js';

/** An upstream on `host:port` that answers `{ name }` and counts what it saw. */
interface NamedUpstream {
  name: string;
  seen: string[];
}

async function listenOn(t: TestContext, host: string, port: number, name: string): Promise<NamedUpstream & { server: Server }> {
  const seen: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    seen.push(req.url!);
    const body = JSON.stringify({ name });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { name, seen, server };
}

/**
 * One upstream per loopback address, all on the same port (what a DNS name with several A
 * records and one configured port looks like). Linux routes all of 127.0.0.0/8 to lo.
 */
async function upstreamsOnOnePort(t: TestContext, hosts: string[]): Promise<{ port: number; upstreams: Map<string, NamedUpstream> }> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const upstreams = new Map<string, NamedUpstream & { server: Server }>();
    try {
      const first = await listenOn(t, hosts[0]!, 0, hosts[0]!);
      upstreams.set(hosts[0]!, first);
      const port = (first.server.address() as AddressInfo).port;
      for (const host of hosts.slice(1)) upstreams.set(host, await listenOn(t, host, port, host));
      return { port, upstreams };
    } catch (err) {
      // The port was free on the first address but not on another one: close and try another.
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      for (const u of upstreams.values()) u.server.close();
    }
  }
  throw new Error('no port free on every loopback address');
}

/** A pino logger whose lines the test can read. */
function captureLog(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const raw: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => void raw.push(line) });
  return { logger, lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

const instanceIds = (gateway: Gateway): string[] => [...gateway.registry.getService('api')!.instances.keys()].sort();

/** Sends `n` requests through the gateway; returns the upstream names that answered. */
async function names(url: string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const res = await send(`${url}/api/n${i}`);
    assert.equal(res.status, 200, res.body);
    out.push(res.json().name as string);
  }
  return out;
}

describe('dns discovery through a configured DNS server', () => {
  test('a name with two A records becomes two instances on the configured port, and requests reach both', async (t) => {
    const { port, upstreams } = await upstreamsOnOnePort(t, ['127.0.0.1', '127.0.0.2']);
    const server = await startDnsServer(t, { 'api.svc.test': { a: ['127.0.0.1', '127.0.0.2'] } });
    const { gateway, url } = await startGateway(t, {
      discovery: { dns: { servers: [server.address] } },
      services: { api: { dns: { name: 'api.svc.test', port, refresh: '5s' } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });

    // The first answer is awaited at boot: no waiting here.
    assert.deepEqual(instanceIds(gateway), [`127.0.0.1:${port}`, `127.0.0.2:${port}`]);
    for (const inst of gateway.registry.getService('api')!.instances.values()) {
      assert.equal(inst.source, 'dns');
      assert.equal(inst.url, `http://${inst.id}`);
    }
    assert.ok(server.queries.some((q) => q.name === 'api.svc.test' && q.type === 'A'), 'the gateway asked our server');
    assert.deepEqual(new Set(await names(url, 4)), new Set(['127.0.0.1', '127.0.0.2']));
    assert.equal(upstreams.get('127.0.0.1')!.seen.length, 2);
    assert.equal(upstreams.get('127.0.0.2')!.seen.length, 2);
  });

  test('a changed answer is applied on refresh: a vanished address leaves, a new one joins, the one that stayed keeps its state', async (t) => {
    const { port, upstreams } = await upstreamsOnOnePort(t, ['127.0.0.1', '127.0.0.2', '127.0.0.3']);
    const server = await startDnsServer(t, { 'api.svc.test': { a: ['127.0.0.1', '127.0.0.2'] } });
    const { gateway, url } = await startGateway(t, {
      discovery: { dns: { servers: [server.address] } },
      services: { api: { dns: { name: 'api.svc.test', port, refresh: '200ms' } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    const stayed = gateway.registry.getInstance('api', `127.0.0.2:${port}`);
    assert.ok(stayed);
    gateway.registry.setHealth(stayed, 'unhealthy', 'test');
    const removed: string[] = [];
    gateway.on('instance:removed', (inst) => removed.push(inst.id));

    server.zone.set('api.svc.test', { a: ['127.0.0.2', '127.0.0.3'] });
    await waitFor(() => instanceIds(gateway).join() === [`127.0.0.2:${port}`, `127.0.0.3:${port}`].join(), 1000, 'the refresh (200 ms) to apply the new answer');
    assert.deepEqual(removed, [`127.0.0.1:${port}`]);
    const after = gateway.registry.getInstance('api', `127.0.0.2:${port}`);
    assert.equal(after, stayed, 'the instance that stayed is the same object');
    assert.equal(after!.health, 'unhealthy', 'and keeps its health');

    // .2 is unhealthy and .1 is gone: everything goes to the newcomer.
    const before = upstreams.get('127.0.0.1')!.seen.length;
    assert.deepEqual(await names(url, 3), ['127.0.0.3', '127.0.0.3', '127.0.0.3']);
    assert.equal(upstreams.get('127.0.0.1')!.seen.length, before);

    // Another refresh with the same answer changes nothing.
    const queries = server.queries.length;
    await waitFor(() => server.queries.length >= queries + 4, 1000, 'two more refreshes');
    assert.equal(gateway.registry.getInstance('api', `127.0.0.2:${port}`), stayed);
    assert.deepEqual(removed, [`127.0.0.1:${port}`]);
  });

  test('SRV records give each instance its port and weight', async (t) => {
    const heavy = await listenOn(t, '127.0.0.1', 0, 'heavy');
    const light = await listenOn(t, '127.0.0.1', 0, 'light');
    const heavyPort = (heavy.server.address() as AddressInfo).port;
    const lightPort = (light.server.address() as AddressInfo).port;
    // The target must be a name the proxy can connect to through getaddrinfo; an IP-literal
    // name keeps the test independent of /etc/hosts.
    const server = await startDnsServer(t, {
      '_http._tcp.api.svc.test': {
        srv: [
          { priority: 10, weight: 5, port: heavyPort, target: '127.0.0.1' },
          { priority: 10, weight: 1, port: lightPort, target: '127.0.0.1' },
        ],
      },
    });
    const { gateway, url } = await startGateway(t, {
      discovery: { dns: { servers: [server.address] } },
      // The configured port must not win over the records'.
      services: { api: { dns: { name: '_http._tcp.api.svc.test', srv: true, port: 1, refresh: '5s' } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assert.deepEqual(server.queries.map((q) => q.type), ['SRV']);
    const heavyInst = gateway.registry.getInstance('api', `127.0.0.1:${heavyPort}`);
    const lightInst = gateway.registry.getInstance('api', `127.0.0.1:${lightPort}`);
    assert.ok(heavyInst && lightInst, `instances: ${instanceIds(gateway).join(', ')}`);
    assert.equal(instanceIds(gateway).length, 2);
    assert.equal(heavyInst.url, `http://127.0.0.1:${heavyPort}`);
    assert.equal(heavyInst.weight, 5);
    assert.equal(lightInst.weight, 1);

    // Smooth weighted round-robin: exactly 5 of every 6 requests go to the weight-5 instance.
    const answered = await names(url, 12);
    assert.equal(answered.filter((n) => n === 'heavy').length, 10);
    assert.equal(answered.filter((n) => n === 'light').length, 2);
  });

  test('an SRV answer of "." (RFC 2782: service not available) neither throws out of the refresh timer nor stops refreshing', async (t) => {
    const errors = trackProcessErrors(t);
    const first = await listenOn(t, '127.0.0.1', 0, 'first');
    const second = await listenOn(t, '127.0.0.1', 0, 'second');
    const firstPort = (first.server.address() as AddressInfo).port;
    const secondPort = (second.server.address() as AddressInfo).port;
    const name = '_http._tcp.api.svc.test';
    const server = await startDnsServer(t, { [name]: { srv: [{ priority: 0, weight: 1, port: firstPort, target: '127.0.0.1' }] } });
    const { gateway, url } = await startGateway(t, {
      discovery: { dns: { servers: [server.address] } },
      services: { api: { dns: { name, srv: true, refresh: '200ms' } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assert.deepEqual(instanceIds(gateway), [`127.0.0.1:${firstPort}`]);

    server.zone.set(name, { srv: [{ priority: 0, weight: 0, port: 0, target: '.' }] });
    const asked = server.queries.length;
    await waitFor(() => server.queries.length >= asked + 2, 1000, 'two refreshes answered with "."');
    // Then a real answer again: the refresh loop must still be running to pick it up.
    server.zone.set(name, { srv: [{ priority: 0, weight: 1, port: secondPort, target: '127.0.0.1' }] });
    await waitFor(() => instanceIds(gateway).join() === `127.0.0.1:${secondPort}`, 1000, 'the refresh after the "." answer to apply the new record');
    assert.deepEqual(await names(url, 2), ['second', 'second']);
    assert.deepEqual(errors, [], 'no unhandled rejection from the refresh timer');
  });

  test('a failed lookup keeps the last instances: SERVFAIL, then a server that stopped answering', async (t) => {
    const { port } = await upstreamsOnOnePort(t, ['127.0.0.1', '127.0.0.2']);
    const server = await startDnsServer(t, { 'api.svc.test': { a: ['127.0.0.1', '127.0.0.2'] } });
    const { logger, lines } = captureLog();
    const { gateway, url } = await startGateway(
      t,
      {
        discovery: { dns: { servers: [server.address] } },
        services: { api: { dns: { name: 'api.svc.test', port, refresh: '200ms' } } },
        routes: [{ prefix: '/api', service: 'api' }],
      },
      { logger },
    );
    const ids = instanceIds(gateway);
    assert.deepEqual(ids, [`127.0.0.1:${port}`, `127.0.0.2:${port}`]);
    const objects = ids.map((id) => gateway.registry.getInstance('api', id));
    const failures = (): number => lines().filter((l) => l.msg === 'DNS lookup failed; keeping the last answer').length;

    server.mode = 'servfail';
    const asked = server.queries.length;
    await waitFor(() => failures() >= 2 && server.queries.length >= asked + 4, 2000, 'two refreshes answered with SERVFAIL');
    assert.deepEqual(instanceIds(gateway), ids);
    assert.deepEqual(new Set(await names(url, 4)), new Set(['127.0.0.1', '127.0.0.2']));

    // The server goes away: lookups fail (connection refused) and the last answer still stands.
    const failedSoFar = failures();
    await server.close();
    await waitFor(() => failures() >= failedSoFar + 2, 2000, 'two refreshes without a DNS server');
    assert.deepEqual(instanceIds(gateway), ids);
    ids.forEach((id, i) => assert.equal(gateway.registry.getInstance('api', id), objects[i]));
    assert.deepEqual(new Set(await names(url, 4)), new Set(['127.0.0.1', '127.0.0.2']));
  });
});

describe('dns discovery through the system resolver', () => {
  test('without servers, `localhost` resolves through getaddrinfo to loopback instances with the configured port', async (t) => {
    const upstream = await listenOn(t, '127.0.0.1', 0, 'v4');
    const port = (upstream.server.address() as AddressInfo).port;
    const expected = (await dns.lookup('localhost', { all: true })).map((a) => (a.family === 6 ? `[${a.address}]:${port}` : `${a.address}:${port}`));
    // If getaddrinfo also answers ::1, the same port there must reach an upstream too.
    if (expected.some((id) => id.startsWith('['))) await listenOn(t, '::1', port, 'v6');

    const { gateway, url } = await startGateway(t, {
      services: { api: { dns: { name: 'localhost', port } } },
      routes: [{ prefix: '/api', service: 'api' }],
    });
    assert.deepEqual(instanceIds(gateway), [...new Set(expected)].sort());
    assert.ok(instanceIds(gateway).some((id) => id === `127.0.0.1:${port}` || id === `[::1]:${port}`));
    const res = await send(`${url}/api/hello`);
    assert.equal(res.status, 200, res.body);
    assert.ok(['v4', 'v6'].includes(res.json().name as string));
  });
});
