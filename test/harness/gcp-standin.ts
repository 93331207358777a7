// Local stand-ins for the Google services ferry's Artifact Registry credential provider (and
// the ECR provider's GCP federation) talk to, reached by google-auth-library's own overrides:
//
//   metadata server   GCE_METADATA_HOST=<host:port>. Access tokens, identity tokens (RS256 JWTs
//                     with the requested audience), email, project id, universe domain. Requires
//                     `Metadata-Flavor: Google`, refuses X-Forwarded-For, answers with the header.
//   Google STS        POST /v1/token (RFC 8693 token exchange) for `external_account` credentials:
//                     AWS subject tokens (a signed GetCallerIdentity request, whose SigV4 signature
//                     is verified against the AWS stand-in's keys) and OIDC JWT subject tokens.
//   IAM Credentials   POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken
//                     (impersonation). Requires a bearer token this stand-in issued; a denied
//                     service account gets 403 PERMISSION_DENIED as Google answers it.
//
// All three are served by one HTTP server on different paths (Google's are separate hosts; the
// paths do not collide). Every token issued is recorded so a test (or a registry configured by
// the test) can accept exactly the tokens that were handed out.
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { closeServer, listen, signJwt, verifyJwt, verifySigV4, type Listening, type SigV4Identity } from './aws-standin.ts';

export const GOOGLE_ISSUER = 'https://accounts.google.com';
export const DEFAULT_SA = 'ferry-vm@ferry-test-project.iam.gserviceaccount.com';
export const DEFAULT_SA_UNIQUE_ID = '104729000000000000001';

export interface IssuedGoogleToken {
  token: string;
  /** metadata: the VM's service account; sts: a federated token; impersonated: generateAccessToken. */
  via: 'metadata' | 'sts' | 'impersonated';
  /** The identity the token stands for (service account email or federated principal). */
  subject: string;
  scopes: string[];
  expiresAt: number;
}

export interface GcpStandinOptions {
  /** The VM's default service account. */
  serviceAccount?: string;
  projectId?: string;
  /** Lifetime (s) of metadata-server access tokens; Google's are about an hour. */
  accessTokenLifetimeSeconds?: number;
  /** Lifetime (s) of identity tokens. Google: 1 h. */
  idTokenLifetimeSeconds?: number;
  /** Lifetime (s) of STS federated tokens. */
  stsTokenLifetimeSeconds?: number;
  /** Service accounts the caller may not impersonate (403 PERMISSION_DENIED). */
  deniedServiceAccounts?: string[];
  /** Workload identity pool provider audiences STS accepts (`//iam.googleapis.com/projects/…/providers/…`). */
  allowedAudiences?: string[];
  /** To verify AWS subject tokens: the AWS stand-in's key lookup and region(s). */
  aws?: { lookup: (accessKeyId: string) => SigV4Identity | undefined; regions: string[] };
  /** To verify OIDC subject tokens: trusted issuers and their keys. */
  oidcIssuers?: Array<{ issuer: string; publicKey: KeyObject }>;
  /**
   * The access token to issue (e.g. one a registry's htpasswd knows), by how it is issued and
   * for whom; undefined (or no function) issues a fresh random token.
   */
  accessToken?: (via: IssuedGoogleToken['via'], subject: string) => string | undefined;
}

export class GcpStandin {
  readonly http: Listening;
  readonly options: GcpStandinOptions;
  readonly serviceAccount: string;
  readonly projectId: string;
  /** The key the stand-in signs identity tokens with; its public half verifies them. */
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly calls = new Map<string, number>();
  readonly issued: IssuedGoogleToken[] = [];
  readonly idTokens: Array<{ token: string; audience: string }> = [];
  /** Requests the metadata server refused for a missing Metadata-Flavor header. */
  missingFlavor = 0;

  private constructor(options: GcpStandinOptions, http: Listening, keys: { privateKey: KeyObject; publicKey: KeyObject }) {
    this.options = options;
    this.http = http;
    this.serviceAccount = options.serviceAccount ?? DEFAULT_SA;
    this.projectId = options.projectId ?? 'ferry-test-project';
    this.privateKey = keys.privateKey;
    this.publicKey = keys.publicKey;
  }

