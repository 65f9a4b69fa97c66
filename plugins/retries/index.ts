import type { IncomingMessage } from 'node:http';
import {
  CircuitOpenError,
  MeshError,
  PayloadTooLargeError,
  UpstreamConnectError,
  UpstreamResetError,
  UpstreamTimeoutError,
  definePlugin,
  teeBody,
  type GatewayPlugin,
  type MeshState,
  type Service,
  type StageMesh,
} from '../../lib/index.js';
import { retriesSections, type RetryPolicy } from './config.js';

export { retriesSchema, type RetryPolicy } from './config.js';

/** Options of {@link retries}; per-service settings come from `services.<name>.retries`. */
export interface RetriesOptions {
  /** Largest request body buffered so it can be replayed; bigger bodies stream once. @default 65536 */
  maxReplayBody?: number;
  /** Backoff base and cap in ms (full jitter: a retry waits random(0, min(cap, base x 2^n))). @default { base: 25, cap: 250 } */
  backoff?: { base: number; cap: number };
}

/** Methods retried by default: the idempotent ones (RFC 9110 9.2.2). */
export const IDEMPOTENT_METHODS: readonly string[] = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'];

interface Budget {
  active: number;
  retrying: number;
}

/** One request under a retry policy. */
interface Run {
  mesh: StageMesh<'retry'>;
  next: () => Promise<void>;
  policy: RetryPolicy;
  budget: Budget;
  idempotent: boolean;
  /** The body can be sent again: none, or buffered. */
  replayable: boolean;
  /** A gRPC call's body as it streamed to the first attempt, once whole and small enough (for a retry after UNAVAILABLE). */
  copy: Buffer | null;
}

/**
 * Retries, as Envoy's retry policy. For services with a `retries` section:
 * - idempotent methods (or `retries.methods`) are retried on connect failure, reset before a
 *   response, per-try timeout, an open circuit, and the `retryOn` statuses (502, 503, 504);
 *   any other method only when nothing reached the upstream (connect failure, open circuit);
 * - always to an instance not tried yet, when there is one; never after a response byte reached the client;
 * - only with a replayable body: none, or one buffered up to `maxReplayBody` (64 KiB) before the first try;
 * - full-jitter backoff between 25 and 250 ms, inside the request's total `timeout` (none after a
 *   refused connection: the next try goes to another instance, the failed one got nothing);
 * - within a retry budget: concurrent retries stay under `budgetPercent` (20%) of the service's
 *   active requests, with a floor of `minRetryConcurrency` (3), so retries cannot multiply an outage.
 * Each retry emits `request:retry`.
 */
