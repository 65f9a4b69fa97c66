import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadConfigFile, parseConfig, parseDuration, validateConfig } from '../lib/index.js';
import { ConfigError, type ConfigIssue } from '../lib/errors.js';
import { scriptResult } from './helpers.js';

/** Runs `fn`, asserts it throws one ConfigError, and returns its issues. */
function issuesOf(fn: () => unknown): readonly ConfigIssue[] {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.code, 'MESH_ERR_CONFIG');
  assert.equal(caught.issues.length > 0, true);
  return caught.issues;
}

/** Asserts one issue sits at `path` and its message matches `message`. */
function assertIssue(issues: readonly ConfigIssue[], path: string, message: RegExp): void {
  const atPath = issues.filter((i) => i.path === path);
  assert.ok(atPath.length > 0, `no issue at ${JSON.stringify(path)}; issues: ${JSON.stringify(issues)}`);
  assert.ok(
    atPath.some((i) => message.test(i.message)),
    `issue at ${path} does not match ${message}: ${JSON.stringify(atPath)}`,
  );
}

const NO_ENV: NodeJS.ProcessEnv = {};

describe('config: every bad field names its path', () => {
  test('listen.port of the wrong type', () => {
    const issues = issuesOf(() => parseConfig('listen: { port: abc }', { env: NO_ENV }));
    assertIssue(issues, 'listen.port', /expected number/);
  });

  test('a port out of range', () => {
    const issues = issuesOf(() => validateConfig({ listen: { port: 70000 } }, { env: NO_ENV }));
    assertIssue(issues, 'listen.port', /./);
  });

  test('a route naming an unknown service', () => {
    const issues = issuesOf(() =>
      validateConfig({ services: { api: {} }, routes: [{ prefix: '/x', service: 'ghost' }] }, { env: NO_ENV }),
    );
    assertIssue(issues, 'routes[0].service', /^unknown service "ghost"$/);
  });

  test('an unknown field (a typo) in every section', () => {
    const yaml = `
listen: { prt: 1 }
admin: { tokn: x }
discovery: { redis: { url: "redis://127.0.0.1:6379", prefx: a }, consul: {} }
services:
  api:
    balancr: round-robin
    instances: [ { url: "http://127.0.0.1:3000", wieght: 2 } ]
    dns: { name: api.internal, refersh: 1s }
    healthCheck: { intervl: 1s }
    circuitBreaker: { resetTimout: 1s }
    retries: { atempts: 1 }
    tls: { cert2: x }
routes: [ { prefix: /a, service: api, strip: true } ]
plugins: [ { module: ./p.js, opts: {} } ]
servics: {}
`;
    const issues = issuesOf(() => parseConfig(yaml, { env: NO_ENV }));
    const expected = [
      'listen.prt',
      'admin.tokn',
      'discovery.redis.prefx',
      'discovery.consul',
      'services.api.balancr',
      'services.api.instances[0].wieght',
      'services.api.dns.refersh',
      'services.api.healthCheck.intervl',
      'services.api.circuitBreaker.resetTimout',
      'services.api.retries.atempts',
      'services.api.tls.cert2',
      'routes[0].strip',
      'plugins[0].opts',
      'servics',
    ];
    for (const path of expected) assertIssue(issues, path, /unknown field/);
    assert.equal(issues.length, expected.length, JSON.stringify(issues));
  });

  test('an instance URL that is not http or https', () => {
    for (const url of ['ftp://127.0.0.1:21', 'redis://127.0.0.1:6379', 'not a url', '127.0.0.1:3000']) {
      const issues = issuesOf(() => validateConfig({ services: { api: { instances: [{ url }] } } }, { env: NO_ENV }));
      assertIssue(issues, 'services.api.instances[0].url', /http:\/\/ or https:\/\//);
    }
    const ok = validateConfig(
      { services: { api: { instances: [{ url: 'http://127.0.0.1:3000' }, { url: 'https://api.internal' }] } } },
      { env: NO_ENV },
    );
    assert.equal(ok.services.api!.instances.length, 2);
  });

  test('a weight that is 0, negative or not an integer', () => {
    const yaml = `
services:
  api:
    instances:
      - { url: "http://127.0.0.1:3001", weight: 0 }
      - { url: "http://127.0.0.1:3002", weight: -1 }
      - { url: "http://127.0.0.1:3003", weight: 1.5 }
      - { url: "http://127.0.0.1:3004", weight: 3 }
`;
    const issues = issuesOf(() => parseConfig(yaml, { env: NO_ENV }));
    assertIssue(issues, 'services.api.instances[0].weight', /./);
    assertIssue(issues, 'services.api.instances[1].weight', /./);
    assertIssue(issues, 'services.api.instances[2].weight', /int/);
    assert.equal(issues.length, 3, JSON.stringify(issues));
  });

  test('a bad duration string', () => {
    const issues = issuesOf(() =>
      validateConfig(
        { services: { api: { timeout: '5 sec', healthCheck: { interval: '1d' }, circuitBreaker: { resetTimeout: '-1s' } } } },
        { env: NO_ENV },
      ),
    );
    assertIssue(issues, 'services.api.timeout', /duration/);
    assertIssue(issues, 'services.api.healthCheck.interval', /duration/);
    assertIssue(issues, 'services.api.circuitBreaker.resetTimeout', /duration/);
  });

  test('a bad hashOn', () => {
    for (const hashOn of ['headers:x-user', 'header:', 'cookie', 'query:a b', 'body']) {
      const issues = issuesOf(() =>
        validateConfig({ services: { api: { balancer: 'consistent-hash', hashOn } } }, { env: NO_ENV }),
      );
      assertIssue(issues, 'services.api.hashOn', /header:NAME/);
    }
    for (const hashOn of ['header:x-user-id', 'cookie:session', 'query:user', 'ip', 'path']) {
      const config = validateConfig({ services: { api: { balancer: 'consistent-hash', hashOn } } }, { env: NO_ENV });
      assert.equal(config.services.api!.hashOn, hashOn);
    }
  });

  test('consistent-hash without hashOn', () => {
    const issues = issuesOf(() => validateConfig({ services: { api: { balancer: 'consistent-hash' } } }, { env: NO_ENV }));
    assertIssue(issues, 'services.api.hashOn', /required when balancer is consistent-hash/);
  });

  test('a duplicate route prefix, also when one has a trailing slash', () => {
    const services = { api: {}, web: {} };
    const same = issuesOf(() =>
      validateConfig({ services, routes: [{ prefix: '/a', service: 'api' }, { prefix: '/a', service: 'web' }] }, { env: NO_ENV }),
    );
    assertIssue(same, 'routes[1].prefix', /duplicate prefix/);
    const slash = issuesOf(() =>
      validateConfig({ services, routes: [{ prefix: '/a', service: 'api' }, { prefix: '/a/', service: 'web' }] }, { env: NO_ENV }),
    );
    assertIssue(slash, 'routes[1].prefix', /duplicate prefix "\/a\/".*routes\[0\]/);
    const distinct = validateConfig(
      { services, routes: [{ prefix: '/a', service: 'api' }, { prefix: '/a/b', service: 'web' }, { prefix: '/', service: 'web' }] },
      { env: NO_ENV },
    );
    assert.equal(distinct.routes.length, 3);
  });

  test('duplicate instance ids, and the same URL twice without ids', () => {
    const ids = issuesOf(() =>
      validateConfig(
        {
          services: {
            api: {
              instances: [
                { url: 'http://127.0.0.1:3001', id: 'one' },
                { url: 'http://127.0.0.1:3002', id: 'two' },
                { url: 'http://127.0.0.1:3003', id: 'one' },
              ],
            },
          },
        },
        { env: NO_ENV },
      ),
    );
    assertIssue(ids, 'services.api.instances[2]', /duplicate instance "one"/);
    const urls = issuesOf(() =>
      validateConfig(
        { services: { api: { instances: [{ url: 'http://127.0.0.1:3001' }, { url: 'http://127.0.0.1:3001' }] } } },
        { env: NO_ENV },
      ),
    );
    assertIssue(urls, 'services.api.instances[1]', /duplicate instance/);
  });

  test('a bad service name names the service and what is allowed', () => {
    const issues = issuesOf(() => parseConfig('services:\n  "my svc": {}\n  ok-svc: {}\n', { env: NO_ENV }));
    assertIssue(issues, 'services["my svc"]', /letters, digits/);
    assert.equal(issues.length, 1, JSON.stringify(issues));
  });

  test('a route prefix that does not start with "/"', () => {
    const issues = issuesOf(() =>
      validateConfig({ services: { api: {} }, routes: [{ prefix: 'api', service: 'api' }] }, { env: NO_ENV }),
    );
    assertIssue(issues, 'routes[0].prefix', /starting with "\/"/);
  });

  test('a YAML syntax error names the line', () => {
    const yaml = 'listen:\n  port: 8080\nservices:\n  api: { instances: [ { url: x }\nroutes: []\n';
    const issues = issuesOf(() => parseConfig(yaml, { env: NO_ENV }));
    assert.ok(issues.every((i) => i.path === ''), JSON.stringify(issues));
    assert.ok(issues.some((i) => /YAML/.test(i.message) && /line \d+/.test(i.message)), JSON.stringify(issues));
    // The error is on line 4 (the unclosed flow collection) or where YAML notices it, line 5.
    assert.ok(issues.some((i) => /line [45]\b/.test(i.message)), JSON.stringify(issues));
  });

  test('a duplicate YAML key is an error, not a silent overwrite', () => {
    const issues = issuesOf(() => parseConfig('listen: { port: 1 }\nlisten: { port: 2 }\n', { env: NO_ENV }));
    assert.ok(issues.some((i) => /unique/i.test(i.message) && /line 2/.test(i.message)), JSON.stringify(issues));
  });

  test('a top level that is not a mapping', () => {
    for (const yaml of ['- a\n- b\n', 'hello\n', '42\n']) {
      const issues = issuesOf(() => parseConfig(yaml, { env: NO_ENV }));
      assert.deepEqual(issues, [{ path: '', message: 'the config must be a mapping (key: value) at the top level' }]);
    }
  });

  test('every problem is reported together in one ConfigError', () => {
    const yaml = `
listen: { port: abc }
services:
  api:
    balancer: consistent-hash
    timeout: soon
    instances:
      - { url: "ftp://127.0.0.1", weight: 0 }
      - { url: "http://127.0.0.1:3000", id: x }
      - { url: "http://127.0.0.1:3001", id: x }
routes:
  - { prefix: /a, service: ghost }
  - { prefix: /a/, service: api, stripPrefx: true }
  - { prefix: b, service: api }
`;
    let caught: unknown;
    try {
      parseConfig(yaml, { env: NO_ENV, source: '/etc/meshgate.yaml' });
    } catch (err) {
      caught = err;
    }
    assert.ok(caught instanceof ConfigError);
    const issues = caught.issues;
    const expected: [string, RegExp][] = [
      ['listen.port', /expected number/],
      ['services.api.timeout', /duration/],
      ['services.api.hashOn', /required/],
      ['services.api.instances[0].url', /http/],
      ['services.api.instances[0].weight', /./],
      ['services.api.instances[2]', /duplicate instance "x"/],
      ['routes[0].service', /unknown service "ghost"/],
      ['routes[1].prefix', /duplicate prefix/],
      ['routes[1].stripPrefx', /unknown field/],
      ['routes[2].prefix', /starting with "\/"/],
    ];
    for (const [path, message] of expected) assertIssue(issues, path, message);
    assert.equal(issues.length, expected.length, JSON.stringify(issues));
    // The message has a head naming the source, then one line per problem with its path.
    const lines = caught.message.split('\n');
    assert.match(lines[0]!, /\/etc\/meshgate\.yaml/);
    assert.match(lines[0]!, new RegExp(`\\(${expected.length} problems\\)`));
    for (const [path] of expected) assert.ok(lines.some((l) => l.trim().startsWith(`${path}: `)), `no line for ${path}`);
  });
});

describe('config: durations', () => {
  test('parseDuration reads units and milliseconds', () => {
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('2s'), 2000);
    assert.equal(parseDuration('1.5m'), 90_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration(750), 750);
    assert.equal(parseDuration(0), 0);
    assert.equal(parseDuration('0'), 0);
    assert.equal(parseDuration('1500'), 1500);
  });

  test('parseDuration rejects what is not a duration', () => {
    for (const bad of ['', 'ms', '2 seconds', '1d', '-1s', '-5', 's2', '1.s', '2s3', 'fast', '1e3', -1, Number.NaN, Infinity, true, null, undefined, {}, []]) {
      assert.equal(parseDuration(bad), undefined, `parseDuration(${JSON.stringify(bad)})`);
    }
  });

  test('duration fields come out in milliseconds', () => {
    const config = parseConfig(
      `
drainTimeout: 1.5m
services:
  api:
    timeout: 250ms
    slowStart: 0
    healthCheck: { interval: 2s, timeout: 100 }
    circuitBreaker: { resetTimeout: 1h }
`,
      { env: NO_ENV },
    );
    const api = config.services.api!;
    assert.equal(config.drainTimeout, 90_000);
    assert.equal(api.timeout, 250);
    assert.equal(api.slowStart, 0);
    assert.equal(api.healthCheck!.interval, 2000);
    assert.equal(api.healthCheck!.timeout, 100);
    assert.equal(api.circuitBreaker!.resetTimeout, 3_600_000);
  });
});

