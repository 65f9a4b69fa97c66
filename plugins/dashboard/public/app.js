// The meshgate dashboard: one page, no build step. Preact + htm render it, uPlot draws the charts.
// Data comes from the admin API with the admin token (kept in sessionStorage, sent as a Bearer
// header): a snapshot (GET /dashboard/api/state, /routes), then one stream of changes read with
// fetch (EventSource cannot send the header). Changes are applied to a plain store and drawn at
// most ten times a second, only what changed; long tables draw only the rows in view.
import { h, options, render } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import uPlot from 'uplot';

const html = htm.bind(h);
const TOKEN_KEY = 'meshgate.adminToken';
const MAX_EVENTS = 500;
const ROW_HEIGHT = 30;

// Renders happen inside the once-per-frame flush below, so a render's cost is measured where it is paid.
options.debounceRendering = (callback) => callback();

/** What the bench and the tests read: when the first data was drawn, and what the updates cost. */
const stats = (window.__meshgateDashboard = { firstRender: null, messages: 0, flushes: 0, flushMs: 0 });

// ---- the store: plain objects, changed by the stream, read by the components -------------------

const store = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? '',
  instances: new Map(), // "service/id" -> instance
  services: new Map(), // name -> { name, balancer, keys: Set }
  summaries: new Map(), // "kind:name" -> [rps, errorRate, p50, p99]
  events: [], // newest first
  lastEventId: 0,
  routes: [],
  routesVersion: '',
  meta: { role: '', version: '', appliedAt: '', resolution: 5000, window: 900000, workers: 0 },
  skew: 0, // server clock minus ours, ms
  connection: 'connecting',
  membership: 0, // bumped when an instance or a service comes or goes
  chart: null, // { key, t, rps, errorRate, p50, p99 } of the selected series
};

const subscribers = new Map();
const dirty = new Set();
let flushing = false;
let lastFlush = 0;
/** At most this often the page draws again: a frame costs the browser some milliseconds of paint whatever changed, so a burst of changes is drawn once. */
const FRAME_MS = 100;

/** Marks topics changed; their components are drawn again on the next frame (at most every {@link FRAME_MS}), once. */
function notify(...topics) {
  for (const topic of topics) dirty.add(topic);
  if (flushing) return;
  flushing = true;
  setTimeout(() => requestAnimationFrame(flush), Math.max(0, lastFlush + FRAME_MS - performance.now()));
}

function flush() {
  const started = (lastFlush = performance.now());
  flushing = false;
  const callbacks = new Set();
  for (const topic of dirty) for (const callback of subscribers.get(topic) ?? []) callbacks.add(callback);
  dirty.clear();
  for (const callback of callbacks) callback();
  stats.flushes++;
  stats.flushMs += performance.now() - started;
}

/** Draws the calling component again whenever one of `topics` changes. */
function useTopics(...topics) {
  const [, setRevision] = useState(0);
  useEffect(() => {
    const callback = () => setRevision((n) => n + 1);
    for (const topic of topics) {
      if (!subscribers.has(topic)) subscribers.set(topic, new Set());
      subscribers.get(topic).add(callback);
    }
    return () => topics.forEach((topic) => subscribers.get(topic).delete(callback));
  }, []);
}

const keyOf = (inst) => `${inst.service}/${inst.id}`;
const serverNow = () => Date.now() + store.skew;

function serviceEntry(name) {
  let service = store.services.get(name);
  if (service === undefined) {
    store.services.set(name, (service = { name, balancer: '', keys: new Set() }));
    store.membership++;
  }
  return service;
}

function upsertInstance(inst) {
  const key = keyOf(inst);
  const service = serviceEntry(inst.service);
  if (!service.keys.has(key)) {
    service.keys.add(key);
    store.membership++;
  }
  store.instances.set(key, inst);
  notify('instances', 'services');
}

function removeInstance(inst) {
  const key = keyOf(inst);
  store.instances.delete(key);
  store.services.get(inst.service)?.keys.delete(key);
  store.membership++;
  notify('instances', 'services');
}

function applyState(state) {
  store.skew = Date.parse(state.now) - Date.now();
  store.meta = { role: state.role, version: state.version, appliedAt: state.appliedAt, resolution: state.resolution, window: state.window, workers: state.workers };
  store.instances.clear();
  store.services.clear();
  for (const service of state.services) {
    const entry = serviceEntry(service.name);
    entry.balancer = service.balancer;
    for (const inst of service.instances) {
      entry.keys.add(keyOf(inst));
      store.instances.set(keyOf(inst), inst);
    }
  }
  store.membership++;
  store.summaries.clear();
  for (const [kind, name, ...summary] of state.series) store.summaries.set(`${kind}:${name}`, summary);
  store.events = state.events.slice().reverse();
  store.lastEventId = state.events.at(-1)?.id ?? store.lastEventId;
  notify('instances', 'services', 'series', 'events', 'meta');
}

