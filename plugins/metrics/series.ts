/**
 * Counters and histograms whose hot path is plain arithmetic. prom-client's labelled children
 * rebuild and check a label key on every inc() and observe(); here a caller keeps the series
 * object it got once and bumps numbers in it, and the values reach prom-client's Registry only
 * when it is scraped (these objects implement the `get()` a Registry reads, prom-client's own
 * metric JSON, so text output, promtool and cluster aggregation are unchanged).
 */

type Labels<L extends string> = Readonly<Record<L, string>>;

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/** What a prom-client Registry reads from a metric. */
interface MetricJson {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: MetricValue[];
  aggregator: 'sum';
}

function keyOf(labels: Readonly<Record<string, string>>, names: readonly string[]): string {
  let key = '';
  for (const name of names) key += `${labels[name]}\u0000`;
  return key;
}

/** Series by label set: created on first use, kept by the caller, dropped with `remove`. */
abstract class Labelled<L extends string, S> {
  readonly aggregator = 'sum';
  protected readonly entries = new Map<string, { labels: Labels<L>; series: S }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
  ) {}

  protected abstract create(): S;

  /** The series for `labels`, created on first use; keep it, then only touch its numbers. */
  series(labels: Labels<L>): S {
    const key = keyOf(labels, this.labelNames);
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = { labels: { ...labels }, series: this.create() }));
    return entry.series;
  }

  remove(labels: Labels<L>): void {
    this.entries.delete(keyOf(labels, this.labelNames));
  }
}

/** One counter series: bump `value`. */
export interface CounterSeries {
  value: number;
}

/** A counter with labels; register it with `registry.registerMetric(counter)`. */
export class FastCounter<L extends string> extends Labelled<L, CounterSeries> {
  readonly type = 'counter';

  protected create(): CounterSeries {
    return { value: 0 };
  }

  async get(): Promise<MetricJson> {
    const values: MetricValue[] = [];
    for (const { labels, series } of this.entries.values()) values.push({ value: series.value, labels: { ...labels } });
    return { name: this.name, help: this.help, type: 'counter', values, aggregator: 'sum' };
  }
}

/** One histogram series: `observe(seconds)`. */
export class HistogramSeries {
  /** Non-cumulative counts per bucket; the last slot is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  readonly #bounds: readonly number[];

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/** A histogram with labels; register it with `registry.registerMetric(histogram)`. */
export class FastHistogram<L extends string> extends Labelled<L, HistogramSeries> {
  readonly type = 'histogram';

  constructor(name: string, help: string, labelNames: readonly L[], readonly buckets: readonly number[]) {
    super(name, help, labelNames);
  }

  protected create(): HistogramSeries {
    return new HistogramSeries(this.buckets);
  }

  async get(): Promise<MetricJson> {
    const values: MetricValue[] = [];
    for (const { labels, series } of this.entries.values()) {
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += series.counts[i]!;
        values.push({ value: cumulative, labels: { ...labels, le: bound }, metricName: `${this.name}_bucket` });
      });
      values.push({ value: series.count, labels: { ...labels, le: '+Inf' }, metricName: `${this.name}_bucket` });
      values.push({ value: series.sum, labels: { ...labels }, metricName: `${this.name}_sum` });
      values.push({ value: series.count, labels: { ...labels }, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: 'histogram', values, aggregator: 'sum' };
  }
}
