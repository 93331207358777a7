// What ferry knows about a registry from its host name alone: the upload strategy it can be
// trusted with, and how it says what went wrong. See shared/design/registries.md for the
// evidence behind each entry.
import { parseEcrHost, parseGarHost } from '../auth/cloud/hosts.ts';

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

/** What a registry said in an error body. */
export interface RegistryErrorInfo {
  status: number;
  codes: string[];
  message: string;
}

/**
 * ECR answers a request made with an expired authorization token with 403 DENIED "Your
 * authorization token has expired. Reauthenticate and try again." and no challenge, so the
 * generic 401 path never sees it. Such a 403 means: renew the credentials and try again.
 */
export function credentialExpired(profile: RegistryProfile, status: number, err: { codes: string[]; message: string }): boolean {
  return profile.kind === 'ecr' && status === 403 && /authorization token (has )?expired|reauthenticate/i.test(err.message);
}

/**
 * What to do about a refusal from ECR or Artifact Registry, in the words of that registry's
 * tooling: the missing IAM permission, or the command that creates a missing repository.
 * Undefined for other registries and other errors.
 */
export function cloudRegistryHint(
  profile: RegistryProfile,
  ctx: RegistryErrorInfo & { registry: string; repository: string | undefined; side: 'source' | 'destination' },
): string | undefined {
  const repo = ctx.repository ?? '<repository>';
  const nameUnknown = ctx.codes.includes('NAME_UNKNOWN');
  if (profile.kind === 'ecr') {
    const host = parseEcrHost(ctx.registry);
    const region = host?.region ?? '<region>';
    if (ctx.side === 'destination' && ctx.status === 404 && nameUnknown) {
      return (
        `the ECR repository ${repo} does not exist. ECR repositories must exist before a push: let ferry create it ` +
        `(leave out --no-create-repository; needs ecr:CreateRepository), or create it with ` +
        `"aws ecr create-repository --repository-name ${repo} --region ${region}"`
      );
    }
    if (ctx.status === 403) {
      return ctx.side === 'source'
        ? `the AWS identity needs ecr:BatchGetImage and ecr:GetDownloadUrlForLayer on repository ${repo}`
        : `the AWS identity needs ecr:BatchGetImage, ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, ecr:CompleteLayerUpload and ecr:PutImage on repository ${repo}`;
    }
    return undefined;
  }
  if (profile.kind === 'gar') {
    const host = parseGarHost(ctx.registry);
    const [project, repository] = repo.split('/');
    if (host?.kind === 'artifact-registry' && ctx.status === 400 && ctx.codes.includes('NAME_INVALID')) {
      return `Artifact Registry image names have the form ${host.host}/PROJECT/REPOSITORY/IMAGE`;
    }
    const create =
      host?.kind === 'artifact-registry' && project && repository
        ? `create it with "gcloud artifacts repositories create ${repository} --repository-format=docker --location=${host.location} --project=${project}"`
        : undefined;
    if (ctx.side === 'destination' && ctx.status === 404 && nameUnknown && create) {
      return `the Artifact Registry repository ${repository} does not exist in project ${project} (location ${host?.location}): ${create}`;
    }
    if (ctx.status === 403) {
      const role = ctx.side === 'source' ? 'roles/artifactregistry.reader' : 'roles/artifactregistry.writer';
      return `the Google identity needs ${role} on the repository${create && /may not exist/i.test(ctx.message) ? `; if the repository does not exist, ${create}` : ''}`;
    }
  }
  return undefined;
}
