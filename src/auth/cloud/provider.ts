// Cloud registry credentials picked by host name: ECR hosts get AWS credentials, Artifact
// Registry / GCR hosts get Google credentials. The SDKs are loaded only when such a host is
// actually used, so copies between other registries do not pay their start-up cost.
import { UsageError, type Side } from '../../errors.ts';
import type { Logger } from '../../log/logger.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../credentials.ts';
import type { ECRClient } from '@aws-sdk/client-ecr';
import type { EcrCredentials, EnsureEcrRepositoryOptions, EnsuredEcrRepository } from './ecr.ts';
import type { GarCredentials } from './gar.ts';
import { isEcrHost, isGarHost, parseEcrHost } from './hosts.ts';

export interface CloudCredentialOptions {
  side: Side;
  logger: Logger;
  /** Assume this role for ECR (the plan's `iam_role_arn`, or `--src-aws-role-arn`). */
  roleArn?: string;
  /** The job the credentials serve; names the assumed-role session `ferry-<jobId>` (CloudTrail). */
  jobId?: string;
  /** Impersonate this service account for Artifact Registry (`--src-gcp-service-account`). */
  serviceAccountEmail?: string;
  /** Federate the AWS identity into Google through this workload identity pool provider. */
  workloadIdentityProvider?: string;
  /** Where FERRY_AWS_WEB_IDENTITY(_AUDIENCE) are read; default process.env. */
  env?: NodeJS.ProcessEnv;
}

/**
 * FERRY_AWS_WEB_IDENTITY: unset (or `auto`): GCP web identity when there is no AWS identity and a
 * GCP metadata server answers; `gcp`: always; `off`: never.
 */
export function awsWebIdentityMode(env: NodeJS.ProcessEnv): 'auto' | 'gcp' | 'off' {
  const v = (env.FERRY_AWS_WEB_IDENTITY ?? '').trim().toLowerCase();
  if (v === '' || v === 'auto') return 'auto';
  if (v === 'gcp' || v === 'off') return v;
  throw new UsageError(`FERRY_AWS_WEB_IDENTITY="${v.slice(0, 40)}" is not one of auto, gcp, off`);
}

/** Repository settings for an ECR repository ferry creates (`ferry copy` flags). */
export type EcrRepositorySettings = Pick<EnsureEcrRepositoryOptions, 'tagImmutability' | 'scanOnPush' | 'encryption' | 'tags'>;

export class CloudCredentials implements CredentialProvider {
  readonly description: string;
  private readonly opts: CloudCredentialOptions;
  private ecr: Promise<EcrCredentials> | undefined;
  private gar: Promise<GarCredentials> | undefined;

  constructor(opts: CloudCredentialOptions) {
    this.opts = opts;
    const aws = opts.roleArn ? `AWS role ${opts.roleArn} for ECR` : 'AWS default chain for ECR';
    const google = [
      opts.workloadIdentityProvider ? `AWS → Google federation through ${opts.workloadIdentityProvider}` : 'Google ADC',
      opts.serviceAccountEmail ? `impersonating ${opts.serviceAccountEmail}` : undefined,
    ]
      .filter(Boolean)
      .join(', ');
    this.description = `cloud credentials (${aws}, ${google} for Artifact Registry)`;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    if (isEcrHost(req.registry)) return (await this.ecrProvider()).resolve(req);
    if (isGarHost(req.registry)) return (await this.garProvider()).resolve(req);
    return undefined;
  }

  /**
   * Make sure the ECR repository a copy writes to exists, creating it (ecr:CreateRepository)
   * with the same AWS identity the registry credentials come from.
   */
  async ensureEcrRepository(registry: string, repositoryName: string, settings: EcrRepositorySettings = {}): Promise<EnsuredEcrRepository> {
    const host = parseEcrHost(registry);
    if (!host) throw new Error(`${registry} is not an ECR host`);
    const [{ ensureEcrRepository }, ecr] = await Promise.all([import('./ecr.ts'), this.ecrProvider()]);
    return ensureEcrRepository({ client: ecr.client(host.host), registryId: host.account, repositoryName, logger: this.opts.logger, ...settings });
  }

  /**
   * The ECR API client for an ECR registry host's region, signed with the same AWS identity the
   * registry credentials come from (for ECR's layer-upload API).
   */
  async ecrApiClient(registry: string): Promise<ECRClient> {
    return (await this.ecrProvider()).client(registry);
  }

  /** Close the SDK clients' connection pools. */
  async destroy(): Promise<void> {
    if (this.ecr) (await this.ecr.catch(() => undefined))?.destroy();
  }

  private ecrProvider(): Promise<EcrCredentials> {
    this.ecr ??= import('./ecr.ts').then(({ EcrCredentials }) => {
      const o: ConstructorParameters<typeof EcrCredentials>[0] = { side: this.opts.side, logger: this.opts.logger };
      if (this.opts.roleArn) o.roleArn = this.opts.roleArn;
      if (this.opts.jobId) o.jobId = this.opts.jobId;
      // On GCP (self-hosted), a role that trusts the GCP service account is assumed with the
      // instance's OIDC identity token: by itself when there is no AWS identity and the metadata
      // server answers; always with FERRY_AWS_WEB_IDENTITY=gcp, never with =off.
      const env = this.opts.env ?? process.env;
      const mode = awsWebIdentityMode(env);
      const audience = env.FERRY_AWS_WEB_IDENTITY_AUDIENCE ? { audience: env.FERRY_AWS_WEB_IDENTITY_AUDIENCE } : {};
      if (this.opts.roleArn && mode === 'gcp') o.webIdentity = { provider: 'gcp-metadata', ...audience };
      if (this.opts.roleArn && mode === 'auto') o.gcpWhenNoAwsIdentity = audience;
      return new EcrCredentials(o);
    });
    return this.ecr;
  }

  private garProvider(): Promise<GarCredentials> {
    this.gar ??= import('./gar.ts').then(({ GarCredentials }) => {
      const o: ConstructorParameters<typeof GarCredentials>[0] = { side: this.opts.side, logger: this.opts.logger };
      if (this.opts.serviceAccountEmail) o.serviceAccountEmail = this.opts.serviceAccountEmail;
      if (this.opts.workloadIdentityProvider) o.workloadIdentityProvider = this.opts.workloadIdentityProvider;
      return new GarCredentials(o);
    });
    return this.gar;
  }
}