  static async start(options: GcpStandinOptions = {}): Promise<GcpStandin> {
    const keys = generateKeyPairSync('rsa', { modulusLength: 2048 });
    let self: GcpStandin | undefined;
    const http = await listen((req, res, body) => self!.handle(req, res, body));
    self = new GcpStandin(options, http, keys);
    return self;
  }

  async close(): Promise<void> {
    await closeServer(this.http.server);
  }

  /** GCE_METADATA_HOST value (host:port, no scheme). */
  get metadataHost(): string {
    return this.http.host;
  }
  get stsTokenUrl(): string {
    return `${this.http.url}/v1/token`;
  }
  get iamCredentialsEndpoint(): string {
    return this.http.url;
  }
  impersonationUrl(email: string): string {
    return `${this.http.url}/v1/projects/-/serviceAccounts/${email}:generateAccessToken`;
  }

  count(op: string): number {
    return this.calls.get(op) ?? 0;
  }
  get lastAccessToken(): string | undefined {
    return this.issued.at(-1)?.token;
  }
  /** Would Google accept this access token now? (What Artifact Registry would check.) */
  accepts(token: string): IssuedGoogleToken | undefined {
    return this.issued.find((t) => t.token === token && t.expiresAt > Date.now());
  }

  /** End every access token issued so far, now (revoked, or expired earlier than their holder thinks). Returns how many were live. */
  expireAccessTokens(): number {
    const now = Date.now();
    let live = 0;
    for (const t of this.issued) {
      if (t.expiresAt > now) live++;
      t.expiresAt = now - 1;
    }
    return live;
  }

  private bump(op: string): void {
    this.calls.set(op, this.count(op) + 1);
  }

  private issue(via: IssuedGoogleToken['via'], subject: string, scopes: string[], lifetimeSeconds: number): IssuedGoogleToken {
    const token = this.options.accessToken?.(via, subject) ?? 'ya29.' + randomBytes(40).toString('base64url');
    const t: IssuedGoogleToken = { token, via, subject, scopes, expiresAt: Date.now() + lifetimeSeconds * 1000 };
    this.issued.push(t);
    return t;
  }

  private async handle(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://standin');
    if (url.pathname.startsWith('/computeMetadata/')) return this.metadata(req, res, url);
    if (url.pathname === '/v1/token' && req.method === 'POST') return this.sts(req, res, body);
    const gen = /^\/v1\/projects\/-\/serviceAccounts\/([^/:]+):generateAccessToken$/.exec(url.pathname);
    if (gen && req.method === 'POST') return this.generateAccessToken(req, res, body, decodeURIComponent(gen[1] as string));
    googleError(res, 404, 'NOT_FOUND', `Not found: ${url.pathname}`);
  }

  // ----- metadata server ---------------------------------------------------------------------

