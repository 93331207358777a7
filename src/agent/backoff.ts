// Capped exponential backoff with jitter, and an abortable sleep. The contract asks for
// 1 s growing to 60 s; the delays are "equal jitter": a random point in [d/2, d] where
// d = min(max, initial * factor^attempt), so replicas that failed together spread out while
// none retries sooner than half the nominal delay.
import { AbortedError } from '../errors.ts';

export interface BackoffOptions {
  /** First nominal delay; default 1000 ms. */
  initialMs?: number;
  /** Cap on the nominal delay; default 60000 ms. */
  maxMs?: number;
  /** Growth per attempt; default 2. */
  factor?: number;
  /** Source of randomness in [0, 1); default Math.random. Tests pass a fixed one. */
  random?: () => number;
}

export const DEFAULT_BACKOFF: Required<Omit<BackoffOptions, 'random'>> = { initialMs: 1000, maxMs: 60_000, factor: 2 };

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly factor: number;
  private readonly random: () => number;
  /** How many delays have been handed out since the last reset. */
  attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.initialMs = opts.initialMs ?? DEFAULT_BACKOFF.initialMs;
    this.maxMs = opts.maxMs ?? DEFAULT_BACKOFF.maxMs;
    this.factor = opts.factor ?? DEFAULT_BACKOFF.factor;
    this.random = opts.random ?? Math.random;
    if (!(this.initialMs >= 0) || !(this.maxMs >= this.initialMs) || !(this.factor >= 1)) {
      throw new RangeError(`invalid backoff: initial ${this.initialMs} ms, max ${this.maxMs} ms, factor ${this.factor}`);
    }
  }

  /** The nominal (un-jittered) delay of the next attempt. */
  nominal(): number {
    // Past ~60 doublings the power overflows to Infinity; min() keeps the cap.
    return Math.min(this.maxMs, this.initialMs * this.factor ** Math.min(this.attempt, 1000));
  }

  /**
   * The delay before the next attempt, in ms. `atLeastMs` (a server's Retry-After) raises it,
   * but never above the cap.
   */
  next(atLeastMs = 0): number {
    const d = this.nominal();
    this.attempt++;
    const jittered = d / 2 + this.random() * (d / 2);
    return Math.round(Math.min(this.maxMs, Math.max(jittered, atLeastMs)));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** Resolve after ms, or reject with AbortedError as soon as the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function abortReason(signal: AbortSignal): AbortedError {
  const r: unknown = signal.reason;
  if (r instanceof AbortedError) return r;
  const msg = r instanceof Error && r.message ? r.message : 'operation cancelled';
  return new AbortedError(msg, r === undefined ? {} : { cause: r });
}
