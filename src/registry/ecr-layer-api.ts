// Amazon ECR's own layer-upload API (InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload,
// BatchCheckLayerAvailability), reached with the AWS SDK and the same AWS identity the registry
// credentials come from. ECR's Docker-API endpoint takes blobs only in one PUT (its PATCH never
// advances: see profile.ts); this API takes a layer in parts of 5–10 MiB that must be contiguous,
// and tells, when a part does not follow on, the last byte it holds (lastValidByteReceived): that
// is what makes a large upload resumable (src/ends/registry/ecr-layer-upload.ts). The price is base64 in
// JSON: a third more bytes on the wire (docs/resume.md, "ECR").
//
// The SDK is loaded only when an ECR destination is used. Nothing secret is logged: the SDK's
// errors carry no credentials, and the identity is the one the credential provider resolved.
import type { ECRClient } from '@aws-sdk/client-ecr';
import { AbortedError, FerryError, NetworkError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { Keychain, StaticCredentials, type CredentialProvider } from '../auth/credentials.ts';
import { CloudCredentials } from '../auth/cloud/provider.ts';
import { parseEcrHost, type EcrHost } from '../auth/cloud/hosts.ts';
import { awsAuthError, classifyAwsError } from '../auth/cloud/aws-errors.ts';
import type { RegistryClient } from './client.ts';

const MiB = 1024 * 1024;
/** ECR service quotas: every part but the last at least 5 MiB, at most 10 MiB, at most 4200 parts a layer. */
export const ECR_MIN_PART_BYTES = 5 * MiB;
export const ECR_MAX_PART_BYTES = 10 * MiB;
export const ECR_MAX_PARTS = 4200;
/** BatchCheckLayerAvailability takes 1–100 digests a call. */
export const ECR_BATCH_CHECK_MAX = 100;

/** An ECR API failure, with the AWS error code and, for InvalidLayerPartException, ECR's last valid byte. */
export class EcrApiError extends FerryError {
  readonly awsCode: string;
  /** Index of the last byte ECR holds for the upload (InvalidLayerPartException), -1 for none. */
  readonly lastValidByteReceived: number | undefined;
  constructor(code: FerryError['code'], message: string, awsCode: string, opts: { retryable?: boolean; status?: number | undefined; cause?: unknown; lastValidByteReceived?: number | undefined } = {}) {
    super(code, message, { side: 'destination', retryable: opts.retryable ?? false, status: opts.status, registryCodes: [awsCode], cause: opts.cause });
    this.name = 'EcrApiError';
    this.awsCode = awsCode;
    this.lastValidByteReceived = opts.lastValidByteReceived;
  }
}

export interface EcrLayerApi {
  /** The registry host (`<account>.dkr.ecr.<region>.amazonaws.com`). */
  readonly registry: string;
  /** Open a layer upload: its id and the part size ECR expects (bytes), when it says. */
  initiate(repository: string, signal?: AbortSignal): Promise<{ uploadId: string; partSize: number | undefined }>;
  /** Send one part at `first`. Returns the index of the last byte ECR now holds. */
  uploadPart(repository: string, uploadId: string, first: number, bytes: Uint8Array, signal?: AbortSignal): Promise<number>;
  /** Finish the upload; ECR checks the digest over every byte. `exists`: ECR already had the layer. */
  complete(repository: string, uploadId: string, digest: string, signal?: AbortSignal): Promise<'completed' | 'exists'>;
  /** Which of these blobs the repository has, in calls of at most 100 digests. */
  checkAvailability(repository: string, digests: string[], signal?: AbortSignal): Promise<Map<string, boolean>>;
}

/**
 * The layer API for a destination client, when its registry is ECR and its credentials come
 * from the AWS identity (CloudCredentials). Undefined for other registries, and for ECR with
 * explicit registry credentials (`--dst-creds`, a configured local-registry credential): those
 * name no AWS identity to sign API calls with.
 */
export async function ecrLayerApiFor(client: RegistryClient): Promise<EcrLayerApi | undefined> {
  const host = parseEcrHost(client.registry);
  if (!host || client.side !== 'destination') return undefined;
  const cloud = await cloudIdentity(client.credentials, client.registry);
  if (!cloud) return undefined;
  const [ecr, sdk] = await Promise.all([cloud.ecrApiClient(host.host), import('@aws-sdk/client-ecr')]);
  return new SdkEcrLayerApi(ecr, sdk, host, client.logger);
}

async function cloudIdentity(p: CredentialProvider, registry: string): Promise<CloudCredentials | undefined> {
  if (p instanceof CloudCredentials) return p;
  if (!(p instanceof Keychain)) return undefined;
  for (const q of p.providers) {
    if (q instanceof CloudCredentials) return q;
    // Explicit credentials for this registry come first and win: no AWS identity is meant.
    if (q instanceof StaticCredentials && (await q.resolve({ registry })) !== undefined) return undefined;
    if (!(q instanceof StaticCredentials)) return undefined;
  }
  return undefined;
}

type Sdk = typeof import('@aws-sdk/client-ecr');

class SdkEcrLayerApi implements EcrLayerApi {
  readonly registry: string;
  private readonly ecr: ECRClient;
  private readonly sdk: Sdk;
  private readonly host: EcrHost;
  private readonly log: Logger;

  constructor(ecr: ECRClient, sdk: Sdk, host: EcrHost, logger: Logger) {
    this.ecr = ecr;
    this.sdk = sdk;
    this.host = host;
    this.registry = host.host;
    this.log = logger;
  }

  async initiate(repository: string, signal?: AbortSignal): Promise<{ uploadId: string; partSize: number | undefined }> {
    const r = await this.call('InitiateLayerUpload', repository, signal, () =>
      this.ecr.send(new this.sdk.InitiateLayerUploadCommand({ registryId: this.host.account, repositoryName: repository }), { abortSignal: signal }),
    );
    if (!r.uploadId) throw new EcrApiError('DESTINATION_REJECTED', `${this.where(repository)}: ecr:InitiateLayerUpload returned no uploadId`, 'MissingUploadId');
    return { uploadId: r.uploadId, partSize: typeof r.partSize === 'number' && r.partSize > 0 ? r.partSize : undefined };
  }

  async uploadPart(repository: string, uploadId: string, first: number, bytes: Uint8Array, signal?: AbortSignal): Promise<number> {
    const last = first + bytes.byteLength - 1;
    const r = await this.call('UploadLayerPart', repository, signal, () =>
      this.ecr.send(
        new this.sdk.UploadLayerPartCommand({
          registryId: this.host.account,
          repositoryName: repository,
          uploadId,
          partFirstByte: first,
          partLastByte: last,
          layerPartBlob: bytes,
        }),
        { abortSignal: signal },
      ),
    );
    return typeof r.lastByteReceived === 'number' ? r.lastByteReceived : last;
  }

  async complete(repository: string, uploadId: string, digest: string, signal?: AbortSignal): Promise<'completed' | 'exists'> {
    try {
      const r = await this.call('CompleteLayerUpload', repository, signal, () =>
        this.ecr.send(new this.sdk.CompleteLayerUploadCommand({ registryId: this.host.account, repositoryName: repository, uploadId, layerDigests: [digest] }), {
          abortSignal: signal,
        }),
      );
      if (r.layerDigest !== undefined && r.layerDigest !== digest) {
        throw new EcrApiError('DIGEST_MISMATCH', `${this.where(repository)}: ECR completed the layer as ${r.layerDigest}, not ${digest}`, 'InvalidLayerException');
      }
      return 'completed';
    } catch (e) {
      if (e instanceof EcrApiError && e.awsCode === 'LayerAlreadyExistsException') return 'exists';
      throw e;
    }
  }

  async checkAvailability(repository: string, digests: string[], signal?: AbortSignal): Promise<Map<string, boolean>> {
    const out = new Map<string, boolean>();
    for (let i = 0; i < digests.length; i += ECR_BATCH_CHECK_MAX) {
      const batch = digests.slice(i, i + ECR_BATCH_CHECK_MAX);
      const r = await this.call('BatchCheckLayerAvailability', repository, signal, () =>
        this.ecr.send(new this.sdk.BatchCheckLayerAvailabilityCommand({ registryId: this.host.account, repositoryName: repository, layerDigests: batch }), {
          abortSignal: signal,
        }),
      );
      for (const d of batch) out.set(d, false);
      // ARCHIVED layers cannot be pulled until restored: they count as missing (a push makes them available).
      for (const l of r.layers ?? []) if (l.layerDigest && l.layerAvailability === 'AVAILABLE') out.set(l.layerDigest, true);
    }
    return out;
  }

  private where(repository: string): string {
    return `destination repository ${repository} in ECR registry ${this.host.host}`;
  }

  /** One API call, its failure turned into an EcrApiError (or an auth / network FerryError) that says what to do. */
  private async call<T>(op: string, repository: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (signal?.aborted) throw e instanceof FerryError ? e : new AbortedError(`ecr:${op} cancelled`, { cause: e });
      throw this.translate(e, op, repository);
    }
  }

  private translate(e: unknown, op: string, repository: string): FerryError {
    if (e instanceof FerryError) return e;
    const f = classifyAwsError(e);
    const where = this.where(repository);
    const opts = { status: f.status, cause: e };
    this.log.debug({ op, code: f.code, status: f.status }, 'ECR API call failed');
    switch (f.code) {
      case 'InvalidLayerPartException': {
        const v = (e as { lastValidByteReceived?: unknown }).lastValidByteReceived;
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ECR refused a layer part (${f.message})`, f.code, {
          ...opts,
          lastValidByteReceived: typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined,
        });
      }
      case 'UploadNotFoundException':
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ECR no longer knows the layer upload (${f.message})`, f.code, { ...opts, retryable: true });
      case 'InvalidLayerException':
        return new EcrApiError('DIGEST_MISMATCH', `${where}: ECR computed another digest for the uploaded layer than the one the source names (${f.message}); nothing was committed under that digest`, f.code, opts);
      case 'LayerAlreadyExistsException':
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ${f.message}`, f.code, opts);
      case 'LayerPartTooSmallException':
      case 'EmptyUploadException':
      case 'LimitExceededException':
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ecr:${op} refused the upload (${f.code}: ${f.message})`, f.code, opts);
      case 'RepositoryNotFoundException':
        return new EcrApiError(
          'DESTINATION_REJECTED',
          `${where} does not exist (${f.message}): let ferry create it (needs ecr:CreateRepository), or create it with "aws ecr create-repository --repository-name ${repository} --region ${this.host.region}"`,
          f.code,
          opts,
        );
      case 'KmsException':
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ecr:${op} failed in KMS (${f.message}): the identity needs kms:Decrypt and kms:GenerateDataKey on the repository's key`, f.code, opts);
    }
    switch (f.kind) {
      case 'denied':
        return new EcrApiError(
          'DESTINATION_AUTH',
          `${where}: ecr:${op} was denied (${f.message}). The AWS identity needs ecr:BatchGetImage, ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, ecr:CompleteLayerUpload and ecr:PutImage on the repository`,
          f.code,
          opts,
        );
      case 'bad-credentials':
      case 'no-credentials':
        return awsAuthError(e, { side: 'destination', host: this.host.host, action: `ecr:${op}` });
      case 'unavailable':
        return new NetworkError(`${where}: ecr:${op} failed, AWS did not answer (${f.code}: ${f.message})`, { side: 'destination', ...opts, registryCodes: [f.code] });
      default:
        return new EcrApiError('DESTINATION_REJECTED', `${where}: ecr:${op} failed (${f.code}: ${f.message})`, f.code, opts);
    }
  }
}