  private metadata(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const send = (status: number, body: string, type = 'application/text'): void => {
      res.writeHead(status, { 'metadata-flavor': 'Google', 'content-type': type, server: 'Metadata Server for VM' });
      res.end(body);
    };
    if (req.headers['x-forwarded-for'] !== undefined) return send(403, 'Forbidden');
    if (req.headers['metadata-flavor'] !== 'Google') {
      this.missingFlavor++;
      return send(403, 'Missing required header "Metadata-Flavor": "Google"', 'text/html');
    }
    const p = url.pathname.replace(/\/+$/, '');
    const sa = '/computeMetadata/v1/instance/service-accounts/';
    const saAlias = p.startsWith(sa) ? p.slice(sa.length).split('/')[0] : undefined;
    if (saAlias !== undefined && saAlias !== 'default' && saAlias !== this.serviceAccount) return send(404, 'Not Found');
    switch (p.startsWith(sa) ? '/sa/' + p.slice(sa.length).split('/').slice(1).join('/') : p) {
      case '/computeMetadata/v1/instance':
        this.bump('metadata:ping');
        return send(200, 'attributes/\nhostname\nid\nservice-accounts/\nzone\n');
      case '/computeMetadata/v1/project/project-id':
        this.bump('metadata:project-id');
        return send(200, this.projectId);
      case '/computeMetadata/v1/universe/universe-domain':
        return send(200, 'googleapis.com');
      case '/computeMetadata/v1/instance/zone':
        return send(200, `projects/123456789/zones/us-central1-a`);
      case '/sa/email':
        return send(200, this.serviceAccount);
      case '/sa/token': {
        this.bump('metadata:token');
        const scopes = (url.searchParams.get('scopes') ?? 'https://www.googleapis.com/auth/cloud-platform').split(/[ ,]+/).filter(Boolean);
        const t = this.issue('metadata', this.serviceAccount, scopes, this.options.accessTokenLifetimeSeconds ?? 3599);
        return send(200, JSON.stringify({ access_token: t.token, expires_in: Math.round((t.expiresAt - Date.now()) / 1000), token_type: 'Bearer' }), 'application/json');
      }
      case '/sa/identity': {
        this.bump('metadata:identity');
        const audience = url.searchParams.get('audience');
        if (!audience) return send(400, 'non-empty audience parameter required');
        const now = Math.floor(Date.now() / 1000);
        const claims: Record<string, unknown> = {
          aud: audience,
          azp: DEFAULT_SA_UNIQUE_ID,
          email: this.serviceAccount,
          email_verified: true,
          exp: now + (this.options.idTokenLifetimeSeconds ?? 3600),
          iat: now,
          iss: GOOGLE_ISSUER,
          sub: DEFAULT_SA_UNIQUE_ID,
        };
        if (url.searchParams.get('format') === 'full') {
          claims.google = { compute_engine: { instance_id: '4242424242424242424', instance_name: 'ferry-vm', project_id: this.projectId, project_number: 123456789, zone: 'us-central1-a' } };
        }
        const token = signJwt(claims, this.privateKey);
        this.idTokens.push({ token, audience });
        return send(200, token);
      }
      default:
        return send(404, 'Not Found');
    }
  }

  // ----- STS token exchange ------------------------------------------------------------------

