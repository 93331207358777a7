// A repository in a registry as the source of a copy.
import type { Digest } from '../../reference/digest.ts';
import type { RegistryClient } from '../../registry/client.ts';
import type { BlobStream, FetchedManifest, ImageSource } from '../types.ts';
import { sourceReferrers } from './referrers.ts';

export class RegistrySource implements ImageSource {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;

  get networkHost(): string {
    return this.client.baseUrl.host;
  }

  constructor(client: RegistryClient, repository: string) {
    this.client = client;
    this.repository = repository;
    this.description = `${client.registry}/${repository}`;
  }

  warm(): void {
    this.client.warm();
  }

  getManifest(target: string, signal?: AbortSignal): Promise<FetchedManifest | undefined> {
    return this.client.getManifest(this.repository, target, signal);
  }

  /** Not asked of a registry known to have no referrers API (the answer is remembered: referrers.ts). */
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
