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
  assert.equal(goesUpChunked(timed, 32 * MiB), false, '32 MiB: one request');
  assert.equal(goesUpChunked(timed, 32 * MiB + 1), true);
  assert.equal(goesUpChunked(DEFAULT_UPLOAD_TUNING, 64 * MiB), false);
  assert.equal(goesUpChunked(DEFAULT_UPLOAD_TUNING, 64 * MiB + 1), true);
});

test('a slow link: every chunk stays near 15 s, so a Ctrl-C waits for little', () => {
  // 0.6 MB/s per upload (a 40 Mbit/s link shared by 8): 16 MiB chunks (28 s each, the least there is).
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 0.6e6), [16, 16, 16, 16]);
  // 2.5 MB/s (200 Mbit/s shared by 8): 16 MiB, then the 48 MiB left (a 32 MiB target, 37.5 MB in 15 s in whole 16 MiB units, and the tail with it).
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 2.5e6), [16, 48]);
  // 1.5 MB/s: 16 MiB chunks (11 s), the last 32 MiB together (22 s).
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 1.5e6), [16, 16, 32]);
  // 3.5 MB/s: 16 MiB, then the 48 MiB left (the target).
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 3.5e6), [16, 48]);
  // Past the first, no chunk takes longer than 1.5 × 15 s at a steady rate, unless it is the least there is.
  for (const rate of [0.3e6, 0.6e6, 1e6, 2e6, 3e6, 5e6]) {
    for (const n of chunksOf(new ChunkSizer(timed), 200 * MiB, rate).slice(1)) assert.ok((n * MiB) / rate <= 22.5 || n <= 16, `${n} MiB at ${rate} B/s`);
  }
});

test('a fast link: 16 MiB first, then 64 MiB chunks, as the fixed default', () => {
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 64 * MiB, 500e6), [16, 48]);
  assert.deepEqual(chunksOf(new ChunkSizer(timed), 160 * MiB, 500e6), [16, 64, 64, 16]);
});

test('a chunk that starts off a boundary (the registry kept part of a cut one) ends on the next boundary', () => {
  const sizer = new ChunkSizer(timed);
  assert.equal(sizer.next(3 * MiB, 64 * MiB), 13 * MiB, 'to 16 MiB');
  sizer.went(16 * MiB, 100);
  assert.equal((3 * MiB + sizer.next(3 * MiB, 200 * MiB)) % (16 * MiB), 0);
});

test("a registry's OCI-Chunk-Min-Length above the first chunk: fixed chunks of at least that", () => {
  const sizer = new ChunkSizer(timed, 32 * MiB);
  assert.deepEqual(chunksOf(sizer, 100 * MiB, 0.6e6), [64, 36]);
});
