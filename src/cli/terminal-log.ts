// Log lines for a person at a terminal: while `ferry copy` shows its progress display, the
// logger's JSON lines (warnings, mostly) are turned into one readable line each and printed
// above the display, instead of raw JSON drawn over it.
import type { DestinationStream } from 'pino';

const LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warning', 50: 'error', 60: 'fatal' };
/** Fields that say nothing to the person reading (or are the message itself). */
const HIDDEN = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg']);

function fieldValue(v: unknown): string {
  if (typeof v === 'string') return v === '' || /[\s,()="]/.test(v) ? JSON.stringify(v) : v;
  // An error (pino's err serializer): its message says it.
  if (v && typeof v === 'object' && typeof (v as { message?: unknown }).message === 'string') return JSON.stringify((v as { message: string }).message);
  return JSON.stringify(v) ?? String(v);
}

/** `warning: message (key=value, …)` from one pino JSON line; always a single line. */
export function readableLogLine(json: string): string {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    o = undefined;
  }
  if (!o || typeof o !== 'object' || Array.isArray(o)) return json.trim().replace(/\s*\n\s*/g, ' ');
  const rec = o as Record<string, unknown>;
  const level = LEVELS[rec.level as number] ?? String(rec.level ?? 'log');
  const fields = Object.entries(rec)
    .filter(([k, v]) => !HIDDEN.has(k) && v !== undefined)
    .map(([k, v]) => `${k}=${fieldValue(v)}`);
  const msg = typeof rec.msg === 'string' ? rec.msg : '';
  return `${level}: ${msg}${fields.length ? ` (${fields.join(', ')})` : ''}`.replace(/\s*\n\s*/g, ' ');
}

/** A pino destination that hands each line, made readable, to `print` (e.g. ProgressDisplay.printAbove). */
export function terminalLogDestination(print: (line: string) => void): DestinationStream {
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) if (line.trim()) print(readableLogLine(line));
    },
  };
}
