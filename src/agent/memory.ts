// The agent's memory bound. ferry starts with a V8 heap cap in its own flags (pkg.config.json
// execArgv, the shebang of src/main.ts): without one, V8 sizes the heap from the host's memory,
// not the service's, and lets a long-running agent's heap and the buffers it holds grow towards
// that before collecting (docs/performance.md, "A daemon that runs for weeks"). A cap under
// 256 MiB also puts V8 in its small-heap mode, which grows the heap by ~1.3× the live set
// instead of up to 4×.
//
// The cap in the flags fits the default --max-jobs and --concurrency with room to spare. This
// module says what a configuration needs, so the agent can say at start when its cap is smaller
// and how to raise it.
import { getHeapStatistics } from 'node:v8';

const MiB = 1024 * 1024;

/** What any agent holds: ferry's code and objects, V8's own (measured: ~35 MiB committed at 8 jobs). */
export const HEAP_BASE_MIB = 48;
/** A job at worst: a 4 MiB manifest (the largest ferry reads), parsed (~1.2× its bytes), and a child's. */
export const HEAP_PER_JOB_MIB = 8;
/**
 * A blob transfer: its streams, hash state and requests. Measured under this: the WAN fleet (20
 * copies through one agent, --max-jobs 8) peaked at 122.5 MiB RSS with 8 transfers at once and
 * 148.4 with 64, 0.46 MiB per transfer, heap and all.
 */
export const HEAP_PER_TRANSFER_MIB = 0.5;

/** The V8 heap (MiB) an agent running `maxJobs` jobs and `concurrency` transfers at once may need. */
export function heapNeedMiB(maxJobs: number, concurrency: number): number {
  return Math.ceil(HEAP_BASE_MIB + HEAP_PER_JOB_MIB * maxJobs + HEAP_PER_TRANSFER_MIB * concurrency);
}

/**
 * Memory outside the V8 heap (MiB), for deploy limits: the executable's code pages (~55 MiB),
 * V8's other spaces, malloc arenas and thread stacks (~45 measured), and per transfer a pipe's read
 * buffer (up to 4 MiB) and a small blob read whole (up to 1 MiB).
 */
export function nonHeapMiB(concurrency: number): number {
  return 112 + 5 * concurrency;
}

/** This process's heap limit (MiB), as V8 was started with it. */
export function heapLimitMiB(): number {
  return Math.round(getHeapStatistics().heap_size_limit / MiB);
}

/** A warning when the heap limit is smaller than the configuration may need; undefined when it fits. */
export function heapCapWarning(maxJobs: number, concurrency: number, limitMiB = heapLimitMiB()): string | undefined {
  const need = heapNeedMiB(maxJobs, concurrency);
  if (limitMiB >= need) return undefined;
  return (
    `--max-jobs ${maxJobs} and --concurrency ${concurrency} may need a V8 heap of ${need} MiB, and this process may use ${limitMiB} MiB: ` +
    `start the binary with --node-options=--max-old-space-size=${need} (or run the bundle with node --max-old-space-size=${need}), ` +
    `and allow the service ${need + nonHeapMiB(concurrency)} MiB (systemd MemoryMax, Kubernetes resources.limits.memory)`
  );
}
