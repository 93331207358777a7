// The terminal progress display: one line per active blob and a total with throughput,
// redrawn at most 10 times a second on stderr.
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

export class ProgressDisplay {
  private readonly stream: NodeJS.WriteStream;
  private readonly started = Date.now();
  private lastDraw = 0;
  private linesDrawn = 0;
  private latest: CopyProgress | undefined;

  constructor(stream: NodeJS.WriteStream) {
    this.stream = stream;
  }

  update(p: CopyProgress): void {
    this.latest = p;
    const now = Date.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.draw();
  }

  finish(): void {
    if (this.latest) this.draw();
    this.linesDrawn = 0;
  }

  private draw(): void {
    const p = this.latest;
    if (!p) return;
    const secs = Math.max(0.001, (Date.now() - this.started) / 1000);
    const lines = p.active.slice(0, 8).map((a) => {
      const pct = a.size > 0 ? Math.floor((a.done / a.size) * 100) : 100;
      return `  ${a.digest.slice(0, 19)}  ${bar(pct)} ${String(pct).padStart(3)}%  ${formatBytes(a.done)} / ${formatBytes(a.size)}`;
    });
    lines.push(
      `  total: ${p.blobs_done}/${p.blobs_total} blobs  ${formatBytes(p.bytes_done)} / ${formatBytes(p.bytes_total)}  ${formatBytes(p.bytes_done / secs)}/s`,
    );
    let out = '';
    if (this.linesDrawn > 0) out += `\x1b[${this.linesDrawn}F`;
    out += lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n';
    // Clear lines left over from a taller previous frame.
    for (let i = lines.length; i < this.linesDrawn; i++) out += '\x1b[2K\n';
    const extra = Math.max(0, this.linesDrawn - lines.length);
    this.stream.write(out);
    this.linesDrawn = lines.length + extra;
  }
}

function bar(pct: number): string {
  const width = 20;
  const full = Math.round((pct / 100) * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}