function applyEvent(event) {
  if (event.id <= store.lastEventId) return;
  store.lastEventId = event.id;
  if (event.event === 'instance:removed') removeInstance(event.instance);
  else if (event.instance) upsertInstance(event.instance);
  store.events.unshift(event);
  if (store.events.length > MAX_EVENTS) store.events.length = MAX_EVENTS;
  notify('events');
  if (event.event === 'config:applied') void loadState().then(loadRoutes);
}

/** Requests per second of `count` requests in bucket `bucket`: the bucket in progress counts only the time it has run. */
function rateOf(bucket, count, now) {
  const resolution = store.meta.resolution;
  const seconds = bucket === Math.floor(now / resolution) ? Math.max(1, (now % resolution) / 1000) : resolution / 1000;
  return count / Math.min(seconds, resolution / 1000);
}

function applyTick(tick) {
  const now = Date.parse(tick.now);
  for (const [kind, name, rps, errorRate, p50, p99, points] of tick.series) {
    const key = `${kind}:${name}`;
    store.summaries.set(key, [rps, errorRate, p50, p99]);
    const chart = store.chart;
    if (chart === null || chart.key !== key) continue;
    for (const [bucket, count, errors, p50b, p99b] of points) {
      const t = (bucket * store.meta.resolution) / 1000;
      let i = chart.t.length - 1;
      while (i >= 0 && chart.t[i] > t) i--;
      if (i < 0) continue;
      if (chart.t[i] !== t) {
        // A new bucket: the window moves on by one.
        for (const column of ['t', 'rps', 'errorRate', 'p50', 'p99']) chart[column].shift();
        chart.t.push(t);
        chart.rps.push(0);
        chart.errorRate.push(0);
        chart.p50.push(null);
        chart.p99.push(null);
        i = chart.t.length - 1;
      }
      chart.rps[i] = rateOf(bucket, count, now);
      chart.errorRate[i] = count === 0 ? 0 : errors / count;
      chart.p50[i] = p50b;
      chart.p99[i] = p99b;
    }
    notify('chart');
  }
  for (const inst of tick.instances) if (store.instances.has(keyOf(inst))) upsertInstance(inst);
  notify('series');
}

// ---- talking to the admin API ---------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const headers = store.token ? { authorization: `Bearer ${store.token}` } : {};
  const res = await fetch(path, { ...init, headers, cache: 'no-store' });
  if (res.status === 401) throw new Unauthorized('the admin token was refused');
  if (!res.ok) throw new Error(`${path} answered ${res.status}`);
  return res;
}

async function loadState() {
  applyState(await (await api('/dashboard/api/state')).json());
}

async function loadRoutes() {
  const body = await (await api('/routes')).json();
  store.routes = body.routes;
  store.routesVersion = body.version;
  notify('routes');
}

async function loadChart(kind, name) {
  const params = new URLSearchParams({ kind, ...(kind === 'gateway' ? {} : { name }) });
  const body = await (await api(`/dashboard/api/series?${params}`)).json();
  store.chart = { key: `${kind}:${kind === 'gateway' ? '' : name}`, t: body.t, rps: body.rps, errorRate: body.errorRate, p50: body.p50, p99: body.p99 };
  notify('chart');
}

let streamAbort = null;

