// Cloud registry credentials picked by host name: ECR hosts get AWS credentials, Artifact
// Registry / GCR hosts get Google credentials. The SDKs are loaded only when such a host is
// actually used, so copies between other registries do not pay their start-up cost.
import type { Side } from '../../errors.ts';
import type { Logger } from '../../log/logger.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../credentials.ts';
import { isEcrHost, isGarHost } from './hosts.ts';

export interface CloudCredentialOptions {
  side: Side;
  logger: Logger;
  /** Assume this role for ECR (the plan's `iam_role_arn`, or `--src-role-arn`). */
  roleArn?: string;
  /** Impersonate this service account for Artifact Registry. */
  serviceAccountEmail?: string;
}

export class CloudCredentials implements CredentialProvider {
  readonly description = 'cloud credentials (AWS default chain for ECR, Google ADC for Artifact Registry)';
  private readonly opts: CloudCredentialOptions;
  private ecr: Promise<CredentialProvider> | undefined;
  private gar: Promise<CredentialProvider> | undefined;

  constructor(opts: CloudCredentialOptions) {
    this.opts = opts;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    if (isEcrHost(req.registry)) {
      this.ecr ??= import('./ecr.ts').then(({ EcrCredentials }) => {
        const o: ConstructorParameters<typeof EcrCredentials>[0] = { side: this.opts.side, logger: this.opts.logger };
        if (this.opts.roleArn) o.roleArn = this.opts.roleArn;
        return new EcrCredentials(o);
      });
      return (await this.ecr).resolve(req);
    }
    if (isGarHost(req.registry)) {
      this.gar ??= import('./gar.ts').then(({ GarCredentials }) => {
        const o: ConstructorParameters<typeof GarCredentials>[0] = { side: this.opts.side, logger: this.opts.logger };
        if (this.opts.serviceAccountEmail) o.serviceAccountEmail = this.opts.serviceAccountEmail;
        return new GarCredentials(o);
      });
      return (await this.gar).resolve(req);
    }
    return undefined;
  }
}
