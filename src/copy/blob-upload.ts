// Uploading one blob from the source registry to the destination, streaming and verified.
// Small blobs (and registries that mishandle PATCH) go up monolithic: POST + one PUT.
// Large blobs go up in chunks; after a failed chunk ferry asks the registry how much it
// holds and continues from there, re-reading the source from that offset with the hash
// state saved at that chunk boundary. When the registry has dropped the session, the blob
// starts over (logged, and counted in the report).
import { FerryError, type Side } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import type { Digest } from '../reference/digest.ts';
import type { RegistryClient } from '../registry/client.ts';
import type { ImageSource } from '../ends/types.ts';
import { sleep, backoffDelay, DEFAULT_RETRY } from '../transport/retry.ts';
import { BlobHasher, ChunkCursor, readVerifiedBlob, type HashCheckpoint } from './blob-reader.ts';

export interface UploadTuning {
  /** Blobs up to this size go up in one PUT. */
  monolithicMaxBytes: number;
  /** PATCH size for larger blobs (raised to the registry's OCI-Chunk-Min-Length). */
  chunkBytes: number;
  /** Whole-blob attempts (a restart after the registry dropped the session counts as one). */
  attempts: number;
}

// Chunks exist for resuming: after a failed chunk only that chunk is sent again. Each one also
// costs a request, a round trip during which the stream stands still, and registry work
// (distribution saves its hash state after every PATCH). Measured on 8 × 64 MiB layers between
// two distribution 2.8 registries (docs/performance.md): 16 MiB chunks made 24 more requests and
// cost ~0.2 s more CPU in ferry and ~0.15 s more in the destination registry than 64 MiB ones.
// The peers never chunk (oras: one PUT per blob; crane and skopeo: one PATCH). 64 MiB keeps
// resume for large layers with a bounded re-send.
export const DEFAULT_UPLOAD_TUNING: UploadTuning = {
  monolithicMaxBytes: 64 * 1024 * 1024,
  chunkBytes: 64 * 1024 * 1024,
  attempts: 4,
};

export interface BlobUploadRequest {
  source: ImageSource;
  destination: RegistryClient;
  destinationRepository: string;
  digest: Digest;
  size: number;
  tuning: UploadTuning;
  logger: Logger;
  signal?: AbortSignal | undefined;
  /** Bytes sent to the destination (re-sent bytes count again). */
  onBytes?: (n: number) => void;
}

export interface BlobUploadResult {
  /** Times the blob had to start over from byte 0. */
  restarts: number;
  /** Times an upload continued from the registry's acknowledged offset. */
  resumes: number;
}

export async function uploadBlob(req: BlobUploadRequest): Promise<BlobUploadResult> {
  const { destination: dst, destinationRepository: repo, digest, size, logger } = req;
  const chunked = dst.profile.chunkedUploads && size > req.tuning.monolithicMaxBytes;
  const result: BlobUploadResult = { restarts: 0, resumes: 0 };
  for (let attempt = 1; ; attempt++) {
    const session = await dst.startUpload(repo, req.signal);
    let location = session.location;
    try {
      if (chunked) {
        await uploadChunked(req, location, Math.max(req.tuning.chunkBytes, session.minChunk), result, (l) => (location = l));
      } else {
        const body = counted(readVerifiedBlob({ source: req.source, digest, size, signal: req.signal }), req.onBytes);
        await dst.commitUpload(repo, location, digest, body, size, req.signal);
      }
      return result;
    } catch (e) {
      const err = e instanceof FerryError ? e : new FerryError('INTERNAL', String((e as Error)?.message ?? e), { cause: e });
      // Never leave a session behind: the registry would keep the partial bytes until it expires it.
      await dst.cancelUpload(repo, location);
      if (!err.retryable || req.signal?.aborted || attempt >= req.tuning.attempts) throw err;
      result.restarts++;
      const delay = backoffDelay(DEFAULT_RETRY, attempt);
      logger.warn({ digest, size, attempt, err: err.message, side: err.side }, 'blob upload failed; restarting it from the beginning');
      await sleep(delay, req.signal);
    }
  }
}

async function uploadChunked(
  req: BlobUploadRequest,
  startLocation: URL,
  chunkBytes: number,
  result: BlobUploadResult,
  setLocation: (l: URL) => void,
): Promise<void> {
  const { destination: dst, destinationRepository: repo, digest, size, logger } = req;
  let location = startLocation;
  let checkpoint: HashCheckpoint | undefined;
  let resumesHere = 0;
  for (;;) {
    const hasher = new BlobHasher(digest, checkpoint);
    const reader = readVerifiedBlob({
      source: req.source,
      digest,
      size,
      from: checkpoint,
      hasher,
      alignTo: chunkBytes,
      signal: req.signal,
    });
    const cursor = new ChunkCursor(reader);
    let offset = checkpoint?.offset ?? 0;
    try {
      while (offset < size) {
        const length = Math.min(chunkBytes - (offset % chunkBytes), size - offset);
        const body = counted(cursor.take(length), req.onBytes);
        if (offset + length === size) {
          // The last bytes ride on the commit PUT: one request fewer.
          await dst.commitUpload(repo, location, digest, body, length, req.signal);
          return;
        }
        const r = await dst.patchChunk(repo, location, offset, length, body, req.signal);
        if (r.acknowledged !== undefined && r.acknowledged !== offset + length) {
          throw new FerryError('REGISTRY_UNAVAILABLE', `registry acknowledged ${r.acknowledged} bytes of ${digest}, expected ${offset + length}`, {
            side: 'destination',
            retryable: true,
          });
        }
        location = r.location;
        setLocation(location);
        offset += length;
        checkpoint = hasher.checkpoint();
        resumesHere = 0;
      }
      return;
    } catch (e) {
      await cursor.close().catch(() => undefined);
      const err = e as FerryError;
      if (!(err instanceof FerryError) || !err.retryable || req.signal?.aborted || (err.side as Side | undefined) === 'source') throw e;
      if (++resumesHere > 3) throw e;
      // Ask the registry what it holds; continue from there if we can hash from that offset.
      const status = await dst.uploadStatus(repo, location, req.signal).catch(() => 'gone' as const);
      const held = typeof status === 'object' ? status.offset : undefined;
      const ours = checkpoint?.offset ?? 0;
      if (typeof status === 'object' && held === ours) {
        location = status.location;
        setLocation(location);
        result.resumes++;
        logger.info({ digest, offset: ours, size }, 'chunk failed; resuming upload from the registry\'s acknowledged offset');
        continue;
      }
      logger.warn({ digest, registry_offset: held, status: typeof status === 'string' ? status : 'mismatch' }, 'registry dropped or desynchronized the upload session');
      throw e;
    }
  }
}

export async function* counted(source: AsyncIterable<Buffer>, onBytes: ((n: number) => void) | undefined): AsyncGenerator<Buffer, void, undefined> {
  for await (const chunk of source) {
    yield chunk;
    onBytes?.(chunk.byteLength);
  }
}