/** Reads the stream until it ends, then reads it again; a fresh snapshot follows every (re)connection. */
async function streamForever(onUnauthorized) {
  streamAbort?.abort();
  const abort = (streamAbort = new AbortController());
  let delay = 500;
  let fresh = true;
  while (!abort.signal.aborted) {
    try {
      const headers = store.token ? { authorization: `Bearer ${store.token}` } : {};
      const res = await fetch('/dashboard/api/stream', { headers, signal: abort.signal, cache: 'no-store' });
      if (res.status === 401) return onUnauthorized();
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      // Messages that arrive while the snapshot is on its way wait for it, so none is lost or undone.
      let waiting = null;
      const handle = (event, data) => {
        stats.messages++;
        if (event === 'hello') {
          store.connection = 'live';
          notify('meta');
          delay = 500;
          // The snapshot just read saw every event so far: nothing to catch up on.
          if (fresh && data.lastEvent === store.lastEventId) return void (fresh = false);
          fresh = false;
          waiting = [];
          void loadState()
            .then(loadRoutes)
            .catch((err) => (err instanceof Unauthorized ? onUnauthorized() : console.error(err)))
            .finally(() => {
              const queued = waiting ?? [];
              waiting = null;
              for (const [e, d] of queued) handle(e, d);
            });
        } else if (waiting !== null) waiting.push([event, data]);
        else if (event === 'event') applyEvent(data);
        else if (event === 'tick') applyTick(data);
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data !== '') handle(event, JSON.parse(data));
        }
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      console.warn('dashboard stream:', err.message);
    }
    store.connection = 'reconnecting';
    notify('meta');
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// ---- formatting -----------------------------------------------------------------------------------

const pad = (n) => (n < 10 ? `0${n}` : `${n}`);

const fmt = {
  rps: (n) => (n === undefined ? '–' : n >= 100 ? n.toFixed(0) : n.toFixed(1)),
  percent: (n) => (n === undefined ? '–' : `${(n * 100).toFixed(n > 0 && n < 0.01 ? 2 : 1)}%`),
  ms: (n) => (n === null || n === undefined ? '–' : n >= 100 ? `${n.toFixed(0)} ms` : `${n.toFixed(1)} ms`),
  ago(iso) {
    if (!iso) return '–';
    const s = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
    return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
  },
  // By hand: toLocaleTimeString costs a tenth of a millisecond a call, on every row of every frame.
  time(iso) {
    const d = new Date(iso);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  },
};

const HEALTH = { healthy: ['ok', '✓'], unhealthy: ['bad', '✗'], draining: ['warn', '◐'] };
const CIRCUIT = { closed: ['ok', '✓'], 'half-open': ['warn', '◐'], open: ['bad', '✗'] };

/** A state as text and colour, never colour alone. */
function State({ value, table, col }) {
  const [tone, mark] = table[value] ?? ['warn', '?'];
  return html`<span class=${`state state-${tone}`} data-col=${col}><span aria-hidden="true">${mark} </span>${value}</span>`;
}

// ---- sorting --------------------------------------------------------------------------------------
// A sortable column has a `key` and `sort: { value(row), first?, fixed? }`: `value` gives a number or
// a string (null when there is none yet), `first` the direction of its first click (numbers start
// with the largest), `fixed` that a row's value never changes while the row exists, so a sort by it
// is kept until the rows change instead of done again on every draw.

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

/** Problems first, when a state column is sorted ascending. */
const HEALTH_RANK = { unhealthy: 0, draining: 1, healthy: 2 };
const CIRCUIT_RANK = { open: 0, 'half-open': 1, closed: 2 };
const rank = (table, value) => table[value] ?? 1.5;

const missing = (v) => v === null || v === undefined || Number.isNaN(v);

/**
 * `rows` ordered by `column`'s values in `direction`, as a new array: numbers by value, text by the
 * collator (localeCompare's order, "svc-2" before "svc-10"), rows without a value last either way;
 * equal values keep the order the rows came in. Each value is read once.
 */
function sortRows(rows, column, direction) {
  const sign = direction === 'descending' ? -1 : 1;
  const keyed = rows.map((row, i) => ({ v: column.sort.value(row), i, row }));
  keyed.sort((a, b) => {
    const aMissing = missing(a.v);
    const bMissing = missing(b.v);
    if (aMissing || bMissing) return aMissing === bMissing ? a.i - b.i : aMissing ? 1 : -1;
    const order = typeof a.v === 'number' && typeof b.v === 'number' ? a.v - b.v : collator.compare(String(a.v), String(b.v));
    return order === 0 ? a.i - b.i : sign * order;
  });
  return keyed.map((k) => k.row);
}

/**
 * A table's order: `[sort, sorted, onSort]`, where `sorted` is `rows` in that order, read again on
 * every draw (a row whose value changed moves to its place), and `onSort(column)` sorts by
 * `column`, or turns the direction round when it is already the one.
 */
function useSort(columns, rows, initial) {
  const [sort, setSort] = useState(initial);
  const column = columns.find((c) => c.key === sort.key);
  const fixed = column.sort.fixed === true;
  const kept = useMemo(() => (fixed ? sortRows(rows, column, sort.direction) : null), [fixed ? rows : null, sort.key, sort.direction]);
  const onSort = (c) =>
    setSort((s) => (s.key === c.key ? { key: c.key, direction: s.direction === 'ascending' ? 'descending' : 'ascending' } : { key: c.key, direction: c.sort.first ?? 'ascending' }));
  return [sort, kept ?? sortRows(rows, column, sort.direction), onSort];
}

/** A column's header: with a sort, a button that sorts by it, its state in `aria-sort`, an arrow and words. */
function HeaderCell({ column, sort, onSort }) {
  const style = column.width ? `width:${column.width}` : undefined;
  if (!column.sort) return html`<th scope="col" class=${column.cls} style=${style}>${column.label}</th>`;
  const direction = sort.key === column.key ? sort.direction : undefined;
  return html`<th scope="col" class=${column.cls} style=${style} aria-sort=${direction}>
    <button type="button" class="sort" data-sort=${column.key} onClick=${() => onSort(column)}>${column.label}<span class=${`arrow${direction ? '' : ' idle'}`} aria-hidden="true">${direction === 'ascending' ? '▲' : direction === 'descending' ? '▼' : '↕'}</span>${direction ? html`<span class="sr-only">, sorted ${direction}</span>` : null}</button>
  </th>`;
}

// ---- components -----------------------------------------------------------------------------------

/** A table that draws only the rows in view (plus a margin), so 2,000 rows cost what 30 do; `rows` come sorted (`useSort`). */
function VirtualTable({ id, label, columns, rows, renderRow, sort, onSort, height = 360 }) {
  const [top, setTop] = useState(0);
  const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - 5);
  const count = Math.ceil(height / ROW_HEIGHT) + 10;
  const last = Math.min(rows.length, first + count);
  const boxHeight = Math.min(height, (rows.length + 1) * ROW_HEIGHT + 4);
  const by = columns.find((c) => c.key === sort.key)?.label;
  return html`
    <div class="scroll" style=${`height:${Math.max(boxHeight, ROW_HEIGHT * 2 + 4)}px`} tabindex="0" role="region" aria-label=${`${label}, ${rows.length} rows, sorted by ${by} ${sort.direction}; scroll for more`} onScroll=${(e) => setTop(e.currentTarget.scrollTop)}>
      <table id=${id} aria-rowcount=${rows.length + 1}>
        <thead><tr>${columns.map((c) => html`<${HeaderCell} key=${c.key ?? c.label} column=${c} sort=${sort} onSort=${onSort} />`)}</tr></thead>
        <tbody>
          ${first > 0 ? html`<tr class="spacer" aria-hidden="true" style=${`height:${first * ROW_HEIGHT}px`}><td colspan=${columns.length}></td></tr>` : null}
          ${rows.slice(first, last).map((row, i) => renderRow(row, first + i))}
          ${last < rows.length ? html`<tr class="spacer" aria-hidden="true" style=${`height:${(rows.length - last) * ROW_HEIGHT}px`}><td colspan=${columns.length}></td></tr>` : null}
          ${rows.length === 0 ? html`<tr><td colspan=${columns.length} class="empty">Nothing to show.</td></tr>` : null}
        </tbody>
      </table>
    </div>`;
}

