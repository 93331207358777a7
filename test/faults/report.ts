// The fault and hostile-input suites record one row per case, so the table in docs/faults.md
// can be checked against a real run. Rows go to stdout as test diagnostics and, as JSON lines,
// to FERRY_FAULT_REPORT (if set), e.g.:
//   FERRY_FAULT_REPORT=/tmp/faults.jsonl node scripts/test.mjs test/faults test/resume
//   node scripts/fault-table.ts /tmp/faults.jsonl
import { appendFileSync } from 'node:fs';
import type { TestContext } from 'node:test';

export interface FaultRow {
  /** Which suite: 'fault' | 'hostile' | 'resume' | 'ecr'. */
  suite: string;
  /** The fault or input, as a reader would name it ("503 storm on uploads"). */
  fault: string;
  /** What ferry did about it ("retried 6 times with backoff", "refused before any request"). */
  action: string;
  /** Bytes sent to the destination again because of the fault (0 when not applicable). */
  bytesResent: number;
  /** The end state: "byte-exact", or the error code and "no tag written". */
  outcome: string;
}

export function recordFault(t: TestContext | undefined, row: FaultRow): void {
  const line = JSON.stringify(row);
  t?.diagnostic(`fault-report ${line}`);
  const file = process.env.FERRY_FAULT_REPORT;
  if (file) appendFileSync(file, line + '\n');
}
