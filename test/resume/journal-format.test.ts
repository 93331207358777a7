// The journal file format on its own: round trip, and every way a file can be damaged is
// detected (never thrown, never trusted). No registries needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempStateHome } from '../e2e/ferry-cli.ts';
import { createRng, seedFor } from '../harness/seed.ts';
import { JOURNAL_VERSION, UploadJournal, decodeEntry, encodeEntry, type JournalEntry } from '../../src/ends/registry/journal.ts';

const entry: JournalEntry = {
  version: JOURNAL_VERSION,
  registry: '127.0.0.1:5000',
  repository: 'team/app',
  digest: `sha256:${'ab'.repeat(32)}`,
  size: 142_606_336,
  location: 'http://127.0.0.1:5000/v2/team/app/blobs/uploads/1234?_state=xyz',
  offset: 25_165_824,
  source: '127.0.0.1:5001/team/app:v1',
  owner: 'job 0042',
  started_at: '2026-11-27T13:20:00.000Z',
  updated_at: '2026-11-27T13:20:04.512Z',
};

function collectingLogger() {
  const warnings: Array<Record<string, unknown>> = [];
  const logger = { warn: (o: Record<string, unknown>) => void warnings.push(o), info() {}, debug() {}, error() {} } as never;
  return { logger, warnings };
}

test('an entry round-trips; every truncation of its file is rejected, never thrown', () => {
  const text = encodeEntry(entry);
  assert.deepEqual(decodeEntry(text), entry);
  for (let n = 0; n < text.trimEnd().length; n++) assert.equal(typeof decodeEntry(text.slice(0, n)), 'string', `truncated at ${n} was accepted`);
});

test('a flipped byte anywhere is rejected (seeded positions)', () => {
  const text = encodeEntry(entry);
  const rng = createRng(seedFor('journal/flip'));
  for (let k = 0; k < 200; k++) {
    const at = rng.int(text.trimEnd().length);
    const flipped = text.slice(0, at) + String.fromCharCode(text.charCodeAt(at) ^ 0x01) + text.slice(at + 1);
    const r = decodeEntry(flipped);
    // Flipping a byte of JSON whitespace-free text changes the entry, the checksum or the syntax.
    assert.equal(typeof r, 'string', `flip at ${at} accepted: ${flipped}`);
  }
});

test('shape checks: version, types, offset past size, non-http location', () => {
  const bad = (patch: Record<string, unknown>) => decodeEntry(encodeEntry({ ...entry, ...patch } as JournalEntry));
  assert.match(bad({ version: 2 }) as string, /version/);
  assert.match(bad({ size: -1 }) as string, /size/);
  assert.match(bad({ offset: 1.5 }) as string, /offset/);
  assert.match(bad({ offset: entry.size + 1 }) as string, /past/);
  assert.match(bad({ location: 'file:///etc/passwd' }) as string, /http/);
  assert.match(bad({ location: 'not a url' }) as string, /URL/);
  assert.match(bad({ digest: 7 }) as string, /digest/);
  assert.match(bad({ owner: 7 }) as string, /owner/);
  assert.match(bad({ owner: 'x'.repeat(201) }) as string, /owner/);
  assert.equal(typeof bad({ owner: undefined }), 'object', 'entries written before `owner` existed still load');
  assert.match(decodeEntry('[]') as string, /object/);
  assert.match(decodeEntry('{"entry":{}}') as string, /checksum/);
});

test('the store: put, get, list, remove; corrupt files warned about and removed; temp files skipped', async () => {
  const { logger, warnings } = collectingLogger();
  const state = tempStateHome();
  const journal = UploadJournal.inStateDir(state, logger);
  assert.equal(await journal.get(entry), undefined, 'no directory yet: nothing, no warning');
  await journal.put(entry);
  assert.deepEqual(await journal.get(entry), entry);
  await journal.put({ ...entry, offset: entry.offset + 8 });
  assert.equal((await journal.get(entry))?.offset, entry.offset + 8, 'rewritten in place');
  writeFileSync(join(journal.dir, `${'f'.repeat(64)}.json`), '{"entry":');
  writeFileSync(join(journal.dir, `${'e'.repeat(64)}.json.tmp-1-abc`), 'half');
  const other = { ...entry, repository: 'team/other' };
  await journal.put(other);
  assert.deepEqual((await journal.list(entry.registry, entry.repository)).map((e) => e.repository), ['team/app']);
  assert.equal(warnings.length, 1);
  assert.match(String(warnings[0]!.problem), /not JSON/);
  // An entry copied under another blob's file name is not trusted for that blob.
  const misplaced = { ...entry, digest: `sha256:${'cd'.repeat(32)}` };
  mkdirSync(journal.dir, { recursive: true });
  writeFileSync(journal.fileFor(misplaced), encodeEntry(entry));
  // Read by a new process (this one listed the directory before the file was there).
  const next = UploadJournal.inStateDir(state, logger);
  assert.equal(await next.get(misplaced), undefined);
  assert.equal(warnings.length, 2);
  assert.equal(warnings[1]!.file, journal.fileFor(misplaced), 'warned about the misplaced file');
  assert.equal(existsSync(journal.fileFor(misplaced)), false, 'the misplaced file is removed');
  await journal.remove(entry);
  await journal.remove(entry); // twice: no error
  assert.equal(await journal.get(entry), undefined);
  assert.deepEqual(readdirSync(journal.dir).filter((n) => !n.includes('.tmp-')).length, 1, 'only team/other is left');
});

test('the directory is listed once: a blob without an entry costs no open; own writes are seen, a later process\'s are not', async () => {
  const { logger } = collectingLogger();
  const state = tempStateHome();
  const journal = UploadJournal.inStateDir(state, logger);
  assert.equal(await journal.get(entry), undefined, 'listed: no directory, no entries');
  // Another process opens an upload after this one listed the journal: not this one's to continue.
  await UploadJournal.inStateDir(state, logger).put(entry);
  assert.equal(await journal.get(entry), undefined);
  // This process's own entries are seen, and forgotten when removed.
  const own = { ...entry, repository: 'team/own' };
  await journal.put(own);
  assert.deepEqual(await journal.get(own), own);
  await journal.remove(own);
  assert.equal(await journal.get(own), undefined);
  // A process started after both writes sees what is on disk.
  const later = UploadJournal.inStateDir(state, logger);
  assert.deepEqual(await later.get(entry), entry);
  assert.equal(await later.get(own), undefined);
});