function Login({ error, onToken }) {
  const [value, setValue] = useState('');
  return html`
    <main class="login">
      <h1>meshgate dashboard</h1>
      <form onSubmit=${(e) => { e.preventDefault(); onToken(value.trim()); }}>
        <label for="token">Admin token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required value=${value} onInput=${(e) => setValue(e.currentTarget.value)} aria-describedby="token-help" />
        <p id="token-help" class="help">The gateway's <code>admin.token</code> (or <code>MESHGATE_ADMIN_TOKEN</code>). It stays in this tab's session storage and goes only to this admin server.</p>
        ${error ? html`<p class="error" role="alert">${error}</p>` : null}
        <button type="submit">Sign in</button>
      </form>
    </main>`;
}

function Header({ onSignOut }) {
  useTopics('meta', 'routes');
  const { role, version, appliedAt, workers } = store.meta;
  const live = store.connection === 'live';
  return html`
    <header>
      <h1>meshgate</h1>
      <p class="meta">
        ${role === 'primary' ? `cluster primary, ${workers} worker${workers === 1 ? '' : 's'} · ` : ''}config <code id="config-version">${version}</code>${appliedAt ? ` applied ${fmt.time(appliedAt)}` : ''}
      </p>
      <p class=${`connection state state-${live ? 'ok' : 'warn'}`} role="status" aria-live="polite" id="connection"><span aria-hidden="true">${live ? '●' : '○'} </span>${live ? 'live' : store.connection}</p>
      ${store.token ? html`<button type="button" onClick=${onSignOut}>Sign out</button>` : null}
    </header>`;
}

const CHART_COLOURS = { rps: '#2563eb', errors: '#dc2626', p50: '#059669', p99: '#d97706' };

/** One small time-series chart with a text summary under it (the chart's words for those who cannot see it). */
function Chart({ id, title, series, columns, format, axisFormat = format, gaps = false, caption }) {
  useTopics('chart');
  const box = useRef(null);
  const plot = useRef(null);
  const chart = store.chart;
  const data = chart ? [chart.t, ...columns.map((c) => chart[c])] : null;
  useEffect(() => {
    if (!box.current) return undefined;
    const width = Math.max(240, box.current.clientWidth);
    plot.current = new uPlot(
      {
        width,
        height: 150,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [{ stroke: '#64748b', grid: { stroke: '#e2e8f0' } }, { stroke: '#64748b', grid: { stroke: '#e2e8f0' }, size: 64, values: (u, ticks) => ticks.map(axisFormat) }],
        // Latency has no value in a bucket without requests: its lines join across them, with dots to show where they were.
        series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.colour, width: 1.5, value: (u, v) => (v === null ? '–' : format(v)), spanGaps: gaps, points: gaps ? { show: true, size: 4 } : {} }))],
      },
      data ?? [[], ...columns.map(() => [])],
      box.current,
    );
    return () => plot.current.destroy();
  }, []);
  useEffect(() => {
    if (plot.current && data) plot.current.setData(data);
  });
  return html`
    <figure class="chart" data-chart=${id}>
      <figcaption><strong>${title}</strong> <span class="caption">${data ? caption(chart) : 'loading…'}</span></figcaption>
      <div ref=${box} class="plot" role="img" aria-label=${`${title} over the last ${Math.round(store.meta.window / 60000)} minutes`}></div>
    </figure>`;
}

const peak = (values) => values.reduce((m, v) => (v !== null && v > m ? v : m), 0);
const lastValue = (values) => {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== 0) return values[i];
  return values.at(-1) ?? 0;
};

