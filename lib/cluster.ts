import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import type { GatewayConfig, GatewayConfigInput } from './config/schema.js';
import type { Gateway } from './core/gateway.js';
import { createGateway } from './index.js';
import type { Health, Instance, InstanceSpec } from './registry/registry.js';
import type { Logger } from './kit/logger.js';
import { BucketKeeper, type BucketResult, type SharedBuckets } from './kit/token-bucket.js';

/** How many workers `workers: N | auto` means on this machine. */
export function workerCount(setting: GatewayConfig['workers']): number {
  return setting === 'auto' ? availableParallelism() : setting;
}

/** Registry changes the primary sends its workers, and its answers to their token draws. */
type ToWorker =
  | { meshgate: 'upsert'; service: string; spec: InstanceSpec; health: Health }
  | { meshgate: 'synced' }
  | { meshgate: 'remove'; service: string; id: string; reason: string }
  | { meshgate: 'health'; service: string; id: string; health: Health; reason: string }
  | { meshgate: 'took'; seq: number; result: BucketResult }
  | { meshgate: 'config'; document: unknown };

/** What a worker tells the primary. */
type ToPrimary =
  | { meshgate: 'hello' }
  | { meshgate: 'listening'; url: string }
  | { meshgate: 'failed'; message: string }
  | { meshgate: 'take'; seq: number; key: string; rate: number; burst: number };

/** How long a worker waits for the primary's token before its local bucket decides. */
const SHARED_BUCKET_TIMEOUT_MS = 50;

/** How long a new worker waits for the primary's registry snapshot before it gives up. */
const SNAPSHOT_TIMEOUT_MS = 10_000;

/** Options of {@link runClusterPrimary}. */
export interface ClusterOptions {
  /** The config document (validated by the gateways, against every plugin's sections). */
  config: GatewayConfigInput;
  /** The config file, named in errors. */
  source?: string;
  baseDir: string;
  /** Overrides `listen.port` in the workers. */
  port?: number;
  /** Called once every worker listens. */
  onListening?: (info: { url: string; adminUrl?: string; workers: number }, log: Logger) => void;
}

/** A running cluster: the primary's control-plane gateway and a way to stop everything. */
export interface ClusterHandle {
  gateway: Gateway;
  workers: () => Worker[];
  /** Drains and stops every worker, then the primary's gateway. */
  close(): Promise<void>;
}

const RESPAWN_DELAY_MS = 1000;

/**
 * Cluster mode (node:cluster), in the primary process. The primary is the control plane: it owns
 * the registry (static, admin API, Redis and DNS discovery, leases, health checks) and serves the
 * admin API with `/metrics` summed over the workers. Each worker is a data plane: it proxies on
 * the shared listener with its own balancers, breakers and retries, and mirrors the primary's
 * registry, which the primary sends over IPC (a snapshot at start, then every change). A worker
 * that dies is replaced after a second.
 */
export async function runClusterPrimary(options: ClusterOptions): Promise<ClusterHandle> {
  const { baseDir, source } = options;
  const gateway = createGateway(options.config, { baseDir, source, role: 'primary', log: { fields: { cluster: 'primary' } } });
  const config = gateway.config;
  const count = workerCount(config.workers);
  await gateway.ready();
  const admin = config.admin ? await gateway.admin.listen() : undefined;

  const broadcast = (message: ToWorker): void => {
    for (const worker of Object.values(cluster.workers ?? {})) {
      if (worker?.isConnected()) worker.send(message);
    }
  };
  const upsert = (inst: Instance): ToWorker => ({ meshgate: 'upsert', service: inst.service, spec: specOf(inst), health: inst.health });
  gateway.on('instance:added', (inst) => broadcast(upsert(inst)));
  gateway.on('instance:updated', (inst) => broadcast(upsert(inst)));
  gateway.on('instance:removed', (inst, reason) => broadcast({ meshgate: 'remove', service: inst.service, id: inst.id, reason }));
  gateway.on('instance:health', (inst, _previous, reason) => broadcast({ meshgate: 'health', service: inst.service, id: inst.id, health: inst.health, reason }));
  // The primary validated and applied a new config: every worker applies the same document.
  gateway.on('config:applied', () => broadcast({ meshgate: 'config', document: gateway.document }));

  const buckets = new BucketKeeper();
  gateway.onClose(() => buckets.close());
  let closing = false;
  const env = { MESHGATE_CLUSTER_WORKER: '1', ...(options.port === undefined ? {} : { MESHGATE_PORT: String(options.port) }) };
  const fork = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork(env);
      worker.on('message', (message: ToPrimary) => {
        if (message?.meshgate === 'hello') {
          // The worker listens for IPC now: the snapshot, then every change, in order on one channel.
          // A worker started after a reload (a respawn) read the config the cluster started with.
          if (gateway.document !== options.config) worker.send({ meshgate: 'config', document: gateway.document } satisfies ToWorker);
          for (const service of gateway.registry.services()) for (const inst of service.instances.values()) worker.send(upsert(inst));
          worker.send({ meshgate: 'synced' } satisfies ToWorker);
        } else if (message?.meshgate === 'take') {
          // Rate limits hold for the whole gateway: every worker draws from the primary's buckets.
          if (worker.isConnected()) worker.send({ meshgate: 'took', seq: message.seq, result: buckets.take(message.key, message.rate, message.burst) } satisfies ToWorker);
        } else if (message?.meshgate === 'listening') resolve(message.url);
        else if (message?.meshgate === 'failed') reject(new Error(`worker ${worker.id}: ${message.message}`));
      });
      worker.once('exit', (code, signal) => {
        if (closing) return;
        gateway.log.error({ worker: worker.id, code, signal }, 'worker died; starting another');
        reject(new Error(`worker ${worker.id} exited (${signal ?? code})`));
        setTimeout(() => void fork().catch((err: Error) => gateway.log.error({ err: err.message }, 'worker restart failed')), RESPAWN_DELAY_MS).unref();
      });
    });

  let url: string;
  try {
    [url] = (await Promise.all(Array.from({ length: count }, fork))) as [string];
  } catch (err) {
    closing = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
    await gateway.close();
    throw err;
  }
  options.onListening?.({ url, adminUrl: admin?.url, workers: count }, gateway.log);

  let closed: Promise<void> | null = null;
  return {
    gateway,
    workers: () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined),
    close: () =>
      (closed ??= (async () => {
        closing = true;
        // Each worker drains on SIGTERM like a single gateway, then exits.
        await Promise.all(
          Object.values(cluster.workers ?? {}).map(
            (worker) =>
              new Promise<void>((resolve) => {
                if (!worker || worker.isDead()) return resolve();
                worker.once('exit', () => resolve());
                worker.process.kill('SIGTERM');
              }),
          ),
        );
        await gateway.close();
      })()),
  };
}

