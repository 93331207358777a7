// Registry credentials for AWS ECR private registries.
//
// The AWS identity comes from one of:
//   - the AWS default credential chain (environment, shared config/profile, web identity token
//     file / IRSA, ECS container endpoint, EC2 instance metadata with IMDSv2);
//   - an assumed role (sts:AssumeRole) with the default chain as the caller;
//   - sts:AssumeRoleWithWebIdentity with an OIDC token from the GCP metadata server, for an
//     agent that runs on GCP and pushes to ECR: asked for (`webIdentity`), or picked by itself
//     (`gcpWhenNoAwsIdentity`) when the default chain finds no AWS identity and a GCP metadata
//     server answers.
// With it, ecr:GetAuthorizationToken in the registry's region yields base64 `AWS:<password>`,
// used as Basic credentials. Tokens are cached in memory until shortly before they expire.
import { ECRClient, GetAuthorizationTokenCommand, DescribeRepositoriesCommand, CreateRepositoryCommand, type Repository, type ServiceInputTypes, type ServiceOutputTypes, type Tag } from '@aws-sdk/client-ecr';
import type { FinalizeRequestMiddleware } from '@smithy/types';
import { STSClient, AssumeRoleCommand, AssumeRoleWithWebIdentityCommand, type Credentials as StsCredentials } from '@aws-sdk/client-sts';
import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
import { FerryError, NetworkError, type Side } from '../../errors.ts';
import type { Credential, CredentialProvider, CredentialRequest } from '../credentials.ts';
import { registerSecret, type Logger } from '../../log/logger.ts';
import { authCode, awsAuthError, classifyAwsError } from './aws-errors.ts';
import { awsRequestHandler } from './aws-http.ts';
import { fetchGcpIdentityToken, gcpMetadataServerAnswers } from './gcp-metadata.ts';
import { normalizeHost, parseEcrHost, type EcrHost } from './hosts.ts';
import { renewalTime } from '../renewal.ts';
import { sharedEcrQuotas, type EcrQuotas } from '../../transport/ecr-quotas.ts';

/** AWS credentials as the SDK consumes them. */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}
/** A source of AWS credentials, compatible with the SDK's `credentials` option. */
export type AwsCredentialsProvider = () => Promise<AwsCredentials>;

/** Audience requested for the GCP identity token when none is configured. */
export const DEFAULT_GCP_TO_AWS_AUDIENCE = 'sts.amazonaws.com';

export interface EcrCredentialsOptions {
  /** Which side of the copy these credentials serve; decides SOURCE_AUTH vs DESTINATION_AUTH. */
  side: Side;
  logger: Logger;
  /** Answer only for this registry host; other hosts get undefined. Default: any ECR host. */
  registry?: string;
  /** Assume this IAM role (a plan's `iam_role_arn`) before asking ECR for a token. */
  roleArn?: string;
  /** Role session name, shown in CloudTrail. Sanitised to STS's rules. Default `ferry-<jobId>` or `ferry`. */
  sessionName?: string;
  /** The job the credentials are for; names the role session `ferry-<jobId>`. */
  jobId?: string;
  /**
   * Federate from GCP instead of using AWS credentials: sts:AssumeRoleWithWebIdentity into
   * `roleArn` with an identity token from the GCP metadata server.
   */
  webIdentity?: { provider: 'gcp-metadata'; audience?: string };
  /**
   * With a role to assume and no `webIdentity`: when the AWS default chain finds no identity and
   * a GCP metadata server answers, assume the role with the GCP identity token (this audience).
   */
  gcpWhenNoAwsIdentity?: { audience?: string };
  /** Region for STS calls; default the registry's region (regional STS endpoint). */
  stsRegion?: string;
  /** Requested role session length, seconds (900..43200). Default 3600. */
  roleDurationSeconds?: number;
  /** The caller's own AWS credentials; default the AWS default credential chain. */
  baseCredentials?: AwsCredentialsProvider;
  /** SDK request attempts (the SDK retries throttling, 5xx and network errors). Default 3. */
  maxAttempts?: number;
}

interface CachedToken {
  credential: Credential & { kind: 'basic' };
  expiresAt: number;
  refreshAt: number;
}

/** A valid STS RoleSessionName (2–64 of `[\w+=,.@-]`) from any string. */
export function sanitizeSessionName(name: string): string {
  let s = name.replace(/[^\w+=,.@-]/g, '-').slice(0, 64);
  if (s.length < 2) s = (s + '-ferry').slice(0, 64);
  return s;
}

