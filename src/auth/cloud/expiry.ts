// When to renew a short-lived cloud credential (ECR authorization tokens, STS sessions, Google
// access tokens). No I/O, no SDK: shared by the ECR and Artifact Registry providers.

/** How long before expiry a credential is renewed: 5 minutes or 10% of its lifetime, whichever is smaller. */
export function refreshMargin(lifetimeMs: number): number {
  return Math.max(0, Math.min(5 * 60_000, lifetimeMs / 10));
}
