// The progress display of `ferry copy`, driven with a fake clock on a fake terminal
// (test/harness/screen.ts) whose width the tests choose: the current rate over a moving window
// (a stall shows 0), the ETA, lines that fit the width, a clean redraw after the terminal got
// narrower, warnings as one readable line above the display, nothing left between the display
// and the summary, and "already up to date" when nothing was copied.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProgressDisplay, formatBytes, formatDuration } from '../../src/cli/progress.ts';
import { readableLogLine, terminalLogDestination } from '../../src/cli/terminal-log.ts';
import { humanSummary } from '../../src/cli/copy.ts';
import { createLogger } from '../../src/log/logger.ts';
import type { CopyProgress, CopyReport, TransferStats } from '../../src/copy/types.ts';
import { Screen } from '../harness/screen.ts';

const MiB = 1024 * 1024;
const A = `sha256:${'a'.repeat(64)}`;
const B = `sha256:${'b'.repeat(64)}`;

/** A copy in flight: blob A of `size` being transferred, reported at a fake time. */
class FakeCopy {
  clock = 0;
  readonly progress: CopyProgress;
  readonly display: ProgressDisplay;
  readonly screen: Screen;
  constructor(screen: Screen, total: number, blobs: number) {
    this.screen = screen;
    this.progress = { bytes_done: 0, bytes_total: total, blobs_done: 0, blobs_total: blobs, active: [] };
    this.display = new ProgressDisplay({ stream: screen, now: () => this.clock, refreshMs: 0 });
  }
  start(digest: string, size: number): { digest: string; done: number; size: number } {
    const a = { digest, done: 0, size };
    this.progress.active.push(a);
    this.display.update(this.progress);
    return a;
  }
  /** `bytes` through blob `a`, in even steps of 50 ms over `ms`. */
  move(a: { done: number }, bytes: number, ms: number): void {
    const steps = ms / 50;
    for (let i = 0; i < steps; i++) {
      this.clock += 50;
      const n = bytes / steps;
      a.done += n;
      this.progress.bytes_done += n;
      this.display.update(this.progress);
    }
  }
  /** Time passes with no bytes; the display's timer ticks every second. */
  stall(ms: number): void {
    for (let t = 0; t < ms; t += 1000) {
      this.clock += 1000;
      this.display.tick();
    }
  }
  total(): string {
    return this.screen.text().at(-1)!;
  }
}

test('the rate is the current one over a moving window: a stall shows 0, then "stalled"; the ETA follows the rate', () => {
  const copy = new FakeCopy(new Screen(100), 100 * MiB, 2);
  const a = copy.start(A, 100 * MiB);
  assert.match(copy.total(), /-- B\/s +ETA --/, 'no rate before bytes moved for a second');
  copy.move(a, 30 * MiB, 3000); // 10 MiB/s for 3 s
  assert.match(copy.total(), / 30% +30\.0 MiB \/ 100\.0 MiB +10\.0 MiB\/s +ETA 7s +0\/2 blobs$/);
  copy.move(a, 20 * MiB, 10_000); // 2 MiB/s for 10 s: the window forgets the fast start
  assert.match(copy.total(), / 50% .* 2\.0 MiB\/s +ETA 25s /);
  copy.stall(2000);
  const slowing = /(\d+\.\d) MiB\/s/.exec(copy.total());
  assert.ok(slowing && Number(slowing[1]) < 2 && Number(slowing[1]) > 0, `within the window the rate falls: ${copy.total()}`);
  copy.stall(4000); // past the 5 s window: nothing moved in it
  assert.match(copy.total(), / 50% .* 0 B\/s +stalled +0\/2 blobs$/);
  copy.move(a, 5 * MiB, 1000); // moving again at 5 MiB/s: it counts at once
  assert.match(copy.total(), /1\.0 MiB\/s/);
});

test('blobs found at the destination (skipped, mounted) are done at once, and do not count as moved bytes', () => {
  const copy = new FakeCopy(new Screen(100), 1000 * MiB, 3);
  const a = copy.start(A, 10 * MiB);
  copy.move(a, 4 * MiB, 2000); // 2 MiB/s
  // A 900 MiB blob skipped: done in an instant.
  copy.progress.blobs_done++;
  copy.progress.bytes_done += 900 * MiB;
  copy.move(a, 2 * MiB, 1000);
  assert.match(copy.total(), / 90% .* 2\.0 MiB\/s +ETA 47s /);
  // A transfer that starts over (its upload restarted) counts from its new position, never backwards.
  a.done = 0;
  copy.move(a, 2 * MiB, 1000);
  assert.match(copy.total(), / 2\.0 MiB\/s/);
});

