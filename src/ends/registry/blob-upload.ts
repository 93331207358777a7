// Uploading one blob from the source registry to the destination, streaming and verified.
// Small blobs (and registries that mishandle PATCH) go up monolithic: POST + one PUT.
// Large blobs go up in chunks; after a failed chunk ferry asks the registry how much it
// holds and continues from there, re-reading the source from that offset with the hash
// state saved at the last chunk boundary (brought forward by hashing the source bytes up to
// the registry's offset when it kept part of the failed chunk). When the registry has dropped the session, the blob
// starts over (logged, and counted in the report). With a journal (src/ends/registry/journal.ts) every
// acknowledged chunk is recorded, so a later process can continue the upload after a crash.
import { FerryError, type Side } from '../../errors.ts';
import type { Logger } from '../../log/logger.ts';
import type { Digest } from '../../reference/digest.ts';
import type { RegistryClient } from '../../registry/client.ts';
import type { ImageSource } from '../types.ts';
import { sleep, backoffDelay, retryAfterOf, DEFAULT_RETRY } from '../../transport/retry.ts';
import { BlobHasher, ChunkCursor, counted, readVerifiedBlob, readVerifiedBlobWhole, type HashCheckpoint } from '../../blob/verify.ts';
import { PipedBlobRead } from './blob-pipe.ts';
import { JOURNAL_VERSION, SUSPEND, suspending, type JournalEntry, type UploadJournal } from './journal.ts';

export interface UploadTuning {
  /** Blobs up to this size go up in one PUT. */
  monolithicMaxBytes: number;
  /** PATCH size for larger blobs (raised to the registry's OCI-Chunk-Min-Length); with `chunkSeconds`, the largest chunk. */
  chunkBytes: number;
  /**
   * Chunks sized by time, not bytes: each PATCH is sized to take about this long at the rate the
   * upload's previous chunk went, between `firstChunkBytes` and `chunkBytes`, and blobs larger than
   * two first chunks go up chunked. Unset: fixed `chunkBytes` chunks.
   */
  chunkSeconds?: number;
  /** With `chunkSeconds`: the first chunk of a blob (nothing measured yet), and the unit every chunk is a multiple of. */
  firstChunkBytes?: number;
  /** Whole-blob attempts (a restart after the registry dropped the session counts as one). */
  attempts: number;
  /** ECR destinations: blobs from this size on go through ECR's layer-upload API (default: src/ends/registry/ecr-layer-upload.ts). */
  ecrLayerApiMinBytes?: number;
  /** ECR's layer-upload API: part size (whole MiB, 5–10 MiB). */
  ecrPartBytes?: number;
  /** Registry-to-registry blobs from this size on move over ferry's own connections (default: src/ends/registry/blob-pipe.ts, by scheme). */
  pipeMinBytes?: number;
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

// What a chunk in flight costs when the copy stops is the time it takes: a Ctrl-C lets it finish
// (within FERRY_INTERRUPT_GRACE_SECONDS, 30 s), and distribution 2.8 cannot continue a request that
// was cut. On a slow link a 64 MiB request outlasts the grace: measured across a WAN lab link of
// 40 Mbit/s shared by 8 uploads (~0.6 MB/s each), Ctrl-C 6 s into a copy of 8 × 64 MiB layers
// waited the whole 30 s, then the re-run started all 8 layers over and 8 sessions stayed behind
// in distribution 2.8. So the default sizes chunks by time: the first one 16 MiB, the next ones
// what the upload moves in 15 s, half the grace (16 to 64 MiB; a tail of up to half a chunk more
// goes with the last). That bounds the wait for any link where an upload moves 0.6 MB/s or more
// (16 MiB in 28 s; a 36 Mbit/s link shared by 8 uploads). The price on a fast link is one request
// more for a blob over 32 MiB (16 MiB, then the rest): measured with 8 MiB first chunks and blobs
// over 16 MiB chunked, `multiarch` (a 24 MiB layer) was 4 % slower on loopback and up to 9 % in
// the WAN lab, and `big` used 89-90 % of a 200 Mbit/s link instead of 91-92 %.
export const TIMED_CHUNKS: Pick<UploadTuning, 'chunkSeconds' | 'firstChunkBytes'> = {
  chunkSeconds: 15,
  firstChunkBytes: 16 * 1024 * 1024,
};

/**
 * The length of each chunk of one upload: fixed (`chunkBytes`), or timed (`chunkSeconds`): sized
 * from the rate the previous chunk went at, a multiple of the first chunk's size so that every
 * boundary is one (the hash checkpoints of the regular read are taken there).
 */
export class ChunkSizer {
  /** Every chunk boundary is a multiple of this. */
  readonly unit: number;
  private readonly max: number;
  private readonly seconds: number;
  private bytesPerSecond: number | undefined;

