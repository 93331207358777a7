// The two ends of a copy, whatever holds the image: a registry, an OCI image layout
// directory, an OCI archive or a docker archive. The copy engine speaks only these
// interfaces. It asks a destination what it can do (the optional capabilities below), never
// what it is, and an end with a protocol of its own (a registry: mounts, resumable uploads)
// runs that protocol itself. An end without a capability gets the plain path.
import type { Logger } from '../log/logger.ts';
import type { Digest } from '../reference/digest.ts';
import type { Descriptor } from '../oci/manifest.ts';

export interface FetchedManifest {
  /** The exact bytes. */
  bytes: Buffer;
  mediaType: string;
  /** The digest of `bytes` (verified against the digest asked for, when one was). */
  digest: Digest;
}

export interface ManifestHead {
  digest: Digest | undefined;
  mediaType: string | undefined;
  size: number | undefined;
}

export interface BlobStream {
  body: AsyncIterable<Buffer>;
  /** The end could not start at the offset asked for and sent the blob from byte 0. */
  ignoredRange?: boolean;
}

export interface ImageSource {
  /** For messages: `registry host/repo`, `oci:/path`, `docker-archive:/path/x.tar`. */
  readonly description: string;
  /** The network host (host:port) this end's requests go to: transfer slots and flow control are per host. Absent for local ends. */
  readonly networkHost?: string;
  /**
   * A manifest by tag or digest; undefined when there is none. Bounded (4 MiB) and, when asked
   * for by digest, verified: a mismatch is DIGEST_MISMATCH.
   */
  getManifest(target: string, signal?: AbortSignal): Promise<FetchedManifest | undefined>;
  /** Pages of an OCI referrers index for a digest; undefined when this end has no referrers API. */
  getReferrers(digest: Digest, signal?: AbortSignal): Promise<Buffer[] | undefined>;
  /**
   * A blob's bytes from `offset`. The stream may break (network errors are retryable
   * FerryErrors); the reader verifies size and digest and asks again from where it stopped.
   */
  openBlob(digest: Digest, size: number, offset: number, signal?: AbortSignal): Promise<BlobStream>;
  /** Release files and handles. */
  close?(): Promise<void>;
  /** A copy is starting: open what its reads will need (a registry's connections) before they are asked for. */
  warm?(): void;
  /**
   * Every tag, in one listing: which fallback and cosign tags exist, without asking for each.
   * Undefined when the end will not list them (the caller then asks tag by tag).
   */
  listTags?(signal?: AbortSignal): Promise<string[] | undefined>;
}

/** Verified manifest bytes by digest, kept across copies (the content cache): a read before costs no request. */
export interface KnownContent {
  get(digest: Digest): Promise<Buffer | undefined>;
  put(digest: Digest, bytes: Buffer): Promise<void>;
}

export interface ReferrersListOptions {
  signal?: AbortSignal | undefined;
  known?: KnownContent | undefined;
}

/** What listing referrers took: nothing (the end's referrers API lists them), nothing (already listed), a write, or nothing (the index there is not one; logged). */
export type ReferrersListing = 'api' | 'unchanged' | 'written' | 'skipped';


/** A blob as the engine names it. */
export interface BlobRef {
  digest: Digest;
  size: number;
  mediaType: string;
}

/**
 * What a destination can do beyond storing verified chunks (writeBlob). Each is optional: the
 * engine calls one only where the end defines it, and otherwise takes the plain path.
 */
export interface DestinationCapabilities {
  /**
   * Which of these blobs the end holds, in few requests (ECR: 100 digests a call). Undefined:
   * no such call, or it failed; the engine then asks hasBlob, blob by blob.
   */
  checkBlobs?(digests: Digest[], signal?: AbortSignal): Promise<Map<Digest, boolean> | undefined>;
  /** Would a blob read from `source` land here without its bytes (a mount)? For a dry run's plan. */
  mountableFrom?(source: ImageSource): boolean;
  /**
   * Called once before the transfers (never in a dry run) with every blob the copy needs: the
   * end drops state it keeps across processes that this copy no longer needs (a journaled
   * upload from this source of a blob the source no longer has).
   */
  prepareBlobs?(blobs: ReadonlyMap<Digest, BlobRef>, copy: CopyContext): Promise<void>;
  /** The engine's existence check found the blob here (nothing to write); the end may tidy up and remember it. */
  blobPresent?(blob: BlobRef, copy: BlobContext): Promise<void>;
  /**
   * Place the blob without its bytes: a mount from `source`'s repository, or from where this
   * process put it before. Undefined: it has to be written.
   */
  reuseBlob?(blob: BlobRef, source: ImageSource, copy: BlobContext): Promise<'mounted' | 'skipped' | undefined>;
  /**
   * Write the blob, reading it from `source` as often and from where the end needs (a resumed
   * upload re-reads from an offset). It must verify every byte before the last one leaves
   * (readVerifiedBlob, src/blob/verify.ts), leave nothing under the digest unless complete, and
   * on failure cancel what it opened, unless the signal's reason is SUSPEND (the caller stops
   * for now: what the end journaled stays to be resumed; src/ends/registry/journal.ts). When
   * `park` fires it stops at the next point it can be resumed from (the chunk in flight sent),
   * keeps what it journaled and throws SUSPEND.
   * Without it the engine streams verified chunks into writeBlob.
   */
  putBlob?(blob: BlobRef, source: ImageSource, o: PutBlobOptions): Promise<PutBlobResult>;
  /**
   * Of `referrers` (manifests whose subject is `subject`), the digests this end already lists for
   * the subject where clients look: its referrers API, or else the referrers tag schema's fallback
   * index. Listed means stored (a referrer is listed only after it was pushed), so a re-run writes
   * none of them again. Absent: the engine writes every referrer (an archive dedupes them itself).
   */
  listedReferrers?(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions): Promise<Set<Digest>>;
  /**
   * After `referrers` of `subject` were stored, list them where clients look. Nothing to do where the
   * end serves the referrers API; else the fallback index (`<alg>-<hex of subject>`): merged with
   * what it holds (entries others pushed stay), written only when it lacks one of them. `proposed`:
   * the source's own fallback index for the subject, written as it is where the end holds none and
   * it lists exactly these (byte-exact). Absent: the end lists referrers by itself (an OCI layout
   * writes the fallback tag at commit).
   */
  updateReferrersIndex?(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions & { proposed?: Buffer | undefined }): Promise<ReferrersListing>;
}

