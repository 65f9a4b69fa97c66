/**
 * The dashboard in a real browser (headless Chromium driven by playwright-core) against a real
 * gateway in front of the demo's instances: the token login, live registrations, health checks,
 * circuits and traffic charts, each checked in the DOM and saved as a screenshot. With
 * DASHBOARD_SCREENSHOT=path the last state is also written there (docs/dashboard.png).
 */
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { portOf, startDemoInstance } from '../../examples/standalone/instances.js';
import { launchChromium } from '../browser.js';
import { echo, keepAliveLoad, send, startGateway, startUpstream, tempDir, waitFor } from '../helpers.js';

const TOKEN = 'dashboard-test-token';
const CHECK_INTERVAL_MS = 500;

/** The text of the first element (as drawn) matching `selector`, or '' when there is none. */
const textOf = (page: Page, selector: string): Promise<string> => page.locator(selector).first().innerText({ timeout: 1000 }).then((t) => t, () => '');

test('the dashboard asks for the token, then shows the demo live: a registration, traffic, an open circuit, a failed health check', { timeout: 120_000 }, async (t) => {
  const shots = await tempDir(t, 'meshgate-dashboard-');
  const demo = await Promise.all(['demo-a', 'demo-b', 'demo-c'].map((name) => startDemoInstance(name, 0)));
  t.after(() => demo.forEach((server) => server.close()));
  // The instance the test registers: it answers, then fails its requests, then its health check.
  const mode = { now: 'ok' as 'ok' | 'failing' | 'sick' };
  const serve = echo('demo-x');
  const extra = await startUpstream(t, (req, res) => {
    const health = req.url === '/health';
    if ((health && mode.now === 'sick') || (!health && mode.now === 'failing')) return void res.writeHead(500).end('failing');
    if (health) return void res.writeHead(200).end('ok');
    serve(req, res);
  });
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { port: 0, token: TOKEN },
    services: {
      demo: {
        balancer: 'round-robin',
        instances: demo.map((server, i) => ({ url: `http://127.0.0.1:${portOf(server)}`, id: `demo-${'abc'[i]}`, zone: 'zone-1', metadata: { version: 'v1' } })),
        healthCheck: { path: '/health', interval: CHECK_INTERVAL_MS, unhealthyThreshold: 1 },
        circuitBreaker: { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeout: '10m' },
      },
    },
    routes: [{ name: 'demo', prefix: '/demo', stripPrefix: true, service: 'demo' }],
  });

  const browser = await launchChromium();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  const shot = async (name: string): Promise<string> => {
    const file = join(shots, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    return file;
  };

  // Without the token: a login form, and no data.
  await page.goto(`${adminUrl}/`);
  await page.getByLabel('Admin token').waitFor();
  assert.equal(await page.locator('#instances').count(), 0, 'no table before the token');
  assert.doesNotMatch((await page.content()).toString(), /demo-a/, 'nothing of the registry is on the page');
  await shot('1-login');
  assert.equal((await send(`${adminUrl}/dashboard/api/state`)).status, 401);
  assert.equal((await send(`${adminUrl}/dashboard/api/stream`)).status, 401);

  await page.getByLabel('Admin token').fill('wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'refused' }).waitFor();
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();

  // The demo's three instances, healthy, with what the registry knows of them.
  await page.locator('tr[data-instance="demo/demo-c"]').waitFor();
  await page.locator('#connection', { hasText: 'live' }).waitFor();
  const rows = await page.locator('#instances tbody tr[data-instance]').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-instance')));
  assert.deepEqual(rows, ['demo/demo-a', 'demo/demo-b', 'demo/demo-c']);
  const a = await page.locator('tr[data-instance="demo/demo-a"]').innerText();
  assert.match(a, /demo-a\s+http:\/\/127\.0\.0\.1:\d+\s+zone-1\s+v1\s+1\s+✓ healthy\s+✓ closed\s+no\s+0\s+–\s+–\s+static/);
  assert.match(await textOf(page, '#routes tr[data-route="demo"]'), /\/demo\*\s+demo 100%/);
  assert.equal(await textOf(page, '#config-version'), gateway.snapshot.version);
  await shot('2-demo');

  // Registered through the admin API: on the page within 2 s, without a reload.
  const registered = await send(`${adminUrl}/services/demo/instances`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ url: extra.url, id: 'demo-x', metadata: { version: 'v2' }, ttl: '1h' }),
  });
  assert.equal(registered.status, 201);
  await page.locator('tr[data-instance="demo/demo-x"]').waitFor({ timeout: 2000 });
  assert.match(await page.locator('tr[data-instance="demo/demo-x"]').innerText(), /v2\s+1\s+✓ healthy\s+✓ closed\s+no\s+0\s+\d+s ago\s+\d+s\s+admin/);
  assert.match(await textOf(page, '#events tr[data-event="instance:added"]'), /demo\/demo-x\s+added\s+registered by admin/);
  await shot('3-registered');

  // A short load: the request rate chart and the tables show it.
  let load = keepAliveLoad([url], '/demo/hello', 4);
  await waitFor(async () => Number(await textOf(page, 'figure[data-chart="rps"] [data-peak]')) > 0, 15_000, 'the rps chart to show requests');
  await waitFor(async () => Number(await textOf(page, '#services tr[data-service="demo"] [data-col="rps"]')) > 0, 15_000, 'the services table to show a rate');
  assert.ok(Number(await textOf(page, '#traffic-summary [data-summary="rps"]')) > 0);
  await shot('4-traffic');

  // demo-x fails its requests: its circuit opens, on the page too, in words and colour.
  mode.now = 'failing';
  await waitFor(() => gateway.registry.getInstance('demo', 'demo-x')?.circuit === 'open', 15_000, 'the circuit of demo-x to open');
  await (await load.stop()).failed;
  const circuit = page.locator('tr[data-instance="demo/demo-x"] [data-col="circuit"]');
  await page.locator('tr[data-instance="demo/demo-x"] [data-col="circuit"]', { hasText: 'open' }).waitFor({ timeout: 2000 });
  assert.match((await circuit.getAttribute('class')) ?? '', /state-bad/);
  await page.locator('#events tr[data-event="circuit:state"]', { hasText: 'closed → open' }).waitFor({ timeout: 2000 });
  await waitFor(async () => Number.parseFloat(await textOf(page, 'figure[data-chart="errors"] [data-peak]')) > 0, 10_000, 'the error chart to show the failures');
  await shot('5-circuit-open');

  // demo-x fails its health check: unhealthy within the check interval (plus the probe and the frame).
  mode.now = 'sick';
  await waitFor(() => gateway.registry.getInstance('demo', 'demo-x')?.health === 'unhealthy', CHECK_INTERVAL_MS * 2 + 2000, 'the health check to fail');
  const health = page.locator('tr[data-instance="demo/demo-x"] [data-col="health"]');
  await page.locator('tr[data-instance="demo/demo-x"] [data-col="health"]', { hasText: 'unhealthy' }).waitFor({ timeout: CHECK_INTERVAL_MS + 1000 });
  assert.match((await health.getAttribute('class')) ?? '', /state-bad/);
  const colour = (locator: typeof health): Promise<string> => locator.evaluate((el) => el.ownerDocument.defaultView!.getComputedStyle(el).color);
  assert.notEqual(await colour(health), await colour(page.locator('tr[data-instance="demo/demo-a"] [data-col="health"]')), 'unhealthy is not drawn in the colour of healthy');
  assert.equal(await page.locator('tr[data-instance="demo/demo-a"] [data-col="health"]').textContent(), '✓ healthy');

  // The events, newest first, filtered by kind and by text.
  const events = await page.locator('#events tbody tr[data-event]').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-event')));
  assert.equal(events[0], 'instance:health', 'the newest event first');
  await page.getByLabel('Kind').selectOption('health');
  await waitFor(async () => (await page.locator('#events tbody tr[data-event]').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-event')))).every((e) => e === 'instance:health'), 2000, 'the kind filter');
  assert.match(await textOf(page, '#events tbody tr[data-event]'), /demo\/demo-x\s+healthy → unhealthy/);
  await page.getByLabel('Kind').selectOption('');
  // The instance filter: the ones with a problem.
  await page.locator('#instance-filter').fill('unhealthy');
  await waitFor(async () => (await page.locator('#instances tbody tr[data-instance]').count()) === 1, 2000, 'the instance filter');
  await page.locator('#instance-filter').fill('');
  await page.locator('tr[data-instance="demo/demo-c"]').waitFor();
  // Keyboard: the route's chart button is reachable and works without a mouse.
  await page.getByRole('button', { name: 'Chart route demo' }).focus();
  await page.keyboard.press('Enter');
  await page.locator('#chart-target', { hasText: 'route demo' }).waitFor();
  await waitFor(async () => Number(await textOf(page, 'figure[data-chart="rps"] [data-peak]')) > 0, 5000, 'the route chart to show requests');
  const final = await shot('6-unhealthy');
  if (process.env.DASHBOARD_SCREENSHOT) await copyFile(final, process.env.DASHBOARD_SCREENSHOT);

  // Signing out forgets the token: the form again, and a reload does not bring the data back.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').waitFor();
  await page.reload();
  await page.getByLabel('Admin token').waitFor();
  assert.deepEqual(errors, [], 'no error in the page');
});

