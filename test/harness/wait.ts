// Polling until something a test cannot await directly has happened (an agent's report, a
// registry's bookkeeping, a socket's close), with a deadline that names what never came.

/** Resolves with `fn`'s first truthy value, looking every `intervalMs`; throws `timed out waiting for <what>` after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs = 60_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
