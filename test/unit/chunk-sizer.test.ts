// Chunks sized by time: what a Ctrl-C waits for is one chunk in flight, so on a slow link a chunk
// must be small, and on a fast one as large as before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkSizer, DEFAULT_UPLOAD_TUNING, TIMED_CHUNKS, goesUpChunked } from '../../src/ends/registry/blob-upload.ts';
import { uploadTuning } from '../../src/ends/registry/tuning.ts';

const MiB = 1024 * 1024;
const timed = { ...DEFAULT_UPLOAD_TUNING, ...TIMED_CHUNKS };

/** The chunk lengths of a whole upload, each chunk going at `bytesPerSecond`. */
function chunksOf(sizer: ChunkSizer, size: number, bytesPerSecond: number, from = 0): number[] {
  const out: number[] = [];
  for (let offset = from; offset < size; ) {
    const n = sizer.next(offset, size);
    out.push(n / MiB);
    sizer.went(n, (n / bytesPerSecond) * 1000);
    offset += n;
  }
  return out;
}

test('the default (no FERRY_UPLOAD_CHUNK_BYTES) sizes chunks by time; a set size is fixed, as before', () => {
  assert.deepEqual(uploadTuning({}), timed);
  const fixed = uploadTuning({ FERRY_UPLOAD_CHUNK_BYTES: String(8 * MiB) });
  assert.equal(fixed.chunkSeconds, undefined);
  assert.equal(fixed.chunkBytes, 8 * MiB);
  assert.deepEqual(chunksOf(new ChunkSizer(fixed), 20 * MiB, 100 * MiB), [8, 8, 4]);
});

test('which blobs go up in chunks: over two first chunks when timed, over one chunk when fixed', () => {
  assert.equal(goesUpChunked(timed, 16 * MiB), false, '16 MiB: one request');
  assert.equal(goesUpChunked(timed, 16 * MiB + 1), true);
  assert.equal(goesUpChunked(DEFAULT_UPLOAD_TUNING, 64 * MiB), false);
  assert.equal(goesUpChunked(DEFAULT_UPLOAD_TUNING, 64 * MiB + 1), true);
});

test('a slow link: every chunk stays near 10 s, so a Ctrl-C waits for little', () => {
  // 0.6 MB/s per upload (a 40 Mbit/s link shared by 8): 8 MiB first, then 8 MiB chunks (~14 s each at most).
  const slow = chunksOf(new ChunkSizer(timed), 64 * MiB, 0.6e6);
  assert.deepEqual(slow, [8, 8, 8, 8, 8, 8, 8, 8]);
  // 3 MB/s (200 Mbit/s shared by 8): 8 MiB, then 24 MiB (30 MB in 10 s, in whole 8 MiB units).
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 3e6), [8, 24, 24, 8]);
});

test('a fast link: 8 MiB first, then 64 MiB chunks, as the fixed default', () => {
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 500e6), [8, 56]);
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 160 * MiB, 500e6), [8, 64, 64, 24]);
});

test('a chunk that starts off a boundary (the registry kept part of a cut one) ends on the next boundary', () => {
  const sizer = new ChunkSizer(timed);
  assert.equal(sizer.next(3 * MiB, 64 * MiB), 5 * MiB, 'to 8 MiB');
  sizer.went(8 * MiB, 100);
  assert.equal((3 * MiB + sizer.next(3 * MiB, 200 * MiB)) % (8 * MiB), 0);
});

test("a registry's OCI-Chunk-Min-Length above the first chunk: fixed chunks of at least that", () => {
  const sizer = new ChunkSizer(timed, 32 * MiB);
  assert.deepEqual(chunksOf(sizer, 100 * MiB, 0.6e6), [64, 36]);
});
