/**
 * Entry point of one benchmark process: `node --import tsx bench/child.ts <kind> [upstream-url]`.
 * Starts the target, prints its port alone on a line of stdout when it is ready, and exits on
 * SIGTERM, SIGINT or when its parent goes away (the IPC channel closes), so a crashed or killed
 * runner leaves no orphans. Exiting through `process.exit` also lets `--cpu-prof` write its file.
 */
import { startBareProxy } from './bare-proxy.js';
import { startMeshgate } from './meshgate.js';
import { startUpstream } from './upstream.js';

async function main(): Promise<void> {
  const [kind, upstream] = process.argv.slice(2);
  let close: () => Promise<unknown>;
  let port: number;
  if (kind === 'upstream') {
    const started = await startUpstream();
    port = started.port;
    close = () => new Promise((resolve) => started.server.close(resolve));
  } else if (kind === 'bare-proxy' || kind === 'meshgate') {
    if (!upstream) throw new Error(`${kind} needs the upstream URL as its second argument`);
    if (kind === 'bare-proxy') {
      const started = await startBareProxy(upstream);
      port = started.port;
      close = async () => {
        started.server.closeAllConnections();
        await new Promise((resolve) => started.server.close(resolve));
        await started.pool.destroy();
      };
    } else {
      const started = await startMeshgate(upstream);
      port = started.port;
      close = () => started.gateway.close();
    }
  } else if (kind === 'meshgate-metrics' || kind === 'meshgate-no-metrics') {
    // bench/metrics-cost.ts: meshgate with its admin server, metrics plugin on or off.
    if (!upstream) throw new Error(`${kind} needs the upstream URL as its second argument`);
    const { startMeshgateWithAdmin } = await import('./meshgate-admin.js');
    const started = await startMeshgateWithAdmin(upstream, { metrics: kind === 'meshgate-metrics' });
    port = started.port;
    close = () => started.gateway.close();
  } else {
    throw new Error(`unknown target "${kind}" (expected upstream, bare-proxy or meshgate)`);
  }

  let exiting = false;
  const exit = (): void => {
    if (exiting) return;
    exiting = true;
    // Never hang on a slow close: the runner is waiting for this process to go away.
    setTimeout(() => process.exit(0), 2000).unref();
    close().then(
      () => process.exit(0),
      () => process.exit(0),
    );
  };
  process.once('SIGTERM', exit);
  process.once('SIGINT', exit);
  process.once('disconnect', exit);
  process.stdout.write(`${port}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench child ${process.argv[2]}: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
