// The terminal progress display of `ferry copy` on stderr: a line per active blob (at most 8)
// and a total with the current rate and an ETA. Log lines (warnings) are printed above it as one
// readable line each. Redrawn at most 10 times a second as bytes move, and every second anyway,
// so that a stall shows (the rate falls to 0 within the rate window).
//
// Every line is cut to the terminal's width, so none wraps and a redraw moves up exactly as
// many rows as it drew. When the terminal got narrower since the last frame, the old lines may
// have been re-wrapped by the terminal (most reflow): the redraw moves up over the rows they
// take at the new width. Everything drawn is ASCII, so a character is a column.
import type { CopyProgress } from '../copy/types.ts';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** "45s", "3m05s", "2h07m": how long until the copy is done at the current rate. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(s / 3600);
  return h >= 100 ? `${h}h` : `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** What the display writes to: a terminal (process.stderr), or a test's fake one. */
export interface ProgressStream {
  write(s: string): unknown;
  /** The terminal's width; unknown means 80. */
  columns?: number | undefined;
  /** The terminal's height; limits the blob lines. */
  rows?: number | undefined;
}

export interface ProgressOptions {
  stream: ProgressStream;
  /** Milliseconds; injected by tests. */
  now?: () => number;
  /** The current rate is the bytes moved in this many milliseconds, over the time. Default 5 s. */
  rateWindowMs?: number;
  /** Redraw this often without news (a stall must show). 0: only on update() and tick(). Default 1000. */
  refreshMs?: number;
}

const MAX_BLOB_LINES = 8;
const MIN_REDRAW_MS = 100;
/** No rate (and no ETA) until bytes have moved for this long: the first instants are noise. */
const MIN_RATE_SPAN_MS = 1000;

interface Sample {
  t: number;
  bytes: number;
}

export class ProgressDisplay {
  private readonly stream: ProgressStream;
  private readonly now: () => number;
  private readonly windowMs: number;
  private readonly timer: ReturnType<typeof setInterval> | undefined;
  private latest: CopyProgress | undefined;
  private lastDraw = Number.NEGATIVE_INFINITY;
  /** The lines of the frame on screen, and the width they were drawn at. */
  private drawn: string[] = [];
  /** Bytes moved by transfers (not skipped or mounted blobs, which count as done at once). */
  private moved = 0;
  private readonly seen = new Map<string, number>();
  private readonly samples: Sample[] = [];
  private firstMove: number | undefined;
  private finished = false;

  constructor(opts: ProgressOptions) {
    this.stream = opts.stream;
    this.now = opts.now ?? Date.now;
    this.windowMs = opts.rateWindowMs ?? 5000;
    const refresh = opts.refreshMs ?? 1000;
    if (refresh > 0) {
      this.timer = setInterval(() => this.tick(), refresh);
      this.timer.unref();
    }
  }

  /** A progress event from the copy engine (many per second). */
  update(p: CopyProgress): void {
    if (this.finished) return;
    this.latest = p;
    this.account(p);
    if (this.now() - this.lastDraw >= MIN_REDRAW_MS) this.draw();
  }

  /** Redraw with what is known now (the timer calls it; tests call it with a moved clock). */
  tick(): void {
    if (this.finished || !this.latest) return;
    this.draw();
  }

  /** A line for the operator (a warning): printed above the display, which is drawn again below it. */
  printAbove(line: string): void {
    if (this.finished) {
      this.stream.write(`${line}\n`);
      return;
    }
    this.stream.write(`${this.erase()}${line}\n${this.render()}`);
  }

  /** Take the display off the screen: what follows (the summary) starts where it began. */
  finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    const out = this.erase();
    if (out) this.stream.write(out);
  }

  /** Bytes per second over the rate window; undefined until there is a fair measure. */
  rate(): number | undefined {
    const now = this.now();
    this.sample(now);
    if (this.firstMove === undefined || now - this.firstMove < MIN_RATE_SPAN_MS) return undefined;
    const from = now - this.windowMs;
    // The base: the last sample at or before the window's start (or the first of all).
    let base = this.samples[0]!;
    for (const s of this.samples) {
      if (s.t <= from) base = s;
      else break;
    }
    const span = now - base.t;
    return span > 0 ? ((this.moved - base.bytes) * 1000) / span : undefined;
  }

  /** Count the bytes moved since the last event, from each active blob's progress. */
  private account(p: CopyProgress): void {
    const active = new Set<string>();
    for (const a of p.active) {
      active.add(a.digest);
      const before = this.seen.get(a.digest) ?? 0;
      if (a.done > before) {
        this.moved += a.done - before;
        this.firstMove ??= this.now();
      }
      // A transfer that started over counts from its new position.
      this.seen.set(a.digest, a.done);
    }
    for (const d of this.seen.keys()) if (!active.has(d)) this.seen.delete(d);
    this.sample(this.now());
  }

  /**
   * One sample per 100 ms at most (events come by the thousand), each the exact count at its
   * time; old ones beyond the window's base dropped. rate() measures up to now itself.
   */
  private sample(now: number): void {
    const last = this.samples[this.samples.length - 1];
    if (!last || now - last.t >= MIN_REDRAW_MS) this.samples.push({ t: now, bytes: this.moved });
    const from = now - this.windowMs;
    while (this.samples.length > 2 && this.samples[1]!.t <= from) this.samples.shift();
  }

  private draw(): void {
    this.lastDraw = this.now();
    this.stream.write(`${this.erase()}${this.render()}`);
  }

  private width(): number {
    const c = this.stream.columns;
    // One column short of the edge: writing the last column makes some terminals wrap at once.
    return Math.max(10, (c && c > 0 ? c : 80) - 1);
  }

  /** Move to the frame's first row and clear from there down; forget the frame. */
  private erase(): string {
    if (this.drawn.length === 0) return '';
    const w = this.width() + 1;
    const rows = this.drawn.reduce((n, l) => n + Math.max(1, Math.ceil(l.length / w)), 0);
    this.drawn = [];
    return `\x1b[${rows}F\x1b[J`;
  }

  /** The frame as text (each line ends with a newline), remembered as drawn. */
  private render(): string {
    const p = this.latest;
    if (!p) return '';
    const width = this.width();
    const rows = this.stream.rows && this.stream.rows > 0 ? this.stream.rows : 24;
    const blobLines = Math.max(0, Math.min(MAX_BLOB_LINES, rows - 2));
    // One layout for every blob line: the most detailed that fits them all.
    const blobs = p.active.slice(0, blobLines).map(blobLayouts);
    const level = BLOB_LAYOUTS.findIndex((_, i) => blobs.every((b) => b[i]!.length <= width));
    const lines = blobs.map((b) => (level >= 0 ? b[level]! : b[b.length - 1]!.slice(0, width)));
    lines.push(totalLine(p, this.rate(), width));
    this.drawn = lines;
    return lines.map((l) => `${l}\n`).join('');
  }
}

/** The first candidate that fits the width, else the last one cut. */
function fit(candidates: string[], width: number): string {
  for (const c of candidates) if (c.length <= width) return c;
  return candidates[candidates.length - 1]!.slice(0, width);
}

/** A blob line's layouts, most detailed first. Numbers are padded so that a line keeps its layout as they change. */
const BLOB_LAYOUTS = [0, 1, 2, 3] as const;
function blobLayouts(a: { digest: string; done: number; size: number }): string[] {
  const pct = a.size > 0 ? Math.min(100, Math.floor((a.done / a.size) * 100)) : 100;
  const id = a.digest.replace(/^sha256:/, '').slice(0, 12);
  const amount = `${formatBytes(a.done).padStart(10)} / ${formatBytes(a.size)}`;
  const p = `${String(pct).padStart(3)}%`;
  return [`  ${id}  ${bar(pct, 20)} ${p}  ${amount}`, `  ${id}  ${bar(pct, 10)} ${p}  ${amount}`, `  ${id} ${p}  ${amount}`, `  ${id} ${p}`];
}

function totalLine(p: CopyProgress, rate: number | undefined, width: number): string {
  const pct = p.bytes_total > 0 ? Math.min(100, Math.floor((p.bytes_done / p.bytes_total) * 100)) : 100;
  const left = Math.max(0, p.bytes_total - p.bytes_done);
  const speed = (rate === undefined ? '-- B/s' : `${formatBytes(rate)}/s`).padStart(12);
  const eta = (left === 0 ? 'done' : rate === undefined ? 'ETA --' : rate > 0 ? `ETA ${formatDuration(left / rate)}` : 'stalled').padEnd(10);
  const blobs = `${p.blobs_done}/${p.blobs_total} blobs`;
  const bytes = `${formatBytes(p.bytes_done).padStart(10)} / ${formatBytes(p.bytes_total)}`;
  return fit(
    [
      `  ${String(pct).padStart(3)}%  ${bytes}  ${speed}  ${eta}  ${blobs}`,
      `  ${String(pct).padStart(3)}%  ${bytes}  ${speed}  ${eta}`,
      `${pct}% ${speed.trim()} ${eta.trim()}`,
      `${pct}% ${eta.trim()}`,
    ],
    width,
  ).trimEnd();
}

function bar(pct: number, width: number): string {
  const full = Math.round((pct / 100) * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}
