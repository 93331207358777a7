// The two ends of a copy, whatever holds the image: a registry, an OCI image layout
// directory, an OCI archive or a docker archive. The copy engine speaks only these
// interfaces; registries get extra paths (mount, chunked resumable uploads) on top.
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

export interface ImageDestination {
  readonly description: string;
  /** Blob writes this end takes at once (a tar archive: 1). */
  readonly maxConcurrentBlobs: number;
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
