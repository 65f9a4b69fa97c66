import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RouteConfig } from '../lib/config/index.js';
import { normalizeTarget } from '../lib/http/path.js';
import { Router, upstreamPath, type Route } from '../lib/core/router.js';

function route(prefix: string, service: string, stripPrefix = false): RouteConfig {
  return { prefix, service, stripPrefix };
}

/** The service the router picks for `path`, or null. */
function serviceFor(router: Router, path: string): string | null {
  return router.match(path)?.service ?? null;
}

describe('Router.match', () => {
  test('the longest prefix wins, whatever the order of the routes', () => {
    const routes = [route('/api', 'api'), route('/api/v2', 'v2'), route('/api/v2/admin', 'admin')];
    for (const ordered of [routes, [...routes].reverse()]) {
      const router = new Router(ordered);
      assert.equal(serviceFor(router, '/api'), 'api');
      assert.equal(serviceFor(router, '/api/v1/users'), 'api');
      assert.equal(serviceFor(router, '/api/v2'), 'v2');
      assert.equal(serviceFor(router, '/api/v2/users/1'), 'v2');
      assert.equal(serviceFor(router, '/api/v2/admin'), 'admin');
      assert.equal(serviceFor(router, '/api/v2/admin/x/y'), 'admin');
      assert.equal(serviceFor(router, '/api/v2admin'), 'api');
    }
  });

  test('a prefix matches on segment boundaries only', () => {
    const router = new Router([route('/users', 'users')]);
    assert.equal(serviceFor(router, '/users'), 'users');
    assert.equal(serviceFor(router, '/users/'), 'users');
    assert.equal(serviceFor(router, '/users/1'), 'users');
    assert.equal(serviceFor(router, '/users/1/orders/'), 'users');
    assert.equal(serviceFor(router, '/usersx'), null);
    assert.equal(serviceFor(router, '/usersx/1'), null);
    assert.equal(serviceFor(router, '/user'), null);
    assert.equal(serviceFor(router, '/'), null);
    assert.equal(serviceFor(router, '/other/users'), null);
  });

  test('the root route is the fallback for everything else', () => {
    const router = new Router([route('/', 'web'), route('/api', 'api')]);
    assert.equal(serviceFor(router, '/'), 'web');
    assert.equal(serviceFor(router, '/index.html'), 'web');
    assert.equal(serviceFor(router, '/apix'), 'web');
    assert.equal(serviceFor(router, '/api'), 'api');
    assert.equal(serviceFor(router, '/api/1'), 'api');
    const onlyRoot = new Router([route('/', 'web')]);
    assert.equal(serviceFor(onlyRoot, '/anything/at/all'), 'web');
    assert.equal(serviceFor(new Router([]), '/'), null);
  });

  test('a trailing slash in the configured prefix is ignored', () => {
    const router = new Router([route('/users/', 'users'), route('/a/b//', 'ab')]);
    const [users] = router.routes();
    assert.equal(users!.prefix, '/users');
    assert.equal(serviceFor(router, '/users'), 'users');
    assert.equal(serviceFor(router, '/users/'), 'users');
    assert.equal(serviceFor(router, '/users/7'), 'users');
    assert.equal(serviceFor(router, '/usersx'), null);
    assert.equal(serviceFor(router, '/a/b'), 'ab');
    assert.equal(serviceFor(router, '/a/b/c'), 'ab');
  });

  test('a prefix written with percent-escapes matches the same path as a client sends it', () => {
    // Requests are normalized (unreserved escapes decoded, the rest upper-cased) before matching,
    // so a prefix must be compared in that same form.
    const router = new Router([route('/caf%c3%a9', 'cafe'), route('/%7Euser', 'home')]);
    for (const [target, service] of [
      ['/caf%c3%a9/menu', 'cafe'],
      ['/caf%C3%A9/menu', 'cafe'],
      ['/%7Euser/x', 'home'],
      ['/~user/x', 'home'],
    ] as const) {
      assert.equal(serviceFor(router, normalizeTarget(target).path), service, target);
    }
  });

  test('the matched route carries its config entry', () => {
    const config = route('/users', 'users', true);
    const router = new Router([config]);
    const matched = router.match('/users/1');
    assert.ok(matched);
    assert.equal(matched.config, config);
    assert.equal(matched.stripPrefix, true);
  });

  test('routes added later take part in matching', () => {
    const router = new Router([route('/a', 'a')]);
    assert.equal(serviceFor(router, '/a/b/c'), 'a');
    router.add(route('/a/b', 'ab'));
    assert.equal(serviceFor(router, '/a/b/c'), 'ab');
    assert.deepEqual(router.routes().map((r) => r.prefix).sort(), ['/a', '/a/b']);
  });
});

describe('upstreamPath', () => {
  const strip = (prefix: string): Route => new Router([route(prefix, 's', true)]).routes()[0]!;
  const keep = (prefix: string): Route => new Router([route(prefix, 's', false)]).routes()[0]!;

  test('stripPrefix removes the prefix and keeps a leading slash', () => {
    assert.equal(upstreamPath(strip('/users'), '/users/42'), '/42');
    assert.equal(upstreamPath(strip('/users'), '/users/42/orders/'), '/42/orders/');
    assert.equal(upstreamPath(strip('/users'), '/users'), '/');
    assert.equal(upstreamPath(strip('/users'), '/users/'), '/');
    assert.equal(upstreamPath(strip('/users/'), '/users/42'), '/42');
    assert.equal(upstreamPath(strip('/api/v2'), '/api/v2/x'), '/x');
  });

  test('without stripPrefix the path is forwarded as is', () => {
    assert.equal(upstreamPath(keep('/users'), '/users/42'), '/users/42');
    assert.equal(upstreamPath(keep('/users'), '/users'), '/users');
  });

  test('the root route never strips', () => {
    assert.equal(upstreamPath(strip('/'), '/index.html'), '/index.html');
    assert.equal(upstreamPath(strip('/'), '/'), '/');
  });
});
