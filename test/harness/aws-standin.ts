// Local stand-ins for the AWS services ferry's ECR credential provider talks to, close enough
// to the real ones that the real AWS SDK code paths run against them unchanged:
//
//   STS  (query protocol: form-encoded POST, XML answers)  AssumeRole, AssumeRoleWithWebIdentity,
//        GetCallerIdentity.                                 Reached with AWS_ENDPOINT_URL_STS.
//   ECR  (JSON 1.1 protocol, X-Amz-Target)                  GetAuthorizationToken, DescribeRepositories,
//                                                           CreateRepository, and the layer-upload API:
//                                                           InitiateLayerUpload, UploadLayerPart,
//                                                           CompleteLayerUpload, BatchCheckLayerAvailability
//                                                           (layers land in a registry's storage through an
//                                                           attached EcrLayerStore). AWS_ENDPOINT_URL_ECR.
//   IMDS (EC2 instance metadata, IMDSv2 only)               session token, instance-profile role
//                                                           credentials, region. AWS_EC2_METADATA_SERVICE_ENDPOINT.
//
// Every signed request has its SigV4 signature recomputed with the secret the stand-in issued or
// was configured with; the service name and region of the credential scope, the clock skew and
// the session token are checked, and failures answer with the codes and statuses AWS uses
// (SignatureDoesNotMatch / InvalidSignatureException, InvalidClientTokenId /
// UnrecognizedClientException, ExpiredToken / ExpiredTokenException, AccessDenied /
// AccessDeniedException). The body is always signed: `UNSIGNED-PAYLOAD` is S3's alone (the S3
// API reference's "unsigned payload option"); STS and ECR hash the body they received, so a
// request signed over UNSIGNED-PAYLOAD does not match.
//
// IAM is modelled, not assumed: every principal has an identity policy (allow statements of
// action and resource globs); a principal without one configured gets DEFAULT_POLICY, exactly
// the least-privilege lists the README documents (pull, push, repository creation, pull-through
// caches) and nothing more. ECR API calls and the Docker registry API of the ECR front
// (cloud-registry.ts, through ecrRegistryDenial) are checked against it and denied as AWS does,
// naming the action and the resource. ECR authorization tokens are scoped to the region they
// were issued in (ECR answers one from another region as it does an expired one).
import { createHash, createHmac, createPublicKey, createSign, createVerify, randomBytes, randomUUID, timingSafeEqual, type KeyObject } from 'node:crypto';
import { appendFileSync, createReadStream, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// ---------------------------------------------------------------------------------------------
// Shared helpers: HTTP servers, SigV4 verification, RS256 JWTs (also used by gcp-standin.ts).

export interface Listening {
  server: Server;
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** host:port */
  host: string;
}

export async function listen(
  handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => Promise<void> | void,
  /** Told of every request body byte as it arrives (also of bodies a client never finishes). */
  onBodyBytes?: (req: IncomingMessage, n: number) => void,
): Promise<Listening> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      chunks.push(c);
      onBodyBytes?.(req, c.byteLength);
    });
    req.on('end', () => {
      Promise.resolve(handler(req, res, Buffer.concat(chunks))).catch((e: unknown) => {
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(String(e instanceof Error ? e.stack : e));
        } else res.destroy();
      });
    });
  });
  // Idle keep-alive sockets must not hold a test process open once the stand-in closes.
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}`, host: `127.0.0.1:${port}` };
}

export async function closeServer(s: Server): Promise<void> {
  s.closeAllConnections();
  await new Promise<void>((resolve) => s.close(() => resolve()));
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

/** RFC 3986 unreserved characters stay; everything else is %XX (upper-case hex), as SigV4 requires. */
function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, '%20'));
  } catch {
    return s;
  }
}

/** A request as SigV4 sees it. `target` is the raw request target: path plus query string. */
export interface SignedRequest {
  method: string;
  target: string;
  /** Header pairs as sent (names in any case; repeated names allowed). */
  headers: Array<[string, string]>;
  body: Buffer;
}

export interface SigV4Identity {
  accessKeyId: string;
  secret: string;
  /** Required value of X-Amz-Security-Token, for temporary credentials. */
  sessionToken?: string;
  /** Temporary credentials stop working at this instant (ms). */
  expiresAt?: number;
  /** The caller's ARN (an IAM user or an assumed-role session). */
  arn: string;
  account: string;
}

export type SigV4Failure = {
  ok: false;
  status: number;
  kind: 'signature' | 'unknown-key' | 'expired-token' | 'missing-auth';
  message: string;
};
export type SigV4Result = { ok: true; identity: SigV4Identity; region: string } | SigV4Failure;

/**
 * Recompute a SigV4 (AWS4-HMAC-SHA256, Authorization header form) signature and compare.
 * `lookup` returns the identity that owns an access key id.
 */
export function verifySigV4(
  req: SignedRequest,
  lookup: (accessKeyId: string) => SigV4Identity | undefined,
  expect: { service: string; regions: string[]; now?: number; /** S3 only: accept `x-amz-content-sha256: UNSIGNED-PAYLOAD`. */ unsignedPayload?: boolean },
): SigV4Result {
  const now = expect.now ?? Date.now();
  const hdr = (name: string): string[] => req.headers.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);
  const auth = hdr('authorization')[0];
  if (!auth) return { ok: false, status: 403, kind: 'missing-auth', message: 'Missing Authentication Token' };
  const m = /^AWS4-HMAC-SHA256 Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$/.exec(auth.trim());
  if (!m) {
    return { ok: false, status: 400, kind: 'signature', message: `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters. Authorization=${auth.split(' ')[0]}` };
  }
  const [, credential, signedHeadersList, signature] = m as unknown as [string, string, string, string];
  const scopeParts = credential.split('/');
  if (scopeParts.length !== 5) return { ok: false, status: 403, kind: 'signature', message: 'Credential should have exactly five slash-separated parts.' };
  const [accessKeyId, date, region, service, terminator] = scopeParts as [string, string, string, string, string];
  const identity = lookup(accessKeyId);
  if (!identity) return { ok: false, status: 403, kind: 'unknown-key', message: 'The security token included in the request is invalid.' };
  if (terminator !== 'aws4_request') return { ok: false, status: 403, kind: 'signature', message: "Credential should be scoped with a valid terminator: 'aws4_request'." };
  if (service !== expect.service) {
    return { ok: false, status: 403, kind: 'signature', message: `Credential should be scoped to correct service: '${expect.service}'.` };
  }
  if (!expect.regions.includes(region)) {
    return { ok: false, status: 403, kind: 'signature', message: `Credential should be scoped to a valid region. ` };
  }
  const amzDate = hdr('x-amz-date')[0];
  if (!amzDate || !/^\d{8}T\d{6}Z$/.test(amzDate)) {
    return { ok: false, status: 403, kind: 'signature', message: 'Authorization header requires existence of either a \'X-Amz-Date\' or a \'Date\' header.' };
  }
  if (amzDate.slice(0, 8) !== date) {
    return { ok: false, status: 403, kind: 'signature', message: `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${date}' != '${amzDate.slice(0, 8)}'` };
  }
  const signedAt = Date.UTC(+amzDate.slice(0, 4), +amzDate.slice(4, 6) - 1, +amzDate.slice(6, 8), +amzDate.slice(9, 11), +amzDate.slice(11, 13), +amzDate.slice(13, 15));
  if (Math.abs(now - signedAt) > 15 * 60_000) {
    return { ok: false, status: 403, kind: 'signature', message: `Signature expired: ${amzDate} is now earlier than ${isoBasic(now - 15 * 60_000)} (${isoBasic(now)} - 5 min.)` };
  }
  const signedHeaders = signedHeadersList.split(';');
  if (!signedHeaders.includes('host')) return { ok: false, status: 403, kind: 'signature', message: "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization." };
  if (!signedHeaders.includes('x-amz-date')) return { ok: false, status: 403, kind: 'signature', message: "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization." };
  if ([...signedHeaders].sort().join(';') !== signedHeadersList) {
    return { ok: false, status: 403, kind: 'signature', message: 'SignedHeaders must be sorted and lower-case.' };
  }

  // Canonical request.
  const q = req.target.indexOf('?');
  const rawPath = q < 0 ? req.target : req.target.slice(0, q);
  const rawQuery = q < 0 ? '' : req.target.slice(q + 1);
  const canonicalUri = (rawPath || '/')
    .split('/')
    .map((seg) => uriEncode(seg))
    .join('/');
  const canonicalQuery = rawQuery
    .split('&')
    .filter((p) => p.length > 0)
    .map((p) => {
      const eq = p.indexOf('=');
      const k = safeDecode(eq < 0 ? p : p.slice(0, eq));
      const v = safeDecode(eq < 0 ? '' : p.slice(eq + 1));
      return [uriEncode(k), uriEncode(v)] as const;
    })
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const canonicalHeaders = signedHeaders
    .map((name) => {
      const values = hdr(name);
      if (values.length === 0) return undefined;
      return `${name}:${values.map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`;
    });
  if (canonicalHeaders.includes(undefined)) return { ok: false, status: 403, kind: 'signature', message: 'A signed header is missing from the request.' };
  const payloadHash = sha256Hex(req.body);
  const declaredHash = hdr('x-amz-content-sha256')[0];
  if (declaredHash !== undefined && declaredHash !== payloadHash && declaredHash !== 'UNSIGNED-PAYLOAD') {
    return { ok: false, status: 400, kind: 'signature', message: "The provided 'x-amz-content-sha256' header does not match what was computed." };
  }
  // Services other than S3 sign over the hash of the body they received, whatever the header says.
  const signedPayload = declaredHash === 'UNSIGNED-PAYLOAD' && expect.unsignedPayload ? declaredHash : payloadHash;
  const canonicalRequest = [req.method.toUpperCase(), canonicalUri, canonicalQuery, canonicalHeaders.join(''), signedHeadersList, signedPayload].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const kDate = hmac('AWS4' + identity.secret, date);
  const kSigning = hmac(hmac(hmac(kDate, region), service), 'aws4_request');
  const expected = createHmac('sha256', kSigning).update(stringToSign, 'utf8').digest();
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return {
      ok: false,
      status: 403,
      kind: 'signature',
      message: 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
    };
  }
  // Temporary credentials: the session token must come along and still be valid.
  if (identity.sessionToken !== undefined) {
    const token = hdr('x-amz-security-token')[0];
    if (token !== identity.sessionToken) return { ok: false, status: 403, kind: 'unknown-key', message: 'The security token included in the request is invalid.' };
    if (identity.expiresAt !== undefined && identity.expiresAt <= now) {
      return { ok: false, status: 403, kind: 'expired-token', message: 'The security token included in the request is expired' };
    }
  }
  return { ok: true, identity, region };
}

