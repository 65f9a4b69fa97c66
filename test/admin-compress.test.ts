/**
 * What the admin server compresses, read off real sockets: the coding a client's Accept-Encoding
 * chooses, the bytes that decode to what an uncompressing client gets, Vary, the dashboard's files
 * compressed once, and what is never compressed (small answers, the event streams).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { MIN_COMPRESSED_BYTES, preferredCoding } from '../lib/admin/compress.js';
import { send, startGateway } from './helpers.js';

const TOKEN = 'compress-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };

const decode = (coding: string | undefined, bytes: Buffer): Buffer => (coding === 'br' ? brotliDecompressSync(bytes) : coding === 'gzip' ? gunzipSync(bytes) : bytes);

describe('preferredCoding', () => {
  test('the acceptable coding the client weighs highest, brotli first on a tie; unreadable entries are not accepted', () => {
    const cases: [string | undefined, string][] = [
      [undefined, 'identity'],
      ['', 'identity'],
      ['gzip, deflate, br, zstd', 'br'],
      ['gzip, deflate', 'gzip'],
      ['x-gzip', 'gzip'],
      ['GZIP;Q=0.5, BR;q=0.4', 'gzip'],
      ['br;q=0, gzip', 'gzip'],
      ['*', 'br'],
      ['*;q=0.5, br;q=0', 'gzip'],
      ['identity', 'identity'],
      ['identity;q=1, br;q=0.5', 'identity'],
      ['deflate', 'identity'],
      ['br;q=abc, gzip;q=2', 'identity'],
      ['br;q=1.5', 'identity'],
      [';;;,,, ;q=1', 'identity'],
      ['*;q=0', 'identity'],
    ];
    for (const [header, expected] of cases) assert.equal(preferredCoding(header), expected, String(header));
  });
});

describe('admin server: compression', () => {
  test('JSON answers of 1 KiB or more in brotli or gzip as asked, decoding to the uncompressed answer; Vary on each; small ones and streams as they are', { timeout: 30_000 }, async (t) => {
    const services: Record<string, { instances: { url: string; id: string }[] }> = {};
    for (let s = 0; s < 40; s++) services[`svc-${s}`] = { instances: Array.from({ length: 3 }, (_, i) => ({ url: `http://127.0.0.1:${10_000 + s * 3 + i}`, id: `svc-${s}-${i}` })) };
    const { adminUrl } = await startGateway(t, { admin: { port: 0, token: TOKEN }, services, routes: [{ name: 'a', prefix: '/a', service: 'svc-0' }] });

    for (const path of ['/services', '/dashboard/api/state']) {
      const plain = await send(`${adminUrl}${path}`, { headers: AUTH });
      assert.equal(plain.status, 200, path);
      assert.equal(plain.headers['content-encoding'], undefined, `${path}: no Accept-Encoding, no coding`);
      assert.match(String(plain.headers.vary), /accept-encoding/i, path);
      assert.ok(plain.bytes.length >= MIN_COMPRESSED_BYTES, `${path} is large enough to compress`);
      // The state's clock moves between two reads; the rest holds still on an idle gateway.
      const comparable = (bytes: Buffer): unknown => ({ ...JSON.parse(bytes.toString()), now: undefined });
      for (const [header, coding] of [['gzip, deflate, br', 'br'], ['gzip', 'gzip'], ['identity', undefined], ['br;q=0, gzip;q=0', undefined], ['br;q=nonsense, ;;', undefined]] as const) {
        const res = await send(`${adminUrl}${path}`, { headers: { ...AUTH, 'accept-encoding': header } });
        assert.equal(res.status, 200, `${path} ${header}`);
        assert.equal(res.headers['content-encoding'], coding, `${path} ${header}`);
        assert.match(String(res.headers.vary), /accept-encoding/i, `${path} ${header}`);
        assert.equal(Number(res.headers['content-length']), res.bytes.length, `${path} ${header}: the length of what was sent`);
        if (coding !== undefined) assert.ok(res.bytes.length < plain.bytes.length / 4, `${path} ${header}: ${res.bytes.length} of ${plain.bytes.length} bytes`);
        assert.deepEqual(comparable(decode(coding, res.bytes)), comparable(plain.bytes), `${path} ${header}`);
      }
    }

    // Under 1 KiB: sent as it is, whatever the client accepts.
    const small = await send(`${adminUrl}/healthz`, { headers: { 'accept-encoding': 'br, gzip' } });
    assert.equal(small.headers['content-encoding'], undefined);
    assert.deepEqual(JSON.parse(small.body), { status: 'ok' });

    // The event streams are never compressed: each event leaves as it happens.
    for (const path of ['/dashboard/api/stream', '/events']) {
      const abort = new AbortController();
      const res = await fetch(`${adminUrl}${path}`, { headers: { ...AUTH, 'accept-encoding': 'br, gzip' }, signal: abort.signal });
      assert.equal(res.status, 200, path);
      assert.equal(res.headers.get('content-encoding'), null, path);
      const reader = res.body!.getReader();
      assert.match(new TextDecoder().decode((await reader.read()).value), /^: meshgate/, path);
      abort.abort();
    }
  });

  test('the dashboard\'s files: compressed once, the same bytes each time, decoding to the file; a weak ETag that a 304 honours in any coding', { timeout: 30_000 }, async (t) => {
    const { adminUrl } = await startGateway(t, { admin: { port: 0, token: TOKEN } });
    const file = readFileSync(new URL('../plugins/dashboard/public/app.js', import.meta.url));
    const plain = await send(`${adminUrl}/dashboard/assets/app.js`);
    assert.deepEqual(plain.bytes, file);
    assert.equal(plain.headers['content-encoding'], undefined);
    const etag = String(plain.headers.etag);
    assert.match(etag, /^W\/"/);
    for (const coding of ['br', 'gzip']) {
      const first = await send(`${adminUrl}/dashboard/assets/app.js`, { headers: { 'accept-encoding': coding } });
      const again = await send(`${adminUrl}/dashboard/assets/app.js`, { headers: { 'accept-encoding': coding } });
      assert.equal(first.headers['content-encoding'], coding);
      assert.match(String(first.headers.vary), /accept-encoding/i);
      assert.match(String(first.headers['content-type']), /^text\/javascript/);
      assert.equal(first.headers.etag, etag, 'one validator for every coding');
      assert.deepEqual(decode(coding, first.bytes), file, coding);
      assert.deepEqual(again.bytes, first.bytes, `${coding}: the kept bytes`);
      assert.ok(first.bytes.length < file.length / 2, `${coding}: ${first.bytes.length} of ${file.length}`);
      const notModified = await send(`${adminUrl}/dashboard/assets/app.js`, { headers: { 'accept-encoding': coding, 'if-none-match': `"x", ${etag.slice(2)}` } });
      assert.equal(notModified.status, 304, coding);
      assert.match(String(notModified.headers.vary), /accept-encoding/i);
      assert.equal(notModified.bytes.length, 0);
    }
  });
});
