/**
 * Properties, checked with fast-check over generated inputs:
 * (a) path normalization: whatever the mix of dot segments, escapes and slashes, a target is
 *     refused with MESH_ERR_BAD_PATH or becomes a path without dot segments that cannot leave
 *     its route's prefix; a sample goes end to end through a real gateway to a real upstream.
 * (b) hop-by-hop hygiene: request and response header filtering never passes a hop-by-hop or
 *     Connection-named header and never drops an end-to-end one.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { RouteConfig } from '../lib/config/schema.js';
import { MeshError } from '../lib/errors.js';
import { HOP_BY_HOP, upstreamRequestHeaders } from '../lib/http/headers.js';
import { normalizeTarget } from '../lib/http/path.js';
import { responseHeaders } from '../lib/upstream/exchange.js';
import { Router, upstreamPath } from '../lib/core/router.js';
import { sendPath, startGateway, startUpstream } from './helpers.js';

/** Reproducible runs: set FC_SEED to replay a failure fast-check reported. */
const SEED = process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED);
const params = (numRuns: number): fc.Parameters<unknown> => ({ numRuns, ...(SEED === undefined ? {} : { seed: SEED }) });

// (a) paths -------------------------------------------------------------------------------

/** Path segments an attacker would try, plus ordinary ones. */
const segment = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('..', '.', '%2e', '%2E', '%2e%2e', '%2E%2e', '%2e%2E', '.%2e', '%2e.', '..%2e', '%2f', '%2F', '%5c', '%5C', '', '~', '%7e', '%7E', 'api', 'admin', '%41', '%2d', '%25', '%252e') },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9\-._~]{1,6}$/) },
  { weight: 1, arbitrary: fc.stringMatching(/^(?:%[0-9A-Fa-f]{2}|[a-z.]){1,4}$/) },
);

/** A request target: `/` + segments, often under `/api`, sometimes with a query full of dots. */
const target = fc
  .tuple(fc.boolean(), fc.array(segment, { maxLength: 8 }), fc.option(fc.constantFrom('?q=../../admin', '?a=%2e%2e/x', '?', '?x=1&y=/..'), { nil: undefined }))
  .map(([underApi, segments, query]) => `/${underApi ? ['api', ...segments].join('/') : segments.join('/')}${query ?? ''}`);

const API_ROUTE: RouteConfig = { prefix: '/api', service: 'a', stripPrefix: true };

const hasDotSegment = (path: string): boolean => path.split('/').some((s) => s === '.' || s === '..');

/** Escapes of unreserved characters (`%2e`, `%7E`, `%41`, ...) or lower-case escapes left in a normalized path. */
const unnormalizedEscape = (path: string): string | undefined =>
  [...path.matchAll(/%([0-9A-Fa-f]{2})/g)].find((m) => /[A-Za-z0-9\-._~]/.test(String.fromCharCode(parseInt(m[1]!, 16))) || m[1] !== m[1]!.toUpperCase())?.[0];

/** What the gateway must do with `raw`: refuse it, or forward `upstream` (null: no route). */
function expected(raw: string, router: Router): { refused: true } | { refused: false; path: string; upstream: string | null } {
  let normalized;
  try {
    normalized = normalizeTarget(raw);
  } catch (err) {
    assert.ok(err instanceof MeshError, `${raw}: threw ${String(err)}`);
    assert.equal(err.code, 'MESH_ERR_BAD_PATH', `${raw}: ${err.code}`);
    assert.equal(err.status, 400);
    return { refused: true };
  }
  const route = router.match(normalized.path);
  return { refused: false, path: normalized.path, upstream: route ? upstreamPath(route, normalized.path) + normalized.query : null };
}