/**
 * Cluster mode, in a worker process: a gateway that proxies on the shared listener and mirrors
 * the primary's registry. Resolves once it listens; SIGTERM drains it and exits.
 */
export async function runClusterWorker(config: GatewayConfigInput, baseDir: string, source?: string): Promise<Gateway> {
  // Every line says which worker wrote it.
  const gateway = createGateway(config, { baseDir, source, role: 'worker', log: { fields: { cluster: `worker-${cluster.worker?.id ?? process.pid}` } } });
  const shared = new PrimaryBuckets();
  gateway.decorate('sharedBuckets', shared);
  await gateway.ready();
  let synced: () => void = () => {};
  const snapshot = new Promise<void>((resolve, reject) => {
    synced = resolve;
    setTimeout(() => reject(new Error('no registry snapshot from the primary')), SNAPSHOT_TIMEOUT_MS).unref();
  });
  let configured: Promise<unknown> = Promise.resolve();
  process.on('message', (message: ToWorker) => {
    if (!message || typeof message !== 'object' || !('meshgate' in message)) return;
    const registry = gateway.registry;
    switch (message.meshgate) {
      case 'config':
        // Reloads queue in the gateway, so they apply in the order the primary sent them.
        configured = gateway.reload(message.document, { origin: 'primary', source }).catch(() => {});
        return;
      case 'took':
        shared.answer(message.seq, message.result);
        return;
      case 'synced':
        synced();
        return;
      case 'upsert': {
        if (!registry.getService(message.service)) return;
        const inst = registry.upsertInstance(message.service, message.spec);
        registry.setHealth(inst, message.health, 'from the primary');
        return;
      }
      case 'remove':
        registry.removeInstance(message.service, message.id, message.reason);
        return;
      case 'health': {
        const inst = registry.getInstance(message.service, message.id);
        if (inst) registry.setHealth(inst, message.health, message.reason);
        return;
      }
    }
  });
  process.send?.({ meshgate: 'hello' } satisfies ToPrimary);
  try {
    await snapshot;
    await configured;
    const port = process.env.MESHGATE_PORT === undefined ? undefined : Number(process.env.MESHGATE_PORT);
    const info = await gateway.listen(port === undefined ? {} : { port });
    process.send?.({ meshgate: 'listening', url: info.url } satisfies ToPrimary);
  } catch (err) {
    process.send?.({ meshgate: 'failed', message: (err as Error).message } satisfies ToPrimary);
    throw err;
  }
  process.once('SIGTERM', () => {
    void gateway.close().then(() => process.exit(0));
  });
  // The primary reloads and tells the workers; a SIGHUP to the whole process group must not kill one.
  process.on('SIGHUP', () => {});
  // The primary went away (killed): nothing would stop this worker otherwise.
  process.once('disconnect', () => {
    void gateway.close().then(() => process.exit(0));
  });
  return gateway;
}

/**
 * A worker's view of the primary's token buckets: a draw is one IPC round trip. When the primary
 * does not answer within {@link SHARED_BUCKET_TIMEOUT_MS} the draw rejects, and the caller's local
 * bucket decides: a limit is a guard, not a dependency.
 */
class PrimaryBuckets implements SharedBuckets {
  readonly #pending = new Map<number, { resolve: (result: BucketResult) => void; timer: NodeJS.Timeout }>();
  #seq = 0;

  take(key: string, rate: number, burst: number): Promise<BucketResult> {
    if (!process.send || !process.connected) return Promise.reject(new Error('no primary to share buckets with'));
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(seq);
        reject(new Error('the primary did not answer in time'));
      }, SHARED_BUCKET_TIMEOUT_MS);
      timer.unref();
      this.#pending.set(seq, { resolve, timer });
      process.send!({ meshgate: 'take', seq, key, rate, burst } satisfies ToPrimary);
    });
  }

  /** The primary's answer to draw `seq` (a late one, after the timeout, is dropped). */
  answer(seq: number, result: BucketResult): void {
    const pending = this.#pending.get(seq);
    if (pending === undefined) return;
    this.#pending.delete(seq);
    clearTimeout(pending.timer);
    pending.resolve(result);
  }
}

function specOf(inst: Instance): InstanceSpec {
  return { id: inst.id, url: inst.url, weight: inst.weight, metadata: inst.metadata, zone: inst.zone, ttl: inst.ttl, source: inst.source };
}
