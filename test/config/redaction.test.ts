import assert from 'node:assert/strict';
import { test } from 'node:test';
import { redactSecrets, restoreRedacted } from '../../lib/config/fleet.js';

test('a redacted document sent back gets each secret from where it came, never from another entry', () => {
  const running = {
    discovery: { redis: { url: 'redis://:hunter2@redis:6379' } },
    routes: [
      { prefix: '/a', auth: { apiKeys: { keys: [{ name: 'old', key: 'OLD-SECRET-1' }, { name: 'new', key: 'NEW-SECRET-1' }] } } },
      { prefix: '/b', auth: { jwt: { secret: 'B-SECRET' } } },
      { prefix: '/c', auth: { apiKeys: { keys: ['PLAIN-KEY-1', 'PLAIN-KEY-2'] } } },
    ],
  };
  const shown = redactSecrets(running) as typeof running;
  assert.equal(JSON.stringify(shown).includes('SECRET'), false);
  assert.equal(shown.discovery.redis.url, 'redis://:[redacted]@redis:6379');

  // Revoke "old", reorder the routes: each secret stays with its own entry.
  shown.routes[0]!.auth.apiKeys!.keys.shift();
  shown.routes.reverse();
  const issues: { path: string; message: string }[] = [];
  const restored = restoreRedacted(shown, running, [], issues) as typeof running;
  assert.deepEqual(issues, []);
  assert.equal(restored.discovery.redis.url, 'redis://:hunter2@redis:6379');
  assert.deepEqual(restored.routes.map((r) => r.prefix), ['/c', '/b', '/a']);
  assert.deepEqual(restored.routes[2]!.auth.apiKeys!.keys, [{ name: 'new', key: 'NEW-SECRET-1' }], 'the revoked key is gone, not renamed');
  assert.equal(restored.routes[1]!.auth.jwt!.secret, 'B-SECRET');
  assert.deepEqual(restored.routes[0]!.auth.apiKeys!.keys, ['PLAIN-KEY-1', 'PLAIN-KEY-2']);

  // A plain key list that changed length, a new entry: "[redacted]" there is refused at its path.
  const changed = redactSecrets(running) as typeof running;
  (changed.routes[2]!.auth.apiKeys!.keys as string[]).shift();
  changed.routes.push({ prefix: '/d', auth: { jwt: { secret: '[redacted]' } } });
  const problems: { path: string; message: string }[] = [];
  restoreRedacted(changed, running, [], problems);
  assert.deepEqual(problems.map((p) => p.path), ['routes[2].auth.apiKeys.keys[0]', 'routes[3].auth.jwt.secret']);
});