describe('config: ${ENV} substitution', () => {
  test('references inside strings are replaced', () => {
    const config = validateConfig(
      { services: { api: { instances: [{ url: 'http://${API_HOST}:${API_PORT}/v1' }] } } },
      { env: { API_HOST: '10.0.0.5', API_PORT: '3000' } },
    );
    assert.equal(config.services.api!.instances[0]!.url, 'http://10.0.0.5:3000/v1');
  });

  test('a whole-value reference takes the value\'s type', () => {
    const config = parseConfig('listen: { port: "${PORT}" }\nservices:\n  api: { retries: { attempts: "${N}" }, tls: { rejectUnauthorized: "${STRICT}" } }\n', {
      env: { PORT: '8081', N: '3', STRICT: 'false' },
    });
    assert.equal(config.listen.port, 8081);
    assert.equal(config.services.api!.retries!.attempts, 3);
    assert.equal(config.services.api!.tls!.rejectUnauthorized, false);
  });

  test('${X:-default} uses the default when X is unset or empty', () => {
    const yaml = 'listen: { host: "${HOST:-127.0.0.2}", port: "${PORT:-8082}" }\nadmin: { token: "t-${SUFFIX:-dev}" }\n';
    const unset = parseConfig(yaml, { env: {} });
    assert.equal(unset.listen.host, '127.0.0.2');
    assert.equal(unset.listen.port, 8082);
    assert.equal(unset.admin!.token, 't-dev');
    const empty = parseConfig(yaml, { env: { HOST: '', PORT: '', SUFFIX: '' } });
    assert.equal(empty.listen.host, '127.0.0.2');
    const set = parseConfig(yaml, { env: { HOST: '10.1.1.1', PORT: '9000', SUFFIX: 'prod' } });
    assert.equal(set.listen.host, '10.1.1.1');
    assert.equal(set.listen.port, 9000);
    assert.equal(set.admin!.token, 't-prod');
  });

  test('an unset variable without default is an issue naming the field', () => {
    const issues = issuesOf(() =>
      parseConfig(
        'admin: { token: "${MESHGATE_TEST_UNSET_TOKEN}" }\nservices:\n  api:\n    instances: [ { url: "http://${MESHGATE_TEST_UNSET_HOST}:3000" } ]\n',
        { env: {} },
      ),
    );
    assertIssue(issues, 'admin.token', /MESHGATE_TEST_UNSET_TOKEN/);
    assertIssue(issues, 'services.api.instances[0].url', /MESHGATE_TEST_UNSET_HOST/);
  });

  test('a substituted value cannot inject YAML structure', () => {
    const evil = 'x\n  evil: 1';
    const config = parseConfig('listen: { host: "${EVIL}" }\nadmin: { token: "${EVIL}" }\n', { env: { EVIL: evil } });
    assert.equal(config.listen.host, evil);
    assert.equal(config.admin!.token, evil);
    assert.equal('evil' in config.listen, false);
    assert.equal('evil' in config, false);
    for (const structure of ['{ a: 1 }', '[1, 2]', 'evil: 1', '~', 'null']) {
      const c = parseConfig('admin: { token: "${V}" }\n', { env: { V: structure } });
      assert.equal(c.admin!.token, structure);
    }
  });

  test('a whole-value string reference keeps the text exactly (no YAML comments, quotes or trimming)', () => {
    // A secret like `s3cret #1` must not be cut to `s3cret` by reading it as YAML.
    for (const token of ['s3cret #1', '"quoted"', "'single'", ' padded ', 'a: b', '&anchor']) {
      const config = parseConfig('admin: { token: "${TOKEN}" }\n', { env: { TOKEN: token } });
      assert.equal(config.admin!.token, token, `token ${JSON.stringify(token)}`);
    }
  });
});

