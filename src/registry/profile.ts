// What ferry knows about a registry from its host name alone: the upload strategy it can be
// trusted with. See shared/design/registries.md for the evidence behind each entry.

export interface RegistryProfile {
  kind: 'ecr' | 'gar' | 'ghcr' | 'dockerhub' | 'generic';
  /** Chunked (PATCH) uploads work well enough to use for large blobs. */
  chunkedUploads: boolean;
  /** Largest PATCH the registry accepts, when it caps them. */
  maxChunkBytes?: number;
}

const ECR_HOST = /^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$/;
const GAR_HOST = /^([a-z0-9-]+-docker\.pkg\.dev|([a-z]+\.)?gcr\.io)$/;

export function registryProfile(registry: string): RegistryProfile {
  const host = registry.toLowerCase().replace(/:\d+$/, '');
  // ECR's PATCH answers 201 and never advances its Range (an open AWS bug): monolithic only.
  if (ECR_HOST.test(host)) return { kind: 'ecr', chunkedUploads: false };
  // Artifact Registry has historically rejected chunked uploads: one POST + one PUT.
  if (GAR_HOST.test(host)) return { kind: 'gar', chunkedUploads: false };
  if (host === 'ghcr.io') return { kind: 'ghcr', chunkedUploads: true, maxChunkBytes: 4 * 1024 * 1024 };
  if (host === 'docker.io') return { kind: 'dockerhub', chunkedUploads: true };
  return { kind: 'generic', chunkedUploads: true };
}
