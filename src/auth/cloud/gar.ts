// Registry credentials for Google Artifact Registry (*-docker.pkg.dev) and Container Registry
// (gcr.io, *.gcr.io): user `oauth2accesstoken`, password an OAuth access token with the
// cloud-platform scope.
//
// The Google identity comes from:
//   - Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS (a service-account key, or
//     an `external_account` config such as workload identity federation from AWS), gcloud's
//     well-known file, or the metadata server on GCE/GKE/Cloud Run;
//   - or, with `workloadIdentityProvider`, federation from the agent's AWS identity (AWS default
//     credential chain) through a workload identity pool provider, built in code;
// optionally followed by service-account impersonation (IAM Credentials generateAccessToken).
//
// google-auth-library caches tokens and renews them before they expire (5 minutes ahead);
// `refresh: true` builds fresh clients so nothing cached is reused.
import { AwsClient, GoogleAuth, Impersonated, type AuthClient } from 'google-auth-library';
import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
import { awsRequestHandler } from './aws-http.ts';
import { FerryError, NetworkError, type Side } from '../../errors.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../credentials.ts';
import { registerSecret, type Logger } from '../../log/logger.ts';
import { authCode } from './aws-errors.ts';
import type { AwsCredentialsProvider } from './ecr.ts';
import { renewalTime } from '../renewal.ts';
import { normalizeHost, parseGarHost } from './hosts.ts';

export const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';
export const GAR_USERNAME = 'oauth2accesstoken';
const DEFAULT_STS_TOKEN_URL = 'https://sts.googleapis.com/v1/token';
const DEFAULT_IAM_CREDENTIALS_ENDPOINT = 'https://iamcredentials.googleapis.com';
/**
 * GoogleAuth looks the project id up (env, gcloud, metadata server, Cloud Resource Manager)
 * while preparing a client unless it is given one. Registry tokens never need it, so a
 * placeholder stops that lookup when no project is configured.
 */
const NO_PROJECT = 'ferry-project-id-not-needed';

/** How soon to ask the library again for a token whose expiry it did not say. */
const UNKNOWN_EXPIRY_RECHECK_MS = 5 * 60_000;

export interface GarCredentialsOptions {
  side: Side;
  logger: Logger;
  /** Answer only for this registry host; other hosts get undefined. Default: any GAR/GCR host. */
  registry?: string;
  /** Impersonate this service account (a plan's `service_account_email`). */
  serviceAccountEmail?: string;
  /** Delegation chain for impersonation, each with Token Creator on the next. */
  delegates?: string[];
  /** Impersonated token lifetime, seconds (default 3600). */
  impersonationLifetimeSeconds?: number;
  /**
   * Federate the agent's AWS identity (AWS default credential chain) into Google through this
   * workload identity pool provider: `projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`
   * (a plan's `workload_identity_provider`). Usually combined with `serviceAccountEmail`.
   */
  workloadIdentityProvider?: string;
  /** AWS region for the federated GetCallerIdentity request. Default AWS_REGION, AWS_DEFAULT_REGION, us-east-1. */
  awsRegion?: string;
  /** AWS credentials to federate; default the AWS default credential chain. */
  awsCredentials?: AwsCredentialsProvider;
  /** A credentials file to use instead of ADC (service-account key or external_account config). */
  keyFile?: string;
  /** Project id, if known; never looked up. */
  projectId?: string;
  /** IAM Credentials API base URL (private endpoints, tests). Default https://iamcredentials.googleapis.com */
  iamCredentialsEndpoint?: string;
  /** Google STS token URL for `workloadIdentityProvider`. Default https://sts.googleapis.com/v1/token */
  stsTokenUrl?: string;
}

export class GarCredentials implements CredentialProvider {
  readonly description: string;
  private readonly opts: GarCredentialsOptions;
  private readonly log: Logger;
  private readonly only: string | undefined;
  private client: Promise<AuthClient> | undefined;
  private inflight: Promise<Credential & { kind: 'basic' }> | undefined;
  /** The newest token handed out. */
  private last: Credential | undefined;

