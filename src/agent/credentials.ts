// Source credentials for one execution, from the control plane's registry-credentials
// endpoint, as a CredentialProvider the registry client's keychain can use. The first call
// exchanges the plan's one-time token; later calls renew without it, through the same
// execution:
// - ahead of time: each credential carries the instant it is due for renewal (`expiresAt`,
//   src/auth/renewal.ts: 80 % of its lifetime or 60 s before it runs out, not before half of
//   it), so the registry client asks again then;
// - when a registry or its token server refuses it (`refresh`): renewed once, unless it was
//   renewed since it was handed out (several requests refused at once renew once).
// One renewal is in flight at a time; an ahead-of-time one comes no sooner than
// MIN_RENEWAL_DELAY_MS after the last (credentials that arrive already expired cannot start a
// storm), and a refused credential is renewed once however many requests it failed.
import { FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../auth/credentials.ts';
import { MIN_RENEWAL_DELAY_MS, renewalDelay } from '../auth/renewal.ts';
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
  /** The control-plane client's clock, which renewal times are on (the registry client checks them against Date.now). */
  now?: () => number;
}

interface Current {
  creds: RegistryCredentials;
  /** What the registry client gets: the credential, with `expiresAt` = when to renew it. */
  credential: Credential;
  renewAt: number;
}

export class ExecutionCredentials implements CredentialProvider {
  readonly description: string;
  private readonly opts: ExecutionCredentialsOptions;
  private readonly registry: string;
  private readonly now: () => number;
  private oneTimeToken: string | undefined;
  private current: Current | undefined;
  private inflight: Promise<Current> | undefined;
  /** Credentials obtained so far: the exchange, then each renewal. */
  obtained = 0;

  constructor(opts: ExecutionCredentialsOptions) {
    this.opts = opts;
    this.registry = normalizeRegistryHost(opts.registry);
    this.oneTimeToken = opts.oneTimeToken;
    this.now = opts.now ?? Date.now;
    this.description = `control-plane credentials for execution ${opts.execId}`;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    if (normalizeRegistryHost(req.registry) !== this.registry) return undefined;
    const cur = this.current;
    if (cur && !this.inflight) {
      const renewedSince = req.rejected !== undefined && req.rejected !== cur.credential;
      if (req.refresh ? renewedSince : this.now() < cur.renewAt) return cur.credential;
    }
    this.inflight ??= this.fetchOrKeep(req.refresh ? 'refused' : cur ? 'due' : 'first').finally(() => {
      this.inflight = undefined;
    });
    return (await this.inflight).credential;
  }

  /**
   * A renewal ahead of time that fails (the control plane is briefly out of reach) keeps the
   * current credentials while they are still valid, and tries again a little later.
   */
  private async fetchOrKeep(reason: 'first' | 'due' | 'refused'): Promise<Current> {
    try {
      return await this.fetch(reason);
    } catch (e) {
      const cur = this.current;
      const now = this.now();
      if (reason !== 'due' || !cur || now >= cur.creds.receivedAt + cur.creds.lifetimeMs) throw e;
      cur.renewAt = now + MIN_RENEWAL_DELAY_MS;
      this.opts.logger.warn({ job_id: this.opts.jobId, exec_id: this.opts.execId, problem: (e as Error).message, expires_at: cur.creds.expires_at }, 'could not renew the source credentials; using the current ones while they last');
      return cur;
    }
  }

  private async fetch(reason: 'first' | 'due' | 'refused'): Promise<Current> {
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
    this.obtained++;
    const renewAt = creds.receivedAt + renewalDelay(creds.lifetimeMs);
    const context = { job_id: jobId, exec_id: execId, registry: creds.registry, expires_at: creds.expires_at, renew_in_ms: renewAt - creds.receivedAt, kind: creds.credential.kind };
    if (reason === 'first') logger.debug(context, 'source credentials obtained');
    else logger.info({ ...context, reason, obtained: this.obtained }, 'source credentials renewed');
    if (creds.lifetimeMs <= 0) logger.warn(context, 'the control plane issued source credentials that had already expired');
    this.current = { creds, credential: { ...creds.credential, expiresAt: renewAt }, renewAt };
    return this.current;
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