export interface EcrClientOptions {
  /** The registry host (region, FIPS and dual-stack come from it) or an explicit region. */
  registry?: string;
  region?: string;
  credentials?: AwsCredentialsProvider;
  maxAttempts?: number;
  /** The API quotas' buckets (default: the process's, shared by every client and transport). */
  quotas?: EcrQuotas;
  /** For the line saying ECR started or stopped throttling. */
  logger?: Logger;
}

const THROTTLING_CODES = new Set(['ThrottlingException', 'Throttling', 'TooManyRequestsException', 'RequestLimitExceeded']);

/**
 * An ECR API client for a registry host's region. Honours AWS_ENDPOINT_URL_ECR (and the
 * shared config's `endpoint_url`), like every SDK client.
 */
export function createEcrClient(opts: EcrClientOptions): ECRClient {
  const host = opts.registry !== undefined ? parseEcrHost(opts.registry) : undefined;
  if (opts.registry !== undefined && !host) throw new FerryError('USAGE', `${opts.registry} is not an Amazon ECR registry host`);
  const region = opts.region ?? host?.region;
  if (!region) throw new FerryError('USAGE', 'an ECR client needs a region or an ECR registry host');
  // An explicitly configured endpoint (AWS_ENDPOINT_URL_ECR, a VPC endpoint) is used as is;
  // the SDK refuses FIPS/dual-stack flags together with a custom endpoint.
  const custom = hasConfiguredEndpoint('ECR');
  const client = new ECRClient({
    region,
    useFipsEndpoint: !custom && (host?.fips ?? false),
    useDualstackEndpoint: !custom && (host?.dualStack ?? false),
    maxAttempts: opts.maxAttempts ?? 3,
    ...(opts.credentials ? { credentials: opts.credentials } : {}),
    ...awsRequestHandler(),
  });
  // Every attempt (the SDK's retries included) takes a token of its action's bucket, shared with
  // every other client and transport of this process; a ThrottlingException cuts that action's
  // pace and pauses it for all of them (src/transport/ecr-quotas.ts). The SDK's own retry waits
  // alongside that pause, not on top of it.
  const quotas = opts.quotas ?? sharedEcrQuotas();
  const paced: FinalizeRequestMiddleware<ServiceInputTypes, ServiceOutputTypes> = (next, context) => async (args) => {
    const action = String(context.commandName ?? '').replace(/Command$/, '');
    const input = (args.input ?? {}) as { registryId?: unknown; registryIds?: unknown };
    const id = typeof input.registryId === 'string' ? input.registryId : Array.isArray(input.registryIds) && typeof input.registryIds[0] === 'string' ? input.registryIds[0] : host?.account;
    const account = { account: id ?? 'default', region };
    await quotas.take(account, action);
    try {
      const out = await next(args);
      quotas.succeeded(account, action, opts.logger);
      return out;
    } catch (e) {
      const f = classifyAwsError(e);
      if (THROTTLING_CODES.has(f.code) || f.status === 429) quotas.throttled(account, action, opts.logger);
      throw e;
    }
  };
  // After signing, as close to the wire as a middleware gets: a call whose first attempt waits for
  // credentials (or the SDK's lazy set-up) must not be let go early and then arrive in a bunch.
  // (A signed request stays valid for 5 minutes; no bucket keeps a call waiting that long.)
  client.middlewareStack.addRelativeTo(paced, { name: 'ferryEcrQuotas', relation: 'after', toMiddleware: 'httpSigningMiddleware', override: true });
  return client;
}

/** Is an endpoint configured through the environment for this SDK service id (AWS_ENDPOINT_URL[_<ID>])? */
function hasConfiguredEndpoint(serviceId: string): boolean {
  if (process.env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS === 'true') return false;
  return Boolean(process.env[`AWS_ENDPOINT_URL_${serviceId.toUpperCase().replace(/ /g, '_')}`] || process.env.AWS_ENDPOINT_URL);
}

