// Preloaded (`node --import`) into the meshgate CLI when bench/run.ts starts it in cluster mode:
// the CLI does not watch its parent, so without this a runner killed with SIGKILL would leave the
// cluster serving. The runner opens an IPC channel; when it closes, the primary exits, and its
// workers follow (cluster workers exit when the primary goes). Workers inherit the preload through
// execArgv; they have their own channel to the primary and their own handling, so it does nothing there.
if (process.send && process.env.NODE_UNIQUE_ID === undefined) {
  process.once('disconnect', () => process.exit(0));
}