function Traffic({ target, onTarget }) {
  useTopics('series');
  useEffect(() => {
    void loadChart(target.kind, target.name).catch((err) => console.error(err));
  }, [target.kind, target.name]);
  const summary = store.summaries.get(`${target.kind}:${target.kind === 'gateway' ? '' : target.name}`);
  const what = target.kind === 'gateway' ? 'all requests' : `${target.kind} ${target.name}`;
  return html`
    <section aria-labelledby="traffic-title">
      <div class="section-head">
        <h2 id="traffic-title">Traffic: <span id="chart-target">${what}</span></h2>
        <p class="summary" id="traffic-summary">Last minute: <span data-summary="rps">${fmt.rps(summary?.[0] ?? 0)}</span> req/s, <span data-summary="errors">${fmt.percent(summary?.[1] ?? 0)}</span> errors, p50 <span data-summary="p50">${fmt.ms(summary?.[2])}</span>, p99 <span data-summary="p99">${fmt.ms(summary?.[3])}</span></p>
        ${target.kind === 'gateway' ? null : html`<button type="button" onClick=${() => onTarget({ kind: 'gateway', name: '' })}>Show all requests</button>`}
      </div>
      <div class="charts">
        <${Chart} id="rps" title="Requests per second" columns=${['rps']} series=${[{ label: 'req/s', colour: CHART_COLOURS.rps }]} format=${(v) => fmt.rps(v)} axisFormat=${(v) => `${+v.toPrecision(3)}`}
          caption=${(c) => html`now <span data-now>${fmt.rps(lastValue(c.rps))}</span>, peak <span data-peak>${fmt.rps(peak(c.rps))}</span>`} />
        <${Chart} id="errors" title="Error rate (5xx)" columns=${['errorRate']} series=${[{ label: 'errors', colour: CHART_COLOURS.errors }]} format=${(v) => fmt.percent(v)} axisFormat=${(v) => `${+(v * 100).toPrecision(3)}%`}
          caption=${(c) => html`peak <span data-peak>${fmt.percent(peak(c.errorRate))}</span>`} />
        <${Chart} id="latency" title="Latency" columns=${['p50', 'p99']} series=${[{ label: 'p50', colour: CHART_COLOURS.p50 }, { label: 'p99', colour: CHART_COLOURS.p99 }]} format=${(v) => fmt.ms(v)} axisFormat=${(v) => `${+v.toPrecision(3)} ms`} gaps=${true}
          caption=${(c) => html`p99 peak <span data-peak>${fmt.ms(peak(c.p99))}</span>`} />
      </div>
    </section>`;
}

function healthCounts(service) {
  let healthy = 0;
  let problems = 0;
  for (const key of service.keys) {
    const inst = store.instances.get(key);
    if (inst.health === 'healthy' && inst.circuit !== 'open' && !inst.ejectedUntil) healthy++;
    else problems++;
  }
  return { healthy, problems };
}

/** A series' last-minute number (0 rps, 1 error rate, 2 p50, 3 p99) as a sort value: rates are 0 without requests, latencies none. */
const summaryOf = (key, i) => store.summaries.get(key)?.[i] ?? (i < 2 ? 0 : null);

/** The columns of a series' numbers, for the services and the routes tables. */
function seriesColumns(kind, nameOf) {
  const metric = (key, label, i, width) => ({ key, label, cls: 'num', width, sort: { value: (row) => summaryOf(`${kind}:${nameOf(row)}`, i), first: 'descending' } });
  return [metric('rps', 'req/s', 0, '9%'), metric('errors', 'Errors', 1, '9%'), metric('p50', 'p50', 2, '9%'), metric('p99', 'p99', 3, '9%')];
}

const SERVICE_COLUMNS = [
  { key: 'service', label: 'Service', width: '18%', sort: { value: (name) => name, fixed: true } },
  { key: 'balancer', label: 'Balancer', width: '12%', sort: { value: (name) => store.services.get(name).balancer, fixed: true } },
  { key: 'instances', label: 'Instances', cls: 'num', width: '8%', sort: { value: (name) => store.services.get(name).keys.size, first: 'descending', fixed: true } },
  // The share of instances usable: the services with the fewest first.
  { key: 'usable', label: 'Usable', cls: 'num', width: '8%', sort: { value: (name) => { const service = store.services.get(name); return service.keys.size === 0 ? 0 : healthCounts(service).healthy / service.keys.size; } } },
  ...seriesColumns('service', (name) => name),
  { label: 'Show', width: '18%' },
];

