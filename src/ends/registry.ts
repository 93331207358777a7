// A repository in a registry as a copy end. The copy engine recognises these to use what
// only registries can do: mount across repositories of one registry, and resumable chunked
// uploads (src/copy/blob-upload.ts).
import { FerryError } from '../errors.ts';
import type { Digest } from '../reference/digest.ts';
import type { Descriptor } from '../oci/manifest.ts';
import type { RegistryClient } from '../registry/client.ts';
import { EcrApiError, ecrLayerApiFor, type EcrLayerApi } from '../registry/ecr-layer-api.ts';
import { RegistryReferrers, sourceReferrers } from './registry/referrers.ts';
import type { BlobStream, FetchedManifest, ImageDestination, ImageSource, ManifestHead, ReferrersListing, ReferrersListOptions } from './types.ts';

export class RegistrySource implements ImageSource {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;

  constructor(client: RegistryClient, repository: string) {
    this.client = client;
    this.repository = repository;
    this.description = `${client.registry}/${repository}`;
  }

  getManifest(target: string, signal?: AbortSignal): Promise<FetchedManifest | undefined> {
    return this.client.getManifest(this.repository, target, signal);
  }

  /** Not asked of a registry known to have no referrers API (the answer is remembered: src/ends/registry/referrers.ts). */
  getReferrers(digest: Digest, signal?: AbortSignal): Promise<Buffer[] | undefined> {
    return sourceReferrers(this.client, this.repository, digest, signal);
  }

  listTags(signal?: AbortSignal): Promise<string[] | undefined> {
    return this.client.listTags(this.repository, signal);
  }

  async openBlob(digest: Digest, size: number, offset: number, signal?: AbortSignal): Promise<BlobStream> {
    const res = await this.client.openBlob(this.repository, digest, offset, signal, size);
    return { body: res.body as AsyncIterable<Buffer>, ignoredRange: (res as { ignoredRange?: boolean }).ignoredRange === true };
  }
}

export class RegistryDestination implements ImageDestination {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;
  readonly maxConcurrentBlobs = Infinity;
  private readonly referrers: RegistryReferrers;

  constructor(client: RegistryClient, repository: string) {
    this.client = client;
    this.repository = repository;
    this.description = `${client.registry}/${repository}`;
    this.referrers = new RegistryReferrers(client, repository);
  }

  headManifest(target: string, signal?: AbortSignal): Promise<ManifestHead | undefined> {
    return this.client.headManifest(this.repository, target, signal);
  }

  /** The registry's answer to a manifest with a subject says whether it serves the referrers API. */
  async putManifest(target: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<Digest> {
    const answer = await this.client.pushManifest(this.repository, target, bytes, mediaType, { signal });
    if (answer === 'precondition-failed') throw new FerryError('INTERNAL', `${this.description}: HTTP 412 to a manifest PUT sent without a condition`);
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

  /** One POST + PUT. The engine prefers uploadBlob (chunked, resumable) for registries; this serves generic callers. */
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
