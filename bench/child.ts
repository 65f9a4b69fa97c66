/**
 * Entry point of one benchmark process: `node --import tsx bench/child.ts <kind> [upstream-url]`.
 * Starts the target, sends `{ port }` over the IPC channel when it is ready (not stdout: the
 * runner sends stdout to /dev/null, where `meshgate-log` writes its access log), and exits on
 * SIGTERM, SIGINT or when its parent goes away (the IPC channel closes), so a crashed or killed
 * runner leaves no orphans. Exiting through `process.exit` also lets `--cpu-prof` write its file.
 */
import { startBareProxy } from './bare-proxy.js';
import { startHttpProxy } from './http-proxy.js';
import { startMeshgate, startMeshgateStack } from './meshgate.js';
import { startReplyFrom } from './reply-from.js';
import { STANDARD_PLUGINS, type StackName, type StandardPlugin } from './stack.js';
import { startUpstream } from './upstream.js';

/**
 * The meshgate targets' stacks (bench/stack.ts). `meshgate-untraced` is the standard stack without
 * trace context: issue 8's list of the standard stack word for word. meshgate turns trace context
 * on by default, so `meshgate-standard` keeps it and stays the headline.
 */
const STACKS: Record<string, { stack: StackName; without?: StandardPlugin }> = {
  'meshgate-core': { stack: 'core' },
  'meshgate-standard': { stack: 'standard' },
  'meshgate-untraced': { stack: 'standard', without: 'trace-context' },
  'meshgate-log': { stack: 'standard+log' },
  // The same stacks from another checkout's build (BENCH_BASELINE, passed down as BENCH_DIST).
  'baseline-core': { stack: 'core' },
  'baseline-standard': { stack: 'standard' },
};

async function main(): Promise<void> {
  const [kind, upstream] = process.argv.slice(2);
  // The port goes back over IPC, and a closed channel is how this process learns its runner died.
  if (!process.send) throw new Error('start this through bench/targets.ts (it needs an IPC channel)');
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
  } else if (kind === 'reply-from' || kind === 'http-proxy') {
    if (!upstream) throw new Error(`${kind} needs the upstream URL as its second argument`);
    if (kind === 'reply-from') {
      const started = await startReplyFrom(upstream);
      port = started.port;
      close = async () => {
        started.app.server.closeAllConnections();
        await started.app.close();
      };
    } else {
      const started = await startHttpProxy(upstream);
      port = started.port;
      close = async () => {
        started.server.closeAllConnections();
        await new Promise((resolve) => started.server.close(resolve));
        started.agent.destroy();
      };
    }
  } else if (kind !== undefined && Object.hasOwn(STACKS, kind)) {
    if (!upstream) throw new Error(`${kind} needs the upstream URL as its second argument`);
    const { stack, without: own } = STACKS[kind]!;
    // BENCH_WITHOUT: the stack minus one plugin (bench/instructions.ts prices each plugin so).
    const asked = (process.env.BENCH_WITHOUT || undefined) as StandardPlugin | undefined;
    if (asked !== undefined && !(STANDARD_PLUGINS as readonly string[]).includes(asked)) throw new Error(`BENCH_WITHOUT: unknown plugin "${asked}"`);
    if (asked !== undefined && own !== undefined) throw new Error(`BENCH_WITHOUT: ${kind} already leaves out ${own}; use it with a full stack`);
    const started = await startMeshgateStack(stack, upstream, 0, own ?? asked);
    port = started.port;
    close = () => started.gateway.close();
  } else if (kind === 'meshgate-metrics' || kind === 'meshgate-no-metrics') {
    // bench/metrics-cost.ts: meshgate with its admin server, metrics plugin on or off.
    if (!upstream) throw new Error(`${kind} needs the upstream URL as its second argument`);
    const { startMeshgateWithAdmin } = await import('./meshgate-admin.js');
    const started = await startMeshgateWithAdmin(upstream, { metrics: kind === 'meshgate-metrics' });
    port = started.port;
    close = () => started.gateway.close();
  } else {
    throw new Error(`unknown target "${kind}" (see TargetKind in bench/targets.ts)`);
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
  // bench/instructions.ts asks for a full GC after its warm-up (the target then runs with
  // --expose-gc), so that no major GC of the warm-up's garbage lands in the counted window.
  process.on('message', (message) => {
    if (message !== 'gc') return;
    (globalThis as { gc?: () => void }).gc?.();
    process.send!({ gc: true });
  });
  process.once('SIGTERM', exit);
  process.once('SIGINT', exit);
  process.once('disconnect', exit);
  process.send!({ port });
}

main().catch((err: unknown) => {
  process.stderr.write(`bench child ${process.argv[2]}: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