describe('config: defaults', () => {
  test('an empty document gets every default', () => {
    const config = parseConfig('', { env: NO_ENV });
    assert.deepEqual(config.listen, {
      host: '0.0.0.0',
      port: 8080,
      trustProxy: false,
      maxHeaderSize: 16 * 1024,
      maxHeaders: 100,
      pathParameters: 'reject',
      via: false,
      headersTimeout: 10_000,
      requestTimeout: 60_000,
      keepAliveTimeout: 5_000,
    });
    assert.equal(config.admin, undefined);
    assert.deepEqual(config.services, {});
    assert.deepEqual(config.routes, []);
    assert.deepEqual(config.plugins, []);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.drainTimeout, 10_000);
  });

  test('admin: {} turns the admin server on at 127.0.0.1:9901', () => {
    const config = parseConfig('admin: {}\n', { env: NO_ENV });
    assert.deepEqual(config.admin, { host: '127.0.0.1', port: 9901, registrationRate: 50 });
  });

  test('a service gets round-robin, a 15 s timeout and default-weight instances', () => {
    const config = parseConfig('services:\n  api:\n    instances: [ { url: "http://127.0.0.1:3000" } ]\n', { env: NO_ENV });
    const api = config.services.api!;
    assert.equal(api.balancer, 'round-robin');
    assert.equal(api.timeout, 15_000);
    assert.equal(api.instances[0]!.weight, 1);
    assert.deepEqual(api.instances[0]!.metadata, {});
    // Absent sections stay absent: their plugins are off.
    assert.equal(api.healthCheck, undefined);
    assert.equal(api.circuitBreaker, undefined);
    assert.equal(api.retries, undefined);
  });

  test('an empty section turns the feature on with its defaults', () => {
    const config = parseConfig('services:\n  api: { circuitBreaker: {}, healthCheck: {} }\n', { env: NO_ENV });
    assert.equal(config.services.api!.circuitBreaker!.resetTimeout, 10_000);
    assert.equal(config.services.api!.healthCheck!.path, '/health');
    assert.equal(config.services.api!.healthCheck!.interval, 5000);
  });

  test('`api: {}` and `api:` (null) are both valid services with no instances', () => {
    const config = parseConfig('services:\n  api: {}\n  web:\nroutes:\n  - { prefix: /api, service: api }\n  - { prefix: /web, service: web }\n', {
      env: NO_ENV,
    });
    for (const name of ['api', 'web']) {
      const svc = config.services[name];
      assert.ok(svc, name);
      assert.deepEqual(svc.instances, []);
      assert.equal(svc.balancer, 'round-robin');
    }
    assert.equal(config.routes[0]!.stripPrefix, false);
  });
});

