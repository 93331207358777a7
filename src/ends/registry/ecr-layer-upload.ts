// Large layers to Amazon ECR through ECR's own layer-upload API (src/registry/ecr-layer-api.ts),
// resumable after a crash. ECR's Docker-API endpoint takes a blob only in one PUT, so a broken
// connection or a killed process there costs the whole layer; through the layer API it costs at
// most one part (5–10 MiB), at the price of base64 in JSON: ~34% more bytes on the wire and more
// CPU. Only layers of at least `ecrLayerApiMinBytes` go this way (docs/resume.md, "ECR", has the
// measurement and the choice).
//
// Parts are sent in order, each acknowledged before the next; after each one the journal records
// the uploadId and the acknowledged offset. A later process continues from the journaled offset:
// it re-reads [0, offset) from the source only to rebuild the hash (as the Docker path does),
// sends the next part there, and if ECR holds more or less than that (the kill fell between an
// acknowledgement and the journal write), ECR says so in InvalidLayerPartException's
// lastValidByteReceived and ferry goes on from there. An upload ECR no longer knows
// (UploadNotFoundException: expired) starts over, logged and counted. The digest is verified by
// ferry over every byte before the last part leaves, and by ECR at CompleteLayerUpload.
import { FerryError } from '../../errors.ts';
import type { Digest } from '../../reference/digest.ts';
import { sleep, backoffDelay, DEFAULT_RETRY } from '../../transport/retry.ts';
import { ECR_MAX_PART_BYTES, ECR_MAX_PARTS, ECR_MIN_PART_BYTES, EcrApiError, type EcrLayerApi } from '../../registry/ecr-layer-api.ts';
import { BlobHasher, ChunkCursor, readVerifiedBlob, type HashCheckpoint } from '../../blob/verify.ts';
import { discardJournaled, hashTo, sendingNothing, type BlobUploadRequest, type BlobUploadResult, type UploadTuning } from './blob-upload.ts';
import { JOURNAL_VERSION, SUSPEND, suspending, type JournalEntry } from './journal.ts';

const MiB = 1024 * 1024;
/** Parts are whole MiB: the source reader aligns its pieces to 1 MiB, so the hash state is known at every part boundary. */
const ALIGN = MiB;

/**
 * Layers from this size on go through the layer API. Chosen from the measurement in
 * docs/resume.md ("ECR"): below it, a restart of a one-PUT upload costs less than the layer
 * API's base64 premium is likely to save.
 */
export const DEFAULT_ECR_LAYER_API_MIN_BYTES = 4096 * MiB;
/** The largest part ECR takes: fewest requests, and a kill costs at most this much. */
export const DEFAULT_ECR_PART_BYTES = ECR_MAX_PART_BYTES;

/** The ECR part of the upload tuning from the environment (`ferry copy`). */
export function ecrLayerTuning(env: NodeJS.ProcessEnv): Pick<UploadTuning, 'ecrLayerApiMinBytes' | 'ecrPartBytes'> {
  const out: Pick<UploadTuning, 'ecrLayerApiMinBytes' | 'ecrPartBytes'> = {};
  const min = env.FERRY_ECR_LAYER_API_MIN_BYTES?.trim();
  if (min) {
    const n = Number(min);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new FerryError('USAGE', `FERRY_ECR_LAYER_API_MIN_BYTES must be a whole number of bytes (0: every layer through ECR's layer API), not "${min}"`);
    }
    out.ecrLayerApiMinBytes = n;
  }
  const part = env.FERRY_ECR_PART_BYTES?.trim();
  if (part) {
    const n = Number(part);
    if (!Number.isSafeInteger(n) || n < ECR_MIN_PART_BYTES || n > ECR_MAX_PART_BYTES || n % MiB !== 0) {
      throw new FerryError('USAGE', `FERRY_ECR_PART_BYTES must be a whole number of MiB from 5 MiB to 10 MiB (ECR's limits), in bytes, not "${part}"`);
    }
    out.ecrPartBytes = n;
  }
  return out;
}

/** Does a blob of this size go through the layer API? (Not when it would need more parts than ECR allows.) */
export function usesEcrLayerApi(size: number, tuning: UploadTuning): boolean {
  const min = tuning.ecrLayerApiMinBytes ?? DEFAULT_ECR_LAYER_API_MIN_BYTES;
  return size > 0 && size >= min && Math.ceil(size / partBytesFor(tuning, undefined)) <= ECR_MAX_PARTS;
}