  constructor(tuning: UploadTuning, minChunk = 0) {
    const timed = timedChunks(tuning) && minChunk <= tuning.firstChunkBytes!;
    this.max = Math.max(tuning.chunkBytes, minChunk);
    this.unit = timed ? tuning.firstChunkBytes! : this.max;
    this.seconds = timed ? tuning.chunkSeconds! : 0;
  }

  /** How many bytes the chunk starting at `offset` takes (the last one: the rest). */
  next(offset: number, size: number): number {
    const rest = size - offset;
    // Fixed chunks: the unit is the chunk. Timed: one unit until a rate is known.
    let target = this.unit;
    if (this.seconds > 0 && this.bytesPerSecond !== undefined) {
      const units = Math.floor((this.bytesPerSecond * this.seconds) / this.unit);
      target = Math.min(this.max, Math.max(1, units) * this.unit);
      // A tail that adds at most half the time rides along rather than costing a request (and a round trip) of its own.
      if (rest <= Math.min(this.max, Math.max(target, 1.5 * this.bytesPerSecond * this.seconds))) return rest;
    }
    // A chunk that starts off a boundary (the registry kept part of a cut one) ends on the next.
    return Math.min(target - (offset % this.unit), rest);
  }

  /** A chunk of `bytes` was acknowledged `ms` after it started. */
  went(bytes: number, ms: number): void {
    if (bytes > 0) this.bytesPerSecond = bytes / Math.max(ms, 1) * 1000;
  }
}

function timedChunks(tuning: UploadTuning): boolean {
  return (tuning.chunkSeconds ?? 0) > 0 && (tuning.firstChunkBytes ?? 0) > 0;
}

/** Whether a blob of `size` goes up in chunks (where the registry takes PATCH). */
export function goesUpChunked(tuning: UploadTuning, size: number): boolean {
  return size > tuning.monolithicMaxBytes || (timedChunks(tuning) && size > 2 * tuning.firstChunkBytes!);
}
export interface BlobUploadRequest {
  source: ImageSource;
  destination: RegistryClient;
  destinationRepository: string;
  digest: Digest;
  size: number;
  tuning: UploadTuning;
  logger: Logger;
  signal?: AbortSignal | undefined;
  /**
   * Aborted to stop soon without losing what was sent (the first Ctrl-C): a chunked upload
   * finishes the chunk in flight, keeps its journaled session and throws SUSPEND; a one-request
   * upload in flight finishes; an upload not begun does not begin. What sends nothing (re-reading
   * a prefix to hash it, waiting to retry) stops at once.
   */
  park?: AbortSignal | undefined;
  /** Awaited just before each request that writes (CopyContext.beforeWrite). */
  beforeWrite?: (() => Promise<void>) | undefined;
  /** Bytes sent to the destination (re-sent bytes count again). */
  onBytes?: (n: number) => void;
  /** Record open chunked uploads here, and continue the one a previous process left behind. */
  journal?: UploadJournal | undefined;
  /** What the copy reads from, recorded in the journal (an entry from another source is stale). */
  sourceName?: string | undefined;
  /** Recorded in the journal: `copy`, or `job <id>` for the agent's uploads. */
  journalOwner?: string | undefined;
}

export interface BlobUploadResult {
  /** Times the blob had to start over from byte 0 (including a journaled session that could not be continued). */
  restarts: number;
  /** Times an upload continued from the registry's acknowledged offset (in this process, or from the journal). */
  resumes: number;
  /** The upload continued a session that a previous process journaled. */
  resumedFromJournal: boolean;
  /** Bytes sent again that the registry had already acknowledged (in this process or a journaled one). */
  bytesResent: number;
  /** Bytes of the source read again only to rebuild the hash state of a journaled upload. */
  bytesRereadForHash: number;
}

/** Where a journaled upload can go on: the registry's Location and the hash state at its offset. */
interface Continuation {
  location: URL;
  checkpoint: HashCheckpoint | undefined;
}

export async function uploadBlob(req: BlobUploadRequest): Promise<BlobUploadResult> {
  const { destination: dst, destinationRepository: repo, digest, size, logger, journal } = req;
  if (req.park?.aborted) throw SUSPEND;
  const chunked = dst.profile.chunkedUploads && goesUpChunked(req.tuning, size);
  const result: BlobUploadResult = { restarts: 0, resumes: 0, resumedFromJournal: false, bytesResent: 0, bytesRereadForHash: 0 };
  const key = { registry: dst.registry, repository: repo, digest };
  // Bytes a previous process got acknowledged (journal): everything this process sends beyond
  // `size - acknowledgedBefore`, over all attempts, went to the registry before.
  let acknowledgedBefore = 0;
  let sent = 0;
  const onBytes = (n: number) => {
    sent += n;
    req.onBytes?.(n);
  };
  const counting: BlobUploadRequest = { ...req, onBytes };
  const settle = () => {
    result.bytesResent = Math.max(0, sent - (size - acknowledgedBefore));
  };
  let continuation: Continuation | undefined;
  if (journal) {
    const entry = await journal.get(key);
    if (entry) {
      acknowledgedBefore = entry.offset;
      continuation = chunked ? await continueJournaled(req, entry, result) : undefined;
      if (continuation?.checkpoint) acknowledgedBefore = continuation.checkpoint.offset;
      if (!continuation) {
        // A one-request upload (one a stop cut, or a blob that was chunked before) cannot be continued.
        await discardJournaled(req, entry, chunked ? 'the registry no longer holds the journaled upload' : 'a one-request upload cannot be continued');
        result.restarts++;
      }
    }
  }
  const startedAt = new Date().toISOString();
  // After a failed attempt the blob goes the regular way: the pipe is for speed, and an error on
  // its connection can hide the registry's answer (a write cut by the registry's close).
  const pipeOk = { allowed: true };
  for (let attempt = 1; ; attempt++) {
    let location: URL;
    let minChunk = 0;
    let checkpoint: HashCheckpoint | undefined;
    // A blob that goes up in one request starts reading its source while the session is opened:
    // the download's first round trip and the POST's overlap instead of following each other.
    let whole: Promise<WholeBlobSource> | undefined;
    if (continuation) {
      ({ location, checkpoint } = continuation);
      continuation = undefined;
    } else {
      if (!chunked) {
        whole = openWholeBlob(counting, pipeOk.allowed);
        // A failure while the session is still being opened (the copy stopped: another blob failed)
        // surfaces where it is awaited, not as an unhandled rejection that ends the process.
        whole.catch(() => undefined);
      }
      const session = await (async () => {
        await req.beforeWrite?.();
        return dst.startUpload(repo, req.signal);
      })().catch(async (e: unknown) => {
        await whole?.then((w) => w.close(), () => undefined);
        throw e;
      });
      location = session.location;
      minChunk = session.minChunk;
    }
    const record = journal
      ? async (l: URL, offset: number) => {
          const now = new Date().toISOString();
          const entry = { version: JOURNAL_VERSION, ...key, size, location: l.href, offset, source: req.sourceName ?? req.source.description, owner: req.journalOwner ?? 'copy', started_at: startedAt, updated_at: now };
          // A state directory that cannot be written costs resumability, not the copy.
          await journal.put(entry).catch((e: Error) => logger.warn({ digest, err: e.message }, 'could not write the upload journal; this upload cannot be resumed after a crash'));
        }
      : undefined;
    try {
      if (chunked) {
        // Journaled before the first byte goes out, so a crash at any point leaves a session the next run can continue or delete.
        await record?.(location, checkpoint?.offset ?? 0);
        await uploadChunked(counting, location, new ChunkSizer(req.tuning, minChunk), result, checkpoint, pipeOk, async (l, offset) => {
          location = l;
          if (offset !== undefined) await record?.(l, offset);
        });
      } else {
        const source = await (whole ?? openWholeBlob(counting, pipeOk.allowed));
        try {
          // The bytes of a small blob are read before its one request goes out.
          if ('bytes' in source) await source.bytes;
          await req.beforeWrite?.();
          if ('pipe' in source) {
            await dst.pipeUpload(repo, location, 0, size, digest, source.pipe, req.signal);
            logger.debug({ digest, size }, 'blob piped registry to registry');
          } else if ('bytes' in source) {
            await dst.commitUpload(repo, location, digest, await source.bytes, size, req.signal);
            onBytes(size);
          } else {
            await dst.commitUpload(repo, location, digest, counted(source.body, onBytes), size, req.signal);
          }
        } finally {
          await source.close();
        }
      }
      if (journal && chunked) await journal.remove(key);
      settle();
      if (result.resumes > 0 || result.restarts > 0) {
        logger.info(
          { digest, size, resumes: result.resumes, restarts: result.restarts, bytes_resent: result.bytesResent, bytes_reread_for_hash: result.bytesRereadForHash },
          'blob uploaded after interruptions',
        );
      }
      return result;
    } catch (e) {
      let err = e instanceof FerryError ? e : new FerryError('INTERNAL', String((e as Error)?.message ?? e), { cause: e });
      // 404 on the upload's Location (BLOB_UPLOAD_UNKNOWN): the registry expired or dropped the
      // session. Nothing to ask it; the blob starts over in a new session.
      if (err.side === 'destination' && err.status === 404 && !req.signal?.aborted) {
        err = new FerryError(err.code, `${err.message} (the upload session expired or was dropped by the registry)`, {
          side: 'destination',
          status: 404,
          registryCodes: err.registryCodes,
          retryable: true,
          cause: e,
        });
      }
      pipeOk.allowed = false;
      settle();
      // Suspended or parked (the agent stopping, the job left open; Ctrl-C): the journaled session
      // stays for the next process. A one-request upload cut by the stop cannot be continued, but
      // its session is journaled all the same, for the next run to DELETE: a DELETE now can reach
      // distribution 2.8 while it still stores the cut request, and the session is then left behind.
      if (journal && suspending(req.signal, req.park)) {
        if (!chunked) await record!(location, 0);
        throw err;
      }
      // Never leave a session behind: the registry would keep the partial bytes until it expires it.
      await dst.cancelUpload(repo, location);
      if (journal && chunked) await journal.remove(key);
      if (!err.retryable || req.signal?.aborted || req.park?.aborted || attempt >= req.tuning.attempts) throw err;
      result.restarts++;
      const delay = Math.max(waitAsked(err), backoffDelay(DEFAULT_RETRY, attempt));
      logger.warn({ digest, size, attempt, err: err.message, side: err.side }, 'blob upload failed; restarting it from the beginning');
      await sleep(delay, sendingNothing(req));
    }
  }
}

/**
 * A journaled upload from a previous process: ask the registry what it holds at the journaled
 * Location. Only when that is exactly the journaled (acknowledged) offset can the upload go on;
 * the hash state at that offset is then rebuilt by reading the prefix from the source again,
 * hashing it and sending nothing. Node's Hash cannot be serialized, and a WASM SHA-256 whose
 * state can be saved ran ~5× slower than Node's OpenSSL one (280 vs 1500 MB/s here), a cost paid
 * on every byte of every blob to save a prefix re-read paid only after a crash (docs/resume.md).
 */
async function continueJournaled(req: BlobUploadRequest, entry: JournalEntry, result: BlobUploadResult): Promise<Continuation | undefined> {
  const { destination: dst, destinationRepository: repo, digest, size, logger } = req;
  const source = req.sourceName ?? req.source.description;
  const why = (reason: string) => {
    logger.warn({ digest, size, journaled_offset: entry.offset, reason }, 'journaled upload cannot be continued; deleting its session and starting the blob over');
    return undefined;
  };
  if (entry.size !== size) return why(`journaled size ${entry.size} differs`);
  if (entry.source !== source) return why(`journaled for source ${entry.source}`);
  let location: URL;
  try {
    location = new URL(entry.location);
  } catch {
    return why('journaled Location is not a URL');
  }
  if (location.origin !== dst.baseUrl.origin) return why(`journaled Location is not on ${dst.baseUrl.origin}`);
  const status = await dst.uploadStatus(repo, location, req.signal).catch((e: Error) => `failed: ${e.message}`);
  if (typeof status === 'string') return why(status === 'gone' ? 'the registry expired or invalidated the session (404)' : `upload status ${status}`);
  // Less than the journal acknowledged: the registry lost bytes it confirmed. More: a chunk whose
  // acknowledgement the crash cut off, or the part of a chunk the crash cut mid-body that a spec
  // registry kept (distribution 2.8 answers 404 then). The prefix is re-hashed from the source
  // anyway, so any offset can be continued, also one off the chunk boundaries; all of the blob
  // held leaves only the commit.
  const offset = status.offset;
  if (offset < entry.offset || offset > size) return why(`registry holds ${offset} bytes, the journal acknowledged ${entry.offset}`);
  // Parked meanwhile: the session stays as it is, journaled, for the next run.
  if (req.park?.aborted) throw SUSPEND;
  let checkpoint: HashCheckpoint | undefined;
  if (offset > 0) {
    checkpoint = await hashTo({ ...req, signal: sendingNothing(req) }, undefined, offset);
    result.bytesRereadForHash += offset;
  }
  result.resumes++;
  result.resumedFromJournal = true;
  logger.info({ digest, size, offset, journaled_offset: entry.offset, reread_for_hash: offset }, 'continuing a journaled upload from the registry\'s acknowledged offset');
  return { location: status.location, checkpoint };
}

/** Read [from, offset) of the blob from the source (from byte 0 without a checkpoint) only to hash it. At the end of the blob the digest is checked. */
export async function hashTo(req: BlobUploadRequest, from: HashCheckpoint | undefined, offset: number): Promise<HashCheckpoint> {
  const hasher = new BlobHasher(req.digest, from);
  // alignTo = offset: no chunk crosses it, so once `offset` bytes came out the hasher is exactly there.
  const reader = readVerifiedBlob({ source: req.source, digest: req.digest, size: req.size, hasher, alignTo: offset, signal: req.signal });
  try {
    for await (const _ of reader) {
      if (hasher.offset >= offset) break;
    }
  } finally {
    await reader.return(undefined);
  }
  if (hasher.offset !== offset) throw new FerryError('SOURCE_INVALID', `source ended at byte ${hasher.offset} of ${req.digest}, before the journaled ${offset}`, { side: 'source' });
  return hasher.checkpoint();
}

/** Delete a journaled session and drop its entry (stale: expired, other source, blob already there). */
export async function discardJournaled(req: Pick<BlobUploadRequest, 'destination' | 'destinationRepository' | 'journal' | 'logger'>, entry: JournalEntry, reason: string): Promise<void> {
  let location: URL | undefined;
  try {
    location = new URL(entry.location);
  } catch {
    location = undefined;
  }
  // Only ever on the destination's own origin: a journal file is not trusted with where to send credentials.
  if (location && location.origin === req.destination.baseUrl.origin) await req.destination.cancelUpload(req.destinationRepository, location);
  await req.journal?.remove(entry);
  req.logger.warn({ digest: entry.digest, journaled_offset: entry.offset, source: entry.source, reason }, 'stale journal entry: upload session deleted, entry removed');
}

async function uploadChunked(
  req: BlobUploadRequest,
  startLocation: URL,
  chunks: ChunkSizer,
  result: BlobUploadResult,
  from: HashCheckpoint | undefined,
  pipeOk: { allowed: boolean },
  setLocation: (l: URL, acknowledged?: number) => Promise<void>,
): Promise<void> {
  const { destination: dst, destinationRepository: repo, digest, size, logger } = req;
  let location = startLocation;
  let checkpoint: HashCheckpoint | undefined = from;
  let resumesHere = 0;
  for (;;) {
    const hasher = new BlobHasher(digest, checkpoint);
    let pipe: PipedBlobRead | undefined;
    let cursor: ChunkCursor | undefined;
    let offset = checkpoint?.offset ?? 0;
    try {
      if (offset === size) {
        // The registry holds every byte (a cut final request it kept whole): only the commit is left.
        // The digest was checked when the hash was brought to this offset.
        await req.beforeWrite?.();
        await dst.commitUpload(repo, location, digest, Buffer.alloc(0), 0, req.signal);
        return;
      }
      pipe = pipeOk.allowed ? await startPipe(req, hasher) : undefined;
      if (!pipe) {
        const reader = readVerifiedBlob({
          source: req.source,
          digest,
          size,
          from: checkpoint,
          hasher,
          alignTo: chunks.unit,
          signal: req.signal,
          onResume: downloadResumed(logger, digest, size),
        });
        cursor = new ChunkCursor(reader);
      }
      while (offset < size) {
        // Parked: stop between chunks, the session journaled at what the registry acknowledged.
        if (req.park?.aborted) throw SUSPEND;
        await req.beforeWrite?.();
        const length = chunks.next(offset, size);
        if (offset + length === size) {
          // The last bytes ride on the commit PUT: one request fewer.
          if (pipe) {
            await dst.pipeUpload(repo, location, offset, length, digest, pipe, req.signal);
            logger.debug({ digest, size }, 'blob piped registry to registry');
          } else {
            await dst.commitUpload(repo, location, digest, counted(cursor!.take(length), req.onBytes), length, req.signal);
          }
          return;
        }
        const started = performance.now();
        const r = pipe
          ? await dst.pipeUpload(repo, location, offset, length, undefined, pipe, req.signal)
          : await dst.patchChunk(repo, location, offset, length, counted(cursor!.take(length), req.onBytes), req.signal);
        chunks.went(length, performance.now() - started);
        if (r.acknowledged !== undefined && r.acknowledged !== offset + length) throw misacknowledged(r.acknowledged, offset + length, digest);
        location = r.location;
        offset += length;
        checkpoint = hasher.checkpoint();
        resumesHere = 0;
        await setLocation(location, offset);
      }
      return;
    } catch (e) {
      pipe?.close();
      pipeOk.allowed = false;
      await cursor?.close().catch(() => undefined);
      const err = e as FerryError;
      // 416: the registry holds another offset than the chunk started at (part of an earlier cut
      // chunk, or an empty upload and a 1-byte one both written `0-0`): ask it, as after a cut.
      const desync = err instanceof FerryError && err.side === 'destination' && err.status === 416;
      if (!(err instanceof FerryError) || !(err.retryable || desync) || req.signal?.aborted || (err.side as Side | undefined) === 'source') throw e;
      // Still out of step after that: the blob starts over in a new session (retryable).
      const giveUp = () => (desync ? new FerryError('REGISTRY_UNAVAILABLE', `the registry and ferry disagree on the offset of an upload of ${digest}: ${err.message}`, { side: 'destination', retryable: true, cause: e }) : e);
      if (++resumesHere > 3) throw giveUp();
      // A busy or failing registry gets a pause first (at least its Retry-After).
      await sleep(Math.max(waitAsked(err), backoffDelay(DEFAULT_RETRY, resumesHere)), sendingNothing(req));
      // Ask the registry what it holds and continue from there. It can hold more than the last
      // acknowledged chunk: the part of a cut chunk that reached it, which a spec registry keeps.
      // The bytes in between are read from the source again only to hash them (at most one chunk).
      const status = await dst.uploadStatus(repo, location, req.signal).catch(() => 'gone' as const);
      const held = typeof status === 'object' ? status.offset : undefined;
      const ours = checkpoint?.offset ?? 0;
      if (typeof status === 'object' && held !== undefined && held >= ours && held <= size) {
        if (held > ours) {
          checkpoint = await hashTo({ ...req, signal: sendingNothing(req) }, checkpoint, held);
          result.bytesRereadForHash += held - ours;
        }
        location = status.location;
        await setLocation(location, held);
        result.resumes++;
        logger.info({ digest, offset: held, acknowledged_before: ours, size }, 'chunk failed; resuming upload from the registry\'s acknowledged offset');
        continue;
      }
      logger.warn({ digest, registry_offset: held, status: typeof status === 'string' ? status : 'mismatch' }, 'registry dropped or desynchronized the upload session');
      throw giveUp();
    }
  }
}

/**
 * The source of a blob that goes up in one request: the pipe, the verified read, or (a small
 * blob) the verified read's bytes, all of them. `close` releases its connection (a no-op once
 * read to the end).
 */
type WholeBlobSource = ({ pipe: PipedBlobRead } | { body: AsyncIterableIterator<Buffer> } | { bytes: Promise<Buffer> }) & { close(): Promise<void> };

/**
 * A blob up to this size that does not take the pipe (an image config the engine already read, a
 * layer from an archive or a layout) is read and verified whole, then sent as one body in memory:
 * a request ferry's own connections carry, where a streamed body goes through undici (loaded for
 * it alone, ~10-20 ms of a start). Registry-to-registry blobs take the pipe and stream.
 */
const IN_MEMORY_BODY_MAX_BYTES = 1024 * 1024;

/**
 * Open the source of a one-request upload: the pipe when it applies, else the verified read with
 * its first bytes already asked for. A failure to open surfaces where the body is read, as
 * without the head start.
 */
async function openWholeBlob(req: BlobUploadRequest, pipeAllowed: boolean): Promise<WholeBlobSource> {
  const pipe = pipeAllowed ? await startPipe(req, new BlobHasher(req.digest)) : undefined;
  if (pipe) {
    return { pipe, close: async () => pipe.close() };
  }
  const readOptions = { source: req.source, digest: req.digest, size: req.size, signal: req.signal, onResume: downloadResumed(req.logger, req.digest, req.size) };
  if (req.size <= IN_MEMORY_BODY_MAX_BYTES) {
    const bytes = readVerifiedBlobWhole(readOptions);
    // A failed read surfaces where the bytes are awaited (after the upload session is open).
    bytes.catch(() => undefined);
    // Nothing to release: the read is small and ends by itself (or with the signal).
    return { bytes, close: async () => undefined };
  }
  const read = readVerifiedBlob(readOptions);
  // The first next() is asked now; the body hands out its answer, then the read's own. (Not a
  // generator around the read: one more async step per chunk cost ~0.02–0.03 CPU-s on `many`.)
  let first: Promise<IteratorResult<Buffer, void>> | undefined = read.next();
  first.catch(() => undefined);
  const body: AsyncIterableIterator<Buffer> = {
    next: () => {
      const answer = first ?? read.next();
      first = undefined;
      return answer;
    },
    return: (value?: unknown) => read.return(value as undefined),
    [Symbol.asyncIterator]() {
      return this;
    },
  };
  return { body, close: async () => void (await read.return(undefined).catch(() => undefined)) };
}

/** The pipe for this blob (src/ends/registry/blob-pipe.ts), from the hasher's offset; undefined: the regular path. */
function startPipe(req: BlobUploadRequest, hasher: BlobHasher): Promise<PipedBlobRead | undefined> {
  return PipedBlobRead.start(
    { source: req.source, destination: req.destination, digest: req.digest, size: req.size, pipeMinBytes: req.tuning.pipeMinBytes, signal: req.signal, onBytes: req.onBytes, onResume: downloadResumed(req.logger, req.digest, req.size) },
    hasher,
  );
}

function misacknowledged(acknowledged: number, expected: number, digest: Digest): FerryError {
  return new FerryError('REGISTRY_UNAVAILABLE', `registry acknowledged ${acknowledged} bytes of ${digest}, expected ${expected}`, { side: 'destination', retryable: true });
}

/** The signal for what sends nothing (waits, prefix re-reads): it stops at once when the upload is parked. */
export function sendingNothing(req: Pick<BlobUploadRequest, 'signal' | 'park'>): AbortSignal | undefined {
  if (!req.park) return req.signal;
  return req.signal ? AbortSignal.any([req.signal, req.park]) : req.park;
}

/** The registry's Retry-After on a failed streamed request (capped like the client's), else 0. */
function waitAsked(err: unknown): number {
  return Math.min(retryAfterOf(err) ?? 0, DEFAULT_RETRY.maxRetryAfterMs);
}

/** Logs a download that broke or stalled and goes on with Range from where it stopped. */
export function downloadResumed(logger: Logger, digest: Digest, size: number): (offset: number, err: FerryError) => void {
  return (offset, err) => logger.info({ digest, size, offset, err: err.message }, 'download interrupted; resuming with Range from the last byte received');
}