describe('config: loadConfigFile', () => {
  test('reads, validates and reports where the file is', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'meshgate-config-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'meshgate.yaml');
    await writeFile(file, 'listen: { port: "${PORT}" }\nservices:\n  api: {}\nroutes: [ { prefix: /api, service: api } ]\n');
    const loaded = await loadConfigFile(file, { PORT: '8090' });
    assert.equal(loaded.config.listen.port, 8090);
    assert.equal(loaded.baseDir, dir);
    assert.equal(loaded.source, file);
    assert.equal(loaded.config.routes[0]!.service, 'api');
  });

  test('a bad file names the file and the field', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'meshgate-config-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'bad.yaml');
    await writeFile(file, 'routes: [ { prefix: /x, service: ghost } ]\n');
    await assert.rejects(loadConfigFile(file, {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.issues, [{ path: 'routes[0].service', message: 'unknown service "ghost"' }]);
      assert.ok(err.message.includes(file), err.message);
      return true;
    });
  });

  test('a missing file is a ConfigError saying it cannot be read', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'meshgate-config-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'nope.yaml');
    await assert.rejects(loadConfigFile(file, {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'MESH_ERR_CONFIG');
      assert.equal(err.issues.length, 1);
      assert.match(err.issues[0]!.message, /cannot read/);
      assert.ok(err.issues[0]!.message.includes(file));
      assert.match(err.issues[0]!.message, /ENOENT/);
      return true;
    });
  });
});

describe('the yaml package', () => {
  test('is loaded only once a config text is parsed: a gateway configured with an object never carries it', { timeout: 30_000 }, async (t) => {
    // A fresh process: this one has parsed YAML already.
    const script = `
      import { createRequire } from 'node:module';
      const { createGateway, parseConfig } = await import(${JSON.stringify(new URL('../lib/index.ts', import.meta.url).href)});
      const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('/node_modules/yaml/'));
      const gateway = createGateway({ listen: { port: 0 }, services: { a: { instances: [{ url: 'http://127.0.0.1:9' }] } }, routes: [{ prefix: '/', service: 'a' }], logLevel: 'silent' });
      await gateway.ready();
      const before = loaded();
      const port = parseConfig('listen:\\n  port: 8081\\n').listen.port;
      console.log(JSON.stringify({ before, after: loaded(), port }));
      await gateway.close();
    `;
    assert.deepEqual(await scriptResult(t, script), { before: false, after: true, port: 8081 });
  });
});