function Services({ onTarget, onFilter }) {
  useTopics('services', 'series');
  const names = useMemo(() => [...store.services.keys()].sort(collator.compare), [store.membership]);
  const [sort, rows, onSort] = useSort(SERVICE_COLUMNS, names, { key: 'service', direction: 'ascending' });
  return html`
    <section aria-labelledby="services-title">
      <h2 id="services-title">Services <span class="count">${names.length}</span></h2>
      <${VirtualTable} id="services" label="Services" columns=${SERVICE_COLUMNS} rows=${rows} sort=${sort} onSort=${onSort} height=${300} renderRow=${(name) => {
        const service = store.services.get(name);
        const { healthy, problems } = healthCounts(service);
        const s = store.summaries.get(`service:${name}`);
        return html`<tr key=${name} data-service=${name}>
          <th scope="row">${name}</th><td>${service.balancer}</td><td class="num">${service.keys.size}</td>
          <td class="num"><span class=${`state state-${problems === 0 ? (healthy === 0 ? 'warn' : 'ok') : healthy === 0 ? 'bad' : 'warn'}`}>${healthy}/${service.keys.size}</span></td>
          <td class="num" data-col="rps">${fmt.rps(s?.[0] ?? 0)}</td><td class="num">${fmt.percent(s?.[1] ?? 0)}</td><td class="num">${fmt.ms(s?.[2])}</td><td class="num">${fmt.ms(s?.[3])}</td>
          <td class="actions"><button type="button" onClick=${() => onTarget({ kind: 'service', name })} aria-label=${`Chart service ${name}`}>chart</button> <button type="button" onClick=${() => onFilter(name)} aria-label=${`Instances of ${name}`}>instances</button></td>
        </tr>`;
      }} />
    </section>`;
}

/** An instance column sorted by `value(instance)`; rows are the store's keys. */
const byInstance = (value, more = {}) => ({ value: (key) => value(store.instances.get(key)), ...more });
const leaseEnds = (inst) => (inst.ttl === undefined || !inst.lastHeartbeat ? null : Date.parse(inst.lastHeartbeat) + inst.ttl);

const INSTANCE_COLUMNS = [
  { key: 'service', label: 'Service', width: '9%', sort: byInstance((i) => i.service, { fixed: true }) },
  { key: 'instance', label: 'Instance', width: '10%', sort: byInstance((i) => i.id, { fixed: true }) },
  { key: 'url', label: 'URL', width: '15%', sort: byInstance((i) => i.url, { fixed: true }) },
  { key: 'zone', label: 'Zone', width: '6%', sort: byInstance((i) => i.zone ?? null) },
  { key: 'version', label: 'Version', width: '6%', sort: byInstance((i) => i.metadata?.version ?? null) },
  { key: 'weight', label: 'Weight', cls: 'num', width: '5%', sort: byInstance((i) => i.weight, { first: 'descending' }) },
  { key: 'health', label: 'Health', width: '9%', sort: byInstance((i) => rank(HEALTH_RANK, i.health)) },
  { key: 'circuit', label: 'Circuit', width: '8%', sort: byInstance((i) => rank(CIRCUIT_RANK, i.circuit)) },
  // Ejected ones first (the soonest back first), then the others.
  { key: 'ejected', label: 'Ejected', width: '7%', sort: byInstance((i) => (i.ejectedUntil ? Date.parse(i.ejectedUntil) : Infinity)) },
  { key: 'inflight', label: 'In flight', cls: 'num', width: '5%', sort: byInstance((i) => i.inflight, { first: 'descending' }) },
  // The oldest heartbeat (the likeliest to expire) first.
  { key: 'heartbeat', label: 'Heartbeat', width: '7%', sort: byInstance((i) => (i.lastHeartbeat ? Date.parse(i.lastHeartbeat) : null)) },
  { key: 'lease', label: 'Lease left', width: '6%', sort: byInstance(leaseEnds) },
  { key: 'source', label: 'Source', width: '7%', sort: byInstance((i) => i.source) },
];

function matches(inst, text) {
  return `${inst.service} ${inst.id} ${inst.url} ${inst.zone ?? ''} ${inst.metadata?.version ?? ''} ${inst.source} ${inst.health} ${inst.circuit} ${inst.ejectedUntil ? 'ejected' : ''}`.toLowerCase().includes(text);
}

function Instances({ service, onService }) {
  useTopics('instances', 'clock');
  const [text, setText] = useState('');
  const needle = text.trim().toLowerCase();
  const members = useMemo(() => {
    const keys = service ? [...(store.services.get(service)?.keys ?? [])] : [...store.instances.keys()];
    return keys.sort(collator.compare);
  }, [store.membership, service]);
  // A text filter reads states that change without a membership change: it is applied on every draw.
  const filtered = needle === '' ? members : members.filter((key) => matches(store.instances.get(key), needle));
  const [sort, rows, onSort] = useSort(INSTANCE_COLUMNS, filtered, { key: 'service', direction: 'ascending' });
  const names = useMemo(() => [...store.services.keys()].sort(collator.compare), [store.membership]);
  return html`
    <section aria-labelledby="instances-title">
      <div class="section-head">
        <h2 id="instances-title">Instances <span class="count">${rows.length}</span></h2>
        <label for="instance-service">Service</label>
        <select id="instance-service" value=${service} onChange=${(e) => onService(e.currentTarget.value)}>
          <option value="">all services</option>
          ${names.map((n) => html`<option value=${n}>${n}</option>`)}
        </select>
        <label for="instance-filter">Filter</label>
        <input id="instance-filter" type="search" placeholder="id, url, zone, unhealthy, open…" value=${text} onInput=${(e) => setText(e.currentTarget.value)} />
      </div>
      <${VirtualTable} id="instances" label="Instances" columns=${INSTANCE_COLUMNS} rows=${rows} sort=${sort} onSort=${onSort} height=${420} renderRow=${(key) => {
        const inst = store.instances.get(key);
        const leaseLeft = inst.ttl === undefined || !inst.lastHeartbeat ? '–' : `${Math.max(0, Math.round((Date.parse(inst.lastHeartbeat) + inst.ttl - serverNow()) / 1000))}s`;
        const metadata = JSON.stringify(inst.metadata ?? {});
        return html`<tr key=${key} data-instance=${key}>
          <td>${inst.service}</td><th scope="row" title=${inst.id}>${inst.id}</th><td class="url" title=${inst.url}>${inst.url}</td><td>${inst.zone ?? '–'}</td>
          <td title=${metadata}>${inst.metadata?.version ?? (metadata === '{}' ? '–' : metadata)}</td><td class="num">${inst.weight}</td>
          <td><${State} value=${inst.health} table=${HEALTH} col="health" /></td>
          <td><${State} value=${inst.circuit} table=${CIRCUIT} col="circuit" /></td>
          <td>${inst.ejectedUntil ? html`<span class="state state-bad" data-col="ejected"><span aria-hidden="true">✗ </span>until ${fmt.time(inst.ejectedUntil)}</span>` : html`<span data-col="ejected">no</span>`}</td>
          <td class="num" data-col="inflight">${inst.inflight}</td><td>${fmt.ago(inst.lastHeartbeat)}</td><td>${leaseLeft}</td><td data-col="source">${inst.source}</td>
        </tr>`;
      }} />
    </section>`;
}

