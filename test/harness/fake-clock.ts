// A clock for unit tests of ferry's flow control (src/transport/clock.ts): time moves only when
// the test moves it, so pacing and back-off are checked exactly and without waiting.
import { AbortedError } from '../../src/errors.ts';
import type { Clock } from '../../src/transport/clock.ts';

interface Timer {
  at: number;
  seq: number;
  resolve: () => void;
}

export class FakeClock implements Clock {
  private t: number;
  private seq = 0;
  private timers: Timer[] = [];

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AbortedError());
      const timer: Timer = { at: this.t + Math.max(0, ms), seq: this.seq++, resolve };
      this.timers.push(timer);
      signal?.addEventListener(
        'abort',
        () => {
          this.timers = this.timers.filter((x) => x !== timer);
          reject(new AbortedError());
        },
        { once: true },
      );
    });
  }

  /** Sleepers waiting now. */
  get waiting(): number {
    return this.timers.length;
  }

  /** Let every promise that can settle now settle. */
  async settle(): Promise<void> {
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  }

  /** Move time to `target`, waking each sleeper in order as its time comes (and letting it run). */
  async runUntil(target: number): Promise<void> {
    await this.settle();
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (!next || next.at > target) break;
      this.timers.shift();
      this.t = Math.max(this.t, next.at);
      next.resolve();
      await this.settle();
    }
    this.t = Math.max(this.t, target);
    await this.settle();
  }

  async advance(ms: number): Promise<void> {
    await this.runUntil(this.t + ms);
  }
}