describe('property: path normalization', () => {
  test('a target is refused (MESH_ERR_BAD_PATH) or normalized to a path without dot segments that stays in its prefix', () => {
    const router = new Router([API_ROUTE]);
    fc.assert(
      fc.property(target, (raw) => {
        const result = expected(raw, router);
        if (result.refused) return;
        const { path, upstream } = result;
        assert.ok(path.startsWith('/'), `${raw} -> ${path}`);
        assert.ok(!hasDotSegment(path), `${raw} -> ${path} has a dot segment`);
        assert.equal(unnormalizedEscape(path), undefined, `${raw} -> ${path} keeps an escape that should be decoded or upper-cased`);
        // Normalizing twice changes nothing: what the router matched is what the upstream gets.
        assert.equal(normalizeTarget(path).path, path, `${raw}: not idempotent`);
        if (upstream === null) {
          assert.ok(path !== '/api' && !path.startsWith('/api/'), `${raw} -> ${path} should have matched /api`);
          return;
        }
        assert.ok(path === '/api' || path.startsWith('/api/'), `${raw} -> ${path} matched /api from outside it`);
        const upstreamOnly = upstream.split('?')[0]!;
        assert.ok(upstreamOnly.startsWith('/'), `${raw} -> upstream ${upstream}`);
        assert.ok(!hasDotSegment(upstreamOnly), `${raw} -> upstream ${upstream} has a dot segment`);
      }),
      params(5000),
    );
  });

  test('end to end: the upstream behind /api (stripPrefix) sees exactly the normalized, prefix-stripped path, or nothing', { timeout: 30_000 }, async (t) => {
    const upstream = await startUpstream(t);
    const { url } = await startGateway(t, {
      services: { a: { instances: [{ url: upstream.url }] } },
      routes: [{ prefix: '/api', service: 'a', stripPrefix: true }],
    });
    const router = new Router([API_ROUTE]);
    await fc.assert(
      fc.asyncProperty(target, async (raw) => {
        const before = upstream.seen.length;
        const res = await sendPath(url, raw);
        const seen = upstream.seen.slice(before).map((s) => s.url);
        const result = expected(raw, router);
        if (result.refused) {
          assert.equal(res.status, 400, `${raw}: ${res.status} ${res.body}`);
          assert.deepEqual(seen, [], `${raw}: refused, yet the upstream saw ${seen}`);
        } else if (result.upstream === null) {
          assert.equal(res.status, 404, `${raw}: ${res.status} ${res.body}`);
          assert.deepEqual(seen, [], `${raw}: no route, yet the upstream saw ${seen}`);
        } else {
          assert.equal(res.status, 200, `${raw}: ${res.status} ${res.body}`);
          assert.deepEqual(seen, [result.upstream], raw);
          const path = seen[0]!.split('?')[0]!;
          assert.ok(path.startsWith('/') && !hasDotSegment(path), `${raw}: the upstream saw ${seen[0]}`);
        }
      }),
      params(60),
    );
  });
});

// (b) hop-by-hop headers ------------------------------------------------------------------

/** Hop-by-hop names other than Connection itself, in any case. */
const hopName = fc.mixedCase(fc.constantFrom(...[...HOP_BY_HOP].filter((n) => n !== 'connection')));
/** End-to-end names that are neither hop-by-hop nor owned by the gateway. */
// Host is not among them: a request's Host is checked (one, valid) before anything is forwarded, in test/hardening-requests.test.ts.
const plainName = fc.oneof(fc.stringMatching(/^x-[a-z]{1,8}$/), fc.constantFrom('content-type', 'accept', 'authorization', 'cache-control', 'cookie', 'user-agent', 'etag', 'content-length'));
const headerValue = fc.stringMatching(/^[!-~]([ -~]{0,18}[!-~])?$/);

interface HeaderSet {
  /** The flat raw list, as Node or undici hands it over. */
  raw: string[];
  /** Lower-cased names the Connection headers list. */
  named: Set<string>;
}

/** A header set mixing hop-by-hop headers, Connection headers naming some others, and normal headers. */
const headerSet: fc.Arbitrary<HeaderSet> = fc
  .record({
    hop: fc.array(fc.tuple(hopName, headerValue), { maxLength: 4 }),
    plain: fc.array(fc.tuple(plainName, headerValue), { maxLength: 8 }),
    // Extra names only the Connection header mentions (a custom hop-by-hop header).
    custom: fc.array(fc.tuple(fc.stringMatching(/^x-hop-[a-z]{1,5}$/), headerValue), { maxLength: 3 }),
    // Which plain headers Connection also names (as if the client declared them hop-by-hop).
    nameSome: fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }),
    connectionCount: fc.integer({ min: 0, max: 2 }),
    connectionCase: fc.boolean(),
    extraTokens: fc.subarray(['close', 'keep-alive', 'upgrade', 'te', 'Trailer']),
    order: fc.array(fc.nat(), { minLength: 20, maxLength: 20 }),
  })
  .map(({ hop, plain, custom, nameSome, connectionCount, connectionCase, extraTokens, order }) => {
    const pairs: [string, string][] = [...hop, ...plain, ...custom];
    const listed = [...custom.map(([n]) => n), ...plain.filter((_, i) => nameSome[i]).map(([n]) => n), ...extraTokens];
    const named = new Set(connectionCount === 0 ? [] : listed.map((n) => n.toLowerCase()));
    if (connectionCount > 0) {
      // Split the list over one or two Connection headers, with odd spacing and case.
      const half = Math.ceil(listed.length / connectionCount);
      for (let i = 0; i < connectionCount; i++) {
        const part = listed.slice(i * half, (i + 1) * half).map((n) => (connectionCase ? n.toUpperCase() : n));
        pairs.push([connectionCase ? 'CONNECTION' : 'Connection', part.length > 0 ? part.join(' ,  ') : 'keep-alive']);
      }
    } else {
      // Without a Connection header, custom names are ordinary end-to-end headers.
    }
    // A deterministic shuffle driven by the generated `order`.
    const keyed = pairs.map((p, i) => ({ p, k: order[i % order.length]! * 31 + i }));
    keyed.sort((x, y) => x.k - y.k);
    return { raw: keyed.flatMap(({ p }) => p), named };
  });

