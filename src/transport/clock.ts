// Time for the flow controllers (src/transport/flow.ts, src/transport/ecr-quotas.ts): the real
// one, or a test's own, so that pacing and back-off can be checked without waiting.
import { sleep } from './retry.ts';

export interface Clock {
  /** Milliseconds, as Date.now(). */
  now(): number;
  /** Resolves after `ms`; rejects with an AbortedError when `signal` aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) => sleep(ms, signal),
};