function partBytesFor(tuning: UploadTuning, ecrPartSize: number | undefined): number {
  let n = tuning.ecrPartBytes ?? DEFAULT_ECR_PART_BYTES;
  if (ecrPartSize !== undefined && ecrPartSize >= ECR_MIN_PART_BYTES) n = Math.min(n, ecrPartSize);
  return Math.max(ECR_MIN_PART_BYTES, Math.floor(n / ALIGN) * ALIGN);
}

/** Where an upload stands: ECR's uploadId, the bytes it acknowledged, the hash state there. */
interface UploadState {
  uploadId: string;
  offset: number;
  checkpoint: HashCheckpoint | undefined;
  partBytes: number;
  /** Continued from a previous process's journal entry, and not yet confirmed by ECR. */
  journaled: boolean;
}

/** Not an AWS code: ECR holds an offset ferry cannot continue from (off the part grid, or moving). The blob starts over. */
const UNUSABLE_OFFSET = 'UnusableUploadOffset';

/** ECR holds another offset than ferry sent from (its lastValidByteReceived + 1). */
class OffsetMismatch extends Error {
  readonly held: number;
  constructor(held: number) {
    super(`ECR holds ${held} bytes`);
    this.held = held;
  }
}

export async function uploadEcrLayer(req: BlobUploadRequest, api: EcrLayerApi): Promise<BlobUploadResult> {
  const { destinationRepository: repo, digest, size, logger, journal } = req;
  const result: BlobUploadResult = { restarts: 0, resumes: 0, resumedFromJournal: false, bytesResent: 0, bytesRereadForHash: 0 };
  const key = { registry: req.destination.registry, repository: repo, digest };
  const source = req.sourceName ?? req.source.description;
  if (req.park?.aborted) throw SUSPEND;
  // Bytes ECR held from a previous process: everything sent beyond `size - acknowledgedBefore` went before.
  let acknowledgedBefore = 0;
  let sent = 0;
  const onBytes = (n: number) => {
    sent += n;
    req.onBytes?.(n);
  };
  const settle = () => {
    result.bytesResent = Math.max(0, sent - (size - acknowledgedBefore));
  };
  const startedAt = new Date().toISOString();
  const record = async (s: UploadState) => {
    if (!journal) return;
    const now = new Date().toISOString();
    const entry: JournalEntry = { version: JOURNAL_VERSION, ...key, size, location: '', upload_id: s.uploadId, offset: s.offset, source, owner: req.journalOwner ?? 'copy', started_at: startedAt, updated_at: now };
    await journal.put(entry).catch((e: Error) => logger.warn({ digest, err: e.message }, 'could not write the upload journal; this upload cannot be resumed after a crash'));
  };

  let state: UploadState | undefined;
  const entry = journal ? await journal.get(key) : undefined;
  if (entry) {
    const why =
      entry.upload_id === undefined
        ? 'journaled for the Docker API, the layer now goes through ECR\'s layer-upload API'
        : entry.size !== size
          ? `journaled size ${entry.size} differs`
          : entry.source !== source
            ? `journaled for source ${entry.source}`
            : entry.offset % ALIGN !== 0
              ? `journaled offset ${entry.offset} is not on a part boundary`
              : undefined;
    if (why === undefined) {
      acknowledgedBefore = entry.offset;
      state = { uploadId: entry.upload_id as string, offset: entry.offset, checkpoint: undefined, partBytes: partBytesFor(req.tuning, undefined), journaled: true };
      if (entry.offset > 0) {
        state.checkpoint = await hashTo({ ...req, signal: sendingNothing(req) }, undefined, entry.offset);
        result.bytesRereadForHash += entry.offset;
      }
      result.resumes++;
      result.resumedFromJournal = true;
      logger.info({ digest, size, offset: entry.offset, journaled_offset: entry.offset, reread_for_hash: entry.offset, api: 'ecr' }, 'continuing a journaled upload from the registry\'s acknowledged offset');
    } else {
      logger.warn({ digest, size, journaled_offset: entry.offset, reason: why }, 'journaled upload cannot be continued; deleting its session and starting the blob over');
      await discardJournaled(req, entry, why);
      result.restarts++;
    }
  }

  for (let attempt = 1; ; attempt++) {
    try {
      if (!state) {
        await req.beforeWrite?.();
        const opened = await api.initiate(repo, req.signal);
        state = { uploadId: opened.uploadId, offset: 0, checkpoint: undefined, partBytes: partBytesFor(req.tuning, opened.partSize), journaled: false };
        // Journaled before the first byte goes out: a crash at any point leaves an entry the next run continues or drops.
        await record(state);
        logger.debug({ digest, size, part_bytes: state.partBytes }, 'ECR layer upload opened');
      }
      await sendParts(req, api, state, onBytes, record, result, (held) => {
        // The first answer about a journaled upload tells what ECR really held from before.
        acknowledgedBefore = Math.max(acknowledgedBefore, held);
      });
      await req.beforeWrite?.();
      const outcome = await api.complete(repo, state.uploadId, digest, req.signal);
      if (outcome === 'exists') logger.info({ digest }, 'ECR already had the layer');
      await journal?.remove(key);
      settle();
      return result;
    } catch (e) {
      settle();
      const err = e instanceof FerryError ? e : new FerryError('INTERNAL', String((e as Error)?.message ?? e), { cause: e });
      const lost = err instanceof EcrApiError && (err.awsCode === 'UploadNotFoundException' || err.awsCode === UNUSABLE_OFFSET);
      if (lost && !req.signal?.aborted) {
        // Completed after all (a CompleteLayerUpload whose answer was lost), or by someone else: done.
        const there = await api.checkAvailability(repo, [digest], req.signal).catch(() => undefined);
        if (there?.get(digest) === true) {
          logger.info({ digest, api: 'ecr' }, 'ECR no longer knows the layer upload, but has the layer');
          await journal?.remove(key);
          return result;
        }
        // Expired or lost: ECR's parts are gone. Start the blob over (bounded by the attempts).
        logger.warn(
          { digest, size, acknowledged: state?.offset, reason: err.message, api: 'ecr' },
          (err as EcrApiError).awsCode === UNUSABLE_OFFSET
            ? 'ECR holds an offset of the layer upload ferry cannot continue from; starting the blob over'
            : 'ECR no longer knows the layer upload (UploadNotFoundException); starting the blob over',
        );
        await journal?.remove(key);
        state = undefined;
        result.restarts++;
        if (attempt >= req.tuning.attempts) throw err;
        continue;
      }
      // Suspended (the agent stopping), or a failure the next run can get past: ECR keeps the parts
      // until it expires the upload, so the entry stays and the same command continues it.
      // (ECR has no call to cancel a layer upload.)
      if (suspending(req.signal, req.park)) throw err;
      const keep = err.retryable && !req.signal?.aborted && err.side !== 'source';
      if (!keep || attempt >= req.tuning.attempts) {
        if (!keep) await journal?.remove(key);
        throw err;
      }
      if (state) result.resumes++;
      logger.warn({ digest, size, attempt, err: err.message, offset: state?.offset, api: 'ecr' }, 'layer upload failed; continuing it from ECR\'s acknowledged offset');
      await sleep(backoffDelay(DEFAULT_RETRY, attempt), sendingNothing(req));
    }
  }
}

