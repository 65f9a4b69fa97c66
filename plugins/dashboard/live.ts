import { describeEvent, Instance, STREAMED_EVENTS, type CircuitState, type PluginHost, type StreamedEvent } from '../../lib/index.js';
import { latencyBin, SeriesBook, type Point, type RingSeries, type SeriesKind } from './series.js';

/** Events the dashboard keeps for a page that opens later. */
export const EVENT_HISTORY = 500;
/** The window of the tables' rates and latencies (a minute), in ms. */
const SUMMARY_MS = 60_000;

/** An event as the page gets it: its number, when, its name and what `/events` says about it. */
export interface DashboardEvent {
  id: number;
  at: string;
  event: string;
  [field: string]: unknown;
}

/** What cluster workers report about an instance: the state their breakers, outlier detection and requests keep. */
export interface WorkerInstanceState {
  circuit: CircuitState;
  ejectedUntil: number;
  inflight: number;
}

const CIRCUIT_RANK: Record<CircuitState, number> = { closed: 0, 'half-open': 1, open: 2 };

/**
 * The dashboard's view of one gateway: the request series, the clock that numbers their buckets,
 * the last events, and (in a cluster's primary) what each worker reports about the instances.
 * Everything the admin routes answer is read from here.
 */
export class DashboardLive {
  readonly book: SeriesBook;
  /** Bucket length in ms. */
  readonly resolution: number;
  /** Buckets in the charts' window. */
  readonly slots: number;
  /** The number of the bucket requests count into now: `floor(Date.now() / resolution)`, moved by a timer. */
  bucket: number;
  readonly #gateway: PluginHost;
  readonly #events: DashboardEvent[] = [];
  #nextEvent = 0;
  readonly #listeners = new Set<(event: DashboardEvent) => void>();
  /** Per worker id: instance key -> its report. Empty outside a cluster's primary. */
  readonly workers = new Map<number, Map<string, WorkerInstanceState>>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(gateway: PluginHost, window: number, resolution: number, slots = Math.ceil(window / resolution)) {
    this.#gateway = gateway;
    this.resolution = resolution;
    this.slots = slots;
    this.book = new SeriesBook(slots);
    this.bucket = Math.floor(Date.now() / resolution);
    this.#schedule();
  }