export function retries(options: RetriesOptions = {}): GatewayPlugin<unknown, RetryPolicy, unknown> {
  const maxReplayBody = options.maxReplayBody ?? 64 * 1024;
  const { base, cap } = options.backoff ?? { base: 25, cap: 250 };
  return definePlugin({
    name: 'retries',
    config: retriesSections,
    setup(gateway, scope) {
      const budgets = new Map<Service, Budget>();

      gateway.addMiddleware('retry', (ctx, next) => {
        const mesh = ctx.state.mesh;
        const service = mesh.service;
        const policy = scope.service(ctx);
        // attempts: 0 still retries what reached no instance (see retryLoop).
        if (!policy) return next();
        if (policy.perTryTimeout) mesh.tryTimeout = policy.perTryTimeout;
        const idempotent = (policy.methods ?? IDEMPOTENT_METHODS).includes(ctx.req.method!);
        let budget = budgets.get(service);
        if (!budget) budgets.set(service, (budget = { active: 0, retrying: 0 }));
        const run: Run = { mesh, next, policy, budget, idempotent, replayable: true, copy: null };
        if (mesh.body !== null) return withBody(run);
        // No body, and most requests end with their first attempt: it runs without an async
        // frame, and only an outcome that may be retried enters the loop.
        budget.active++;
        return next().then(
          // No exchange: a middleware of a later stage answered itself, and its answer stands.
          () => (mesh.exchange !== null && retryableAnswer(mesh.exchange, idempotent, policy) ? retryLoop(run, null) : void budget.active--),
          (err: unknown) => retryLoop(run, err),
        );
      });

      /** A request with a body: made replayable (buffered up to maxReplayBody) before the first attempt. */
      const withBody = async (run: Run): Promise<void> => {
        run.replayable = await makeReplayable(run.mesh, maxReplayBody);
        // A gRPC call's body has no length: a copy is kept as it streams, so a call the instance
        // refused with UNAVAILABLE (which says it did not process it) can go to another one.
        if (!run.replayable && run.mesh.grpc) run.mesh.body = teeBody(run.mesh.body, maxReplayBody, (copy) => void (run.copy = copy));
        run.budget.active++;
        let failure: unknown = null;
        try {
          await run.next();
        } catch (err) {
          failure = err;
        }
        return retryLoop(run, failure);
      };

      /**
       * Decides on the outcome of the attempt just made (`failure`, or the held answer's status)
       * and retries while the policy, the budget and the deadline allow. Owns one unit of
       * `budget.active`, released when it ends.
       */
      const retryLoop = async (run: Run, firstFailure: unknown): Promise<void> => {
        const { mesh, next, policy, budget, idempotent, replayable } = run;
        const service = mesh.service;
        let failure = firstFailure;
        let holdsRetrySlot = false;
        // Retries of attempts that reached an instance; those that reached nothing are free.
        let retries = 0;
        try {
          for (;;) {
            // 0 when a later stage's middleware answered itself: nothing to retry.
            const status = failure === null ? (mesh.exchange?.outcomeStatus ?? 0) : 0;
            const wanted =
              failure === null
                ? mesh.exchange !== null && retryableAnswer(mesh.exchange, idempotent, policy)
                : retryableError(failure, idempotent, mesh);
            // Nothing of the request reached the instance (refused, unreachable, a failed handshake,
            // an open circuit): trying another one cannot repeat anything, so neither `attempts` nor
            // the budget holds it back; only running out of untried instances does.
            const free = failure !== null && nothingSent(failure);
            // A body that streams once can still go again if it never left: nothing read, nothing sent.
            const canReplay = replayable || (free && untouched(mesh.body)) || run.copy !== null;
            if (!wanted || (!free && retries >= policy.attempts) || mesh.clientGone || !canReplay || !mesh.hasUntried()) {
              if (failure !== null) throw failure;
              return;
            }
            const allowed = Math.max(policy.minRetryConcurrency, Math.floor((budget.active * policy.budgetPercent) / 100));
            if (!free && budget.retrying >= allowed) {
              if (failure !== null) throw failure;
              return;
            }
            if (!free) retries++;
            // Backoff spares an instance that is struggling. After a refused connection the next try
            // goes to another instance and the failed one got nothing: waiting would only add latency.
            const delay = free ? 0 : gateway.random() * Math.min(cap, base * 2 ** (retries - 1));
            if (performance.now() + delay >= mesh.deadline) {
              if (failure !== null) throw failure;
              return;
            }
            budget.retrying++;
            holdsRetrySlot = true;
            // Drop a held answer now: its socket goes back to the pool during the backoff.
            if (mesh.exchange?.state === 'headers') mesh.exchange.discard();
            gateway.emit('request:retry', service, { attempt: mesh.attempt + 1, reason: failure === null ? `status ${status}` : (failure as MeshError).code ?? 'error' });
            if (delay > 0) await sleep(delay);
            if (mesh.clientGone) {
              if (failure !== null) throw failure;
              return;
            }
            failure = null;
            if (!replayable && run.copy !== null && !(free && untouched(mesh.body))) mesh.body = run.copy;
            try {
              await next();
            } catch (err) {
              failure = err;
            }
            budget.retrying--;
            holdsRetrySlot = false;
          }
        } finally {
          if (holdsRetrySlot) budget.retrying--;
          budget.active--;
        }
      };
    },
  });
}

/**
 * Whether an answer calls for another try: a `retryOn` status of an idempotent request, or a gRPC
 * call's UNAVAILABLE, which the gRPC spec makes safe to retry whatever the method.
 */
function retryableAnswer(exchange: { outcomeStatus: number; grpcStatus: number | null }, idempotent: boolean, policy: RetryPolicy): boolean {
  if (exchange.grpcStatus === 14) return true;
  return idempotent && policy.retryOn.includes(exchange.outcomeStatus);
}

/** The attempt failed before anything reached the upstream. */
function nothingSent(err: unknown): boolean {
  return err instanceof UpstreamConnectError || err instanceof CircuitOpenError;
}

/** A streamed body nobody has read from yet (undici leaves it alone when the connection fails). */
function untouched(body: MeshState['body']): boolean {
  if (body === null || typeof body === 'string' || Buffer.isBuffer(body)) return true;
  return !body.readableDidRead && !body.destroyed;
}

/** Whether a failed attempt may be tried again. */
function retryableError(err: unknown, idempotent: boolean, mesh: MeshState): boolean {
  // Nothing reached the upstream: safe for any method.
  if (nothingSent(err)) return true;
  if (!idempotent) return false;
  if (err instanceof UpstreamResetError) return mesh.exchange === null || mesh.exchange.statusCode === 0;
  // A per-try timeout leaves time for another try; the total deadline does not (checked by the caller).
  if (err instanceof UpstreamTimeoutError) return performance.now() < mesh.deadline;
  return false;
}

/**
 * Makes the body replayable: no body is; a body with a known length up to `limit` is read into a
 * buffer before the first try. A larger or chunked body streams once, so such a request is only
 * retried when its body was never read (a connect failure).
 */
async function makeReplayable(mesh: MeshState, limit: number): Promise<boolean> {
  const body = mesh.body;
  if (body === null || typeof body === 'string' || Buffer.isBuffer(body)) return true;
  const length = Number(body.headers['content-length']);
  if (!Number.isFinite(length) || length > limit) return false;
  mesh.body = await readAll(body, limit);
  return true;
}

async function readAll(stream: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new PayloadTooLargeError(limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