function describeMatch(match) {
  const parts = [match.prefix !== undefined ? `${match.prefix}*` : match.path ?? `~${match.pathRegex}`];
  if (match.methods) parts.push(match.methods.join(','));
  if (match.hosts) parts.push(`host ${match.hosts.join(',')}`);
  if (match.headers) parts.push(`headers ${Object.keys(match.headers).join(',')}`);
  if (match.query) parts.push(`query ${Object.keys(match.query).join(',')}`);
  return parts.join(' · ');
}

const backendsOf = (route) => (route.redirect ? `redirect ${JSON.stringify(route.redirect)}` : route.backends.map((b) => `${b.name} ${b.percent}%`).join(', '));

const ROUTE_COLUMNS = [
  // The route's place in the config (not its precedence, which depends on the request): the table's order until another is chosen.
  { key: 'order', label: '#', cls: 'num', width: '7%', sort: { value: (route) => route.index, fixed: true } },
  { key: 'route', label: 'Route', width: '14%', sort: { value: (route) => route.name, fixed: true } },
  { key: 'matches', label: 'Matches', width: '16%', sort: { value: (route) => describeMatch(route.match), fixed: true } },
  { key: 'backends', label: 'Backends (split)', width: '17%', sort: { value: backendsOf, fixed: true } },
  ...seriesColumns('route', (route) => route.name),
  { label: 'Show', width: '10%' },
];

function Routes({ onTarget }) {
  useTopics('routes', 'series');
  const [sort, rows, onSort] = useSort(ROUTE_COLUMNS, store.routes, { key: 'order', direction: 'ascending' });
  return html`
    <section aria-labelledby="routes-title">
      <h2 id="routes-title">Routes <span class="count">${store.routes.length}</span> <span class="version">config <code>${store.routesVersion}</code></span></h2>
      <${VirtualTable} id="routes" label="Routes" columns=${ROUTE_COLUMNS} rows=${rows} sort=${sort} onSort=${onSort} height=${300} renderRow=${(route) => {
        const s = store.summaries.get(`route:${route.name}`);
        const backends = backendsOf(route);
        return html`<tr key=${route.index} data-route=${route.name}>
          <td class="num">${route.index + 1}</td><th scope="row">${route.name}</th><td title=${describeMatch(route.match)}>${describeMatch(route.match)}</td><td title=${backends}>${backends}</td>
          <td class="num">${fmt.rps(s?.[0] ?? 0)}</td><td class="num">${fmt.percent(s?.[1] ?? 0)}</td><td class="num">${fmt.ms(s?.[2])}</td><td class="num">${fmt.ms(s?.[3])}</td>
          <td class="actions"><button type="button" onClick=${() => onTarget({ kind: 'route', name: route.name })} aria-label=${`Chart route ${route.name}`}>chart</button></td>
        </tr>`;
      }} />
    </section>`;
}

const EVENT_KINDS = {
  registrations: ['instance:added'],
  removals: ['instance:removed'],
  health: ['instance:health', 'instance:updated'],
  circuits: ['circuit:state'],
  ejections: ['instance:ejected', 'instance:returned'],
  config: ['config:applied', 'config:rejected'],
  other: ['service:preserved', 'gateway:closing'],
};