  private sts(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    this.bump('sts:token');
    const ct = String(req.headers['content-type'] ?? '');
    const p = ct.startsWith('application/json') ? new URLSearchParams(JSON.parse(body.toString('utf8')) as Record<string, string>) : new URLSearchParams(body.toString('utf8'));
    const oauthError = (status: number, error: string, description: string): void => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ error, error_description: description }));
    };
    if (p.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:token-exchange') return oauthError(400, 'unsupported_grant_type', 'Unsupported grant type.');
    if (p.get('requested_token_type') !== 'urn:ietf:params:oauth:token-type:access_token') return oauthError(400, 'invalid_request', 'Invalid requested_token_type.');
    const audience = p.get('audience') ?? '';
    if (!(this.options.allowedAudiences ?? []).includes(audience)) {
      return oauthError(400, 'invalid_target', 'The target service indicated by the "audience" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn\'t exist.');
    }
    const subjectToken = p.get('subject_token') ?? '';
    const subjectType = p.get('subject_token_type');
    let subject: string;
    if (subjectType === 'urn:ietf:params:aws:token-type:aws4_request') {
      const r = this.verifyAwsSubjectToken(subjectToken, audience);
      if (typeof r !== 'string' || r.startsWith('!')) return oauthError(400, 'invalid_grant', typeof r === 'string' ? r.slice(1) : 'Invalid subject token.');
      subject = r;
    } else if (subjectType === 'urn:ietf:params:oauth:token-type:jwt' || subjectType === 'urn:ietf:params:oauth:token-type:id_token') {
      const r = this.verifyOidcSubjectToken(subjectToken);
      if (r.startsWith('!')) return oauthError(400, 'invalid_grant', r.slice(1));
      subject = r;
    } else {
      return oauthError(400, 'invalid_request', 'Invalid subject_token_type.');
    }
    const scopes = (p.get('scope') ?? '').split(' ').filter(Boolean);
    const t = this.issue('sts', `principal://iam.googleapis.com/${audience.replace(/^\/\/iam\.googleapis\.com\//, '').replace(/\/providers\/.*$/, '')}/subject/${subject}`, scopes, this.options.stsTokenLifetimeSeconds ?? 3600);
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
    res.end(JSON.stringify({ access_token: t.token, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: Math.round((t.expiresAt - Date.now()) / 1000) }));
  }

  /** The serialized, signed GetCallerIdentity request; returns the caller ARN or '!reason'. */
  private verifyAwsSubjectToken(subjectToken: string, audience: string): string {
    if (!this.options.aws) return '!AWS federation is not configured.';
    let parsed: { url?: string; method?: string; headers?: Array<{ key: string; value: string }>; body?: string };
    try {
      parsed = JSON.parse(decodeURIComponent(subjectToken)) as typeof parsed;
    } catch {
      return '!The subject token is not a valid serialized AWS request.';
    }
    if (!parsed.url || !parsed.method || !Array.isArray(parsed.headers)) return '!The subject token is missing url, method or headers.';
    const u = new URL(parsed.url);
    if (u.searchParams.get('Action') !== 'GetCallerIdentity') return '!The subject token must be a GetCallerIdentity request.';
    if (!/^sts(\.[a-z0-9-]+)?\.amazonaws\.com$/.test(u.hostname)) return '!The subject token must target AWS STS.';
    const headers = parsed.headers.map((h) => [h.key, h.value] as [string, string]);
    const target = headers.find(([k]) => k.toLowerCase() === 'x-goog-cloud-target-resource')?.[1];
    if (target !== audience) return '!The subject token\'s x-goog-cloud-target-resource does not match the audience.';
    const check = verifySigV4({ method: parsed.method, target: u.pathname + u.search, headers, body: Buffer.from(parsed.body ?? '') }, this.options.aws.lookup, {
      service: 'sts',
      regions: this.options.aws.regions,
    });
    if (!check.ok) return `!AWS rejected the subject token: ${check.message}`;
    return check.identity.arn;
  }

  private verifyOidcSubjectToken(jwt: string): string {
    for (const iss of this.options.oidcIssuers ?? []) {
      const claims = verifyJwt(jwt, iss.publicKey);
      if (claims && claims.iss === iss.issuer) {
        if (typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()) return '!The subject token has expired.';
        return String(claims.sub);
      }
    }
    return '!The subject token could not be verified.';
  }

  // ----- IAM Credentials ---------------------------------------------------------------------

  private generateAccessToken(req: IncomingMessage, res: ServerResponse, body: Buffer, email: string): void {
    this.bump('iam:generateAccessToken');
    const auth = String(req.headers.authorization ?? '');
    const caller = auth.startsWith('Bearer ') ? this.accepts(auth.slice(7)) : undefined;
    if (!caller) {
      return googleError(res, 401, 'UNAUTHENTICATED', 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.');
    }
    if ((this.options.deniedServiceAccounts ?? []).includes(email)) {
      return googleError(res, 403, 'PERMISSION_DENIED', "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).", [
        { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'IAM_PERMISSION_DENIED', domain: 'iam.googleapis.com', metadata: { permission: 'iam.serviceAccounts.getAccessToken' } },
      ]);
    }
    let input: { scope?: string[]; lifetime?: string; delegates?: string[] };
    try {
      input = JSON.parse(body.toString('utf8')) as typeof input;
    } catch {
      return googleError(res, 400, 'INVALID_ARGUMENT', 'Invalid JSON payload received.');
    }
    if (!Array.isArray(input.scope) || input.scope.length === 0) return googleError(res, 400, 'INVALID_ARGUMENT', 'Scope required.');
    const lifetime = input.lifetime ? Number(/^(\d+)s$/.exec(input.lifetime)?.[1] ?? NaN) : 3600;
    if (!Number.isFinite(lifetime) || lifetime < 1 || lifetime > 43200) return googleError(res, 400, 'INVALID_ARGUMENT', 'The lifetime is invalid.');
    const t = this.issue('impersonated', email, input.scope, lifetime);
    res.writeHead(200, { 'content-type': 'application/json; charset=UTF-8' });
    res.end(JSON.stringify({ accessToken: t.token, expireTime: new Date(t.expiresAt).toISOString().replace(/\.\d{3}Z$/, 'Z') }));
  }
}

function googleError(res: ServerResponse, code: number, status: string, message: string, details?: unknown[]): void {
  res.writeHead(code, { 'content-type': 'application/json; charset=UTF-8' });
  res.end(JSON.stringify({ error: { code, message, status, ...(details ? { details } : {}) } }, null, 2));
}
