import cluster, { type Worker } from 'node:cluster';
import type { CircuitState, PluginHost } from '../../lib/index.js';
import type { DashboardLive, WorkerInstanceState } from './live.js';
import type { SeriesKind } from './series.js';

/** How often a cluster worker reports its counts and instance states to the primary. */
export const REPORT_MS = 1000;

/** A worker's report, over node:cluster's IPC channel (the tag keeps it apart from the core's messages). */
interface Report {
  meshgateDashboard: 1;
  /** Rows of counts since the last report: kind, name, bucket number, the row. */
  series: [SeriesKind, string, number, number[]][];
  /** Instances whose state changed since the last report: service, id, circuit, ejected until, in flight. */
  instances: [string, string, CircuitState, number, number][];
  /** Instances no longer reported (they left this worker's registry). */
  gone: [string, string][];
}

const keyOf = (service: string, id: string): string => `${service}\u0000${id}`;

/**
 * In a cluster worker: every {@link REPORT_MS}, the requests counted since the last report (the
 * book keeps only the current and the previous bucket, which the report empties) and the instances
 * whose circuit, ejection or requests in flight changed go to the primary.
 */
export function reportToPrimary(gateway: PluginHost, live: DashboardLive): () => void {
  let sent = new Map<string, string>();
  const timer = setInterval(() => {
    if (!process.send || !process.connected) return;
    const bucket = live.bucket;
    const report: Report = { meshgateDashboard: 1, series: [], instances: [], gone: [] };
    for (const [kind, name, series] of live.book.entries()) {
      for (const b of [bucket - 1, bucket]) {
        const row = series.take(b);
        if (row !== null) report.series.push([kind, name, b, row]);
      }
    }
    const now = new Map<string, string>();
    for (const service of gateway.registry.services()) {
      for (const inst of service.instances.values()) {
        const key = keyOf(inst.service, inst.id);
        const signature = `${inst.circuit} ${inst.ejectedUntil} ${inst.inflight}`;
        now.set(key, signature);
        if (sent.get(key) !== signature) report.instances.push([inst.service, inst.id, inst.circuit, inst.ejectedUntil, inst.inflight]);
      }
    }
    for (const key of sent.keys()) if (!now.has(key)) report.gone.push(key.split('\u0000') as [string, string]);
    sent = now;
    if (report.series.length + report.instances.length + report.gone.length > 0) process.send(report);
  }, REPORT_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * In a cluster's primary: adds the workers' counts into the primary's series and keeps each
 * worker's instance states, which the page shows merged (the worst circuit, requests added up).
 * A circuit or an ejection the merge changes becomes an event, as it would be in one process.
 */
export function collectFromWorkers(gateway: PluginHost, live: DashboardLive): () => void {
  const onMessage = (worker: Worker, message: Report): void => {
    if (message?.meshgateDashboard !== 1) return;
    for (const [kind, name, bucket, row] of message.series) {
      if (bucket > live.bucket - live.slots) live.book.get(kind, name, true).add(bucket, row);
    }
    let states = live.workers.get(worker.id);
    if (states === undefined) live.workers.set(worker.id, (states = new Map()));
    for (const [service, id] of message.gone) states.delete(keyOf(service, id));
    for (const [service, id, circuit, ejectedUntil, inflight] of message.instances) {
      const key = keyOf(service, id);
      const before = live.merged(key);
      states.set(key, { circuit, ejectedUntil, inflight });
      const inst = gateway.registry.getInstance(service, id);
      if (inst !== undefined) announce(live, before, live.merged(key), inst, worker.id);
    }
  };
  const onExit = (worker: Worker): void => void live.workers.delete(worker.id);
  cluster.on('message', onMessage);
  cluster.on('exit', onExit);
  const onRemoved = (inst: { service: string; id: string }): void => {
    for (const states of live.workers.values()) states.delete(keyOf(inst.service, inst.id));
  };
  gateway.on('instance:removed', onRemoved);
  return () => {
    cluster.off('message', onMessage);
    cluster.off('exit', onExit);
    gateway.off('instance:removed', onRemoved);
  };
}

function announce(live: DashboardLive, before: WorkerInstanceState, after: WorkerInstanceState, inst: Parameters<DashboardLive['view']>[0], worker: number): void {
  if (before.circuit !== after.circuit) live.push('circuit:state', { instance: live.view(inst), previous: before.circuit, reason: `circuit ${after.circuit} (worker ${worker})` });
  if (before.ejectedUntil === 0 && after.ejectedUntil !== 0) live.push('instance:ejected', { instance: live.view(inst), reason: `outlier detection (worker ${worker})` });
  if (before.ejectedUntil !== 0 && after.ejectedUntil === 0) live.push('instance:returned', { instance: live.view(inst), reason: 'ejection over' });
}
