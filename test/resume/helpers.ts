// Shared by the resume tests: a ferry child process that can be SIGKILLed at a chosen moment,
// its JSON log lines, and the journal files in a state directory.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

// The CLI runner lives with the e2e tests; the resume tests use its spawnFerry (to SIGKILL it).
export { spawnFerry, type FerryChild } from '../e2e/ferry-cli.ts';

/** ferry's pino JSON log lines from stderr. */
export function logLines(stderr: string): Array<Record<string, any>> {
  const out: Array<Record<string, any>> = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a line cut by SIGKILL
    }
  }
  return out;
}

/** Journal files (name → parsed content) in `<stateDir>/journal`. */
export function journalFiles(stateDir: string): Map<string, any> {
  const dir = join(stateDir, 'journal');
  const out = new Map<string, any>();
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names.filter((x) => x.endsWith('.json'))) {
    try {
      out.set(n, JSON.parse(readFileSync(join(dir, n), 'utf8')));
    } catch {
      out.set(n, undefined);
    }
  }
  return out;
}

export const MiB = 1024 * 1024;
export const mib = (n: number): string => (n / MiB).toFixed(1);