test('every line fits the terminal width, and says the most it can in it', () => {
  for (const columns of [120, 80, 60, 40, 24, 12]) {
    const copy = new FakeCopy(new Screen(columns), 3 * 1024 * MiB, 40);
    const a = copy.start(A, 700 * MiB);
    copy.start(B, 1200 * MiB);
    copy.move(a, 100 * MiB, 2000);
    const lines = copy.screen.text();
    assert.equal(lines.length, 3, `${columns} columns: one row per line, none wrapped:\n${lines.join('\n')}`);
    for (const l of lines) assert.ok(l.length < columns, `${columns} columns: "${l}" is ${l.length} wide`);
    if (columns >= 24) assert.match(copy.total(), /^ *3% .*ETA \d+m\d\ds/, `${columns} columns: ${copy.total()}`);
    if (columns >= 80) assert.match(lines[0]!, /^ +aaaaaaaaaaaa +\[#*\.*\] +14% +100\.0 MiB \/ 700\.0 MiB$/);
  }
});

test('after the terminal got narrower, a redraw leaves no pieces of the old frame, and what was above stays', () => {
  const screen = new Screen(120);
  screen.write('$ ferry copy src dst\n');
  const copy = new FakeCopy(screen, 3 * 1024 * MiB, 40);
  const a = copy.start(A, 700 * MiB);
  copy.start(B, 1200 * MiB);
  copy.move(a, 100 * MiB, 2000);
  assert.equal(screen.text().length, 4);
  screen.resize(40); // the terminal re-wraps the old frame's long lines into two rows each
  copy.move(a, 10 * MiB, 1000);
  const rows = screen.text();
  assert.equal(rows[0], '$ ferry copy src dst');
  assert.equal(rows.length, 4, `the frame is 3 rows again:\n${rows.join('\n')}`);
  for (const l of rows.slice(1)) assert.ok(l.length < 40, l);
  assert.equal(screen.cursor().row, 4);
});

test('a warning is one readable line above the display, which is drawn again below it', () => {
  const screen = new Screen(200);
  const copy = new FakeCopy(screen, 100 * MiB, 1);
  const logger = createLogger({ level: 'warn', destination: terminalLogDestination((line) => copy.display.printAbove(line)) });
  const a = copy.start(A, 100 * MiB);
  copy.move(a, 10 * MiB, 2000);
  logger.warn({ tag: 'v1', previous_digest: B, note: 'two words' }, 'destination tag pointed at another digest;\noverwritten');
  logger.info('not at this level');
  copy.move(a, 10 * MiB, 1000);
  const rows = screen.text();
  assert.deepEqual(rows.slice(0, 1), [`warning: destination tag pointed at another digest; overwritten (tag=v1, previous_digest=${B}, note="two words")`]);
  assert.equal(rows.length, 3, rows.join('\n'));
  assert.match(rows[1]!, /^ +aaaaaaaaaaaa /);
  assert.match(rows[2]!, / 20% /);
  assert.ok(!rows.some((r) => r.includes('{')), 'no JSON on the screen');
});

test('readableLogLine: level, message, fields; errors by their message; one line whatever the input', () => {
  const line = JSON.stringify({ level: 50, time: 1, pid: 2, name: 'ferry', code: 'X', err: { type: 'Error', message: 'boom\nbang', stack: 'at …' }, n: 3, ok: true, msg: 'failed' });
  assert.equal(readableLogLine(line), 'error: failed (code=X, err="boom\\nbang", n=3, ok=true)');
  assert.equal(readableLogLine(JSON.stringify({ level: 40, msg: 'plain' })), 'warning: plain');
  assert.equal(readableLogLine('not json\nat all'), 'not json at all');
});

test('the display leaves the screen when the copy ends: no blank line before the summary', () => {
  const screen = new Screen(100);
  screen.write('$ ferry copy src dst\n');
  const copy = new FakeCopy(screen, 100 * MiB, 1);
  const a = copy.start(A, 100 * MiB);
  copy.move(a, 60 * MiB, 2000);
  copy.display.printAbove('warning: something to know');
  copy.move(a, 40 * MiB, 1000);
  copy.progress.active = [];
  copy.progress.blobs_done = 1;
  copy.display.update(copy.progress);
  copy.display.finish();
  screen.write('Copied src → dst\n  digest: sha256:…\n');
  assert.deepEqual(screen.text(), ['$ ferry copy src dst', 'warning: something to know', 'Copied src → dst', '  digest: sha256:…']);
  // Nothing more is drawn after it ended.
  copy.display.update(copy.progress);
  copy.display.tick();
  assert.equal(screen.text().length, 4);
});

function report(transfer: Partial<TransferStats>): CopyReport {
  const t: TransferStats = {
    blobs_copied: 0,
    blobs_skipped: 0,
    blobs_mounted: 0,
    blobs_restarted: 0,
    blobs_resumed: 0,
    bytes_transferred: 0,
    bytes_resent: 0,
    bytes_reread_for_hash: 0,
    bytes_total: 5 * MiB,
    manifests_written: 0,
    duration_ms: 120,
    ...transfer,
  };
  return {
    source: 'src.example/app:v1',
    destination: 'dst.example/app:v1',
    image: { repository: 'dst.example/app', tag: 'v1', digest: A, media_type: 'application/vnd.oci.image.index.v1+json', size: 5 * MiB, platforms: [], referrers: [] } as unknown as CopyReport['image'],
    digest_changed: false,
    referrers_left_behind: [],
    transfer: t,
  };
}

test('the summary says "already up to date" when nothing was written, and what was when something was', () => {
  const same = humanSummary(report({ blobs_skipped: 3 }), false);
  assert.match(same, /^Already up to date: dst\.example\/app:v1 \(from src\.example\/app:v1\); nothing copied\n/);
  assert.doesNotMatch(same, /Copied|blobs:/);
  // Every blob there, but the tag was new: a manifest was written, so it was not up to date.
  const retagged = humanSummary(report({ blobs_skipped: 3, manifests_written: 1 }), false);
  assert.match(retagged, /^Copied src\.example\/app:v1 → dst\.example\/app:v1\n/);
  assert.match(retagged, /\n +blobs: {5}0 copied \(0 B\), 3 already there, 0 mounted\n +manifests: 1 written\n/);
  const copied = humanSummary(report({ blobs_copied: 2, blobs_skipped: 1, bytes_transferred: 4 * MiB, manifests_written: 2 }), false);
  assert.match(copied, /blobs: {5}2 copied \(4\.0 MiB\)/);
});

test('formatBytes and formatDuration', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatDuration(0.2), '1s');
  assert.equal(formatDuration(59), '59s');
  assert.equal(formatDuration(185), '3m05s');
  assert.equal(formatDuration(7620), '2h07m');
  assert.equal(formatDuration(400 * 3600), '400h');
});