export class EcrCredentials implements CredentialProvider {
  readonly description: string;
  private readonly opts: EcrCredentialsOptions;
  private readonly log: Logger;
  private readonly only: string | undefined;
  private readonly sessionName: string;
  private base: AwsCredentialsProvider | undefined;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<Credential & { kind: 'basic' }>>();
  private readonly ecrClients = new Map<string, ECRClient>();
  private readonly stsClients = new Map<string, STSClient>();
  /** Assumed-role credentials per STS region. */
  private readonly roleCreds = new Map<string, { creds: AwsCredentials; refreshAt: number }>();
  private readonly roleInflight = new Map<string, Promise<AwsCredentials>>();
  /** How the role is assumed, decided once: with the AWS identity, or with the GCP one. */
  private identity: Promise<{ kind: 'aws' } | { kind: 'gcp'; audience: string }> | undefined;

  constructor(opts: EcrCredentialsOptions) {
    if (opts.webIdentity && !opts.roleArn) throw new FerryError('USAGE', 'ECR web identity federation needs a role ARN to assume');
    if (opts.registry !== undefined && !parseEcrHost(opts.registry)) throw new FerryError('USAGE', `${opts.registry} is not an Amazon ECR registry host`);
    this.opts = opts;
    this.log = opts.logger.child({ component: 'ecr-credentials' });
    this.only = opts.registry !== undefined ? normalizeHost(opts.registry) : undefined;
    this.sessionName = sanitizeSessionName(opts.sessionName ?? (opts.jobId ? `ferry-${opts.jobId}` : 'ferry'));
    const via = opts.webIdentity
      ? `GCP identity → role ${opts.roleArn}`
      : opts.roleArn
        ? `role ${opts.roleArn}${opts.gcpWhenNoAwsIdentity ? ', with the GCP identity if there is no AWS one' : ''}`
        : 'AWS default credential chain';
    this.description = `Amazon ECR (${via})`;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    const host = parseEcrHost(req.registry);
    if (!host) return undefined;
    if (this.only !== undefined && this.only !== host.host) return undefined;
    const key = host.host;
    if (req.refresh) {
      const cached = this.tokens.get(key);
      // Refused, but another request has renewed it since: that one is the answer (no storm of renewals).
      if (cached && req.rejected !== undefined && cached.credential !== req.rejected) return cached.credential;
      this.tokens.delete(key);
      // The registry refused what we had: re-establish the role session too.
      this.roleCreds.delete(this.stsRegion(host));
    } else {
      const cached = this.tokens.get(key);
      if (cached && Date.now() < cached.refreshAt) return cached.credential;
    }
    let p = this.inflight.get(key);
    if (!p) {
      p = this.fetchToken(host).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /**
   * An ECR API client for the registry's region, signed with the same identity as the
   * registry credentials (assumed role, web identity or default chain). For repository creation.
   */
  client(registry: string): ECRClient {
    const host = parseEcrHost(registry);
    if (!host) throw new FerryError('USAGE', `${registry} is not an Amazon ECR registry host`);
    const key = `${host.region}|${host.fips}|${host.dualStack}`;
    let c = this.ecrClients.get(key);
    if (!c) {
      c = createEcrClient({ registry: host.host, credentials: this.awsCredentials(host), maxAttempts: this.opts.maxAttempts, logger: this.log });
      this.ecrClients.set(key, c);
    }
    return c;
  }

  /** Close the SDK clients' connection pools. */
  destroy(): void {
    for (const c of this.ecrClients.values()) c.destroy();
    for (const c of this.stsClients.values()) c.destroy();
    this.ecrClients.clear();
    this.stsClients.clear();
  }

  private stsRegion(host: EcrHost): string {
    return this.opts.stsRegion ?? host.region;
  }

  private baseCredentials(): AwsCredentialsProvider {
    if (!this.base) {
      // clientConfig: the chain's own STS clients (web identity, SSO) go through the proxy too.
      const chain = this.opts.baseCredentials ?? (fromNodeProviderChain({ clientConfig: awsRequestHandler() }) as AwsCredentialsProvider);
      // Whatever the chain hands out is a secret too; keep it out of every log line.
      this.base = async () => {
        const c = await chain();
        registerSecret(c.secretAccessKey);
        registerSecret(c.sessionToken);
        return c;
      };
    }
    return this.base;
  }

  /** The AWS identity used for ECR calls for this host. */
  private awsCredentials(host: EcrHost): AwsCredentialsProvider {
    if (!this.opts.roleArn) return this.baseCredentials();
    return () => this.roleCredentials(host);
  }

  /**
   * The identity the role is assumed with. The AWS one unless web identity was asked for, or may
   * be picked (gcpWhenNoAwsIdentity) and the default chain has nothing while a GCP metadata
   * server answers: an agent on GCP with no AWS identity needs no switch.
   */
  private assumingIdentity(): Promise<{ kind: 'aws' } | { kind: 'gcp'; audience: string }> {
    this.identity ??= (async () => {
      if (this.opts.webIdentity) return { kind: 'gcp' as const, audience: this.opts.webIdentity.audience ?? DEFAULT_GCP_TO_AWS_AUDIENCE };
      const fallback = this.opts.gcpWhenNoAwsIdentity;
      if (!fallback) return { kind: 'aws' as const };
      try {
        await this.baseCredentials()();
        return { kind: 'aws' as const };
      } catch (e) {
        if (!(await gcpMetadataServerAnswers())) return { kind: 'aws' as const }; // AssumeRole then reports the missing AWS identity
        const audience = fallback.audience ?? DEFAULT_GCP_TO_AWS_AUDIENCE;
        this.log.info(
          { roleArn: this.opts.roleArn, audience, aws_chain: (e as Error).message },
          'no AWS identity here, and a GCP metadata server answers: assuming the role with the GCP service account\'s identity token (FERRY_AWS_WEB_IDENTITY=off turns this off)',
        );
        return { kind: 'gcp' as const, audience };
      }
    })();
    return this.identity;
  }

  private sts(region: string, host: EcrHost, withAwsIdentity: boolean): STSClient {
    const key = `${region}|${host.fips}|${host.dualStack}|${withAwsIdentity}`;
    let c = this.stsClients.get(key);
    if (!c) {
      const custom = hasConfiguredEndpoint('STS');
      c = new STSClient({
        region,
        useFipsEndpoint: !custom && host.fips,
        useDualstackEndpoint: !custom && host.dualStack,
        maxAttempts: this.opts.maxAttempts ?? 3,
        // AssumeRoleWithWebIdentity is unsigned; only AssumeRole needs the caller's credentials.
        ...(withAwsIdentity ? { credentials: this.baseCredentials() } : {}),
        ...awsRequestHandler(),
      });
      this.stsClients.set(key, c);
    }
    return c;
  }

  private async roleCredentials(host: EcrHost): Promise<AwsCredentials> {
    const region = this.stsRegion(host);
    const cached = this.roleCreds.get(region);
    if (cached && Date.now() < cached.refreshAt) return cached.creds;
    let p = this.roleInflight.get(region);
    if (!p) {
      p = this.assumeRole(host, region).finally(() => this.roleInflight.delete(region));
      this.roleInflight.set(region, p);
    }
    return p;
  }

  private async assumeRole(host: EcrHost, region: string): Promise<AwsCredentials> {
    const roleArn = this.opts.roleArn as string;
    const side = this.opts.side;
    const common = { RoleArn: roleArn, RoleSessionName: this.sessionName, DurationSeconds: this.opts.roleDurationSeconds ?? 3600 };
    let out: StsCredentials | undefined;
    const identity = await this.assumingIdentity();
    if (identity.kind === 'gcp') {
      const audience = identity.audience;
      const token = await fetchGcpIdentityToken({ audience, logger: this.log, side });
      this.log.debug({ roleArn, sessionName: this.sessionName, region, audience }, 'assuming role with GCP web identity');
      try {
        const r = await this.sts(region, host, false).send(new AssumeRoleWithWebIdentityCommand({ ...common, WebIdentityToken: token }));
        out = r.Credentials;
      } catch (e) {
        throw awsAuthError(e, {
          side,
          host: host.host,
          action: 'sts:AssumeRoleWithWebIdentity',
          roleArn,
          hint:
            `The role's trust policy must allow sts:AssumeRoleWithWebIdentity for the federated principal accounts.google.com ` +
            `with the condition accounts.google.com:aud = "${audience}" (and accounts.google.com:sub = the GCP service account's unique id).`,
        });
      }
    } else {
      this.log.debug({ roleArn, sessionName: this.sessionName, region }, 'assuming role');
      try {
        const r = await this.sts(region, host, true).send(new AssumeRoleCommand(common));
        out = r.Credentials;
      } catch (e) {
        throw awsAuthError(e, {
          side,
          host: host.host,
          action: 'sts:AssumeRole',
          roleArn,
          hint: `The role's trust policy must name the agent's own IAM identity as a principal allowed to call sts:AssumeRole, and that identity needs sts:AssumeRole on ${roleArn}.`,
        });
      }
    }
    if (!out?.AccessKeyId || !out.SecretAccessKey) {
      throw new FerryError(authCode(side), `${side} registry ${host.host}: STS returned no credentials for role ${roleArn}`, { side });
    }
    registerSecret(out.SecretAccessKey);
    registerSecret(out.SessionToken);
    const creds: AwsCredentials = {
      accessKeyId: out.AccessKeyId,
      secretAccessKey: out.SecretAccessKey,
      ...(out.SessionToken ? { sessionToken: out.SessionToken } : {}),
      ...(out.Expiration ? { expiration: out.Expiration } : {}),
    };
    const now = Date.now();
    const exp = out.Expiration?.getTime() ?? now + 3600_000;
    this.roleCreds.set(region, { creds, refreshAt: renewalTime(now, exp) });
    return creds;
  }

  private async fetchToken(host: EcrHost): Promise<Credential & { kind: 'basic' }> {
    const side = this.opts.side;
    const started = Date.now();
    let data;
    try {
      const r = await this.client(host.host).send(new GetAuthorizationTokenCommand({ registryIds: [host.account] }));
      data = r.authorizationData?.[0];
    } catch (e) {
      throw awsAuthError(e, {
        side,
        host: host.host,
        action: 'ecr:GetAuthorizationToken',
        ...(this.opts.roleArn ? { roleArn: this.opts.roleArn } : {}),
        hint: `Allow ecr:GetAuthorizationToken (resource "*") for ${this.opts.roleArn ? `role ${this.opts.roleArn}` : "the agent's IAM identity"}` +
          `, plus ${side === 'source' ? 'ecr:BatchGetImage and ecr:GetDownloadUrlForLayer' : 'ecr:BatchGetImage, ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, ecr:CompleteLayerUpload and ecr:PutImage'} on the repositories.`,
      });
    }
    if (!data?.authorizationToken) {
      throw new FerryError(authCode(side), `${side} registry ${host.host}: ecr:GetAuthorizationToken returned no authorization data`, { side });
    }
    registerSecret(data.authorizationToken);
    const decoded = Buffer.from(data.authorizationToken, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new FerryError(authCode(side), `${side} registry ${host.host}: ECR authorization token is not base64 "user:password"`, { side });
    const username = decoded.slice(0, colon);
    const password = decoded.slice(colon + 1);
    registerSecret(password);
    const expiresAt = data.expiresAt?.getTime() ?? started + 12 * 3600_000;
    const refreshAt = renewalTime(started, expiresAt);
    // expiresAt tells the registry client when to ask again; this provider then renews the token.
    const credential = { kind: 'basic' as const, username, password, expiresAt: refreshAt };
    this.tokens.set(host.host, { credential, expiresAt, refreshAt });
    this.log.debug({ registry: host.host, expiresAt: new Date(expiresAt).toISOString() }, 'obtained ECR authorization token');
    return credential;
  }
}

// ---------------------------------------------------------------------------------------------
// Repository creation (destination side).

export interface EnsureEcrRepositoryOptions {
  client: ECRClient;
  /** The registry (AWS account) id, from the registry host. */
  registryId: string;
  repositoryName: string;
  logger: Logger;
  /** Create with immutable tags. Default false: ferry moves destination tags to follow the plan. */
  tagImmutability?: boolean;
  /** Enable basic scan on push. Default false. */
  scanOnPush?: boolean;
  /** Encryption at rest. Default AES256 (ECR's default). */
  encryption?: { type: 'AES256' } | { type: 'KMS' | 'KMS_DSSE'; kmsKey?: string };
  /** Resource tags for a repository ferry creates. */
  tags?: Record<string, string>;
}

export interface EnsuredEcrRepository {
  created: boolean;
  /** Neither described nor created (both denied): taken to exist, which the push will show. */
  assumed?: boolean;
  repositoryName: string;
  repositoryUri?: string;
  repositoryArn?: string;
  imageTagMutability?: string;
}

function ensured(repo: Repository | undefined, name: string, created: boolean): EnsuredEcrRepository {
  return {
    created,
    repositoryName: repo?.repositoryName ?? name,
    ...(repo?.repositoryUri ? { repositoryUri: repo.repositoryUri } : {}),
    ...(repo?.repositoryArn ? { repositoryArn: repo.repositoryArn } : {}),
    ...(repo?.imageTagMutability ? { imageTagMutability: repo.imageTagMutability } : {}),
  };
}

/**
 * Make sure an ECR repository exists: DescribeRepositories, and CreateRepository when it is
 * missing (or when describing is not permitted). A repository created concurrently by someone
 * else counts as existing. Failures to create are DESTINATION_REJECTED naming the permission;
 * when describing and creating are both denied, the repository is taken to exist.
 */
export async function ensureEcrRepository(opts: EnsureEcrRepositoryOptions): Promise<EnsuredEcrRepository> {
  const { client, registryId, repositoryName: name } = opts;
  const log = opts.logger.child({ component: 'ecr-repository', repository: name });
  const arn = async (): Promise<string> => `arn:aws:ecr:${await client.config.region()}:${registryId}:repository/${name}`;
  const where = `destination repository ${name} in ECR registry ${registryId}`;
  const opErr = async (e: unknown, action: string): Promise<FerryError> => {
    // Getting the AWS identity failed (an assumed role refused, no credentials): that error says it best.
    if (e instanceof FerryError) return e;
    const f = classifyAwsError(e);
    const o = { side: 'destination' as const, status: f.status, cause: e, registryCodes: [f.code] };
    if (f.kind === 'unavailable') return new NetworkError(`${where}: ${action} failed, AWS did not answer (${f.code}: ${f.message})`, o);
    if (f.kind === 'bad-credentials' || f.kind === 'no-credentials') return awsAuthError(e, { side: 'destination', host: registryId, action });
    if (f.kind === 'denied') {
      return new FerryError(
        'DESTINATION_REJECTED',
        `${where} does not exist and ferry may not create it: ${action} was denied (${f.message}). ` +
          `Grant ${action} on ${await arn()} to the agent's IAM identity, or create the repository beforehand.`,
        o,
      );
    }
    return new FerryError('DESTINATION_REJECTED', `${where}: ${action} failed (${f.code}: ${f.message})`, o);
  };

  let describeDenied = false;
  try {
    const r = await client.send(new DescribeRepositoriesCommand({ registryId, repositoryNames: [name] }));
    const repo = r.repositories?.find((x) => x.repositoryName === name);
    if (repo) {
      log.debug('ECR repository exists');
      return ensured(repo, name, false);
    }
  } catch (e) {
    if (e instanceof FerryError) throw e;
    const f = classifyAwsError(e);
    if (f.kind === 'denied') {
      // Without ecr:DescribeRepositories, creating is still worth a try: "already exists" answers the question.
      describeDenied = true;
      log.debug({ code: f.code }, 'ecr:DescribeRepositories denied; trying CreateRepository');
    } else if (f.kind !== 'not-found') {
      throw await opErr(e, 'ecr:DescribeRepositories');
    }
  }

  const tags: Tag[] = Object.entries(opts.tags ?? {}).map(([Key, Value]) => ({ Key, Value }));
  const enc = opts.encryption;
  try {
    const r = await client.send(
      new CreateRepositoryCommand({
        registryId,
        repositoryName: name,
        imageTagMutability: opts.tagImmutability ? 'IMMUTABLE' : 'MUTABLE',
        imageScanningConfiguration: { scanOnPush: opts.scanOnPush ?? false },
        ...(enc
          ? { encryptionConfiguration: enc.type === 'AES256' ? { encryptionType: 'AES256' } : { encryptionType: enc.type, ...(enc.kmsKey ? { kmsKey: enc.kmsKey } : {}) } }
          : {}),
        ...(tags.length ? { tags } : {}),
      }),
    );
    log.info({ uri: r.repository?.repositoryUri, immutable: opts.tagImmutability ?? false, scanOnPush: opts.scanOnPush ?? false, encryption: enc?.type ?? 'AES256' }, 'created ECR repository');
    return ensured(r.repository, name, true);
  } catch (e) {
    const f = classifyAwsError(e);
    if (f.code === 'RepositoryAlreadyExistsException') return ensured(undefined, name, false);
    if (describeDenied && f.kind === 'denied') {
      // An identity with only the push permissions (the README's least-privilege list) can
      // neither look nor create: the repository may well exist. The push finds out, and a
      // missing one fails there with NAME_UNKNOWN, saying how to create it.
      log.warn({ code: f.code }, 'may neither describe nor create the ECR repository (no ecr:DescribeRepositories, no ecr:CreateRepository): assuming it exists');
      return { ...ensured(undefined, name, false), assumed: true };
    }
    throw await opErr(e, 'ecr:CreateRepository');
  }
}
