import { readFile } from 'node:fs/promises';
import { unwatchFile, watch, watchFile } from 'node:fs';
import { basename, dirname } from 'node:path';

/**
 * Calls `onChange` when `file`'s content changes, once the writes have settled for `settleMs`.
 * It watches the file's directory, not the file: editors that save by writing a new file and
 * renaming it over the old one (vim, most IDEs) would leave a watch on the old file's inode blind.
 * An editor that truncates, then writes, fires several events; only the content after the last
 * one is read. A save that leaves the content as it was is no change. Returns a stop function.
 */
export function watchConfigFile(file: string, onChange: () => void, settleMs = 250, onError: (err: Error) => void = () => {}): () => void {
  const name = basename(file);
  let timer: NodeJS.Timeout | null = null;
  let last: Promise<string | null> = readFile(file, 'utf8').catch(() => null);
  const settled = (): void => {
    timer = null;
    const previous = last;
    last = readFile(file, 'utf8').catch(() => null);
    void Promise.all([previous, last]).then(([before, now]) => {
      if (now !== before) onChange();
    });
  };
  const watcher = watch(dirname(file), (_event, changed) => {
    if (changed !== null && changed !== name) return;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(settled, settleMs);
  });
  watcher.on('error', onError);
  return () => {
    watcher.close();
    if (timer !== null) clearTimeout(timer);
  };
}

/**
 * Calls `onChange` once `files` have stopped changing for `settleMs` (default 600 ms, over two
 * polls): a certificate and its key are written one after the other, and are read together. Polls
 * (`fs.watchFile`, every 250 ms) so that a file replaced by a rename is still seen. Never keeps the
 * process alive. Returns a stop function.
 */
export function watchFilesSettled(files: readonly string[], onChange: () => void, settleMs = 600): () => void {
  let timer: NodeJS.Timeout | null = null;
  const changed = (): void => {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      onChange();
    }, settleMs);
    timer.unref();
  };
  for (const file of files) watchFile(file, { interval: 250, persistent: false }, changed);
  return () => {
    if (timer !== null) clearTimeout(timer);
    for (const file of files) unwatchFile(file, changed);
  };
}