function eventText(e) {
  const inst = e.instance;
  const subject = inst ? `${inst.service}/${inst.id}` : e.service ?? (e.version ? `version ${e.version}` : '');
  switch (e.event) {
    case 'instance:health':
      return [subject, `${e.previous} → ${inst.health}`, e.reason, inst.health === 'healthy' ? 'ok' : 'bad'];
    case 'circuit:state':
      return [subject, `${e.previous} → ${inst.circuit}`, e.reason, inst.circuit === 'closed' ? 'ok' : inst.circuit === 'open' ? 'bad' : 'warn'];
    case 'instance:removed':
      return [subject, 'removed', e.reason, e.reason === 'expired' ? 'bad' : 'warn'];
    case 'instance:ejected':
      return [subject, 'ejected', e.reason, 'bad'];
    case 'config:applied':
      return [subject, `applied (from ${e.origin})`, `was ${e.previous}`, 'ok'];
    case 'config:rejected':
      return [`version ${e.proposed}`, `rejected (from ${e.origin})`, e.error, 'bad'];
    default:
      return [subject, e.event.replace(/^.*:/, ''), e.reason ?? '', 'info'];
  }
}

const EVENT_COLUMNS = [
  // Events are numbered in the order they happened: the number is the time, without ties.
  { key: 'time', label: 'Time', width: '12%', sort: { value: (e) => e.id, first: 'descending' } },
  { key: 'event', label: 'Event', width: '20%', sort: { value: (e) => e.event } },
  { key: 'subject', label: 'Subject', width: '22%', sort: { value: (e) => eventText(e)[0] } },
  { key: 'change', label: 'Change', width: '22%', sort: { value: (e) => eventText(e)[1] } },
  { key: 'reason', label: 'Reason', width: '24%', sort: { value: (e) => eventText(e)[2] || null } },
];

function Events() {
  useTopics('events');
  const [kind, setKind] = useState('');
  const [text, setText] = useState('');
  const needle = text.trim().toLowerCase();
  const wanted = kind === '' ? null : new Set(EVENT_KINDS[kind]);
  const filtered = store.events.filter((e) => (wanted === null || wanted.has(e.event)) && (needle === '' || JSON.stringify(e).toLowerCase().includes(needle)));
  const [sort, rows, onSort] = useSort(EVENT_COLUMNS, filtered, { key: 'time', direction: 'descending' });
  return html`
    <section aria-labelledby="events-title">
      <div class="section-head">
        <h2 id="events-title">Events <span class="count">${rows.length}</span></h2>
        <label for="event-kind">Kind</label>
        <select id="event-kind" value=${kind} onChange=${(e) => setKind(e.currentTarget.value)}>
          <option value="">all</option>
          ${Object.keys(EVENT_KINDS).map((k) => html`<option value=${k}>${k}</option>`)}
        </select>
        <label for="event-filter">Filter</label>
        <input id="event-filter" type="search" placeholder="service, instance, reason…" value=${text} onInput=${(e) => setText(e.currentTarget.value)} />
      </div>
      <${VirtualTable} id="events" label="Events" columns=${EVENT_COLUMNS} rows=${rows} sort=${sort} onSort=${onSort} height=${300} renderRow=${(e) => {
        const [subject, change, reason, tone] = eventText(e);
        return html`<tr key=${e.id} data-event=${e.event}>
          <td>${fmt.time(e.at)}</td><td><code>${e.event}</code></td><td>${subject}</td><td><span class=${`state state-${tone}`}>${change}</span></td><td title=${reason}>${reason}</td>
        </tr>`;
      }} />
    </section>`;
}

function Dashboard({ onSignOut }) {
  const [target, setTarget] = useState({ kind: 'gateway', name: '' });
  const [service, setService] = useState('');
  useEffect(() => {
    if (stats.firstRender === null) requestAnimationFrame(() => (stats.firstRender = performance.now()));
    // Heartbeats and leases count down between messages.
    const clock = setInterval(() => notify('clock'), 1000);
    return () => clearInterval(clock);
  }, []);
  return html`
    <${Header} onSignOut=${onSignOut} />
    <main>
      <${Traffic} target=${target} onTarget=${setTarget} />
      <${Services} onTarget=${setTarget} onFilter=${setService} />
      <${Instances} service=${service} onService=${setService} />
      <div class="columns">
        <${Routes} onTarget=${setTarget} />
        <${Events} />
      </div>
    </main>`;
}

function App() {
  const [phase, setPhase] = useState('checking'); // checking | login | ready
  const [error, setError] = useState('');
  const start = async () => {
    setPhase('checking');
    try {
      await loadState();
      void loadRoutes().catch((err) => console.error(err));
      setError('');
      setPhase('ready');
      void streamForever(() => signOut('The admin token was refused: sign in again.'));
    } catch (err) {
      if (!(err instanceof Unauthorized)) {
        setError(`The admin API did not answer: ${err.message}`);
      } else if (store.token) setError('That token was refused.');
      store.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      setPhase('login');
    }
  };
  const signOut = (message = '') => {
    streamAbort?.abort();
    store.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    setError(message);
    setPhase('login');
  };
  useEffect(() => void start(), []);
  if (phase === 'checking') return html`<p class="loading">Connecting to the admin API…</p>`;
  if (phase === 'login') {
    return html`<${Login} error=${error} onToken=${(token) => {
      store.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      void start();
    }} />`;
  }
  return html`<${Dashboard} onSignOut=${() => signOut()} />`;
}

render(html`<${App} />`, document.getElementById('app'));
