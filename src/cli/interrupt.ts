// Ctrl-C and SIGTERM during `ferry copy` / `ferry sync`. The first signal parks the copy: nothing
// new begins, and the uploads in flight finish their chunk, within a grace period, so the next
// run of the same command continues them (distribution 2.8 drops a session whose chunk was cut
// mid-body). A second signal, or the grace running out, suspends the copy at once: it aborts with
// SUSPEND, the agent's hard stop, so journaled upload sessions are kept for the next run either
// way. A third signal gets Node's default: the process ends.
import { UsageError } from '../errors.ts';
import { SUSPEND } from '../ends/registry/journal.ts';

/**
 * As the agent's --shutdown-grace. A chunk in flight is sized to take about 15 s at the rate its
 * upload went (16 MiB for a blob's first; src/ends/registry/blob-upload.ts TIMED_CHUNKS), and a
 * blob of up to 32 MiB goes in one request. A second Ctrl-C does not wait.
 */
export const DEFAULT_INTERRUPT_GRACE_MS = 30_000;

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;
type StopSignal = (typeof SIGNALS)[number];
/** 128 + the signal's number, as a shell reports a process the signal ended. */
const EXIT_CODES: Record<StopSignal, number> = { SIGINT: 130, SIGTERM: 143 };

/** FERRY_INTERRUPT_GRACE_SECONDS: how long the first Ctrl-C waits for chunks in flight (default 30, 0 = not at all). */
export function interruptGraceMs(env: NodeJS.ProcessEnv): number {
  const raw = env.FERRY_INTERRUPT_GRACE_SECONDS?.trim();
  if (!raw) return DEFAULT_INTERRUPT_GRACE_MS;
  const s = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw) || !(s <= 3600)) throw new UsageError(`FERRY_INTERRUPT_GRACE_SECONDS must be a number of seconds from 0 to 3600, not "${raw}"`);
  return Math.round(s * 1000);
}

export interface InterruptionOptions {
  graceMs: number;
  /** The first signal: the copy is parked and has `graceMs` to get there. */
  onPark(signal: StopSignal, graceMs: number): void;
  /** A second signal (not the grace running out): the copy is suspended now. */
  onStopNow(signal: StopSignal): void;
}

export class Interruption {
  /** Aborted by the first signal: the copy's `park`. */
  readonly park = new AbortController();
  /** Aborted with SUSPEND by a second signal or when the grace is over: the copy's `signal`. */
  readonly stop = new AbortController();
  private first: StopSignal | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly opts: InterruptionOptions;
  private readonly handlers = new Map<StopSignal, () => void>();

  constructor(opts: InterruptionOptions) {
    this.opts = opts;
    for (const s of SIGNALS) this.handlers.set(s, () => this.received(s));
  }

  /** The signal that interrupted the copy, if one did. */
  get signal(): StopSignal | undefined {
    return this.first;
  }

  /** The exit code for an interrupted command: 130 after SIGINT, 143 after SIGTERM. */
  get exitCode(): number {
    return EXIT_CODES[this.first ?? 'SIGINT'];
  }

  listen(): this {
    for (const [s, h] of this.handlers) process.on(s, h);
    return this;
  }

  close(): void {
    clearTimeout(this.timer);
    for (const [s, h] of this.handlers) process.off(s, h);
  }

  private received(signal: StopSignal): void {
    if (this.first === undefined) {
      this.first = signal;
      this.park.abort(SUSPEND);
      this.opts.onPark(signal, this.opts.graceMs);
      this.timer = setTimeout(() => this.stop.abort(SUSPEND), this.opts.graceMs);
      return;
    }
    // Stop now; a further signal ends the process the default way, should anything still hang.
    for (const [s, h] of this.handlers) process.off(s, h);
    clearTimeout(this.timer);
    this.opts.onStopNow(signal);
    this.stop.abort(SUSPEND);
  }
}
