import assert from 'node:assert/strict';
import { test } from 'node:test';
import { validateConfig } from '../../lib/index.js';
import { sendPath, startGateway, startUpstream } from '../helpers.js';

test('rewrites, hostRewrite, header edits and redirects, with what the upstream saw', async (t) => {
  const upstream = await startUpstream(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'x-powered-by': 'express', 'cache-control': 'no-store', vary: 'accept' });
    res.end(JSON.stringify({ url: req.url, host: req.headers.host, headers: req.headers }));
  });
  const { url } = await startGateway(t, {
    services: { api: { instances: [{ url: upstream.url }] } },
    routes: [
      { prefix: '/old', rewrite: { prefix: '/v2' }, service: 'api' },
      { prefix: '/strip', stripPrefix: true, rewrite: { prefix: '/inner/' }, service: 'api' },
      { prefix: '/items', rewrite: { regex: '^/items/([0-9]+)$', replacement: '/catalog/item?id=$1' }, service: 'api' },
      { path: '/exact', rewrite: { prefix: '/elsewhere' }, service: 'api' },
      {
        prefix: '/edit',
        hostRewrite: 'internal.svc',
        requestHeaders: { set: { 'x-env': 'prod' }, add: { 'x-tag': 'gw' }, remove: ['x-debug'] },
        responseHeaders: { set: { 'cache-control': 'max-age=60' }, add: { vary: 'origin' }, remove: ['x-powered-by'] },
        service: 'api',
      },
      { prefix: '/http', redirect: { scheme: 'https', status: 301 } },
      { prefix: '/docs', redirect: { prefix: '/manual' } },
      { path: '/home', redirect: { host: 'www.example.com', path: '/', status: 308 } },
    ],
  });

  const seen = async (path: string, headers: Record<string, string> = {}): Promise<{ url: string; host: string; headers: Record<string, string | string[]> }> => {
    const res = await sendPath(url, path, { headers });
    assert.equal(res.status, 200, res.body);
    return res.json();
  };
  assert.equal((await seen('/old/users/1?x=1')).url, '/v2/users/1?x=1', 'the prefix replaced');
  assert.equal((await seen('/strip/a/b')).url, '/inner/a/b', 'stripped, then the new prefix (one slash)');
  assert.equal((await seen('/items/42')).url, '/catalog/item?id=42', 'the regex and its group');
  assert.equal((await seen('/items/abc')).url, '/items/abc', 'no match, no rewrite');
  assert.equal((await seen('/exact')).url, '/elsewhere');

  const edited = await sendPath(url, '/edit/x', { headers: { 'x-debug': '1', 'x-tag': 'client', 'x-env': 'dev', host: 'public.example.com' } });
  const saw = edited.json();
  assert.equal(saw.host, 'internal.svc');
  assert.equal(saw.headers['x-forwarded-host'], 'public.example.com', 'the original host is still told');
  assert.equal(saw.headers['x-env'], 'prod', 'set replaces what the client sent');
  assert.equal(saw.headers['x-tag'], 'client, gw', 'add appends');
  assert.equal(saw.headers['x-debug'], undefined, 'removed');
  assert.equal(edited.headers['x-powered-by'], undefined, 'a response header removed');
  assert.equal(edited.headers['cache-control'], 'max-age=60', 'a response header replaced');
  assert.equal(edited.headers.vary, 'accept, origin', 'a response header added');

  const before = upstream.seen.length;
  const https = await sendPath(url, '/http/a?b=1', { headers: { host: 'shop.example.com' } });
  assert.equal(https.status, 301);
  assert.equal(https.headers.location, 'https://shop.example.com/http/a?b=1');
  const docs = await sendPath(url, '/docs/guide/1', { headers: { host: 'shop.example.com' } });
  assert.equal(docs.status, 302);
  assert.equal(docs.headers.location, 'http://shop.example.com/manual/guide/1');
  const home = await sendPath(url, '/home');
  assert.equal(home.status, 308);
  assert.equal(home.headers.location, 'http://www.example.com/');
  assert.equal(upstream.seen.length, before, 'redirects never reach an instance');
});

test('bad rewrites and redirects are refused with the path of each', () => {
  assert.throws(
    () =>
      validateConfig({
        services: { api: {} },
        routes: [
          { pathRegex: '^/a', rewrite: { prefix: '/b' }, service: 'api' },
          { prefix: '/c', rewrite: { regex: '(a*)*$', replacement: '' }, service: 'api' },
          { path: '/d', redirect: { prefix: '/e' } },
          { prefix: '/f', redirect: { status: 200 } },
          { prefix: '/g', requestHeaders: { set: { 'bad header': 'x' } }, service: 'api' },
          { prefix: '/h', redirect: { path: '/x' }, hostRewrite: 'y' },
        ],
      }),
    (err: Error & { issues?: { path: string; message: string }[] }) => {
      const paths = (err.issues ?? []).map((i) => `${i.path}: ${i.message}`);
      for (const [path, message] of [
        ['routes[0].rewrite.prefix', /prefix or path route/],
        ['routes[1].rewrite', /./],
        ['routes[2].redirect.prefix', /needs a prefix route/],
        ['routes[3].redirect.status', /./],
        ['routes[4].requestHeaders.set', /./],
        ['routes[5].hostRewrite', /no effect on a redirect/],
      ] as const) {
        assert.ok(paths.some((p) => p.startsWith(path) && message.test(p)), `no issue at ${path}; got:\n${paths.join('\n')}`);
      }
      return true;
    },
  );
});
