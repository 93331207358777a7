// Reading a blob from the source as a stream of chunks that survives broken connections
// (it resumes with Range from where it stopped) and verifies size and digest as it goes.
// The last chunk is held back until the digest checks out, so a consumer that forwards the
// chunks to a registry never completes an upload of unverified bytes.
// Shared by the copy engine and the ends that read their own bytes (the registry's uploads).
import { createHash, type Hash } from 'node:crypto';
import { AbortedError, DigestMismatchError, FerryError, NetworkError } from '../errors.ts';
import { parseDigest, type Digest } from '../reference/digest.ts';
import type { ImageSource } from '../ends/types.ts';
import { gaveUpSlow, isSlowBody } from '../transport/read-floor.ts';

/** Hash state at an offset: lets an upload resume mid-blob without re-reading the prefix. */
export interface HashCheckpoint {
  offset: number;
  hash: Hash;
}

export interface BlobReadOptions {
  source: ImageSource;
  digest: Digest;
  size: number;
  /** Start here, with the hash state of the bytes before it. */
  from?: HashCheckpoint;
  /** The caller's hasher, so it can checkpoint at chunk boundaries (created from `from` if absent). */
  hasher?: BlobHasher;
  /** No yielded chunk crosses a multiple of this: when a consumer has taken exactly up to a boundary, the hasher is there too. */
  alignTo?: number;
  signal?: AbortSignal | undefined;
  /** Consecutive failures without progress before giving up. */
  maxStalls?: number;
  onResume?: (offset: number, error: FerryError) => void;
}

/** The hasher over a blob's bytes, with checkpoints. */
export class BlobHasher {
  private hash: Hash;
  offset: number;
  constructor(digest: Digest, from?: HashCheckpoint) {
    const { algorithm } = parseDigest(digest);
    this.hash = from ? from.hash.copy() : createHash(algorithm);
    this.offset = from?.offset ?? 0;
  }
  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.offset += chunk.byteLength;
  }
  checkpoint(): HashCheckpoint {
    return { offset: this.offset, hash: this.hash.copy() };
  }
  hex(): string {
    return this.hash.copy().digest('hex');
  }
}

export async function* readVerifiedBlob(opts: BlobReadOptions): AsyncGenerator<Buffer, void, undefined> {
  const { source, digest, size, signal } = opts;
  const repository = source.description;
  const hasher = opts.hasher ?? new BlobHasher(digest, opts.from);
  const align = opts.alignTo ?? 0;
  const expectedHex = parseDigest(digest).hex;
  const maxStalls = opts.maxStalls ?? 5;
  let stalls = 0;
  if (hasher.offset === size) {
    checkDigest(hasher, expectedHex, digest, repository);
    return;
  }
  while (hasher.offset < size) {
    if (signal?.aborted) throw new AbortedError();
    const before = hasher.offset;
    try {
      const res = await source.openBlob(digest, size, hasher.offset, signal);
      const body = res.body as AsyncIterable<Buffer> & { destroy?: () => void };
      let skip = res.ignoredRange ? hasher.offset : 0;
      // Once every byte is read and verified the body is left to end by itself, not destroyed:
      // the response is then complete and its connection back in the pool, and destroying an
      // un-ended undici body costs an error object with a stack trace per blob.
      for await (const raw of body) {
        if (hasher.offset === size) {
          // A server sending past the declared size: every verified byte is already out.
          body.destroy?.();
          return;
        }
        let chunk = raw;
        if (skip > 0) {
          if (chunk.byteLength <= skip) {
            skip -= chunk.byteLength;
            continue;
          }
          chunk = chunk.subarray(skip);
          skip = 0;
        }
        if (hasher.offset + chunk.byteLength > size) {
          body.destroy?.();
          throw new DigestMismatchError(`blob ${digest} in ${repository} is longer than its declared ${size} bytes`, { side: 'source' });
        }
        while (chunk.byteLength > 0) {
          let piece = chunk;
          if (align > 0) {
            const toBoundary = align - (hasher.offset % align);
            if (piece.byteLength > toBoundary) piece = chunk.subarray(0, toBoundary);
          }
          chunk = chunk.subarray(piece.byteLength);
          hasher.update(piece);
          // Leaving the loop by throwing destroys the body (the async iterator's cleanup).
          if (hasher.offset === size) checkDigest(hasher, expectedHex, digest, repository);
          yield piece;
        }
      }
      if (hasher.offset === size) return;
      // The body ended early: a truncated response. Resume from here.
      throw new NetworkError(`download of ${digest} ended at byte ${hasher.offset} of ${size}`, { side: 'source' });
    } catch (e) {
      const err = e instanceof FerryError ? e : new NetworkError(`download of ${digest}: ${(e as Error).message}`, { side: 'source', cause: e });
      if (!err.retryable || signal?.aborted) throw err;
      // A body under the read floor moved some bytes, but a drip is no way to finish: no progress.
      stalls = hasher.offset > before && !isSlowBody(err) ? 0 : stalls + 1;
      if (stalls >= maxStalls) throw isSlowBody(err) ? gaveUpSlow(err, stalls) : err;
      opts.onResume?.(hasher.offset, err);
    }
  }
}

/** Throws DIGEST_MISMATCH unless the hasher's bytes hash to the digest. */
/** A small blob read and verified whole (an image config; a blob sent up as one in-memory body). */
export async function readVerifiedBlobWhole(opts: BlobReadOptions): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of readVerifiedBlob(opts)) parts.push(chunk);
  return Buffer.concat(parts);
}

export function checkDigest(hasher: BlobHasher, expectedHex: string, digest: Digest, repository: string): void {
  const actual = hasher.hex();
  if (actual !== expectedHex) {
    throw new DigestMismatchError(`blob ${digest} in ${repository} hashes to ${digest.split(':')[0]}:${actual}; refusing to copy it`, { side: 'source' });
  }
}

/** A readable sequence of checkpoints for the upload side: take `length` bytes from a chunk iterator. */
export class ChunkCursor {
  private readonly source: AsyncIterator<Buffer>;
  private pending: Buffer | undefined;
  private done = false;
  constructor(source: AsyncIterable<Buffer>) {
    this.source = source[Symbol.asyncIterator]();
  }
  /** Yields exactly `length` bytes (fewer only if the source ends). */
  async *take(length: number): AsyncGenerator<Buffer, void, undefined> {
    let left = length;
    while (left > 0) {
      let chunk = this.pending;
      this.pending = undefined;
      if (!chunk) {
        if (this.done) return;
        const r = await this.source.next();
        if (r.done) {
          this.done = true;
          return;
        }
        chunk = r.value;
      }
      if (chunk.byteLength > left) {
        this.pending = chunk.subarray(left);
        chunk = chunk.subarray(0, left);
      }
      left -= chunk.byteLength;
      yield chunk;
    }
  }
  async close(): Promise<void> {
    await this.source.return?.(undefined);
  }
}

/** The chunks as they are, reporting each one's size once it has been taken. */
export async function* counted(source: AsyncIterable<Buffer>, onBytes: ((n: number) => void) | undefined): AsyncGenerator<Buffer, void, undefined> {
  for await (const chunk of source) {
    yield chunk;
    onBytes?.(chunk.byteLength);
  }
}