/**
 * Send the parts from `state.offset` to the end, each acknowledged before the next, recording
 * each acknowledgement. When ECR holds another offset (InvalidLayerPartException), continue from
 * there, rebuilding the hash state by re-reading the prefix.
 */
async function sendParts(
  req: BlobUploadRequest,
  api: EcrLayerApi,
  state: UploadState,
  onBytes: (n: number) => void,
  record: (s: UploadState) => Promise<void>,
  result: BlobUploadResult,
  onHeld: (held: number) => void,
): Promise<void> {
  const { digest, size, logger } = req;
  for (let repositions = 0; ; repositions++) {
    try {
      await sendFrom(req, api, state, onBytes, record, onHeld);
      return;
    } catch (e) {
      if (!(e instanceof OffsetMismatch)) throw e;
      const held = e.held;
      // Twice in a row means ECR and ferry do not agree on what a part is: give up on this upload.
      if (repositions >= 2 || (held % ALIGN !== 0 && held !== size) || held > size) {
        throw new EcrApiError('DESTINATION_REJECTED', `ECR holds ${held} bytes of the layer upload for ${digest}, which ferry cannot continue from (sent from ${state.offset})`, UNUSABLE_OFFSET, {
          retryable: true,
        });
      }
      logger.info({ digest, size, offset: held, sent_from: state.offset, reread_for_hash: held, api: 'ecr' }, 'ECR holds another offset than ferry sent from; continuing from ECR\'s lastValidByteReceived');
      // Ahead of us: hash only the bytes in between; behind: from byte 0. (At the end, hashTo checks
      // the digest over every byte, and only CompleteLayerUpload is left.)
      const from = held >= state.offset ? state.checkpoint : undefined;
      state.checkpoint = held > 0 ? await hashTo({ ...req, signal: sendingNothing(req) }, from, held) : undefined;
      result.bytesRereadForHash += held - (from?.offset ?? 0);
      state.offset = held;
      await record(state);
    }
  }
}

