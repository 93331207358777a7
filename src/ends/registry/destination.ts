// A repository in a registry as the destination of a copy. What only registries can do, the
// engine asks for through the capabilities (src/ends/types.ts), and this end does it:
// batch existence checks (ECR), mounts across repositories of one registry and from where
// copies running side by side put a blob (placements.ts), and the uploads: chunked and
// resumable, journaled for the next process (blob-upload.ts, journal.ts), the pipe from a
// registry source (blob-pipe.ts), ECR's layer-upload API (ecr-layer-upload.ts).
import { FerryError } from '../../errors.ts';
import type { Digest } from '../../reference/digest.ts';
import type { Descriptor } from '../../oci/manifest.ts';
import type { RegistryClient } from '../../registry/client.ts';
import { EcrApiError, ecrLayerApiFor, type EcrLayerApi } from '../../registry/ecr-layer-api.ts';
import { abortable } from '../../util/abortable.ts';
import type {
  BlobContext,
  BlobRef,
  CopyContext,
  DestinationCapabilities,
  ImageDestination,
  ImageSource,
  ManifestHead,
  PutBlobOptions,
  PutBlobResult,
  ReferrersListing,
  ReferrersListOptions,
} from '../types.ts';
import { discardJournaled, uploadBlob, DEFAULT_UPLOAD_TUNING, type BlobUploadRequest, type UploadTuning } from './blob-upload.ts';
import { uploadEcrLayer, usesEcrLayerApi } from './ecr-layer-upload.ts';
import type { JournalEntry, UploadJournal } from './journal.ts';
import type { BlobPlacements, UploadLead } from './placements.ts';
import { RegistryReferrers } from './referrers.ts';
import { RegistrySource } from './source.ts';

/** State a destination shares with other copies and processes, given when it is made. */
export interface RegistryDestinationOptions {
  /** Journal of open uploads (in the state directory): chunked uploads survive a crash of this process. */
  journal?: UploadJournal | undefined;
  /** Who the journal records as opening the uploads: `copy` (default) or `job <id>`. */
  journalOwner?: string | undefined;
  /** Shared by copies running side by side (the agent's jobs): each blob goes up once per registry, then is mounted. */
  placements?: BlobPlacements | undefined;
  tuning?: UploadTuning | undefined;
}

/** Times a blob waits for another copy's upload of it before uploading it itself. */
const MAX_FOLLOWS = 3;

const NOTHING_SENT = { restarts: 0, resumes: 0, bytesResent: 0, bytesRereadForHash: 0 };

export class RegistryDestination implements ImageDestination, Required<DestinationCapabilities> {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;

  get networkHost(): string {
    return this.client.baseUrl.host;
  }
  readonly maxConcurrentBlobs = Infinity;
  private readonly journal: UploadJournal | undefined;
  private readonly journalOwner: string | undefined;
  private readonly placements: BlobPlacements | undefined;
  private readonly tuning: UploadTuning;
  private readonly referrers: RegistryReferrers;

  constructor(client: RegistryClient, repository: string, options: RegistryDestinationOptions = {}) {
    this.client = client;
    this.repository = repository;
    this.description = `${client.registry}/${repository}`;
    this.journal = options.journal;
    this.journalOwner = options.journalOwner;
    this.placements = options.placements;
    this.tuning = options.tuning ?? DEFAULT_UPLOAD_TUNING;
    this.referrers = new RegistryReferrers(client, repository);
  }

  warm(): void {
    this.client.warm();
  }

  headManifest(target: string, signal?: AbortSignal): Promise<ManifestHead | undefined> {
    return this.client.headManifest(this.repository, target, signal);
  }

