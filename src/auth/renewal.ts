// When to renew a short-lived credential: the control plane's source credentials, ECR
// authorization tokens, STS role sessions, Google access tokens. One rule for all of them, so a
// credential of a few seconds and one of twelve hours are both renewed in good time and neither
// is renewed over and over. No I/O: shared by the agent and the cloud providers.

/** A credential is never renewed sooner than this after it was obtained (one that arrives already expired included). */
export const MIN_RENEWAL_DELAY_MS = 1000;

/**
 * How long after it was obtained a credential living `lifetimeMs` is renewed: at 80 % of its
 * lifetime or 60 s before it runs out, whichever comes first, but not before half its lifetime
 * (60 s before the end of a 3-second credential would be before it was issued) and never
 * sooner than MIN_RENEWAL_DELAY_MS. 15 minutes → 12 min; 200 s → 140 s; 3 s → 1.5 s.
 */
export function renewalDelay(lifetimeMs: number): number {
  if (!Number.isFinite(lifetimeMs) || lifetimeMs <= 0) return MIN_RENEWAL_DELAY_MS;
  const at = Math.min(0.8 * lifetimeMs, Math.max(0.5 * lifetimeMs, lifetimeMs - 60_000));
  return Math.max(MIN_RENEWAL_DELAY_MS, Math.floor(at));
}

/** The instant (ms) to renew a credential obtained at `obtainedAt` that expires at `expiresAt`. */
export function renewalTime(obtainedAt: number, expiresAt: number): number {
  return obtainedAt + renewalDelay(expiresAt - obtainedAt);
}