async function sendFrom(
  req: BlobUploadRequest,
  api: EcrLayerApi,
  state: UploadState,
  onBytes: (n: number) => void,
  record: (s: UploadState) => Promise<void>,
  onHeld: (held: number) => void,
): Promise<void> {
  const { digest, size } = req;
  const hasher = new BlobHasher(digest, state.checkpoint);
  const reader = readVerifiedBlob({ source: req.source, digest, size, from: state.checkpoint, hasher, alignTo: ALIGN, signal: req.signal });
  const cursor = new ChunkCursor(reader);
  const readPart = async (first: number): Promise<{ first: number; bytes: Buffer; checkpoint: HashCheckpoint }> => {
    const length = Math.min(state.partBytes, size - first);
    // The last part's last piece comes out of the reader only once the digest over every byte checked out.
    const bytes = await collect(cursor.take(length), length);
    if (bytes.byteLength !== length) throw new FerryError('SOURCE_INVALID', `source ended at byte ${first + bytes.byteLength} of ${digest}`, { side: 'source' });
    // Parts end on ALIGN boundaries (or at the end), where the reader's pieces end: the hasher is exactly here.
    return { first, bytes, checkpoint: hasher.checkpoint() };
  };
  let next = state.offset < size ? readPart(state.offset) : undefined;
  try {
    while (next) {
      const part = await next;
      const end = part.first + part.bytes.byteLength;
      // The next part is read from the source while this one goes to ECR (one part ahead, no more).
      next = end < size ? readPart(end) : undefined;
      next?.catch(() => undefined);
      const r = await sendPart(req, api, state.uploadId, part.first, part.bytes, onBytes);
      if (state.journaled) {
        // The first answer about a journaled upload says what ECR held from the previous process.
        state.journaled = false;
        onHeld(r.accepted ? part.first : r.held);
      }
      // Refused because ECR already held exactly this part (its acknowledgement was lost): the same bytes, so done.
      const now = r.accepted ? end : r.held;
      if (now !== end) throw new OffsetMismatch(now);
      state.offset = end;
      state.checkpoint = part.checkpoint;
      await record(state);
      // Parked: stop between parts, the upload journaled at what ECR acknowledged.
      if (req.park?.aborted) throw SUSPEND;
    }
  } finally {
    await next?.catch(() => undefined);
    await cursor.close().catch(() => undefined);
  }
}

/**
 * Send one part, retrying transient failures. `accepted`: ECR took it. Otherwise ECR refused it
 * because it holds `held` bytes, not `first` (InvalidLayerPartException's lastValidByteReceived + 1).
 */
async function sendPart(
  req: BlobUploadRequest,
  api: EcrLayerApi,
  uploadId: string,
  first: number,
  bytes: Buffer,
  onBytes: (n: number) => void,
): Promise<{ accepted: true } | { accepted: false; held: number }> {
  const end = first + bytes.byteLength;
  for (let tries = 1; ; tries++) {
    let last: number;
    await req.beforeWrite?.();
    try {
      last = await api.uploadPart(req.destinationRepository, uploadId, first, bytes, req.signal);
    } catch (e) {
      onBytes(bytes.byteLength);
      if (e instanceof EcrApiError && e.awsCode === 'InvalidLayerPartException') {
        const v = e.lastValidByteReceived;
        // "Nothing yet" may be reported as -1 or 0: no part is a single byte, so both mean 0.
        const held = v === undefined ? undefined : v <= 0 ? 0 : v + 1;
        if (held === undefined || held === first) throw e;
        // The part landed already (an acknowledgement lost), or ECR is elsewhere: go from what it holds.
        return { accepted: false, held };
      }
      if (!(e instanceof FerryError) || !e.retryable || req.signal?.aborted || e.side === 'source' || (e instanceof EcrApiError && e.awsCode === 'UploadNotFoundException') || tries >= 3) throw e;
      req.logger.info({ digest: req.digest, first, end, err: e.message }, 'layer part failed; sending it again');
      await sleep(backoffDelay(DEFAULT_RETRY, tries), req.signal);
      continue;
    }
    onBytes(bytes.byteLength);
    if (last + 1 !== end) throw new EcrApiError('DESTINATION_REJECTED', `ECR acknowledged up to byte ${last} of a part ending at byte ${end - 1}`, 'InvalidLayerPartException');
    return { accepted: true };
  }
}

async function collect(pieces: AsyncIterable<Buffer>, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let n = 0;
  for await (const p of pieces) {
    p.copy(out, n);
    n += p.byteLength;
  }
  return n === length ? out : out.subarray(0, n);
}