/** The copy an end is working for. */
export interface CopyContext {
  /** The copy's logger (the agent's carries the job id). */
  logger: Logger;
  /** The source as the copy names it (CopySource.name): state an end keeps for another source is stale. */
  sourceName: string;
  signal?: AbortSignal | undefined;
  /**
   * Aborted when the copy is to stop soon without losing work (`ferry copy`'s first Ctrl-C):
   * begin nothing new, bring what is in flight to a point the next run can continue from.
   */
  park?: AbortSignal | undefined;
  /**
   * Awaited just before each request that writes to the end (an upload opened, a chunk or the
   * commit sent, a mount); a rejection fails the write. The agent holds writes here while it is
   * not sure it still holds the job (CopyRequest.beforeWrite).
   */
  beforeWrite?: (() => Promise<void>) | undefined;
}

/** The copy a blob belongs to, while its transfer runs. */
export interface BlobContext extends CopyContext {
  signal: AbortSignal;
}

export interface PutBlobOptions extends BlobContext {
  /** Call just before the first byte moves (not while waiting for another copy's upload). */
  onStart(): void;
  /** Bytes sent (bytes sent again count again). */
  onBytes(n: number): void;
}

export interface PutBlobResult {
  /** `copied`, or `mounted`/`skipped` when the blob landed meanwhile (another copy's upload of it). */
  outcome: 'copied' | 'mounted' | 'skipped';
  /** Times the blob started over from byte 0. */
  restarts: number;
  /** Times the upload continued from an acknowledged offset (in this process or a previous one's). */
  resumes: number;
  /** Bytes sent again that the destination had acknowledged before. */
  bytesResent: number;
  /** Source bytes read again only to rebuild a hash state (nothing sent). */
  bytesRereadForHash: number;
}

export interface ImageDestination extends DestinationCapabilities {
  readonly description: string;
  /** As ImageSource.networkHost. */
  readonly networkHost?: string;
  /** Blob writes this end takes at once (a tar archive: 1). */
  readonly maxConcurrentBlobs: number;
  /** A copy is starting: open what its writes will need (a registry's connections) before they are asked for. */
  warm?(): void;
  /** False when the end holds one platform only (docker-archive): an index must be narrowed first. */
  readonly acceptsIndex?: boolean;
  headManifest(target: string, signal?: AbortSignal): Promise<ManifestHead | undefined>;
  /** Store exact manifest bytes under a tag or a digest; returns their digest. */
  putManifest(target: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<Digest>;
  hasBlob(digest: Digest, size: number, signal?: AbortSignal): Promise<boolean>;
  /**
   * Store a blob from chunks that the reader verifies as they pass (the last chunk is held back
   * until the digest checks out, so a failed read ends the iteration with an error). Nothing
   * may be left under `digest` unless every byte arrived.
   */
  writeBlob(digest: Digest, size: number, mediaType: string, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void>;
  /** Everything is written: make it visible (an archive writes its index and closes). */
  commit?(): Promise<void>;
  /** The copy failed: remove partial output (an archive deletes its temporary file). */
  abort?(): Promise<void>;
}

/** What to read: an end and the tag or digest in it. */
export interface CopySource {
  end: ImageSource;
  /** Tag or digest to read (a digest when the reference pins one). */
  target: string;
  /** The pinned digest, if any: the manifest read must hash to it. */
  digest?: Digest;
  /** For the report: the reference as the user wrote it, normalized. */
  name: string;
}

/** Where to write: an end, and the tag (or digest) to write the image under. */
export interface CopyDestination {
  end: ImageDestination;
  tag?: string;
  digest?: Digest;
  name: string;
  /** The Image output's `repository` (`host/path` for registries, the archive for archives). */
  repository: string;
}
