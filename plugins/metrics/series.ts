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

/** One counter series: bump `value`. */
export interface CounterSeries {
  value: number;
}

/** A counter with labels; register it with `registry.registerMetric(counter)`. */
export class FastCounter<L extends string> {
  readonly type = 'counter';
  readonly aggregator = 'sum';
  readonly #series = new Map<string, { labels: Labels<L>; series: CounterSeries }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
  ) {}

  /** The series for `labels`, created on first use; keep it and bump `value`. */
  series(labels: Labels<L>): CounterSeries {
    const key = keyOf(labels, this.labelNames);
    let entry = this.#series.get(key);
    if (!entry) this.#series.set(key, (entry = { labels: { ...labels }, series: { value: 0 } }));
    return entry.series;
  }

  remove(labels: Labels<L>): void {
    this.#series.delete(keyOf(labels, this.labelNames));
  }

  async get(): Promise<MetricJson> {
    const values: MetricValue[] = [];
    for (const { labels, series } of this.#series.values()) values.push({ value: series.value, labels: { ...labels } });
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
export class FastHistogram<L extends string> {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #series = new Map<string, { labels: Labels<L>; series: HistogramSeries }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
    readonly buckets: readonly number[],
  ) {}

  series(labels: Labels<L>): HistogramSeries {
    const key = keyOf(labels, this.labelNames);
    let entry = this.#series.get(key);
    if (!entry) this.#series.set(key, (entry = { labels: { ...labels }, series: new HistogramSeries(this.buckets) }));
    return entry.series;
  }

  remove(labels: Labels<L>): void {
    this.#series.delete(keyOf(labels, this.labelNames));
  }

  async get(): Promise<MetricJson> {
    const values: MetricValue[] = [];
    for (const { labels, series } of this.#series.values()) {
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