function isoBasic(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Sign an RS256 JWT. */
export function signJwt(claims: Record<string, unknown>, privateKey: KeyObject, kid = 'standin-key'): string {
  const head = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid }));
  const body = b64url(JSON.stringify(claims));
  const signer = createSign('RSA-SHA256');
  signer.update(`${head}.${body}`);
  return `${head}.${body}.${b64url(signer.sign(privateKey))}`;
}

/** Verify an RS256 JWT's signature; returns its claims, or undefined when malformed or badly signed. */
export function verifyJwt(jwt: string, publicKey: KeyObject): Record<string, unknown> | undefined {
  const parts = jwt.split('.');
  if (parts.length !== 3) return undefined;
  const [head, body, sig] = parts as [string, string, string];
  try {
    const header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8')) as { alg?: string };
    if (header.alg !== 'RS256') return undefined;
    const v = createVerify('RSA-SHA256');
    v.update(`${head}.${body}`);
    if (!v.verify(publicKey, Buffer.from(sig, 'base64url'))) return undefined;
    return JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** The claims of a JWT without checking it (for tests). */
export function decodeJwt(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function headerPairs(req: IncomingMessage): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) out.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Configuration and state.

export const TEST_ACCOUNT = '111122223333';
export const TEST_ACCESS_KEY_ID = 'AKIAFERRYSTANDIN0001';
export const TEST_SECRET_ACCESS_KEY = 'ferry/standin+secret+0123456789abcdefghij';
export const TEST_USER_ARN = `arn:aws:iam::${TEST_ACCOUNT}:user/ferry-test`;

export interface RoleConfig {
  arn: string;
  /** Principal ARNs (users, assumed-role ARNs or role ARNs) allowed to sts:AssumeRole it; '*' for any. Default: the test user. */
  trustedPrincipals?: string[] | '*';
  /** Trust for sts:AssumeRoleWithWebIdentity. */
  webIdentity?: { issuer: string; audience: string; subject?: string };
  /** The role's identity policy (its sessions act with it). Default DEFAULT_POLICY. */
  policy?: IamPolicy;
}

/** An identity policy: Allow statements. `*` in an action or resource matches any run of characters. */
export type IamPolicy = Array<{ actions: string[]; resources?: string[] }>;

/**
 * The README's least-privilege lists ("Permissions" under Cloud registries). Pushing includes
 * ecr:BatchGetImage, as in the ECR user guide's push policy (image-push-iam): a push reads the
 * destination's manifest first (is the tag already there?).
 */
export const ECR_PULL_ACTIONS = ['ecr:GetAuthorizationToken', 'ecr:BatchGetImage', 'ecr:GetDownloadUrlForLayer'] as const;
export const ECR_PUSH_ACTIONS = [
  'ecr:GetAuthorizationToken',
  'ecr:BatchGetImage',
  'ecr:BatchCheckLayerAvailability',
  'ecr:InitiateLayerUpload',
  'ecr:UploadLayerPart',
  'ecr:CompleteLayerUpload',
  'ecr:PutImage',
] as const;
export const ECR_CREATE_ACTIONS = ['ecr:DescribeRepositories', 'ecr:CreateRepository'] as const;
/** A pull through a cache rule that creates the cached repository. */
export const ECR_PULL_THROUGH_ACTIONS = ['ecr:BatchImportUpstreamImage', 'ecr:CreateRepository'] as const;

/** What a principal without a configured policy may do: everything the README says ferry needs, nothing else. */
export const DEFAULT_POLICY: IamPolicy = [{ actions: [...new Set([...ECR_PULL_ACTIONS, ...ECR_PUSH_ACTIONS, ...ECR_CREATE_ACTIONS, ...ECR_PULL_THROUGH_ACTIONS])], resources: ['*'] }];

function globMatch(pattern: string, value: string): boolean {
  const re = new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return re.test(value);
}

/** Does the policy allow `action` on `resource`? (Action names compare case-insensitively, as IAM's do.) */
export function policyAllows(policy: IamPolicy, action: string, resource: string): boolean {
  return policy.some((st) => st.actions.some((a) => globMatch(a.toLowerCase(), action.toLowerCase())) && (st.resources ?? ['*']).some((r) => globMatch(r, resource)));
}

export interface OidcIssuer {
  /** `iss` claim, e.g. https://accounts.google.com */
  issuer: string;
  publicKey: KeyObject | (() => KeyObject);
}

export interface IssuedEcrToken {
  registryId: string;
  region: string;
  username: 'AWS';
  password: string;
  /** base64 of `AWS:<password>` as returned in authorizationData. */
  authorizationToken: string;
  expiresAt: Date;
  principal: string;
}

export interface EcrRepository {
  registryId: string;
  repositoryName: string;
  repositoryArn: string;
  repositoryUri: string;
  createdAt: Date;
  imageTagMutability: string;
  imageScanningConfiguration: { scanOnPush: boolean };
  encryptionConfiguration: { encryptionType: string; kmsKey?: string };
}

/** Where completed layers go: the storage of the registry that serves the ECR host (cloud-registry.ts attaches it). */
export interface EcrLayerStore {
  /** The blob's size in the repository, or undefined when it is not there. */
  stat(repositoryName: string, digest: string): Promise<number | undefined>;
  /** Store a layer whose bytes (already verified against `digest`) are in `file`. */
  put(repositoryName: string, digest: string, file: string, size: number): Promise<void>;
}

/** An open layer upload (InitiateLayerUpload … CompleteLayerUpload). */
export interface EcrLayerUpload {
  uploadId: string;
  registryId: string;
  repositoryName: string;
  /** The bytes received so far, in order. */
  file: string;
  /** Bytes received (the next part must start here). */
  received: number;
  /** Size of every accepted part, in order. */
  partSizes: number[];
}

/** One UploadLayerPart request that reached the stand-in complete, and what it answered. */
export interface EcrPartRecord {
  uploadId: string;
  partFirstByte: number;
  partLastByte: number;
  /** Decoded payload bytes. */
  bytes: number;
  /** 'accepted' or the exception type answered. */
  outcome: string;
}

/** ECR's layer-part limits (Amazon ECR service quotas; UploadLayerPart's layerPartBlob ≤ 20971520). */
export const ECR_MIN_PART_BYTES = 5 * 1024 * 1024;
export const ECR_MAX_PART_BYTES = 10 * 1024 * 1024;
export const ECR_MAX_PARTS = 4200;
export const ECR_MAX_BLOB_LENGTH = 20971520;

export interface AwsStandinOptions {
  /** Region the STS and ECR endpoints serve (the credential scope must name it). Default us-east-1. */
  region?: string;
  /** Roles that exist. */
  roles?: RoleConfig[];
  /** Identity providers AssumeRoleWithWebIdentity trusts. */
  oidcIssuers?: OidcIssuer[];
  /** Lifetime of GetAuthorizationToken tokens, seconds. AWS: 12 h. */
  ecrTokenLifetimeSeconds?: number;
  /** Force the lifetime of STS session credentials (seconds) regardless of DurationSeconds. */
  stsCredentialLifetimeSeconds?: number;
  /** The password GetAuthorizationToken issues; default a fresh random one per call. */
  ecrPassword?: string | ((registryId: string, principal: string) => string);
  /** Identity policies by principal ARN: an IAM user's, or a role's (`arn:aws:iam::…:role/R`) for its sessions. Default DEFAULT_POLICY. */
  policies?: Record<string, IamPolicy>;
  /** An extra veto after the policies (a test's quick denial): may `principal` perform `action`? Default: yes. */
  allow?: (principal: string, action: string, resource: string) => boolean;
  /** Further regions the ECR endpoint answers for (tokens issued there are scoped to them). */
  otherEcrRegions?: string[];
  /** Instance profile role name served by IMDS. Default ferry-instance. */
  instanceRoleName?: string;
  /** Lifetime of IMDS role credentials, seconds. Default 6 h. */
  imdsCredentialLifetimeSeconds?: number;
  /**
   * ECR's API quotas, as AWS enforces them: requests per second per action (a token bucket
   * holding one second's worth); beyond, 400 ThrottlingException "Rate exceeded".
   */
  ecrRates?: Record<string, number>;
}

export class AwsStandin {
  readonly region: string;
  readonly sts: Listening;
  readonly ecr: Listening;
  readonly imds: Listening;
  readonly options: AwsStandinOptions;

  /** Count of calls per operation (STS/ECR actions; IMDS paths as `imds:<what>`). */
  readonly calls = new Map<string, number>();
  /** Every ECR authorization token issued, oldest first. */
  readonly issuedEcrTokens: IssuedEcrToken[] = [];
  /** Every STS session issued (for assertions on session names). */
  readonly issuedSessions: Array<{ action: string; roleArn: string; sessionName: string; arn: string; accessKeyId: string; expiresAt: number }> = [];
  /** Every web identity token AssumeRoleWithWebIdentity received. */
  readonly webIdentityTokens: string[] = [];
  readonly repositories = new Map<string, EcrRepository>();
  /** Listeners told of each ECR password as it is issued (e.g. to write a registry's htpasswd). */
  readonly onEcrToken: Array<(t: IssuedEcrToken) => void | Promise<void>> = [];

  /** Request body bytes received per ECR operation, counted as they arrive (base64 JSON for UploadLayerPart). */
  readonly ecrBytesIn = new Map<string, number>();
  /** Open layer uploads by uploadId. */
  readonly layerUploads = new Map<string, EcrLayerUpload>();
  /** Every UploadLayerPart that arrived whole, oldest first. */
  readonly layerParts: EcrPartRecord[] = [];
  /** How many digests each BatchCheckLayerAvailability call asked about. */
  readonly batchCheckSizes: number[] = [];
  /** Layers CompleteLayerUpload stored: repository, digest, size. */
  readonly completedLayers: Array<{ repositoryName: string; digest: string; size: number }> = [];
  /** Faults: flip a byte of the next accepted part as it is stored (CompleteLayerUpload then finds another digest). */
  corruptNextLayerPart = false;
  /** When each signed ECR call arrived (Date.now()), per operation, and which were throttled. */
  readonly ecrCallTimes = new Map<string, Array<{ at: number; throttled: boolean }>>();
  private readonly ecrBuckets = new Map<string, { tokens: number; at: number }>();

  private readonly identities = new Map<string, SigV4Identity>();
  private readonly imdsTokens = new Map<string, number>();
  private readonly layerStores = new Map<string, EcrLayerStore>();
  private layerDir: string | undefined;

  private constructor(options: AwsStandinOptions, sts: Listening, ecr: Listening, imds: Listening) {
    this.options = options;
    this.region = options.region ?? 'us-east-1';
    this.sts = sts;
    this.ecr = ecr;
    this.imds = imds;
    this.identities.set(TEST_ACCESS_KEY_ID, { accessKeyId: TEST_ACCESS_KEY_ID, secret: TEST_SECRET_ACCESS_KEY, arn: TEST_USER_ARN, account: TEST_ACCOUNT });
  }

  static async start(options: AwsStandinOptions = {}): Promise<AwsStandin> {
    let self: AwsStandin | undefined;
    const sts = await listen((req, res, body) => self!.handleSts(req, res, body));
    const ecr = await listen(
      (req, res, body) => self!.handleEcr(req, res, body),
      (req, n) => self!.countEcrBytes(req, n),
    );
    const imds = await listen((req, res, body) => self!.handleImds(req, res));
    self = new AwsStandin(options, sts, ecr, imds);
    return self;
  }

  async close(): Promise<void> {
    await Promise.all([closeServer(this.sts.server), closeServer(this.ecr.server), closeServer(this.imds.server)]);
    if (this.layerDir) rmSync(this.layerDir, { recursive: true, force: true });
  }

  /** Completed layers of registry `registryId` go to `store` (and BatchCheckLayerAvailability asks it). */
  attachLayerStore(registryId: string, store: EcrLayerStore): void {
    this.layerStores.set(registryId, store);
  }

  /** Lose every open layer upload, as if ECR had expired them: their uploadIds now answer UploadNotFoundException. */
  forgetLayerUploads(): number {
    const n = this.layerUploads.size;
    for (const u of this.layerUploads.values()) rmSync(u.file, { force: true });
    this.layerUploads.clear();
    return n;
  }

  /** Bytes received for an ECR operation so far. */
  ecrBytes(op: string): number {
    return this.ecrBytesIn.get(op) ?? 0;
  }

  private countEcrBytes(req: IncomingMessage, n: number): void {
    const target = String(req.headers['x-amz-target'] ?? '');
    const op = target.slice(target.indexOf('.') + 1) || 'unknown';
    this.ecrBytesIn.set(op, this.ecrBytes(op) + n);
  }

  /** Environment that points the AWS SDK at these stand-ins. */
  env(): Record<string, string> {
    return {
      AWS_ENDPOINT_URL_STS: this.sts.url,
      AWS_ENDPOINT_URL_ECR: this.ecr.url,
      AWS_EC2_METADATA_SERVICE_ENDPOINT: this.imds.url,
      AWS_REGION: this.region,
    };
  }

  /** The registry host of an ECR registry in this stand-in's region. */
  registryHost(account = TEST_ACCOUNT): string {
    return `${account}.dkr.ecr.${this.region}.amazonaws.com`;
  }

  count(op: string): number {
    return this.calls.get(op) ?? 0;
  }

  /** The newest password GetAuthorizationToken issued. */
  get lastEcrPassword(): string | undefined {
    return this.issuedEcrTokens.at(-1)?.password;
  }

  /** Is this a password the stand-in issued and that has not expired? (What a registry would check.) */
  acceptsEcrPassword(password: string, registryId = TEST_ACCOUNT): boolean {
    return this.issuedEcrTokens.some((t) => t.password === password && t.registryId === registryId && t.expiresAt.getTime() > Date.now());
  }

  /** Create a repository as if someone had run `aws ecr create-repository` (for registry tests). */
  addRepository(repositoryName: string, opts: { registryId?: string; imageTagMutability?: 'MUTABLE' | 'IMMUTABLE' } = {}): EcrRepository {
    const registryId = opts.registryId ?? TEST_ACCOUNT;
    const repo: EcrRepository = {
      registryId,
      repositoryName,
      repositoryArn: repoArn(this.region, registryId, repositoryName),
      repositoryUri: `${registryId}.dkr.ecr.${this.region}.amazonaws.com/${repositoryName}`,
      createdAt: new Date(),
      imageTagMutability: opts.imageTagMutability ?? 'MUTABLE',
      imageScanningConfiguration: { scanOnPush: false },
      encryptionConfiguration: { encryptionType: 'AES256' },
    };
    this.repositories.set(`${registryId}/${repositoryName}`, repo);
    return repo;
  }

  /** The repository, if it exists. */
  repository(repositoryName: string, registryId = TEST_ACCOUNT): EcrRepository | undefined {
    return this.repositories.get(`${registryId}/${repositoryName}`);
  }

  /**
   * End every ECR authorization token issued so far, now (as if they had been issued earlier
   * than their holder thinks, or the role session behind them ended). Returns how many were live.
   */
  expireEcrTokens(): number {
    const now = Date.now();
    let live = 0;
    for (const t of this.issuedEcrTokens) {
      if (t.expiresAt.getTime() > now) live++;
      t.expiresAt = new Date(now - 1);
    }
    return live;
  }

  /** Issue temporary credentials directly (what a credential_process, ECS or a prior AssumeRole would hand out). */
  mintSession(arn: string, lifetimeSeconds = 3600): { accessKeyId: string; secretAccessKey: string; sessionToken: string; expiration: Date } {
    const accessKeyId = 'ASIA' + randomBytes(8).toString('hex').toUpperCase();
    const secretAccessKey = randomBytes(30).toString('base64');
    const sessionToken = 'FwoGZXIvYXdzE' + randomBytes(48).toString('base64');
    const expiresAt = Date.now() + lifetimeSeconds * 1000;
    this.identities.set(accessKeyId, { accessKeyId, secret: secretAccessKey, sessionToken, expiresAt, arn, account: accountOf(arn) });
    return { accessKeyId, secretAccessKey, sessionToken, expiration: new Date(expiresAt) };
  }

  /** The identity owning an access key (for verifiers elsewhere, e.g. Google STS checking AWS subject tokens). */
  lookupIdentity(accessKeyId: string): SigV4Identity | undefined {
    return this.identities.get(accessKeyId);
  }

  /** Forget an access key (as if its user were deleted or the key deactivated). */
  revokeAccessKey(accessKeyId: string): void {
    this.identities.delete(accessKeyId);
  }

  private bump(op: string): void {
    this.calls.set(op, this.count(op) + 1);
  }

  /** The identity policy `principal` acts with: its own, its role's for a role session, else DEFAULT_POLICY. */
  policyOf(principal: string): IamPolicy {
    const policies = this.options.policies ?? {};
    const role = roleArnOfSession(principal);
    return policies[principal] ?? (role !== undefined ? (policies[role] ?? this.options.roles?.find((r) => r.arn === role)?.policy) : undefined) ?? DEFAULT_POLICY;
  }

  /** Set (or, with undefined, clear) the identity policy of a user or role. */
  setPolicy(principalOrRole: string, policy: IamPolicy | undefined): void {
    const policies = { ...(this.options.policies ?? {}) };
    if (policy === undefined) delete policies[principalOrRole];
    else policies[principalOrRole] = policy;
    this.options.policies = policies;
    const role = this.options.roles?.find((r) => r.arn === principalOrRole);
    if (role && policy === undefined) delete role.policy;
  }

  private allowed(principal: string, action: string, resource: string): boolean {
    if (!policyAllows(this.policyOf(principal), action, resource)) return false;
    return this.options.allow ? this.options.allow(principal, action, resource) : true;
  }

  /**
   * The Docker registry API of an ECR host, as IAM sees it (the ECR user guide's permissions for
   * pulling and pushing): undefined when the token's principal may do this request, else the
   * 403 DENIED message ECR answers with, naming the action and the repository. A token issued
   * in another region is refused as ECR refuses it (as expired).
   */
  ecrRegistryDenial(token: IssuedEcrToken, req: { method: string; kind: string; name: string; hasBody: boolean }): string | undefined {
    if (token.region !== this.region) return 'Your authorization token has expired. Reauthenticate and try again.';
    const resource = repoArn(this.region, token.registryId, req.name);
    for (const action of ecrRegistryActions(req.method, req.kind, req.hasBody)) {
      if (!this.allowed(token.principal, action, resource)) {
        return `User: ${token.principal} is not authorized to perform: ${action} on resource: ${resource} because no identity-based policy allows the ${action} action`;
      }
    }
    return undefined;
  }

  // ----- STS ---------------------------------------------------------------------------------

  private stsError(res: ServerResponse, status: number, code: string, message: string, type: 'Sender' | 'Receiver' = 'Sender'): void {
    const xml =
      `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n` +
      `  <Error>\n    <Type>${type}</Type>\n    <Code>${xmlEscape(code)}</Code>\n    <Message>${xmlEscape(message)}</Message>\n  </Error>\n` +
      `  <RequestId>${randomUUID()}</RequestId>\n</ErrorResponse>\n`;
    res.writeHead(status, { 'content-type': 'text/xml', 'x-amzn-requestid': randomUUID() });
    res.end(xml);
  }

  private stsOk(res: ServerResponse, action: string, result: string): void {
    const xml =
      `<${action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n` +
      `  <${action}Result>\n${result}  </${action}Result>\n` +
      `  <ResponseMetadata>\n    <RequestId>${randomUUID()}</RequestId>\n  </ResponseMetadata>\n</${action}Response>\n`;
    res.writeHead(200, { 'content-type': 'text/xml', 'x-amzn-requestid': randomUUID() });
    res.end(xml);
  }

  private async handleSts(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://sts');
    const params = new URLSearchParams(url.search);
    if (req.method === 'POST') {
      const ct = String(req.headers['content-type'] ?? '');
      if (!ct.startsWith('application/x-www-form-urlencoded')) return this.stsError(res, 400, 'InvalidAction', 'Could not find operation for the request');
      for (const [k, v] of new URLSearchParams(body.toString('utf8'))) params.set(k, v);
    }
    const action = params.get('Action') ?? '';
    if (params.get('Version') !== '2011-06-15') return this.stsError(res, 400, 'InvalidAction', `Could not find operation ${action} for version ${params.get('Version') ?? 'NO_VERSION_SPECIFIED'}`);
    this.bump(action);

    if (action === 'AssumeRoleWithWebIdentity') return this.assumeRoleWithWebIdentity(res, params);

    // Every other action is signed.
    const check = verifySigV4({ method: req.method ?? 'GET', target: req.url ?? '/', headers: headerPairs(req), body }, (k) => this.identities.get(k), {
      service: 'sts',
      regions: [this.region],
    });
    if (!check.ok) {
      const code = check.kind === 'unknown-key' ? 'InvalidClientTokenId' : check.kind === 'expired-token' ? 'ExpiredToken' : check.kind === 'missing-auth' ? 'MissingAuthenticationToken' : 'SignatureDoesNotMatch';
      return this.stsError(res, check.status, code, check.message);
    }
    const caller = check.identity;
    switch (action) {
      case 'GetCallerIdentity':
        return this.stsOk(
          res,
          action,
          `    <Arn>${xmlEscape(caller.arn)}</Arn>\n    <UserId>${caller.accessKeyId.startsWith('ASIA') ? 'AROA' + caller.accessKeyId.slice(4) : 'AIDA' + caller.accessKeyId.slice(4)}</UserId>\n    <Account>${caller.account}</Account>\n`,
        );
      case 'AssumeRole': {
        const roleArn = params.get('RoleArn') ?? '';
        const sessionName = params.get('RoleSessionName') ?? '';
        const invalid = validateRoleParams(roleArn, sessionName, params.get('DurationSeconds'));
        if (invalid) return this.stsError(res, 400, 'ValidationError', invalid);
        const role = this.options.roles?.find((r) => r.arn === roleArn);
        const trusted = role?.trustedPrincipals ?? [TEST_USER_ARN];
        const callerRoleArn = roleArnOfSession(caller.arn);
        const ok = role !== undefined && (trusted === '*' || trusted.includes(caller.arn) || (callerRoleArn !== undefined && trusted.includes(callerRoleArn)));
        if (!ok) return this.stsError(res, 403, 'AccessDenied', `User: ${caller.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`);
        return this.stsOk(res, action, this.issueRoleSession(action, roleArn, sessionName, params.get('DurationSeconds')));
      }
      default:
        return this.stsError(res, 400, 'InvalidAction', `Could not find operation ${action} for version 2011-06-15`);
    }
  }

  private assumeRoleWithWebIdentity(res: ServerResponse, params: URLSearchParams): void {
    const roleArn = params.get('RoleArn') ?? '';
    const sessionName = params.get('RoleSessionName') ?? '';
    const token = params.get('WebIdentityToken') ?? '';
    const invalid = validateRoleParams(roleArn, sessionName, params.get('DurationSeconds'));
    if (invalid) return this.stsError(res, 400, 'ValidationError', invalid);
    if (token.length < 4) return this.stsError(res, 400, 'ValidationError', "1 validation error detected: Value at 'webIdentityToken' failed to satisfy constraint: Member must have length greater than or equal to 4");
    this.webIdentityTokens.push(token);
    let claims: Record<string, unknown>;
    try {
      claims = decodeJwt(token);
    } catch {
      return this.stsError(res, 400, 'InvalidIdentityToken', 'The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)');
    }
    const issuer = this.options.oidcIssuers?.find((i) => i.issuer === claims.iss);
    if (!issuer) return this.stsError(res, 400, 'InvalidIdentityToken', 'No OpenIDConnect provider found in your account for ' + String(claims.iss));
    const key = typeof issuer.publicKey === 'function' ? issuer.publicKey() : issuer.publicKey;
    if (!verifyJwt(token, key)) return this.stsError(res, 400, 'InvalidIdentityToken', 'Couldn\'t verify the signature of the token with the key published by your identity provider');
    const exp = typeof claims.exp === 'number' ? claims.exp * 1000 : 0;
    if (exp <= Date.now()) {
      return this.stsError(res, 400, 'ExpiredTokenException', `Token expired: current date/time ${isoSeconds(Date.now())} must be before the expiration date/time ${isoSeconds(exp)}`);
    }
    const role = this.options.roles?.find((r) => r.arn === roleArn);
    const trust = role?.webIdentity;
    const auds = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (trust && trust.issuer === claims.iss && !auds.includes(trust.audience)) return this.stsError(res, 400, 'InvalidIdentityToken', 'Incorrect token audience');
    if (!role || !trust || trust.issuer !== claims.iss || (trust.subject !== undefined && trust.subject !== claims.sub)) {
      return this.stsError(res, 403, 'AccessDenied', 'Not authorized to perform sts:AssumeRoleWithWebIdentity');
    }
    const extra =
      `    <SubjectFromWebIdentityToken>${xmlEscape(String(claims.sub ?? ''))}</SubjectFromWebIdentityToken>\n` +
      `    <Audience>${xmlEscape(trust.audience)}</Audience>\n    <Provider>${xmlEscape(String(claims.iss).replace(/^https:\/\//, ''))}</Provider>\n`;
    return this.stsOk(res, 'AssumeRoleWithWebIdentity', this.issueRoleSession('AssumeRoleWithWebIdentity', roleArn, sessionName, params.get('DurationSeconds')) + extra);
  }

  private issueRoleSession(action: string, roleArn: string, sessionName: string, duration: string | null): string {
    const lifetime = this.options.stsCredentialLifetimeSeconds ?? (duration ? Number(duration) : 3600);
    const roleName = roleArn.split('/').at(-1) ?? 'role';
    const account = accountOf(roleArn);
    const sessionArn = `arn:aws:sts::${account}:assumed-role/${roleName}/${sessionName}`;
    const c = this.mintSession(sessionArn, lifetime);
    this.issuedSessions.push({ action, roleArn, sessionName, arn: sessionArn, accessKeyId: c.accessKeyId, expiresAt: c.expiration.getTime() });
    return (
      `    <Credentials>\n      <AccessKeyId>${c.accessKeyId}</AccessKeyId>\n      <SecretAccessKey>${xmlEscape(c.secretAccessKey)}</SecretAccessKey>\n` +
      `      <SessionToken>${xmlEscape(c.sessionToken)}</SessionToken>\n      <Expiration>${isoSeconds(c.expiration.getTime())}</Expiration>\n    </Credentials>\n` +
      `    <AssumedRoleUser>\n      <AssumedRoleId>AROA${randomBytes(8).toString('hex').toUpperCase()}:${xmlEscape(sessionName)}</AssumedRoleId>\n      <Arn>${xmlEscape(sessionArn)}</Arn>\n    </AssumedRoleUser>\n` +
      `    <PackedPolicySize>0</PackedPolicySize>\n`
    );
  }

  // ----- ECR ---------------------------------------------------------------------------------

  private ecrError(res: ServerResponse, status: number, type: string, message: string): void {
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      'x-amzn-errortype': `${type}:http://internal.amazon.com/coral/com.amazonaws.containerregistry/`,
      'x-amzn-requestid': randomUUID(),
    });
    res.end(JSON.stringify({ __type: type, message }));
  }

  /** The `ecrRates` quota of `op`: true when a call may go through now. */
  private ecrGrant(op: string): boolean {
    const rate = this.options.ecrRates?.[op];
    if (rate === undefined) return true;
    const now = Date.now();
    const b = this.ecrBuckets.get(op) ?? { tokens: rate, at: now };
    b.tokens = Math.min(rate, b.tokens + ((now - b.at) * rate) / 1000);
    b.at = now;
    this.ecrBuckets.set(op, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  private ecrOk(res: ServerResponse, body: unknown): void {
    res.writeHead(200, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-requestid': randomUUID() });
    res.end(JSON.stringify(body));
  }

  private async handleEcr(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const target = String(req.headers['x-amz-target'] ?? '');
    const prefix = 'AmazonEC2ContainerRegistry_V20150921.';
    if (req.method !== 'POST' || !target.startsWith(prefix)) return this.ecrError(res, 400, 'UnknownOperationException', '');
    const op = target.slice(prefix.length);
    this.bump(op);
    const throttled = !this.ecrGrant(op);
    const times = this.ecrCallTimes.get(op) ?? [];
    times.push({ at: Date.now(), throttled });
    this.ecrCallTimes.set(op, times);
    if (throttled) return this.ecrError(res, 400, 'ThrottlingException', 'Rate exceeded');
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.1')) return this.ecrError(res, 400, 'SerializationException', 'Unsupported content type');
    const check = verifySigV4({ method: 'POST', target: req.url ?? '/', headers: headerPairs(req), body }, (k) => this.identities.get(k), {
      service: 'ecr',
      regions: [this.region, ...(this.options.otherEcrRegions ?? [])],
    });
    if (!check.ok) {
      const type =
        check.kind === 'unknown-key' ? 'UnrecognizedClientException' : check.kind === 'expired-token' ? 'ExpiredTokenException' : check.kind === 'missing-auth' ? 'MissingAuthenticationTokenException' : 'InvalidSignatureException';
      return this.ecrError(res, check.status === 403 && type === 'UnrecognizedClientException' ? 400 : check.status, type, check.message);
    }
    let input: Record<string, unknown>;
    try {
      input = body.length ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {};
    } catch {
      return this.ecrError(res, 400, 'SerializationException', 'Start of structure or map found where not expected.');
    }
    const caller = check.identity;
    // The region the request was signed for is the endpoint's: tokens are scoped to it.
    const region = check.region;
    const deny = (action: string, resource: string): void =>
      this.ecrError(res, 400, 'AccessDeniedException', `User: ${caller.arn} is not authorized to perform: ${action} on resource: ${resource} because no identity-based policy allows the ${action} action`);

    switch (op) {
      case 'GetAuthorizationToken': {
        if (!this.allowed(caller.arn, 'ecr:GetAuthorizationToken', '*')) return deny('ecr:GetAuthorizationToken', '*');
        const ids = Array.isArray(input.registryIds) && input.registryIds.length > 0 ? (input.registryIds as string[]) : [caller.account];
        for (const id of ids) {
          if (!/^\d{12}$/.test(id)) {
            return this.ecrError(res, 400, 'InvalidParameterException', `Invalid parameter at 'registryIds' failed to satisfy constraint: 'Member must satisfy regular expression pattern: [0-9]{12}'`);
          }
        }
        const lifetime = this.options.ecrTokenLifetimeSeconds ?? 12 * 3600;
        const authorizationData = [];
        for (const registryId of ids) {
          const p = this.options.ecrPassword;
          const password = typeof p === 'function' ? p(registryId, caller.arn) : (p ?? 'eyJwYXlsb2FkIjoi' + randomBytes(48).toString('base64url'));
          const token: IssuedEcrToken = {
            registryId,
            region,
            username: 'AWS',
            password,
            authorizationToken: Buffer.from(`AWS:${password}`).toString('base64'),
            expiresAt: new Date(Date.now() + lifetime * 1000),
            principal: caller.arn,
          };
          this.issuedEcrTokens.push(token);
          for (const l of this.onEcrToken) await l(token);
          authorizationData.push({
            authorizationToken: token.authorizationToken,
            // JSON 1.1 timestamps are epoch seconds (fractions allowed).
            expiresAt: token.expiresAt.getTime() / 1000,
            proxyEndpoint: `https://${registryId}.dkr.ecr.${region}.amazonaws.com`,
          });
        }
        return this.ecrOk(res, { authorizationData });
      }
      case 'DescribeRepositories': {
        const registryId = typeof input.registryId === 'string' ? input.registryId : caller.account;
        const names = Array.isArray(input.repositoryNames) ? (input.repositoryNames as string[]) : undefined;
        const resource = names?.length === 1 ? repoArn(region, registryId, names[0] as string) : `arn:aws:ecr:${region}:${registryId}:repository/*`;
        if (!this.allowed(caller.arn, 'ecr:DescribeRepositories', resource)) return deny('ecr:DescribeRepositories', resource);
        const inRegistry = [...this.repositories.values()].filter((r) => r.registryId === registryId);
        let found = inRegistry;
        if (names) {
          found = [];
          for (const n of names) {
            const r = inRegistry.find((x) => x.repositoryName === n);
            if (!r) return this.ecrError(res, 400, 'RepositoryNotFoundException', `The repository with name '${n}' does not exist in the registry with id '${registryId}'`);
            found.push(r);
          }
        }
        return this.ecrOk(res, { repositories: found.map(repoJson) });
      }
      case 'CreateRepository': {
        const registryId = typeof input.registryId === 'string' ? input.registryId : caller.account;
        const name = typeof input.repositoryName === 'string' ? input.repositoryName : '';
        if (name.length < 2 || name.length > 256 || !/^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*\/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$/.test(name)) {
          return this.ecrError(
            res,
            400,
            'InvalidParameterException',
            `Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must satisfy regular expression '(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*''`,
          );
        }
        const arn = repoArn(region, registryId, name);
        if (!this.allowed(caller.arn, 'ecr:CreateRepository', arn)) return deny('ecr:CreateRepository', arn);
        if (registryId !== caller.account) return deny('ecr:CreateRepository', arn);
        const mutability = (input.imageTagMutability as string | undefined) ?? 'MUTABLE';
        if (!['MUTABLE', 'IMMUTABLE', 'MUTABLE_WITH_EXCLUSION', 'IMMUTABLE_WITH_EXCLUSION'].includes(mutability)) {
          return this.ecrError(res, 400, 'ValidationException', `1 validation error detected: Value '${mutability}' at 'imageTagMutability' failed to satisfy constraint: Member must satisfy enum value set: [MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION, MUTABLE_WITH_EXCLUSION]`);
        }
        const enc = (input.encryptionConfiguration as { encryptionType?: string; kmsKey?: string } | undefined) ?? { encryptionType: 'AES256' };
        if (!['AES256', 'KMS', 'KMS_DSSE'].includes(enc.encryptionType ?? '')) {
          return this.ecrError(res, 400, 'ValidationException', `1 validation error detected: Value '${enc.encryptionType}' at 'encryptionConfiguration.encryptionType' failed to satisfy constraint: Member must satisfy enum value set: [AES256, KMS, KMS_DSSE]`);
        }
        if (enc.kmsKey !== undefined && enc.encryptionType === 'AES256') {
          return this.ecrError(res, 400, 'InvalidParameterException', 'Invalid parameter at \'encryptionConfiguration\' failed to satisfy constraint: \'kmsKey can be specified only if encryptionType is KMS or KMS_DSSE\'');
        }
        const key = `${registryId}/${name}`;
        if (this.repositories.has(key)) {
          return this.ecrError(res, 400, 'RepositoryAlreadyExistsException', `The repository with name '${name}' already exists in the registry with id '${registryId}'`);
        }
        const scan = input.imageScanningConfiguration as { scanOnPush?: boolean } | undefined;
        const repo: EcrRepository = {
          registryId,
          repositoryName: name,
          repositoryArn: arn,
          repositoryUri: `${registryId}.dkr.ecr.${region}.amazonaws.com/${name}`,
          createdAt: new Date(),
          imageTagMutability: mutability,
          imageScanningConfiguration: { scanOnPush: scan?.scanOnPush ?? false },
          encryptionConfiguration:
            enc.encryptionType === 'AES256'
              ? { encryptionType: 'AES256' }
              : { encryptionType: enc.encryptionType as string, kmsKey: enc.kmsKey ?? `arn:aws:kms:${region}:${registryId}:key/aws/ecr` },
        };
        this.repositories.set(key, repo);
        return this.ecrOk(res, { repository: repoJson(repo) });
      }
      case 'InitiateLayerUpload':
      case 'UploadLayerPart':
      case 'CompleteLayerUpload':
      case 'BatchCheckLayerAvailability':
        return this.handleEcrLayers(op, input, caller, res, deny);
      default:
        return this.ecrError(res, 400, 'UnknownOperationException', '');
    }
  }

  /**
   * ECR's layer-upload API, as the AWS API reference describes it: InitiateLayerUpload opens an
   * upload (uploadId, partSize); UploadLayerPart takes base64 parts that must be contiguous
   * (partFirstByte = the byte after the last one received, else InvalidLayerPartException with
   * lastValidByteReceived), each at most 10 MiB and at most 4200 of them; CompleteLayerUpload
   * checks every part but the last is at least 5 MiB (LayerPartTooSmallException), that the
   * layer is new (LayerAlreadyExistsException) and that its sha256 matches the digest given
   * (InvalidLayerException), then stores it; unknown uploadIds are UploadNotFoundException.
   * BatchCheckLayerAvailability takes 1–100 digests.
   */
  private async handleEcrLayers(op: string, input: Record<string, unknown>, caller: SigV4Identity, res: ServerResponse, deny: (action: string, resource: string) => void): Promise<void> {
    const region = this.region;
    const registryId = typeof input.registryId === 'string' ? input.registryId : caller.account;
    const name = typeof input.repositoryName === 'string' ? input.repositoryName : '';
    const arn = repoArn(region, registryId, name);
    if (!this.allowed(caller.arn, `ecr:${op}`, arn)) return deny(`ecr:${op}`, arn);
    const repo = this.repository(name, registryId);
    if (!repo) return this.ecrError(res, 400, 'RepositoryNotFoundException', `The repository with name '${name}' does not exist in the registry with id '${registryId}'`);
    const store = this.layerStores.get(registryId);
    if (!store) return this.ecrError(res, 500, 'ServerException', `no layer store attached for registry ${registryId} (test setup)`);
    const uploadNotFound = (id: unknown): void =>
      this.ecrError(res, 400, 'UploadNotFoundException', `Upload with id '${String(id)}' does not exist in the repository with name '${name}' in the registry with id '${registryId}'`);
    const upload = (): EcrLayerUpload | undefined => {
      const u = typeof input.uploadId === 'string' ? this.layerUploads.get(input.uploadId) : undefined;
      return u && u.registryId === registryId && u.repositoryName === name ? u : undefined;
    };
    const digestPattern = /^[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+$/;

    switch (op) {
      case 'InitiateLayerUpload': {
        this.layerDir ??= mkdtempSync(join(tmpdir(), 'ferry-ecr-layers-'));
        const uploadId = randomUUID();
        const file = join(this.layerDir, uploadId);
        writeFileSync(file, Buffer.alloc(0));
        this.layerUploads.set(uploadId, { uploadId, registryId, repositoryName: name, file, received: 0, partSizes: [] });
        return this.ecrOk(res, { uploadId, partSize: ECR_MAX_PART_BYTES });
      }
      case 'UploadLayerPart': {
        const u = upload();
        if (!u) return uploadNotFound(input.uploadId);
        const first = input.partFirstByte;
        const last = input.partLastByte;
        const blob = input.layerPartBlob;
        if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || (first as number) < 0 || (last as number) < 0 || typeof blob !== 'string') {
          return this.ecrError(res, 400, 'InvalidParameterException', 'Invalid parameter: partFirstByte, partLastByte and layerPartBlob are required');
        }
        if (blob.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(blob)) {
          return this.ecrError(res, 400, 'SerializationException', 'Base64 encoded value is not valid for layerPartBlob');
        }
        const bytes = Buffer.from(blob, 'base64');
        const record: EcrPartRecord = { uploadId: u.uploadId, partFirstByte: first as number, partLastByte: last as number, bytes: bytes.byteLength, outcome: 'accepted' };
        this.layerParts.push(record);
        const invalidPart = (message: string): void => {
          record.outcome = 'InvalidLayerPartException';
          res.writeHead(400, {
            'content-type': 'application/x-amz-json-1.1',
            'x-amzn-errortype': 'InvalidLayerPartException:http://internal.amazon.com/coral/com.amazonaws.containerregistry/',
            'x-amzn-requestid': randomUUID(),
          });
          res.end(JSON.stringify({ __type: 'InvalidLayerPartException', message, registryId, repositoryName: name, uploadId: u.uploadId, lastValidByteReceived: u.received - 1 }));
        };
        if (bytes.byteLength > ECR_MAX_BLOB_LENGTH) {
          record.outcome = 'ValidationException';
          return this.ecrError(res, 400, 'ValidationException', `1 validation error detected: Value at 'layerPartBlob' failed to satisfy constraint: Member must have length less than or equal to ${ECR_MAX_BLOB_LENGTH}`);
        }
        if ((last as number) - (first as number) + 1 !== bytes.byteLength) return invalidPart(`The layer part size is not valid: ${bytes.byteLength} bytes for bytes ${first}-${last}`);
        if ((first as number) !== u.received) {
          return invalidPart(`The first byte specified, ${first}, is not consecutive to the last byte of a previous layer part upload, ${u.received - 1}`);
        }
        if (bytes.byteLength > ECR_MAX_PART_BYTES || bytes.byteLength === 0) return invalidPart(`The layer part size is not valid: ${bytes.byteLength} bytes (maximum ${ECR_MAX_PART_BYTES})`);
        if (u.partSizes.length >= ECR_MAX_PARTS) {
          record.outcome = 'LimitExceededException';
          return this.ecrError(res, 400, 'LimitExceededException', `The upload has reached the maximum of ${ECR_MAX_PARTS} layer parts`);
        }
        if (this.corruptNextLayerPart) {
          this.corruptNextLayerPart = false;
          bytes[0] = (bytes[0] ?? 0) ^ 0xff;
        }
        appendFileSync(u.file, bytes);
        u.received += bytes.byteLength;
        u.partSizes.push(bytes.byteLength);
        return this.ecrOk(res, { registryId, repositoryName: name, uploadId: u.uploadId, lastByteReceived: u.received - 1 });
      }
      case 'CompleteLayerUpload': {
        const digests = input.layerDigests;
        if (!Array.isArray(digests) || digests.length < 1 || digests.length > 100 || !digests.every((d) => typeof d === 'string' && digestPattern.test(d))) {
          return this.ecrError(res, 400, 'InvalidParameterException', "Invalid parameter at 'layerDigests': between 1 and 100 digests of the form algorithm:hex");
        }
        const u = upload();
        if (!u) return uploadNotFound(input.uploadId);
        if (u.partSizes.length === 0) return this.ecrError(res, 400, 'EmptyUploadException', `The upload with id '${u.uploadId}' does not contain any layer parts`);
        if (u.partSizes.slice(0, -1).some((n) => n < ECR_MIN_PART_BYTES)) return this.ecrError(res, 400, 'LayerPartTooSmallException', 'Layer parts must be at least 5 MiB in size.');
        const digest = digests[0] as string;
        if ((await store.stat(name, digest)) !== undefined) {
          this.dropUpload(u);
          return this.ecrError(res, 400, 'LayerAlreadyExistsException', `The layer '${digest}' already exists in the repository with name '${name}' in the registry with id '${registryId}'`);
        }
        const hash = createHash('sha256');
        for await (const c of createReadStream(u.file)) hash.update(c as Buffer);
        const actual = `sha256:${hash.digest('hex')}`;
        if (actual !== digest) {
          this.dropUpload(u);
          return this.ecrError(res, 400, 'InvalidLayerException', `The layer digest calculation performed by Amazon ECR upon receipt of the image layer does not match the digest specified: computed ${actual}, specified ${digest}`);
        }
        await store.put(name, digest, u.file, u.received);
        this.completedLayers.push({ repositoryName: name, digest, size: u.received });
        this.dropUpload(u);
        return this.ecrOk(res, { registryId, repositoryName: name, uploadId: u.uploadId, layerDigest: digest });
      }
      case 'BatchCheckLayerAvailability': {
        const digests = input.layerDigests;
        if (!Array.isArray(digests) || digests.length < 1 || digests.length > 100) {
          return this.ecrError(
            res,
            400,
            'ValidationException',
            `1 validation error detected: Value at 'layerDigests' failed to satisfy constraint: Member must have length ${Array.isArray(digests) && digests.length > 100 ? 'less than or equal to 100' : 'greater than or equal to 1'}`,
          );
        }
        this.batchCheckSizes.push(digests.length);
        const layers: unknown[] = [];
        const failures: unknown[] = [];
        for (const d of digests) {
          if (typeof d !== 'string' || !digestPattern.test(d)) {
            failures.push({ layerDigest: String(d), failureCode: 'InvalidLayerDigest', failureReason: 'Invalid layer digest' });
            continue;
          }
          const size = await store.stat(name, d);
          if (size === undefined) failures.push({ layerDigest: d, failureCode: 'MissingLayerDigest', failureReason: 'Could not find layer' });
          else layers.push({ layerDigest: d, layerAvailability: 'AVAILABLE', layerSize: size });
        }
        return this.ecrOk(res, { layers, failures });
      }
    }
  }

  private dropUpload(u: EcrLayerUpload): void {
    this.layerUploads.delete(u.uploadId);
    try {
      unlinkSync(u.file);
    } catch {
      // already gone
    }
  }

  // ----- IMDS --------------------------------------------------------------------------------

  private async handleImds(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const text = (status: number, body: string, type = 'text/plain'): void => {
      res.writeHead(status, { 'content-type': type, server: 'EC2ws' });
      res.end(body);
    };
    const path = new URL(req.url ?? '/', 'http://imds').pathname;
    if (req.method === 'PUT' && path === '/latest/api/token') {
      this.bump('imds:token');
      if (req.headers['x-forwarded-for'] !== undefined) return text(403, 'Forbidden');
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) return text(400, 'Bad Request');
      const token = randomBytes(42).toString('base64');
      this.imdsTokens.set(token, Date.now() + ttl * 1000);
      res.writeHead(200, { 'content-type': 'text/plain', 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) });
      res.end(token);
      return;
    }
    if (req.method !== 'GET') return text(405, 'Method Not Allowed');
    // IMDSv2 only: every read needs a live session token.
    const token = req.headers['x-aws-ec2-metadata-token'];
    const exp = typeof token === 'string' ? this.imdsTokens.get(token) : undefined;
    if (exp === undefined || exp <= Date.now()) {
      this.bump('imds:unauthorized');
      return text(401, 'Unauthorized');
    }
    const roleName = this.options.instanceRoleName ?? 'ferry-instance';
    const credPrefix = '/latest/meta-data/iam/security-credentials/';
    // Directory listings answer with or without the trailing slash, as IMDS does.
    if (path === credPrefix || path === credPrefix.slice(0, -1)) return text(200, roleName);
    if (path === credPrefix + roleName) {
      this.bump('imds:credentials');
      const lifetime = this.options.imdsCredentialLifetimeSeconds ?? 6 * 3600;
      const c = this.mintSession(`arn:aws:sts::${TEST_ACCOUNT}:assumed-role/${roleName}/i-0f00d5eed0000feed`, lifetime);
      return text(
        200,
        JSON.stringify(
          {
            Code: 'Success',
            LastUpdated: isoSeconds(Date.now()),
            Type: 'AWS-HMAC',
            AccessKeyId: c.accessKeyId,
            SecretAccessKey: c.secretAccessKey,
            Token: c.sessionToken,
            Expiration: isoSeconds(c.expiration.getTime()),
          },
          null,
          2,
        ),
      );
    }
    if (path === '/latest/meta-data/placement/region') return text(200, this.region);
    if (path === '/latest/meta-data/placement/availability-zone') return text(200, this.region + 'a');
    if (path === '/latest/meta-data/instance-id') return text(200, 'i-0f00d5eed0000feed');
    return text(404, 'Not Found');
  }
}

function accountOf(arn: string): string {
  return arn.split(':')[4] || TEST_ACCOUNT;
}

/** arn:aws:sts::1:assumed-role/R/S → arn:aws:iam::1:role/R */
function roleArnOfSession(arn: string): string | undefined {
  const m = /^arn:([^:]+):sts::(\d{12}):assumed-role\/([^/]+)\//.exec(arn);
  return m ? `arn:${m[1]}:iam::${m[2]}:role/${m[3]}` : undefined;
}

/**
 * The IAM actions a Docker registry API request to ECR needs: manifests and referrers are read
 * with ecr:BatchGetImage and written with ecr:PutImage, blobs read with
 * ecr:GetDownloadUrlForLayer and looked for with ecr:BatchCheckLayerAvailability, an upload
 * opened with ecr:InitiateLayerUpload, its bytes sent with ecr:UploadLayerPart and closed with
 * ecr:CompleteLayerUpload (a PUT that carries the bytes needs both), tags listed with
 * ecr:ListImages. Other requests (cancelling an upload) need nothing more than the token.
 */
export function ecrRegistryActions(method: string, kind: string, hasBody: boolean): string[] {
  const m = method.toUpperCase();
  if (kind === 'manifests') return m === 'PUT' ? ['ecr:PutImage'] : m === 'DELETE' ? ['ecr:BatchDeleteImage'] : ['ecr:BatchGetImage'];
  if (kind === 'referrers') return ['ecr:BatchGetImage'];
  if (kind === 'tags') return ['ecr:ListImages'];
  if (kind === 'uploads') {
    if (m === 'POST') return hasBody ? ['ecr:InitiateLayerUpload', 'ecr:UploadLayerPart', 'ecr:CompleteLayerUpload'] : ['ecr:InitiateLayerUpload'];
    if (m === 'PATCH') return ['ecr:UploadLayerPart'];
    if (m === 'PUT') return hasBody ? ['ecr:UploadLayerPart', 'ecr:CompleteLayerUpload'] : ['ecr:CompleteLayerUpload'];
    return [];
  }
  if (kind === 'blobs') return m === 'HEAD' ? ['ecr:BatchCheckLayerAvailability'] : ['ecr:GetDownloadUrlForLayer'];
  // A pull under a cache rule's prefix that creates the cached repository.
  if (kind === 'pull-through') return [...ECR_PULL_THROUGH_ACTIONS];
  return [];
}

function repoArn(region: string, registryId: string, name: string): string {
  return `arn:aws:ecr:${region}:${registryId}:repository/${name}`;
}

function repoJson(r: EcrRepository): Record<string, unknown> {
  return { ...r, createdAt: r.createdAt.getTime() / 1000 };
}

function validateRoleParams(roleArn: string, sessionName: string, duration: string | null): string | undefined {
  const errs: string[] = [];
  if (!/^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]+$/.test(roleArn) || roleArn.length < 20 || roleArn.length > 2048) {
    errs.push(`Value '${roleArn}' at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\u0009\\u000A\\u000D\\u0020-\\u007E\\u0085\\u00A0-\\uD7FF\\uE000-\\uFFFD\\u10000-\\u10FFFF]+`);
  }
  if (!/^[\w+=,.@-]*$/.test(sessionName)) errs.push(`Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*`);
  if (sessionName.length < 2 || sessionName.length > 64) errs.push(`Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64`);
  if (duration !== null && (!/^\d+$/.test(duration) || +duration < 900 || +duration > 43200)) {
    errs.push(`Value '${duration}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200`);
  }
  if (errs.length === 0) return undefined;
  return `${errs.length} validation error${errs.length > 1 ? 's' : ''} detected: ${errs.join('; ')}`;
}

/** A public key from PEM or a KeyObject (for tests that make their own OIDC issuers). */
export function publicKeyOf(pem: string | KeyObject): KeyObject {
  return typeof pem === 'string' ? createPublicKey(pem) : pem;
}

// ---------------------------------------------------------------------------------------------
// Environment isolation for tests: SDK clients read the environment when they are built and
// again on each request, so set everything a test needs for its whole duration and restore.

/** Variables that could leak the developer's or CI's real cloud identity into a test. */
export const CLOUD_ENV_PREFIXES = ['AWS_', 'GOOGLE_', 'GCE_METADATA', 'GCLOUD_', 'CLOUDSDK_', 'METADATA_SERVER_DETECTION', 'ECS_CONTAINER_METADATA'];

/**
 * Run `fn` with every cloud-related variable removed, then `vars` applied (undefined deletes),
 * restoring the previous environment afterwards.
 */
export async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved = { ...process.env };
  for (const k of Object.keys(process.env)) {
    if (CLOUD_ENV_PREFIXES.some((p) => k.startsWith(p))) delete process.env[k];
  }
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    for (const [k, v] of Object.entries(saved)) process.env[k] = v;
  }
}