  /** Moves {@link bucket} at every bucket boundary: one timer, so a request reads a number instead of the clock. */
  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      this.bucket = Math.floor(Date.now() / this.resolution);
      this.#schedule();
    }, this.resolution - (Date.now() % this.resolution) + 1);
    this.#timer.unref();
  }

  /** Counts one answered request: in the gateway's series, its route's and its service's. */
  record(route: string | undefined, service: string | undefined, ms: number, error: boolean): void {
    const bucket = this.bucket;
    const bin = latencyBin(ms);
    const book = this.book;
    book.total.record(bucket, bin, error);
    if (route !== undefined) (book.routes.get(route) ?? book.get('route', route, true)).record(bucket, bin, error);
    if (service !== undefined) (book.services.get(service) ?? book.get('service', service, true)).record(bucket, bin, error);
  }

  /** Starts keeping the gateway's streamed events (registrations, health, circuits, config). */
  watchEvents(): void {
    for (const event of STREAMED_EVENTS) {
      if (event === 'gateway:closing') continue;
      this.#gateway.on(event, ((...args: unknown[]) => {
        const described = describeEvent(event, args);
        // In a cluster's primary the instance's circuit and requests are the workers': show those.
        if (args[0] instanceof Instance) described.instance = this.view(args[0]);
        this.push(event, described);
      }) as never);
    }
  }

  /** Adds an event to the history and tells every stream. */
  push(event: StreamedEvent | (string & {}), data: Record<string, unknown>): void {
    const entry: DashboardEvent = { ...data, id: ++this.#nextEvent, at: new Date().toISOString(), event };
    this.#events.push(entry);
    if (this.#events.length > EVENT_HISTORY) this.#events.shift();
    for (const listener of this.#listeners) listener(entry);
  }

  /** The last events, oldest first. */
  events(): readonly DashboardEvent[] {
    return this.#events;
  }

  /** Calls `listener` for every new event until the returned function is called. */
  onEvent(listener: (event: DashboardEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * An instance as the page shows it: `Instance.toJSON()`, with, in a cluster's primary, the
   * workers' state: the worst circuit, the latest ejection, the requests in flight added up.
   */
  view(inst: Instance): Record<string, unknown> {
    const json = inst.toJSON();
    if (this.workers.size === 0) return json;
    const merged = this.merged(`${inst.service}\u0000${inst.id}`);
    return { ...json, circuit: merged.circuit, inflight: merged.inflight, ejectedUntil: merged.ejectedUntil === 0 ? undefined : new Date(merged.ejectedUntil).toISOString() };
  }

  /** The workers' reports about one instance, merged. */
  merged(key: string): WorkerInstanceState {
    const out: WorkerInstanceState = { circuit: 'closed', ejectedUntil: 0, inflight: 0 };
    for (const states of this.workers.values()) {
      const state = states.get(key);
      if (state === undefined) continue;
      if (CIRCUIT_RANK[state.circuit] > CIRCUIT_RANK[out.circuit]) out.circuit = state.circuit;
      out.ejectedUntil = Math.max(out.ejectedUntil, state.ejectedUntil);
      out.inflight += state.inflight;
    }
    return out;
  }

  /** Requests per second of `count` requests in bucket `bucket` (the current one counts only the time it has run). */
  rate(bucket: number, count: number, now = Date.now()): number {
    const seconds = bucket === Math.floor(now / this.resolution) ? Math.max(1, (now % this.resolution) / 1000) : this.resolution / 1000;
    return count / Math.min(seconds, this.resolution / 1000);
  }

  /** The last minute of a series: requests per second, error ratio, p50 and p99 in ms. */
  summary(series: RingSeries, now = Date.now()): [rps: number, errorRate: number, p50: number | null, p99: number | null] {
    const buckets = Math.max(1, Math.round(SUMMARY_MS / this.resolution));
    const current = Math.floor(now / this.resolution);
    const point = series.sum(current - buckets + 1, current);
    const seconds = ((buckets - 1) * this.resolution + Math.max(1000, now % this.resolution)) / 1000;
    return [round(point.count / seconds), point.count === 0 ? 0 : round(point.errors / point.count, 4), round(point.p50), round(point.p99)];
  }

  /** Whether a series counted anything in the summary's minute. */
  recent(series: RingSeries, now = Date.now()): boolean {
    const current = Math.floor(now / this.resolution);
    return series.active(current - Math.round(SUMMARY_MS / this.resolution), current);
  }

  /** The current and the previous bucket of a series, as the stream sends them: bucket number, requests, errors, p50, p99. */
  latest(series: RingSeries, now = Date.now()): [number, number, number, number | null, number | null][] {
    const bucket = Math.floor(now / this.resolution);
    return series.points(bucket - 1, bucket).map((p, i) => [bucket - 1 + i, p.count, p.errors, round(p.p50), round(p.p99)]);
  }

  /** The whole window of one series as chart columns: time (s), requests, requests per second, error ratio, p50, p99. */
  chart(kind: SeriesKind, name: string, now = Date.now()): { t: number[]; requests: number[]; rps: number[]; errorRate: number[]; p50: (number | null)[]; p99: (number | null)[] } {
    const to = Math.floor(now / this.resolution);
    const from = to - this.slots + 1;
    const points: Point[] = this.book.get(kind, name)?.points(from, to) ?? Array.from({ length: this.slots }, () => ({ count: 0, errors: 0, p50: null, p99: null }));
    const out = { t: [] as number[], requests: [] as number[], rps: [] as number[], errorRate: [] as number[], p50: [] as (number | null)[], p99: [] as (number | null)[] };
    points.forEach((p, i) => {
      out.t.push(((from + i) * this.resolution) / 1000);
      out.requests.push(p.count);
      out.rps.push(round(this.rate(from + i, p.count, now)));
      out.errorRate.push(p.count === 0 ? 0 : round(p.errors / p.count, 4));
      out.p50.push(round(p.p50));
      out.p99.push(round(p.p99));
    });
    return out;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#listeners.clear();
  }
}

function round<T extends number | null>(value: T, digits = 3): T {
  if (value === null) return value;
  const f = 10 ** digits;
  return (Math.round(value * f) / f) as T;
}