const GATEWAY_OWNED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'expect']);

const pairsOf = (flat: string[]): [string, string][] => {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
};

describe('property: hop-by-hop headers', () => {
  test('upstreamRequestHeaders never forwards a hop-by-hop or Connection-named header and keeps every end-to-end one, in order', () => {
    fc.assert(
      fc.property(headerSet, ({ raw, named }) => {
        const req = { rawHeaders: raw } as unknown as IncomingMessage;
        const out = pairsOf(upstreamRequestHeaders(req, { remoteAddress: '127.0.0.1', proto: 'http' }));
        const gatewayAdded = out.filter(([n]) => GATEWAY_OWNED.has(n.toLowerCase()));
        const forwarded = out.filter(([n]) => !GATEWAY_OWNED.has(n.toLowerCase()));
        for (const [name] of forwarded) {
          const lower = name.toLowerCase();
          assert.ok(!HOP_BY_HOP.has(lower), `hop-by-hop ${name} forwarded; in: ${JSON.stringify(raw)}`);
          // Host and Content-Length are what HTTP itself needs: a Connection header cannot strip them.
          if (lower !== 'host' && lower !== 'content-length') assert.ok(!named.has(lower), `Connection-named ${name} forwarded; in: ${JSON.stringify(raw)}`);
        }
        const endToEnd = pairsOf(raw).filter(([n]) => {
          const lower = n.toLowerCase();
          const strippable = lower !== 'host' && lower !== 'content-length';
          return !HOP_BY_HOP.has(lower) && lower !== 'connection' && !(strippable && named.has(lower)) && !GATEWAY_OWNED.has(lower);
        });
        assert.deepEqual(forwarded, endToEnd, `in: ${JSON.stringify(raw)}`);
        const hosts = pairsOf(raw).filter(([n]) => n.toLowerCase() === 'host');
        assert.deepEqual(
          gatewayAdded.map(([n, v]) => [n.toLowerCase(), v]),
          [
            ['x-forwarded-for', '127.0.0.1'],
            ['x-forwarded-proto', 'http'],
            ...(hosts.length > 0 ? [['x-forwarded-host', hosts[hosts.length - 1]![1]]] : []),
          ],
        );
      }),
      params(3000),
    );
  });

  test('responseHeaders never passes a hop-by-hop or Connection-named header and keeps every end-to-end one, in order', () => {
    fc.assert(
      fc.property(headerSet, fc.boolean(), ({ raw: generated, named }, withExtra) => {
        // An upstream's Transfer-Encoding is plain chunked here: other codings are kept or refused (test/hardening-upstream.test.ts).
        const raw = generated.map((s, i) => (i % 2 === 1 && generated[i - 1]!.toLowerCase() === 'transfer-encoding' ? 'chunked' : s));
        const buffers = raw.map((s) => Buffer.from(s, 'latin1'));
        const extra = withExtra ? ['x-request-id', 'gw-id', 'server-timing', 'gateway;dur=1'] : [];
        const out = pairsOf(responseHeaders(buffers, extra));
        const fromUpstream = out.slice(0, out.length - extra.length / 2);
        for (const [name] of fromUpstream) {
          const lower = name.toLowerCase();
          assert.ok(!HOP_BY_HOP.has(lower), `hop-by-hop ${name} passed; in: ${JSON.stringify(raw)}`);
          assert.ok(!named.has(lower), `Connection-named ${name} passed; in: ${JSON.stringify(raw)}`);
        }
        const replaced = withExtra ? new Set(['x-request-id']) : new Set<string>();
        const endToEnd = pairsOf(raw).filter(([n]) => {
          const lower = n.toLowerCase();
          return !HOP_BY_HOP.has(lower) && lower !== 'connection' && !named.has(lower) && !replaced.has(lower);
        });
        assert.deepEqual(fromUpstream, endToEnd, `in: ${JSON.stringify(raw)}`);
        assert.deepEqual(out.slice(out.length - extra.length / 2), pairsOf(extra));
      }),
      params(3000),
    );
  });
});
