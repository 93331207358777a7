// A repository in a registry as the source of a copy.
import type { Digest } from '../../reference/digest.ts';
import type { RegistryClient } from '../../registry/client.ts';
import type { BlobStream, FetchedManifest, ImageSource } from '../types.ts';

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

  getReferrers(digest: Digest, signal?: AbortSignal): Promise<Buffer[] | undefined> {
    return this.client.getReferrers(this.repository, digest, signal);
  }

  async openBlob(digest: Digest, size: number, offset: number, signal?: AbortSignal): Promise<BlobStream> {
    const res = await this.client.openBlob(this.repository, digest, offset, signal, size);
    return { body: res.body as AsyncIterable<Buffer>, ignoredRange: (res as { ignoredRange?: boolean }).ignoredRange === true };
  }
}