  constructor(opts: GarCredentialsOptions) {
    if (opts.registry !== undefined && !parseGarHost(opts.registry)) {
      throw new FerryError('USAGE', `${opts.registry} is not a Google Artifact Registry or Container Registry host`);
    }
    this.opts = opts;
    this.log = opts.logger.child({ component: 'gar-credentials' });
    this.only = opts.registry !== undefined ? normalizeHost(opts.registry) : undefined;
    const base = opts.workloadIdentityProvider ? 'AWS → workload identity federation' : opts.keyFile ? `credentials file ${opts.keyFile}` : 'application default credentials';
    this.description = `Google Artifact Registry (${base}${opts.serviceAccountEmail ? `, impersonating ${opts.serviceAccountEmail}` : ''})`;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    const host = parseGarHost(req.registry);
    if (!host) return undefined;
    if (this.only !== undefined && this.only !== host.host) return undefined;
    // Refused, but another request has renewed it since: the library's cache holds the newer one.
    const refresh = req.refresh === true && !(req.rejected !== undefined && this.last !== undefined && this.last !== req.rejected);
    // One token serves every Google registry host: one fetch at a time.
    if (refresh) this.client = undefined;
    if (!this.inflight || refresh) {
      const p = this.fetchToken(host.host)
        .then((c) => (this.last = c))
        .finally(() => {
          if (this.inflight === p) this.inflight = undefined;
        });
      this.inflight = p;
    }
    return this.inflight;
  }

  private async fetchToken(host: string): Promise<Credential & { kind: 'basic' }> {
    const clientP = (this.client ??= this.buildClient());
    let token: string | null | undefined;
    let expiry: number | null | undefined;
    try {
      const client = await clientP;
      token = (await client.getAccessToken()).token;
      expiry = (client as { credentials?: { expiry_date?: number | null } }).credentials?.expiry_date;
    } catch (e) {
      // Next attempt starts from scratch (a half-built client may hold a failed state).
      if (this.client === clientP) this.client = undefined;
      throw this.toFerryError(e, host);
    }
    if (!token) throw new FerryError(authCode(this.opts.side), `${this.opts.side} registry ${host}: Google returned no access token`, { side: this.opts.side });
    registerSecret(token);
    // Tell the registry client when to ask again: shortly before the token expires (the library
    // then hands out a renewed one), or in a few minutes when the expiry is unknown.
    const now = Date.now();
    const expiresAt = typeof expiry === 'number' && expiry > now ? renewalTime(now, expiry) : now + UNKNOWN_EXPIRY_RECHECK_MS;
    return { kind: 'basic', username: GAR_USERNAME, password: token, expiresAt };
  }

  private async buildClient(): Promise<AuthClient> {
    const o = this.opts;
    let source: AuthClient;
    let impersonatedAlready = false;
    if (o.workloadIdentityProvider) {
      source = this.federatedAwsClient(o.workloadIdentityProvider);
      impersonatedAlready = o.serviceAccountEmail !== undefined;
    } else {
      const auth = new GoogleAuth({
        scopes: [CLOUD_PLATFORM_SCOPE],
        projectId: o.projectId ?? process.env.GOOGLE_CLOUD_PROJECT ?? process.env.GCLOUD_PROJECT ?? NO_PROJECT,
        ...(o.keyFile ? { keyFilename: o.keyFile } : {}),
      });
      source = await auth.getClient();
    }
    this.log.debug({ source: source.constructor.name, impersonate: o.serviceAccountEmail }, 'built Google auth client');
    if (!o.serviceAccountEmail || impersonatedAlready) return source;
    return new Impersonated({
      sourceClient: source,
      targetPrincipal: o.serviceAccountEmail,
      targetScopes: [CLOUD_PLATFORM_SCOPE],
      delegates: o.delegates ?? [],
      lifetime: o.impersonationLifetimeSeconds ?? 3600,
      endpoint: (o.iamCredentialsEndpoint ?? DEFAULT_IAM_CREDENTIALS_ENDPOINT).replace(/\/+$/, ''),
    });
  }

