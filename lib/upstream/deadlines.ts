/** Something with a deadline: an upstream attempt waiting for its response headers. */
export interface Deadline {
  /** When it expires, in `performance.now()` ms. */
  deadlineAt: number;
  /** @internal its place in {@link Deadlines}; -1 when not in it. */
  deadlineSlot: number;
  /** Called once when the deadline passes before it was taken out. */
  expire(): void;
}

/**
 * The deadlines of a gateway's attempts, kept by one timer instead of a Node timer per attempt
 * (a timer object and two list operations per request, for deadlines that almost never fire).
 * Entries sit unordered in an array (add and delete are O(1)); the one timer is armed for the
 * earliest deadline, so an attempt expires as punctually as with its own `setTimeout`. When it
 * fires it expires what is due and re-arms for the next earliest; with equal timeouts, newer
 * deadlines are later and adding one never moves the timer.
 */
export class Deadlines {
  readonly #entries: Deadline[] = [];
  #timer: NodeJS.Timeout | null = null;
  /** When the armed timer fires, in `performance.now()` ms; Infinity when none is armed. */
  #wakeAt = Infinity;

  get size(): number {
    return this.#entries.length;
  }

  add(entry: Deadline): void {
    entry.deadlineSlot = this.#entries.length;
    this.#entries.push(entry);
    if (entry.deadlineAt < this.#wakeAt) this.#arm(entry.deadlineAt);
  }

  delete(entry: Deadline): void {
    const slot = entry.deadlineSlot;
    if (slot < 0) return;
    const last = this.#entries.pop()!;
    if (last !== entry) {
      this.#entries[slot] = last;
      last.deadlineSlot = slot;
    }
    entry.deadlineSlot = -1;
    // The timer stays armed: when it fires for an entry that is gone, it re-arms for the next one.
  }

  /** Drops every entry (without expiring them) and the timer. */
  clear(): void {
    for (const entry of this.#entries) entry.deadlineSlot = -1;
    this.#entries.length = 0;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#wakeAt = Infinity;
  }

  #arm(at: number): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#wakeAt = at;
    // Node timers count whole milliseconds; rounding up never fires early by more than the rest of one.
    this.#timer = setTimeout(this.#sweep, Math.max(1, Math.ceil(at - performance.now())));
    this.#timer.unref();
  }

  readonly #sweep = (): void => {
    this.#timer = null;
    this.#wakeAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    // Backwards, so the swap in delete() only moves entries already looked at.
    for (let i = this.#entries.length - 1; i >= 0; i--) {
      // expire() may take other entries out (it does not today): never read past the end.
      if (i >= this.#entries.length) continue;
      const entry = this.#entries[i]!;
      if (entry.deadlineAt <= now) {
        this.delete(entry);
        entry.expire();
      } else if (entry.deadlineAt < next) {
        next = entry.deadlineAt;
      }
    }
    // expire() may have added entries (a retry's attempt): arm for whichever is earliest.
    if (next < this.#wakeAt && next !== Infinity) this.#arm(next);
  };
}
