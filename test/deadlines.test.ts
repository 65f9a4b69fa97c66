import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Deadlines, type Deadline } from '../lib/upstream/deadlines.js';
import { sleep, waitFor } from './helpers.js';

const LIMIT = { timeout: 10_000 };

/** An entry that records when it expired. */
function entry(inMs: number): Deadline & { expiredAt: number | null } {
  const e = {
    deadlineAt: performance.now() + inMs,
    deadlineSlot: -1,
    expiredAt: null as number | null,
    expire() {
      assert.equal(e.expiredAt, null, 'expired twice');
      e.expiredAt = performance.now();
    },
  };
  return e;
}

describe('Deadlines', () => {
  test('each entry expires once, never before its deadline, whatever order they were added in', LIMIT, async () => {
    const deadlines = new Deadlines();
    const entries = [entry(120), entry(30), entry(80), entry(30), entry(200)];
    for (const e of entries) deadlines.add(e);
    assert.equal(deadlines.size, 5);
    await waitFor(() => entries.every((e) => e.expiredAt !== null), 5000, 'every entry to expire');
    for (const e of entries) assert.ok(e.expiredAt! >= e.deadlineAt, `expired ${(e.deadlineAt - e.expiredAt!).toFixed(2)} ms early`);
    assert.equal(deadlines.size, 0);
  });

  test('a deleted entry never expires; the others still do; delete is idempotent', LIMIT, async () => {
    const deadlines = new Deadlines();
    const kept = entry(60);
    const gone = [entry(20), entry(40), entry(60)];
    deadlines.add(gone[0]!);
    deadlines.add(kept);
    deadlines.add(gone[1]!);
    deadlines.add(gone[2]!);
    for (const e of gone) deadlines.delete(e);
    deadlines.delete(gone[0]!);
    assert.equal(deadlines.size, 1);
    await waitFor(() => kept.expiredAt !== null, 5000, 'the kept entry to expire');
    await sleep(50);
    assert.ok(gone.every((e) => e.expiredAt === null));
  });

  test('an earlier deadline added later moves the timer forward', LIMIT, async () => {
    const deadlines = new Deadlines();
    const late = entry(2000);
    deadlines.add(late);
    const early = entry(30);
    deadlines.add(early);
    await waitFor(() => early.expiredAt !== null, 1500, 'the early entry to expire long before the late one');
    assert.equal(late.expiredAt, null);
    deadlines.clear();
    assert.equal(deadlines.size, 0);
    await sleep(20);
  });

  test('clear() drops every entry and its timer: nothing expires afterwards', LIMIT, async () => {
    const deadlines = new Deadlines();
    const entries = [entry(10), entry(20)];
    for (const e of entries) deadlines.add(e);
    deadlines.clear();
    await sleep(60);
    assert.ok(entries.every((e) => e.expiredAt === null && e.deadlineSlot === -1));
  });
});
