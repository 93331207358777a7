// Result delivery that survives a restart: the result is written to the state directory
// before the first attempt and removed only once the control plane has accepted it (or
// refused it for good). A restarted agent calls flushPendingResults() before claiming work.
import { AbortedError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import type { Backoff, BackoffOptions } from './backoff.ts';
import type { ResultBody } from './contract.ts';
import { normalizeResult, type ControlPlaneClient } from './control-plane-client.ts';
import { deliver, type Delivery } from './retry.ts';
import type { PendingResultStore } from './state.ts';

export interface ReportOptions {
  logger: Logger;
  signal?: AbortSignal;
  backoff?: BackoffOptions | Backoff;
  maxAttempts?: number;
}

/**
 * Persist, then deliver a result with retries. Resolves once it is delivered or finally
 * refused (either way the pending copy is removed). When the signal aborts (shutdown) it
 * rejects with AbortedError and the result stays pending for the next start.
 */
export async function reportResult(
  client: ControlPlaneClient,
  store: PendingResultStore,
  jobId: string,
  execId: string,
  result: ResultBody,
  opts: ReportOptions,
): Promise<Delivery<void>> {
  const normalized = normalizeResult(result);
  await store.save({ job_id: jobId, exec_id: execId, result: normalized });
  return deliverPending(client, store, jobId, execId, normalized, opts);
}

async function deliverPending(client: ControlPlaneClient, store: PendingResultStore, jobId: string, execId: string, result: ResultBody, opts: ReportOptions): Promise<Delivery<void>> {
  const outcome = await deliver('result', (signal) => client.reportResult(jobId, execId, result, signal ? { signal } : {}), {
    logger: opts.logger,
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.backoff ? { backoff: opts.backoff } : {}),
    ...(opts.maxAttempts !== undefined ? { maxAttempts: opts.maxAttempts } : {}),
    context: { job_id: jobId, exec_id: execId },
  });
  if (outcome.delivered || outcome.final) await store.remove(jobId, execId);
  if (outcome.delivered) opts.logger.info({ job_id: jobId, exec_id: execId, success: result.success }, 'result delivered');
  return outcome;
}

/**
 * Deliver every pending result left by an earlier run, oldest first, one at a time. Returns
 * how many were delivered; results refused for good are dropped (and logged).
 */
export async function flushPendingResults(client: ControlPlaneClient, store: PendingResultStore, opts: ReportOptions): Promise<number> {
  let delivered = 0;
  for (const p of await store.list()) {
    if (opts.signal?.aborted) throw new AbortedError('stopped delivering pending results');
    opts.logger.info({ job_id: p.job_id, exec_id: p.exec_id }, 'delivering a result left pending by an earlier run');
    const outcome = await deliverPending(client, store, p.job_id, p.exec_id, p.result, opts);
    if (outcome.delivered) delivered++;
  }
  return delivered;
}
