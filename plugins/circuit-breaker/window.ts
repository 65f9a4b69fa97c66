import { EventEmitter } from 'node:events';
import CircuitBreaker from 'opossum';

type Bucket = CircuitBreaker.Bucket;
type Counter = { [K in keyof Bucket]: Bucket[K] extends number ? K : never }[keyof Bucket];

/** opossum's Status class: the package exports only the breaker, whose public factory makes one. */
const OpossumStatus = Object.getPrototypeOf(CircuitBreaker.newStatus({ rotateBucketController: new EventEmitter(), enableSnapshots: false })).constructor as new (
  options: CircuitBreaker.StatusOptions,
) => CircuitBreaker.Status & { shutdown(): void };

/**
 * A breaker's rolling window (opossum's Status) that only counts. opossum's own also logs the
 * latency of every success and failure into the current bucket, even with
 * `rollingPercentilesEnabled: false`, when nothing reads the log: under load that was an array per
 * bucket growing by every request (2.4 MB of heap at 27k requests/s through one breaker). This one
 * counts into the current bucket and keeps nothing else.
 *
 * Its buckets turn on a {@link WindowClock} (opossum's `rotateBucketController`), not on a timer
 * of its own, so thousands of breakers share one timer. Pass it to the breaker as `status`.
 */
export class CountingWindow extends OpossumStatus {
  readonly #clock: WindowClock;
  readonly #bucketMs: number;
  #current: Bucket;

  constructor(options: { rollingCountTimeout: number; rollingCountBuckets: number; clock: WindowClock }) {
    const bucketMs = WindowClock.bucketMs(options.rollingCountTimeout, options.rollingCountBuckets);
    const emitter = options.clock.acquire(bucketMs);
    super({
      rollingCountTimeout: options.rollingCountTimeout,
      rollingCountBuckets: options.rollingCountBuckets,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      rotateBucketController: emitter,
    });
    this.#clock = options.clock;
    this.#bucketMs = bucketMs;
    this.#current = this.window[0]!;
    // 'rotated' comes after every 'rotate' listener ran, opossum's included, in whatever order
    // they were added (a breaker's disable() and enable() add opossum's again, last).
    emitter.on('rotated', this.#rotated);
  }

  /** Called by the breaker for each of its events; the latency argument is ignored. */
  increment(counter: Counter): void {
    this.#current[counter]++;
  }

  /** A call that succeeded, counted as opossum counts one (a fire and a success), without its events. */
  countSuccess(): void {
    const bucket = this.#current;
    bucket.fires++;
    bucket.successes++;
  }

  override shutdown(): void {
    super.shutdown();
    this.#clock.release(this.#bucketMs, this.#rotated);
  }

  readonly #rotated = (): void => {
    this.#current = this.window[0]!;
  };
}

/**
 * The clock that turns the buckets of every {@link CountingWindow} of a gateway: one unref'd timer
 * per bucket length in use (services may set different windows), stopped when its last window
 * shuts down. Each tick emits 'rotate' (opossum's windows turn) and then 'rotated' (ours follow).
 */
export class WindowClock {
  readonly #clocks = new Map<number, { emitter: EventEmitter; timer: NodeJS.Timeout; users: number }>();

  /** The length of one bucket, as opossum computes it. */
  static bucketMs(rollingCountTimeout: number, rollingCountBuckets: number): number {
    return Math.max(1, Math.floor(rollingCountTimeout / rollingCountBuckets));
  }

  /** The emitter that turns buckets of `bucketMs`, for one more window. */
  acquire(bucketMs: number): EventEmitter {
    let clock = this.#clocks.get(bucketMs);
    if (clock === undefined) {
      const emitter = new EventEmitter();
      // Two listeners per breaker (opossum's and ours): thousands of instances are normal.
      emitter.setMaxListeners(0);
      const timer = setInterval(() => {
        emitter.emit('rotate');
        emitter.emit('rotated');
      }, bucketMs);
      timer.unref();
      clock = { emitter, timer, users: 0 };
      this.#clocks.set(bucketMs, clock);
    }
    clock.users++;
    return clock.emitter;
  }

  /** A window of `bucketMs` shut down: its listener goes, and the timer with the last window. */
  release(bucketMs: number, rotated: () => void): void {
    const clock = this.#clocks.get(bucketMs);
    if (clock === undefined) return;
    clock.emitter.off('rotated', rotated);
    if (--clock.users > 0) return;
    clearInterval(clock.timer);
    this.#clocks.delete(bucketMs);
  }

  /** Bucket lengths with a running timer (for tests). */
  get running(): number {
    return this.#clocks.size;
  }

  close(): void {
    for (const { timer } of this.#clocks.values()) clearInterval(timer);
    this.#clocks.clear();
  }
}
