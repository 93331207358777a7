// scripts/fault-table.ts: the JSONL rows the fault suites record become the Markdown table of
// docs/faults.md, grouped by suite, in the order they ran.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatBytes, parseRows, renderTable } from '../../scripts/fault-table.ts';

const SCRIPT = new URL('../../scripts/fault-table.ts', import.meta.url).pathname;

const rows = [
  { suite: 'fault', fault: 'reset mid-PUT', action: 'restarted the blob', bytesResent: 1_572_864, outcome: 'byte-exact' },
  { suite: 'resume', fault: 'SIGKILL × 20', action: 'continued | restarted', bytesResent: 0, outcome: 'byte-exact' },
  { suite: 'fault', fault: 'disk full', action: 'gave up\nat once', bytesResent: 512, outcome: 'DESTINATION_REJECTED, no tag' },
];

test('rows are grouped by suite, in recorded order, with readable byte counts and safe cells', () => {
  const md = renderTable(parseRows(rows.map((r) => JSON.stringify(r)).join('\n') + '\n'));
  const lines = md.split('\n');
  const faultAt = lines.indexOf('### Faults (test/faults/faults.test.ts)');
  const resumeAt = lines.indexOf('### SIGKILL and restart (test/resume/sigkill.test.ts)');
  assert.ok(faultAt >= 0 && resumeAt > faultAt, md);
  assert.equal(lines[faultAt + 2], '| fault | what ferry did | bytes re-sent | outcome |');
  assert.equal(lines[faultAt + 4], '| reset mid-PUT | restarted the blob | 1.50 MiB | byte-exact |');
  assert.equal(lines[faultAt + 5], '| disk full | gave up at once | 512 B | DESTINATION_REJECTED, no tag |');
  assert.ok(md.includes('| SIGKILL × 20 | continued \\| restarted | 0 | byte-exact |'), md);
});

test('byte counts', () => {
  assert.equal(formatBytes(0), '0');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(1536), '1.50 KiB');
  assert.equal(formatBytes(580 * 1024 * 1024), '580 MiB');
  assert.equal(formatBytes(3.5 * 1024 ** 3), '3.50 GiB');
});

test('a line that is not a fault row is an error naming the line', () => {
  assert.throws(() => parseRows('{"suite":"fault"}\n', 'x.jsonl'), /x\.jsonl:1: not a fault row/);
  assert.throws(() => parseRows('\n{oops\n', 'x.jsonl'), /x\.jsonl:2: not JSON/);
});

test('the script prints the table of a JSONL file, and exits 2 without one', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-fault-table-'));
  try {
    const file = join(dir, 'rows.jsonl');
    writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n'));
    const r = spawnSync(process.execPath, [SCRIPT, file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^### Faults/);
    const none = spawnSync(process.execPath, [SCRIPT], { encoding: 'utf8', env: { ...process.env, FERRY_FAULT_REPORT: '' } });
    assert.equal(none.status, 2);
    assert.match(none.stderr, /usage/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
