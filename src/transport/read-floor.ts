// A response body that keeps sending, but slower than a floor, is stalled too: the idle timeout
// never fires for a source that drips a byte a second, and a copy would wait for it forever.
// The rate is measured over the time spent waiting for the body, not while ferry holds its
// reading back (a slow destination, a caller that has not asked for the next piece), so a slow
// sink is never blamed on the source. FERRY_READ_FLOOR_BYTES_PER_SECOND and
// FERRY_READ_FLOOR_SECONDS set it (src/copy/tuning.ts); the reader that falls below it fails
// with a retryable SlowBodyError, and the download resumes with Range on a new connection.
import { FerryError, NetworkError, type Side } from '../errors.ts';

export interface ReadFloor {
  /** Fewer bytes a second than this, over a whole window, is a stalled body. 0: no floor. */
  bytesPerSecond: number;
  windowMs: number;
}

/** Under 16 KiB/s for 30 s. */
export const DEFAULT_READ_FLOOR: ReadFloor = { bytesPerSecond: 16 * 1024, windowMs: 30_000 };

/** A body read slower than the floor: retryable, and the resumed read counts it as no progress. */
export class SlowBodyError extends NetworkError {
  readonly bytesPerSecond: number;
  constructor(host: string, bytes: number, ms: number, floor: ReadFloor, side: Side | undefined) {
    const rate = (bytes * 1000) / ms;
    super(
      `download from ${host} too slow: ${bytes} bytes in ${(ms / 1000).toFixed(1)} s (${formatRate(rate)}), under the floor of ${formatRate(floor.bytesPerSecond)} (FERRY_READ_FLOOR_BYTES_PER_SECOND / FERRY_READ_FLOOR_SECONDS)`,
      { side },
    );
    this.name = 'SlowBodyError';
    this.bytesPerSecond = rate;
  }
}

export function isSlowBody(e: unknown): e is SlowBodyError {
  return e instanceof SlowBodyError;
}

/**
 * The last of a run of slow reads: the same failure, no longer retryable, saying how often.
 * The resumed reads (src/copy/blob-pipe.ts, blob-reader.ts) give up with it.
 */
export function gaveUpSlow(e: SlowBodyError, tries: number): FerryError {
  return new NetworkError(`${e.message}; gave up after ${tries} slow reads in a row`, { side: e.side, retryable: false, cause: e });
}

export function formatRate(bytesPerSecond: number): string {
  if (bytesPerSecond >= 1024 * 1024) return `${(bytesPerSecond / 1024 / 1024).toFixed(1)} MiB/s`;
  if (bytesPerSecond >= 1024) return `${(bytesPerSecond / 1024).toFixed(1)} KiB/s`;
  return `${bytesPerSecond.toFixed(1)} B/s`;
}

/** The rate of one body, window by window, over the time its reader was waiting for bytes. */
export class FloorWatch {
  private readonly floor: ReadFloor;
  private readonly now: () => number;
  private start: number;
  private bytes = 0;
  private heldMs = 0;
  private heldSince: number | undefined;

  constructor(floor: ReadFloor, now: () => number = Date.now) {
    this.floor = floor;
    this.now = now;
    this.start = now();
  }

  /** The reader stopped reading (its sink is busy, its caller has not asked): this time does not count. */
  hold(): void {
    this.heldSince ??= this.now();
  }

  /** The reader reads again. */
  release(): void {
    if (this.heldSince === undefined) return;
    this.heldMs += this.now() - this.heldSince;
    this.heldSince = undefined;
  }

  /**
   * `n` bytes arrived. After a whole window of waiting, the window's rate is judged: below the
   * floor, the measurement for the error; otherwise a new window starts.
   */
  took(n: number): { bytes: number; ms: number } | undefined {
    this.bytes += n;
    if (this.floor.bytesPerSecond <= 0) return undefined;
    const now = this.now();
    const waited = now - this.start - this.heldMs - (this.heldSince !== undefined ? now - this.heldSince : 0);
    if (waited < this.floor.windowMs) return undefined;
    if ((this.bytes * 1000) / waited < this.floor.bytesPerSecond) return { bytes: this.bytes, ms: waited };
    this.start = now;
    this.bytes = 0;
    this.heldMs = 0;
    if (this.heldSince !== undefined) this.heldSince = now;
    return undefined;
  }
}