  /** The registry's answer to a manifest with a subject says whether it serves the referrers API. */
  async putManifest(target: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<Digest> {
    const answer = await this.client.pushManifest(this.repository, target, bytes, mediaType, { signal });
    if (answer === 'precondition-failed') {
      // Sent without a condition: a registry (or something in front of it) that answers 412 anyway is broken.
      throw new FerryError('DESTINATION_REJECTED', `${this.description} answered HTTP 412 (precondition failed) to a manifest PUT that carried no condition; check the registry or the proxy in front of it`, {
        side: 'destination',
        status: 412,
      });
    }
    this.referrers.notePut(bytes, answer.ociSubject);
    return answer.digest;
  }

  listedReferrers(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions): Promise<Set<Digest>> {
    return this.referrers.listed(subject, referrers, o);
  }

  updateReferrersIndex(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions & { proposed?: Buffer | undefined }): Promise<ReferrersListing> {
    return this.referrers.update(subject, referrers, o);
  }

  async hasBlob(digest: Digest, _size: number, signal?: AbortSignal): Promise<boolean> {
    return (await this.client.headBlob(this.repository, digest, signal)) !== undefined;
  }

  private ecrApi: Promise<EcrLayerApi | undefined> | undefined;

  /** ECR's own layer-upload API, when this is an ECR registry reached with the AWS identity; else undefined. */
  ecrLayerApi(): Promise<EcrLayerApi | undefined> {
    this.ecrApi ??= ecrLayerApiFor(this.client);
    return this.ecrApi;
  }

  /**
   * Which of these blobs the destination has, in few requests: ECR's BatchCheckLayerAvailability
   * (100 digests a call). Undefined where there is no such call, or it failed (then the caller
   * asks hasBlob, one HEAD each).
   */
  async checkBlobs(digests: Digest[], signal?: AbortSignal): Promise<Map<Digest, boolean> | undefined> {
    if (digests.length === 0) return undefined;
    const api = await this.ecrLayerApi();
    if (!api) return undefined;
    try {
      return (await api.checkAvailability(this.repository, digests, signal)) as Map<Digest, boolean>;
    } catch (e) {
      if (signal?.aborted) throw e;
      // A repository that does not exist yet (a dry run does not create it) holds no blobs.
      if (e instanceof EcrApiError && e.awsCode === 'RepositoryNotFoundException') return new Map(digests.map((d) => [d, false]));
      this.client.logger.warn({ err: (e as Error).message }, 'ecr:BatchCheckLayerAvailability failed; checking blobs one by one');
      return undefined;
    }
  }

  mountableFrom(source: ImageSource): boolean {
    return this.mountSource(source) !== undefined;
  }

  /** The source repository to mount from: both ends in one registry, different repositories. */
  private mountSource(source: ImageSource): string | undefined {
    if (!(source instanceof RegistrySource)) return undefined;
    return source.client.registry === this.client.registry && source.repository !== this.repository ? source.repository : undefined;
  }

  /**
   * Journaled uploads to this repository from this same source whose blob this copy does not
   * need: the source changed since (its tag points at another image). Their sessions are deleted.
   */
  async prepareBlobs(blobs: ReadonlyMap<Digest, BlobRef>, copy: CopyContext): Promise<void> {
    const journal = this.journal;
    if (!journal) return;
    const entries = await journal.list(this.client.registry, this.repository);
    for (const entry of entries) {
      if (entry.source !== copy.sourceName) continue;
      const wanted = blobs.get(entry.digest as Digest);
      if (wanted && wanted.size === entry.size) continue;
      await this.discardJournaled(entry, copy, 'the source changed: this copy no longer needs the blob');
    }
  }

  async blobPresent(b: BlobRef, copy: BlobContext): Promise<void> {
    // Committed by a process that died before it could drop its journal entry.
    if (this.journal) {
      const key = { registry: this.client.registry, repository: this.repository, digest: b.digest };
      const entry = await this.journal.get(key);
      if (entry) await this.discardJournaled(entry, copy, 'the blob is already complete at the destination');
    }
    this.placements?.record(this.client.registry, b.digest, this.repository);
  }

  /** A mount from the source's repository (same registry), else from a sibling repository this process filled. */
  async reuseBlob(b: BlobRef, source: ImageSource, copy: BlobContext): Promise<'mounted' | 'skipped' | undefined> {
    const from = this.mountSource(source);
    if (from !== undefined) {
      await copy.beforeWrite?.();
      if (await this.client.mountBlob(this.repository, b.digest, from, copy.signal)) {
        this.placements?.record(this.client.registry, b.digest, this.repository);
        return 'mounted';
      }
    }
    return this.placements ? this.placeFromSiblings(this.placements, b, copy) : undefined;
  }

  /**
   * Upload the blob (blob-upload.ts: chunked, resumable, journaled, piped from a registry
   * source; large layers to ECR through its layer API). When another copy is uploading the same
   * blob to this registry, wait for it and mount from there instead (at most MAX_FOLLOWS times).
   */
  async putBlob(b: BlobRef, source: ImageSource, o: PutBlobOptions): Promise<PutBlobResult> {
    const placements = this.placements;
    let lead: UploadLead | undefined;
    if (placements) {
      for (let follows = 0; follows < MAX_FOLLOWS; follows++) {
        const claim = placements.begin(this.client.registry, b.digest);
        if (claim.lead) {
          lead = claim;
          break;
        }
        // Another copy is uploading this blob to this registry: wait, then mount it from there.
        o.logger.debug({ digest: b.digest }, 'waiting for another copy\'s upload of this blob, to mount it');
        await abortable(claim.landed, o.park ? AbortSignal.any([o.signal, o.park]) : o.signal);
        const after = await this.placeFromSiblings(placements, b, o);
        if (after) return { outcome: after, ...NOTHING_SENT };
      }
    }
    try {
      o.onStart();
      // Large layers to ECR go through ECR's own layer-upload API (resumable where its Docker API is not).
      const upload: BlobUploadRequest = {
        source,
        destination: this.client,
        destinationRepository: this.repository,
        digest: b.digest,
        size: b.size,
        tuning: this.tuning,
        logger: o.logger,
        signal: o.signal,
        park: o.park,
        beforeWrite: o.beforeWrite,
        onBytes: o.onBytes,
        journal: this.journal,
        sourceName: o.sourceName,
        journalOwner: this.journalOwner,
      };
      const ecr = usesEcrLayerApi(b.size, this.tuning) ? await this.ecrLayerApi() : undefined;
      const result = ecr ? await uploadEcrLayer(upload, ecr) : await uploadBlob(upload);
      placements?.record(this.client.registry, b.digest, this.repository);
      lead?.settle(this.repository);
      return { outcome: 'copied', restarts: result.restarts, resumes: result.resumes, bytesResent: result.bytesResent, bytesRereadForHash: result.bytesRereadForHash };
    } finally {
      lead?.settle(undefined);
    }
  }

  /**
   * Mount a blob this process put into another repository of this registry.
   * Undefined when no sibling holds it or every mount was refused (the caller uploads).
   */
  private async placeFromSiblings(placements: BlobPlacements, b: BlobRef, copy: BlobContext): Promise<'mounted' | 'skipped' | undefined> {
    const registry = this.client.registry;
    const { signal } = copy;
    for (const holder of placements.holders(registry, b.digest)) {
      if (holder === this.repository) {
        // Another copy into this same repository finished it.
        if (await this.hasBlob(b.digest, b.size, signal)) return 'skipped';
        placements.forget(registry, b.digest, holder);
        continue;
      }
      let mounted = false;
      await copy.beforeWrite?.();
      try {
        mounted = await this.client.mountBlob(this.repository, b.digest, holder, signal);
      } catch (e) {
        // Credentials that may push here but not pull from there: upload instead.
        if (signal.aborted || !(e instanceof FerryError) || e.retryable) throw e;
        copy.logger.debug({ digest: b.digest, from: holder, code: e.code }, 'mount from a sibling repository refused; uploading');
      }
      if (mounted) {
        placements.record(registry, b.digest, this.repository);
        return 'mounted';
      }
      placements.forget(registry, b.digest, holder);
    }
    return undefined;
  }

  private discardJournaled(entry: JournalEntry, copy: CopyContext, reason: string): Promise<void> {
    return discardJournaled({ destination: this.client, destinationRepository: this.repository, journal: this.journal, logger: copy.logger }, entry, reason);
  }

  /** One POST + PUT, for callers that hand over verified chunks; the engine takes putBlob (chunked, resumable). */
  async writeBlob(digest: Digest, size: number, _mediaType: string, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    const { location } = await this.client.startUpload(this.repository, signal);
    try {
      await this.client.commitUpload(this.repository, location, digest, chunks, size, signal);
    } catch (e) {
      await this.client.cancelUpload(this.repository, location);
      throw e;
    }
  }
}