test('the tables sort by a column: its header\'s button by click, Enter or Space, aria-sort, the data sorted (not the rows drawn), re-sorted by live changes, with the filters', { timeout: 90_000 }, async (t) => {
  const up = await startUpstream(t, echo('sorted'));
  // 50 services of 10 instances: far more rows than the virtual table draws.
  const services: Record<string, { instances: { url: string; id: string }[] }> = {};
  const name = (s: number): string => `svc-${String(s).padStart(2, '0')}`;
  for (let s = 0; s < 50; s++) services[name(s)] = { instances: Array.from({ length: 10 }, (_, i) => ({ url: `${up.url}/${name(s)}/${i}`, id: `${name(s)}-${i}` })) };
  const { gateway, url, adminUrl } = await startGateway(t, {
    admin: { port: 0, token: TOKEN },
    services,
    routes: [0, 1, 2].map((s) => ({ name: name(s), prefix: `/${name(s)}`, service: name(s) })),
  });
  const traffic = async (route: string, n: number): Promise<void> => {
    for (let i = 0; i < n; i++) assert.equal((await send(`${url}/${route}/x`)).status, 200);
  };
  await traffic('svc-00', 1);
  await traffic('svc-01', 3);
  await traffic('svc-02', 6);

  const browser = await launchChromium();
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1400, height: 1300 } });
  await context.addInitScript((token) => (globalThis as unknown as { sessionStorage: { setItem(k: string, v: string): void } }).sessionStorage.setItem('meshgate.adminToken', token), TOKEN);
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(`${adminUrl}/`);
  await page.locator('#connection', { hasText: 'live' }).waitFor();

  const order = (table: string, attribute: string): Promise<string[]> =>
    page.locator(`#${table} tbody tr[${attribute}]`).evaluateAll((trs, a) => trs.map((tr) => tr.getAttribute(a)!), attribute);
  const header = (table: string, key: string) => page.locator(`#${table} thead th:has(button[data-sort="${key}"])`);
  const sortedHeaders = (table: string): Promise<string[]> =>
    page.locator(`#${table} thead th[aria-sort]`).evaluateAll((ths) => ths.map((th) => `${th.querySelector('button')!.dataset.sort} ${th.getAttribute('aria-sort')}`));
  const firstRows = async (table: string, attribute: string, expected: string[], what: string): Promise<void> =>
    waitFor(async () => JSON.stringify((await order(table, attribute)).slice(0, expected.length)) === JSON.stringify(expected), 3000, what).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify((await order(table, attribute)).slice(0, expected.length + 2))}`);
    });

  // By default: instances by service (then id), one header marked, with its arrow and its words.
  await page.locator('tr[data-instance="svc-00/svc-00-0"]').waitFor();
  assert.deepEqual(await sortedHeaders('instances'), ['service ascending']);
  assert.match(await header('instances', 'service').innerText(), /Service\s*▲/);
  assert.equal(await header('instances', 'service').locator('.sr-only').textContent(), ', sorted ascending');
  assert.deepEqual(await sortedHeaders('events'), ['time descending'], 'events newest first');
  assert.deepEqual(await sortedHeaders('routes'), ['order ascending'], 'routes in the config\'s order');

  // An unhealthy instance at the far end of 500: not drawn, until a sort by health puts it first.
  gateway.registry.setHealth(gateway.registry.getInstance('svc-49', 'svc-49-9')!, 'unhealthy', 'test');
  await page.locator('#instances-title .count', { hasText: '500' }).waitFor();
  assert.equal(await page.locator('tr[data-instance="svc-49/svc-49-9"]').count(), 0, 'the virtual table does not draw it');
  await page.locator('#instances thead button[data-sort="health"]').click();
  await firstRows('instances', 'data-instance', ['svc-49/svc-49-9', 'svc-00/svc-00-0', 'svc-00/svc-00-1'], 'unhealthy first, then the rest by name');
  assert.deepEqual(await sortedHeaders('instances'), ['health ascending']);
  assert.ok((await page.locator('#instances tbody tr[data-instance]').count()) < 100, 'still only the rows in view');
  assert.match(await page.locator('#instances').evaluate((table) => table.parentElement!.getAttribute('aria-label')!), /sorted by Health ascending/);

  // A live change: the row moves to its place at the next redraw.
  gateway.registry.setHealth(gateway.registry.getInstance('svc-20', 'svc-20-5')!, 'unhealthy', 'test');
  await firstRows('instances', 'data-instance', ['svc-20/svc-20-5', 'svc-49/svc-49-9', 'svc-00/svc-00-0'], 'the newly unhealthy instance to move up');

  // The keyboard: Enter turns the direction round, Space back; the button keeps the focus.
  await page.locator('#instances thead button[data-sort="health"]').focus();
  await page.keyboard.press('Enter');
  await firstRows('instances', 'data-instance', ['svc-00/svc-00-0', 'svc-00/svc-00-1'], 'healthy first');
  assert.deepEqual(await sortedHeaders('instances'), ['health descending']);
  assert.match(await header('instances', 'health').innerText(), /Health\s*▼/);
  assert.equal(await page.locator('#instances thead button[data-sort="health"]').evaluate((button) => button.ownerDocument.activeElement === button), true, 'the focus stays on the header');
  await page.keyboard.press('Space');
  await firstRows('instances', 'data-instance', ['svc-20/svc-20-5', 'svc-49/svc-49-9'], 'unhealthy first again');

  // The filter and the sort together.
  await page.locator('#instance-filter').fill('svc-20');
  await waitFor(async () => (await order('instances', 'data-instance')).length === 10, 3000, 'the filter');
  assert.deepEqual((await order('instances', 'data-instance')).slice(0, 3), ['svc-20/svc-20-5', 'svc-20/svc-20-0', 'svc-20/svc-20-1']);
  await page.locator('#instance-filter').fill('');

  // Numbers: the busiest first on the first click; more traffic re-sorts at the next tick.
  await page.locator('#services thead button[data-sort="rps"]').click();
  await firstRows('services', 'data-service', ['svc-02', 'svc-01', 'svc-00'], 'services by rate, largest first');
  assert.deepEqual(await sortedHeaders('services'), ['rps descending']);
  await traffic('svc-00', 10);
  await firstRows('services', 'data-service', ['svc-00', 'svc-02', 'svc-01'], 'svc-00 to move up with its traffic');

  // Routes: by name, then reversed by Enter.
  await page.locator('#routes thead button[data-sort="route"]').focus();
  await page.keyboard.press('Enter');
  await firstRows('routes', 'data-route', ['svc-00', 'svc-01', 'svc-02'], 'routes by name');
  await page.keyboard.press('Enter');
  await firstRows('routes', 'data-route', ['svc-02', 'svc-01', 'svc-00'], 'routes by name, descending');
  assert.deepEqual(await sortedHeaders('routes'), ['route descending']);
  assert.deepEqual(errors, [], 'no error in the page');
});
