// Whether a registry (or an ECR account's API) is throttling ferry now, for the logs and the
// metrics: one info line when throttling starts, one when it has stopped for a while, and
// counters in between — never a line per refused request.
import type { Logger } from '../log/logger.ts';

export class ThrottleState {
  /** Throttled answers so far (429, 503, ThrottlingException). */
  events = 0;
  /** Time everyone was held back by a shared pause, in all. */
  pausedMs = 0;
  throttling = false;
  private lastAt = 0;
  /** Throttled answers and pause since throttling last started (for the recovery line). */
  private spellEvents = 0;
  private spellPausedMs = 0;

  /** A throttled answer at `now`; the first of a spell writes the info line. */
  throttled(now: number, logger: Logger | undefined, fields: Record<string, unknown>, message: string): void {
    this.events += 1;
    this.spellEvents += 1;
    this.lastAt = now;
    if (this.throttling) return;
    this.throttling = true;
    logger?.info(fields, message);
  }

  paused(ms: number): void {
    this.pausedMs += ms;
    this.spellPausedMs += ms;
  }

  /** A good answer: once nothing was throttled for `recoverAfterMs`, the spell is over (one info line). */
  answered(now: number, recoverAfterMs: number, logger: Logger | undefined, fields: Record<string, unknown>, message: string): void {
    if (!this.throttling || now - this.lastAt < recoverAfterMs) return;
    this.throttling = false;
    logger?.info({ ...fields, throttled_answers: this.spellEvents, paused_s: Math.round(this.spellPausedMs / 100) / 10 }, message);
    this.spellEvents = 0;
    this.spellPausedMs = 0;
  }
}
