// Prints the Markdown table of docs/faults.md from the rows the fault suites recorded
// (test/faults/report.ts): one section per suite, one row per case, in the order they ran.
//   FERRY_FAULT_REPORT=/tmp/faults.jsonl node scripts/test.mjs test/faults test/resume/sigkill
//   node scripts/fault-table.ts /tmp/faults.jsonl          (or: FERRY_FAULT_REPORT=... node scripts/fault-table.ts)
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FaultRow } from '../test/faults/report.ts';

const SUITE_TITLES: Record<string, string> = {
  fault: 'Faults (test/faults/faults.test.ts)',
  throttle: 'Throttled and slow registries (test/faults/throttle.test.ts)',
  resume: 'SIGKILL and restart (test/resume/sigkill.test.ts)',
  hostile: 'Hostile inputs',
  ecr: 'Amazon ECR',
};

/** Parse JSON lines into rows; a line that is not a row is an error naming its number. */
export function parseRows(text: string, source = 'input'): FaultRow[] {
  const rows: FaultRow[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch {
      throw new Error(`${source}:${i + 1}: not JSON`);
    }
    const r = row as Partial<FaultRow>;
    if (typeof r.suite !== 'string' || typeof r.fault !== 'string' || typeof r.action !== 'string' || typeof r.bytesResent !== 'number' || typeof r.outcome !== 'string') {
      throw new Error(`${source}:${i + 1}: not a fault row (suite, fault, action, bytesResent, outcome)`);
    }
    rows.push(r as FaultRow);
  });
  return rows;
}

/** Bytes as a reader wants them: "0", "1.5 MiB", "2.34 GiB" (binary units). */
export function formatBytes(n: number): string {
  if (n === 0) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

/** A table cell: one line, pipes escaped. */
function cell(text: string): string {
  return text.replace(/\r?\n/g, ' ').replace(/\|/g, '\\|').trim();
}

/** One Markdown section per suite (in order of first appearance), rows in recorded order. */
export function renderTable(rows: FaultRow[]): string {
  const suites = [...new Set(rows.map((r) => r.suite))];
  const out: string[] = [];
  for (const suite of suites) {
    out.push(`### ${SUITE_TITLES[suite] ?? suite}`, '');
    out.push('| fault | what ferry did | bytes re-sent | outcome |', '|---|---|---|---|');
    for (const r of rows.filter((x) => x.suite === suite)) {
      out.push(`| ${cell(r.fault)} | ${cell(r.action)} | ${formatBytes(r.bytesResent)} | ${cell(r.outcome)} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2] ?? process.env.FERRY_FAULT_REPORT;
  if (!file || process.argv.includes('--help')) {
    console.error('usage: node scripts/fault-table.ts FILE.jsonl   (or set FERRY_FAULT_REPORT)\nPrints the Markdown table of the fault rows a test run recorded.');
    process.exit(file ? 0 : 2);
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    console.error(`cannot read ${file}: ${(e as Error).message}`);
    process.exit(2);
  }
  try {
    process.stdout.write(renderTable(parseRows(text, file)));
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
