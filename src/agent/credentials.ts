// Source credentials for one execution, from the control plane's registry-credentials
// endpoint, as a CredentialProvider the registry client's keychain can use. The first call
// exchanges the plan's one-time token; later calls (expiry, a registry's 401, a resumed
// execution) renew without it.
import { FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../auth/credentials.ts';
import { ControlPlaneError, type ControlPlaneClient, type RegistryCredentials } from './control-plane-client.ts';
import { normalizeRegistryHost } from './plan.ts';

export interface ExecutionCredentialsOptions {
  client: ControlPlaneClient;
  jobId: string;
  execId: string;
  /** The plan's source registry host: the only registry these credentials are presented to. */
  registry: string;
  /** The plan's one-time token; omit when resuming an execution whose token was already exchanged. */
  oneTimeToken?: string;
  logger: Logger;
  /** Renew this long before expires_at; default 60 s. */
  renewBeforeMs?: number;
  now?: () => number;
}

export class ExecutionCredentials implements CredentialProvider {
  readonly description: string;
  private readonly opts: ExecutionCredentialsOptions;
  private readonly registry: string;
  private oneTimeToken: string | undefined;
  private current: RegistryCredentials | undefined;
  private inflight: Promise<RegistryCredentials> | undefined;

  constructor(opts: ExecutionCredentialsOptions) {
    this.opts = opts;
    this.registry = normalizeRegistryHost(opts.registry);
    this.oneTimeToken = opts.oneTimeToken;
    this.description = `control-plane credentials for execution ${opts.execId}`;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    if (normalizeRegistryHost(req.registry) !== this.registry) return undefined;
    const now = (this.opts.now ?? Date.now)();
    const margin = this.opts.renewBeforeMs ?? 60_000;
    if (this.current && !req.refresh && this.current.expiresAtMs - margin > now) return this.current.credential;
    this.inflight ??= this.fetch().finally(() => {
      this.inflight = undefined;
    });
    return (await this.inflight).credential;
  }

  private async fetch(): Promise<RegistryCredentials> {
    const { client, jobId, execId, logger } = this.opts;
    let creds: RegistryCredentials;
    try {
      if (this.oneTimeToken !== undefined) {
        creds = await this.exchange(this.oneTimeToken);
        this.oneTimeToken = undefined;
      } else {
        creds = await client.registryCredentials(jobId, execId);
      }
    } catch (e) {
      throw asSourceError(e);
    }
    if (normalizeRegistryHost(creds.registry) !== this.registry) {
      throw new FerryError('SOURCE_AUTH', `the control plane issued credentials for ${creds.registry}, but the source registry is ${this.registry}; not using them`, {
        side: 'source',
      });
    }
    logger.debug({ job_id: jobId, exec_id: execId, registry: creds.registry, expires_at: creds.expires_at, kind: creds.credential.kind }, 'source credentials obtained');
    this.current = creds;
    return creds;
  }

  /**
   * Exchange the one-time token. If the control plane says it is already used, it may be bound
   * to this very execution (an earlier attempt whose answer was lost, or the instance that held
   * the execution before): a renewal without the token then succeeds. Otherwise the 410 stands.
   */
  private async exchange(token: string): Promise<RegistryCredentials> {
    const { client, jobId, execId, logger } = this.opts;
    try {
      return await client.registryCredentials(jobId, execId, { oneTimeToken: token });
    } catch (e) {
      if (!(e instanceof ControlPlaneError) || e.code !== 'TOKEN_ALREADY_USED') throw e;
      logger.info({ job_id: jobId, exec_id: execId }, 'one-time token already used; trying a renewal in case it is bound to this execution');
      try {
        return await client.registryCredentials(jobId, execId);
      } catch (renewError) {
        if (renewError instanceof ControlPlaneError && !renewError.retryable) throw e;
        throw renewError;
      }
    }
  }
}

/** Credential failures are the source side's: TOKEN_* keep their code, anything else is SOURCE_AUTH. */
function asSourceError(e: unknown): FerryError {
  if (e instanceof ControlPlaneError) {
    if (e.code === 'TOKEN_ALREADY_USED' || e.code === 'TOKEN_EXPIRED') {
      return new FerryError(e.code, e.message, { side: 'source', retryable: false, cause: e, ...(e.status !== undefined ? { status: e.status } : {}) });
    }
    return new FerryError('SOURCE_AUTH', `could not get source credentials from the control plane: ${e.message}`, { side: 'source', retryable: e.retryable, cause: e });
  }
  if (e instanceof FerryError) return e;
  return new FerryError('SOURCE_AUTH', `could not get source credentials from the control plane: ${(e as Error).message}`, { side: 'source', cause: e });
}