  /** An external_account client for AWS → Google federation, fed by the AWS SDK's credential chain. */
  private federatedAwsClient(provider: string): AuthClient {
    const o = this.opts;
    const audience = provider.startsWith('//') ? provider : `//iam.googleapis.com/${provider.replace(/^\/+/, '')}`;
    const aws = o.awsCredentials ?? (fromNodeProviderChain({ clientConfig: awsRequestHandler() }) as AwsCredentialsProvider);
    const region = o.awsRegion ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
    const iam = (o.iamCredentialsEndpoint ?? DEFAULT_IAM_CREDENTIALS_ENDPOINT).replace(/\/+$/, '');
    return new AwsClient({
      type: 'external_account',
      audience,
      subject_token_type: 'urn:ietf:params:aws:token-type:aws4_request',
      token_url: o.stsTokenUrl ?? DEFAULT_STS_TOKEN_URL,
      scopes: [CLOUD_PLATFORM_SCOPE],
      ...(o.serviceAccountEmail
        ? {
            service_account_impersonation_url: `${iam}/v1/projects/-/serviceAccounts/${encodeURIComponent(o.serviceAccountEmail)}:generateAccessToken`,
            service_account_impersonation: { token_lifetime_seconds: o.impersonationLifetimeSeconds ?? 3600 },
          }
        : {}),
      aws_security_credentials_supplier: {
        getAwsRegion: async () => region,
        getAwsSecurityCredentials: async () => {
          const c = await aws();
          registerSecret(c.secretAccessKey);
          registerSecret(c.sessionToken);
          return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, ...(c.sessionToken ? { token: c.sessionToken } : {}) };
        },
      },
    });
  }

  private toFerryError(e: unknown, host: string): FerryError {
    if (e instanceof FerryError) return e;
    const side = this.opts.side;
    const o = this.opts;
    const err = e as { message?: string; status?: number; code?: string | number; response?: { status?: number; data?: unknown }; name?: string };
    const message = err.message ?? String(e);
    const status = err.response?.status ?? err.status;
    const where = `${side} registry ${host}`;
    const opts = { side, cause: e, ...(status !== undefined ? { status } : {}) };
    const sysCode = typeof err.code === 'string' ? err.code : undefined;
    if (/Could not load the default credentials/i.test(message)) {
      return new FerryError(
        authCode(side),
        `${where}: no Google credentials found. Set GOOGLE_APPLICATION_CREDENTIALS to a service-account key or an external_account (workload identity federation) config, ` +
          `or run on GCP with a service account attached (metadata server).`,
        opts,
      );
    }
    const name = err.name ?? '';
    if (
      (status !== undefined && (status >= 500 || status === 429)) ||
      (sysCode !== undefined && ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'].includes(sysCode)) ||
      name === 'TimeoutError' ||
      name === 'AbortError'
    ) {
      return new NetworkError(`${where}: could not get a Google access token, the service did not answer (${message}); will retry`, opts);
    }
    if (/unable to impersonate/i.test(message) || (o.serviceAccountEmail && /generateAccessToken|iam\.serviceAccounts\.getAccessToken/i.test(message))) {
      return new FerryError(
        authCode(side),
        `${where}: cannot impersonate service account ${o.serviceAccountEmail}: ${message}. ` +
          `Grant the agent's Google identity roles/iam.serviceAccountTokenCreator (permission iam.serviceAccounts.getAccessToken) on ${o.serviceAccountEmail}, and check the address.`,
        opts,
      );
    }
    if (/invalid_grant|invalid_target|unauthorized_client|invalid_request|subject token/i.test(message)) {
      return new FerryError(
        authCode(side),
        `${where}: Google STS refused the federated credential (${message}). Check the workload identity pool provider` +
          `${o.workloadIdentityProvider ? ` ${o.workloadIdentityProvider}` : ''}, its attribute conditions, and that the external identity is allowed.`,
        opts,
      );
    }
    if (status === 401 || status === 403) {
      return new FerryError(authCode(side), `${where}: Google refused to issue an access token (HTTP ${status}: ${message})`, opts);
    }
    return new FerryError(authCode(side), `${where}: could not get a Google access token: ${message}`, opts);
  }
}
