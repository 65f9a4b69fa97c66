import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError } from '../../lib/errors.js';
import { createGateway } from '../../lib/index.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a ConfigError');
}

describe('balancer config', () => {
  test('services.x.balancer: nope fails at ready() with MESH_ERR_CONFIG naming services.x.balancer', async (t) => {
    const gateway = createGateway({ logLevel: 'silent', services: { x: { balancer: 'nope' } } });
    t.after(() => gateway.close());
    await assert.rejects(gateway.ready(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'MESH_ERR_CONFIG');
      assert.deepEqual(
        err.issues.map((i) => i.path),
        ['services.x.balancer'],
      );
      assert.match(err.message, /services\.x\.balancer: unknown balancer "nope"/);
      // the message lists what would have worked
      for (const name of ['round-robin', 'random', 'least-request', 'consistent-hash', 'ewma']) assert.ok(err.message.includes(name), name);
      return true;
    });
  });

  test('every built-in balancer name is accepted, and round-robin is the default', async (t) => {
    const names = ['round-robin', 'random', 'least-request', 'consistent-hash', 'ewma'];
    const services = Object.fromEntries(names.map((balancer) => [balancer, { balancer, hashOn: balancer === 'consistent-hash' ? 'path' : undefined }]));
    const gateway = createGateway({ logLevel: 'silent', services: { ...services, plain: {} } });
    t.after(() => gateway.close());
    await gateway.ready();
    assert.equal(gateway.registry.getService('plain')!.policy.balancer, 'round-robin');
    assert.deepEqual(gateway.balancerNames().sort(), [...names].sort());
  });

  test('consistent-hash without hashOn, or with a malformed one, names services.x.hashOn', () => {
    const missing = configError(() => createGateway({ services: { x: { balancer: 'consistent-hash' } } }));
    assert.deepEqual(missing.issues.map((i) => i.path), ['services.x.hashOn']);
    for (const hashOn of ['header:', 'cookie', 'query:a:b', 'body:x', 'IP']) {
      const bad = configError(() => createGateway({ services: { x: { balancer: 'consistent-hash', hashOn } } }));
      assert.deepEqual(bad.issues.map((i) => i.path), ['services.x.hashOn'], hashOn);
    }
  });
});
