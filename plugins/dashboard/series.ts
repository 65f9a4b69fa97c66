/**
 * The dashboard's time series: per series a fixed-size ring of buckets, each bucket a request
 * count, an error count and a small log-scale latency histogram, so p50 and p99 of any bucket (or
 * any run of buckets) come from counts alone. Recording a request is a compare and three
 * increments in one typed array: no allocation, whatever the traffic.
 */

/** Latency histogram bins: bin 0 holds up to {@link LOWEST_MS}, bin i up to LOWEST_MS·2^(i/2), the last one everything above. */
export const LATENCY_BINS = 34;
/** The upper bound of the first latency bin, in ms. */
const LOWEST_MS = 0.5;
/** Numbers per bucket: requests, errors, then the latency bins. */
export const STRIDE = 2 + LATENCY_BINS;

/** The upper bound of latency bin `i`, in ms (the last bin has none: Infinity). */
export function binUpperBound(i: number): number {
  return i >= LATENCY_BINS - 1 ? Infinity : LOWEST_MS * 2 ** (i / 2);
}

/** The latency bin of `ms`: two bins per doubling, so a quantile read from the bins lies in the true value's bin, within a factor of √2 of it. */
export function latencyBin(ms: number): number {
  if (!(ms > LOWEST_MS)) return 0;
  const bin = Math.ceil(2 * Math.log2(ms / LOWEST_MS));
  return bin < LATENCY_BINS ? bin : LATENCY_BINS - 1;
}

/**
 * The `q` quantile (0..1) of the latency bins at `offset` of `counts` (`total` values in them), in
 * ms, interpolated geometrically inside its bin; null when there are none.
 */
export function quantile(counts: ArrayLike<number>, offset: number, total: number, q: number): number | null {
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < LATENCY_BINS; i++) {
    const n = counts[offset + i]!;
    if (n === 0 || seen + n < rank) {
      seen += n;
      continue;
    }
    const fraction = (rank - seen) / n;
    if (i === 0) return LOWEST_MS * fraction;
    const lower = binUpperBound(i - 1);
    if (i === LATENCY_BINS - 1) return lower;
    return lower * (binUpperBound(i) / lower) ** fraction;
  }
  return binUpperBound(LATENCY_BINS - 2);
}

/** What one bucket (or a run of them) adds up to: requests, errors, p50 and p99 latency in ms. */
export interface Point {
  count: number;
  errors: number;
  p50: number | null;
  p99: number | null;
}

/**
 * One series: `slots` buckets in a ring, bucket number `b` in slot `b % slots`. A slot still holding
 * an older bucket is cleared when a request of the new bucket first lands in it, so a quiet series
 * costs nothing per bucket.
 */
export class RingSeries {
  /** `slots` rows of {@link STRIDE} numbers. */
  readonly counts: Uint32Array;
  /** The bucket number each slot holds, -1 for none. */
  readonly #held: Float64Array;
  readonly slots: number;

  constructor(slots: number) {
    this.slots = slots;
    this.counts = new Uint32Array(slots * STRIDE);
    this.#held = new Float64Array(slots).fill(-1);
  }

  /** Counts one request in bucket `bucket`, its latency in bin `bin` ({@link latencyBin}). */
  record(bucket: number, bin: number, error: boolean): void {
    const offset = this.#row(bucket);
    const counts = this.counts;
    counts[offset]!++;
    if (error) counts[offset + 1]!++;
    counts[offset + 2 + bin]!++;
  }

  /** Adds a row of {@link STRIDE} numbers (another process's counts) into bucket `bucket`. */
  add(bucket: number, row: ArrayLike<number>): void {
    const offset = this.#row(bucket);
    for (let i = 0; i < STRIDE; i++) this.counts[offset + i]! += row[i] ?? 0;
  }

  /** The row of bucket `bucket`, as plain numbers, and clears it (a worker's report); null when it counted nothing. */
  take(bucket: number): number[] | null {
    const slot = bucket % this.slots;
    const offset = slot * STRIDE;
    if (this.#held[slot] !== bucket || this.counts[offset] === 0) return null;
    const row = Array.from(this.counts.subarray(offset, offset + STRIDE));
    this.counts.fill(0, offset, offset + STRIDE);
    return row;
  }

  /** Buckets `from`..`to` (inclusive; at most the ring's length back from `to`) added up. */
  sum(from: number, to: number): Point {
    const merged = new Uint32Array(STRIDE);
    for (let b = Math.max(from, to - this.slots + 1); b <= to; b++) {
      const slot = b % this.slots;
      if (this.#held[slot] !== b) continue;
      const offset = slot * STRIDE;
      for (let i = 0; i < STRIDE; i++) merged[i]! += this.counts[offset + i]!;
    }
    return pointOf(merged, 0);
  }

  /** Each bucket of `from`..`to` on its own (empty ones as zero counts). */
  points(from: number, to: number): Point[] {
    const out: Point[] = [];
    for (let b = from; b <= to; b++) {
      const slot = b % this.slots;
      out.push(this.#held[slot] === b && b > to - this.slots ? pointOf(this.counts, slot * STRIDE) : { count: 0, errors: 0, p50: null, p99: null });
    }
    return out;
  }

  /** Whether any bucket of `from`..`to` counted a request. */
  active(from: number, to: number): boolean {
    for (let b = Math.max(from, to - this.slots + 1); b <= to; b++) {
      const slot = b % this.slots;
      if (this.#held[slot] === b && this.counts[slot * STRIDE] !== 0) return true;
    }
    return false;
  }

  #row(bucket: number): number {
    const slot = bucket % this.slots;
    const offset = slot * STRIDE;
    if (this.#held[slot] !== bucket) {
      this.#held[slot] = bucket;
      this.counts.fill(0, offset, offset + STRIDE);
    }
    return offset;
  }
}

function pointOf(counts: ArrayLike<number>, offset: number): Point {
  const count = counts[offset]!;
  return { count, errors: counts[offset + 1]!, p50: quantile(counts, offset + 2, count, 0.5), p99: quantile(counts, offset + 2, count, 0.99) };
}

/** What a series is about: the whole gateway, one service (the backend's), or one route (by name). */
export type SeriesKind = 'gateway' | 'service' | 'route';

/**
 * Every series of one gateway: the total, one per service, one per route, created on their first
 * request. Services and routes come from the config, so their number is bounded by it.
 */
export class SeriesBook {
  readonly total: RingSeries;
  readonly services = new Map<string, RingSeries>();
  readonly routes = new Map<string, RingSeries>();
  readonly slots: number;

  constructor(slots: number) {
    this.slots = slots;
    this.total = new RingSeries(slots);
  }

  /** The series of `kind` and `name`, created when `create` (else undefined when it has none yet). */
  get(kind: SeriesKind, name: string, create: true): RingSeries;
  get(kind: SeriesKind, name: string, create?: boolean): RingSeries | undefined;
  get(kind: SeriesKind, name: string, create = false): RingSeries | undefined {
    if (kind === 'gateway') return this.total;
    const map = kind === 'service' ? this.services : this.routes;
    let series = map.get(name);
    if (series === undefined && create) map.set(name, (series = new RingSeries(this.slots)));
    return series;
  }

  /** Every series with its kind and name. */
  *entries(): Generator<[SeriesKind, string, RingSeries]> {
    yield ['gateway', '', this.total];
    for (const [name, series] of this.services) yield ['service', name, series];
    for (const [name, series] of this.routes) yield ['route', name, series];
  }
}
