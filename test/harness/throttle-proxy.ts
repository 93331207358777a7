// A throttling cloud registry: a real proxy (test/harness/fault-proxy.ts) in front of a real
// registry that grants `perSecond` requests a second and answers the rest 429 TOOMANYREQUESTS
// with Retry-After — how GHCR, Artifact Registry or ECR's registry endpoint push back. Used by
// the throttling tests (test/faults/throttle.test.ts) and the benchmark's `throttled` workload.
import { startFaultProxy, type FaultProxy } from './fault-proxy.ts';

export interface ThrottleProxy extends FaultProxy {
  /** Requests the registry behind the proxy got (not refused). */
  accepted(): number;
  /** The share of requests refused with 429 so far. */
  refusedShare(): number;
}

export interface ThrottleOptions {
  perSecond: number;
  /** Requests that may come at once after a quiet second (default: one second's worth). */
  burst?: number;
  /** Retry-After on every 429, seconds (default 1). */
  retryAfter?: number;
}

export async function startThrottleProxy(target: string, opts: ThrottleOptions): Promise<ThrottleProxy> {
  const proxy = await startFaultProxy(target, { throttle: opts });
  const refused = () => proxy.requests.filter((r) => r.fault === 'throttle').length;
  return Object.assign(proxy, {
    accepted: () => proxy.requests.length - refused(),
    refusedShare: () => (proxy.requests.length === 0 ? 0 : refused() / proxy.requests.length),
  });
}
