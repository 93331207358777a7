// A repository in a registry as the destination of a copy. What only registries can do, the
// engine asks for through the capabilities (src/ends/types.ts), and this end does it:
// batch existence checks (ECR), mounts across repositories of one registry, and resumable
// chunked uploads (blob-upload.ts).
import type { Digest } from '../../reference/digest.ts';
import type { RegistryClient } from '../../registry/client.ts';
import { EcrApiError, ecrLayerApiFor, type EcrLayerApi } from '../../registry/ecr-layer-api.ts';
import type { DestinationCapabilities, ImageDestination, ImageSource, ManifestHead } from '../types.ts';
import { RegistrySource } from './source.ts';

export class RegistryDestination implements ImageDestination, Required<DestinationCapabilities> {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;
  readonly maxConcurrentBlobs = Infinity;

  constructor(client: RegistryClient, repository: string) {
    this.client = client;
    this.repository = repository;
    this.description = `${client.registry}/${repository}`;
  }

  headManifest(target: string, signal?: AbortSignal): Promise<ManifestHead | undefined> {
    return this.client.headManifest(this.repository, target, signal);
  }

  putManifest(target: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<Digest> {
    return this.client.putManifest(this.repository, target, bytes, mediaType, signal);
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
