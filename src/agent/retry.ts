// Delivery of status updates and results: retried with capped exponential backoff until
// the control plane accepts them. Per the contract a 4xx other than 408/429 is final (log it
// and move on). ferry makes one exception the contract does not spell out: a 401 is about the
// agent's identity, not the message, so it is retried too (the token source re-reads the token
// file on every 401) rather than letting a token rotation drop a job's result.
import { AbortedError, isFerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { Backoff, sleep, type BackoffOptions } from './backoff.ts';
import { ControlPlaneError } from './control-plane-client.ts';

export type Delivery<T> =
  | { delivered: true; value: T; attempts: number }
  /** final: the control plane refused it for good (4xx); otherwise attempts ran out (maxAttempts). */
  | { delivered: false; final: boolean; error: ControlPlaneError; attempts: number };

export interface DeliverOptions {
  logger: Logger;
  /** Stops retrying (and the pending sleep) at once: deliver() then rejects with AbortedError. */
  signal?: AbortSignal;
  backoff?: BackoffOptions | Backoff;
  /** Give up after this many attempts (default: never). */
  maxAttempts?: number;
  /** Extra log fields, e.g. {job_id, exec_id}. */
  context?: Record<string, unknown>;
}

/** Is this error one that retrying the same request cannot cure? */
export function isFinalDeliveryError(e: ControlPlaneError): boolean {
  if (e.status === undefined) return false; // network, timeout: not an answer
  if (e.status >= 400 && e.status < 500) return ![401, 408, 429].includes(e.status);
  if (e.status >= 300 && e.status < 400) return true; // a redirect will not go away by itself
  return false;
}

/**
 * Call `attempt` until it succeeds, a final error comes back, maxAttempts runs out or the
 * signal aborts. Errors that are not ControlPlaneErrors (bugs, AbortedError) are rethrown.
 */
export async function deliver<T>(what: string, attempt: (signal?: AbortSignal) => Promise<T>, opts: DeliverOptions): Promise<Delivery<T>> {
  const backoff = opts.backoff instanceof Backoff ? opts.backoff : new Backoff(opts.backoff);
  const max = opts.maxAttempts ?? Infinity;
  const log = opts.logger;
  let attempts = 0;
  for (;;) {
    if (opts.signal?.aborted) throw new AbortedError(`${what}: stopped before delivery`);
    attempts++;
    try {
      const value = await attempt(opts.signal);
      if (attempts > 1) log.info({ ...opts.context, attempts }, `${what} delivered after retries`);
      return { delivered: true, value, attempts };
    } catch (e) {
      if (!(e instanceof ControlPlaneError)) throw e;
      if (isFinalDeliveryError(e)) {
        log.warn({ ...opts.context, err: e, status: e.status, server_code: e.serverCode, attempts }, `control plane refused ${what}; not retrying`);
        return { delivered: false, final: true, error: e, attempts };
      }
      if (attempts >= max) {
        log.warn({ ...opts.context, err: e, attempts }, `${what} not delivered; giving up after ${attempts} attempts`);
        return { delivered: false, final: false, error: e, attempts };
      }
      const delay = backoff.next(e.retryAfterMs ?? 0);
      log.warn({ ...opts.context, kind: e.kind, status: e.status, attempts, retry_in_ms: delay, problem: e.message }, `${what} failed; retrying`);
      await sleep(delay, opts.signal);
    }
  }
}

/** Whether an error thrown by the client is worth another try later (for polling loops). */
export function isRetryable(e: unknown): boolean {
  return isFerryError(e) && e.retryable;
}
