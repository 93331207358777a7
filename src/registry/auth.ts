// Registry authentication for one registry and one side of a copy: learns the registry's
// scheme from its 401 challenge (anonymous, Basic or Bearer), fetches and caches bearer
// tokens per scope set until shortly before they expire, and widens scopes on
// `insufficient_scope`. No ping: the first real request discovers the scheme, so a warm sync
// costs one request per registry.
import { FerryError, type Side } from '../errors.ts';
import type { Credential, CredentialProvider } from '../auth/credentials.ts';
import { registerSecret, type Logger } from '../log/logger.ts';
import type { HttpTransport } from '../transport/http.ts';
import { mergeScopes, type Challenge } from '../transport/challenge.ts';
import { checkRedirectTarget } from '../transport/address.ts';
import { readBounded } from './body.ts';

type Scheme = { kind: 'unknown' } | { kind: 'none' } | { kind: 'basic' } | { kind: 'bearer'; realm: URL; service: string | undefined };

interface CachedToken {
  token: string;
  expiresAt: number;
}

const MAX_TOKEN_RESPONSE = 1024 * 1024;

export class RegistryAuth {
  private scheme: Scheme = { kind: 'unknown' };
  private readonly tokens = new Map<string, CachedToken>();
  private readonly pending = new Map<string, Promise<CachedToken>>();
  private credential: Credential | undefined;
  /** Scopes the registry asked for beyond ours (from insufficient_scope challenges). */
  private readonly extraScopes = new Set<string>();
  private readonly registry: string;
  private readonly registryUrl: URL;
  private readonly transport: HttpTransport;
  private readonly credentials: CredentialProvider;
  private readonly side: Side;
  private readonly logger: Logger;

  constructor(opts: { registry: string; registryUrl: URL; transport: HttpTransport; credentials: CredentialProvider; side: Side; logger: Logger }) {
    this.registry = opts.registry;
    this.registryUrl = opts.registryUrl;
    this.transport = opts.transport;
    this.credentials = opts.credentials;
    this.side = opts.side;
    this.logger = opts.logger;
  }

  /** The Authorization header to send for a request needing `scopes`, if any is known to be needed. */
  async header(scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    switch (this.scheme.kind) {
      case 'unknown':
      case 'none':
        return undefined;
      case 'basic': {
        const c = await this.getCredential(false);
        return c.kind === 'basic' ? basicHeader(c.username, c.password) : undefined;
      }
      case 'bearer': {
        const c = await this.getCredential(false);
        if (c.kind === 'bearer') return `Bearer ${c.token}`;
        const t = await this.token(mergeScopes([...scopes, ...this.extraScopes]), signal);
        return `Bearer ${t.token}`;
      }
    }
  }

  /**
   * Learn from a 401. Returns true when trying again could succeed (scheme learned, token
   * refreshed, scope widened); false when the same credentials were already refused.
   */
  async onUnauthorized(challenges: Challenge[], scopes: string[], sentHeader: string | undefined, attempt: number): Promise<boolean> {
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (bearer?.params.realm) {
      let realm: URL;
      try {
        realm = new URL(bearer.params.realm);
      } catch {
        throw this.authError(`registry ${this.registry} sent an invalid token realm "${bearer.params.realm}"`, false);
      }
      checkRedirectTarget(this.registryUrl, realm, 'token realm');
      if (realm.protocol === 'http:' && !this.transport.allowsPlainHttp(realm.host)) {
        throw this.authError(`registry ${this.registry} sent a plain-HTTP token realm ${realm.host}; refusing`, false);
      }
      this.scheme = { kind: 'bearer', realm, service: bearer.params.service };
      if (bearer.params.scope) for (const s of bearer.params.scope.split(' ')) this.extraScopes.add(s);
      if (sentHeader === undefined) return true;
      // We sent a token and it was refused: drop cached tokens and, past the first retry, the credential.
      this.tokens.clear();
      if (bearer.params.error === 'insufficient_scope' && attempt <= 1) return true;
      if (attempt <= 1) {
        this.credential = await this.getCredential(true);
        return true;
      }
      return false;
    }
    if (basic) {
      this.scheme = { kind: 'basic' };
      if (sentHeader === undefined) {
        const c = await this.getCredential(false);
        if (c.kind === 'basic') return true;
        throw this.authError(`registry ${this.registry} requires a username and password and none were given (${this.credentials.description})`, true);
      }
      if (attempt <= 1) {
        this.credential = await this.getCredential(true);
        return true;
      }
      return false;
    }
    return false;
  }

  /**
   * The registry refused a credential without a challenge, saying it expired (ECR answers an
   * expired authorization token with 403 DENIED). Renew it; true when trying again could succeed.
   */
  async onCredentialRejected(sentHeader: string | undefined, attempt: number): Promise<boolean> {
    if (sentHeader === undefined || attempt > 1) return false;
    this.tokens.clear();
    this.credential = await this.getCredential(true);
    return true;
  }

  /** Record that the registry answered without asking for auth. */
  noteAnonymousOk(): void {
    if (this.scheme.kind === 'unknown') this.scheme = { kind: 'none' };
  }

  /** `retryable`: the credentials were renewed, so the caller may start the operation again. */
  authError(message: string, withHint: boolean, retryable = false, status = 401): FerryError {
    // The hint names the caller's own settings (the CLI's flags); the library knows none.
    const hint = withHint && this.credentials.hint ? ` (${this.credentials.hint})` : '';
    return new FerryError(this.side === 'source' ? 'SOURCE_AUTH' : 'DESTINATION_AUTH', message + hint, { side: this.side, status, retryable });
  }

  private async getCredential(refresh: boolean): Promise<Credential> {
    // A short-lived credential (ECR token, Google access token) is asked for again once its
    // provider says it is due for renewal, so a long copy never presents an expired one.
    if (this.credential && !refresh && !isDue(this.credential)) return this.credential;
    const c = (await this.credentials.resolve({ registry: this.registry, refresh })) ?? { kind: 'anonymous' as const };
    if (c.kind === 'basic') {
      registerSecret(c.password);
      registerSecret(Buffer.from(`${c.username}:${c.password}`).toString('base64'));
    } else if (c.kind === 'bearer' || c.kind === 'identity-token') {
      registerSecret(c.token);
    }
    this.credential = c;
    return c;
  }

  private async token(scopes: string[], signal?: AbortSignal): Promise<CachedToken> {
    const key = scopes.join(' ');
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached;
    const inflight = this.pending.get(key);
    if (inflight) return inflight;
    const p = this.fetchToken(scopes, signal).finally(() => this.pending.delete(key));
    this.pending.set(key, p);
    const t = await p;
    this.tokens.set(key, t);
    return t;
  }

  private async fetchToken(scopes: string[], signal?: AbortSignal): Promise<CachedToken> {
    if (this.scheme.kind !== 'bearer') throw new Error('fetchToken without a bearer challenge');
    const { realm, service } = this.scheme;
    const cred = await this.getCredential(false);
    const url = new URL(realm);
    if (service) url.searchParams.set('service', service);
    const headers: Record<string, string> = { accept: 'application/json' };
    let method: 'GET' | 'POST' = 'GET';
    let body: Uint8Array | undefined;
    if (cred.kind === 'identity-token') {
      // OAuth2 refresh-token grant (docker config `identitytoken`).
      method = 'POST';
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: cred.token, client_id: 'ferry' });
      if (service) form.set('service', service);
      if (scopes.length) form.set('scope', scopes.join(' '));
      body = Buffer.from(form.toString());
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else {
      for (const s of scopes) url.searchParams.append('scope', s);
      if (cred.kind === 'basic') headers.authorization = basicHeader(cred.username, cred.password);
    }
    const started = Date.now();
    const res = await this.transport.request({ method, url, headers, body, signal, followRedirects: true });
    const text = (await readBounded(res.body, MAX_TOKEN_RESPONSE, `token response from ${realm.host}`, this.side)).toString('utf8');
    if (res.status === 401 || res.status === 403) {
      throw this.authError(`token server ${realm.host} refused the credentials for ${this.registry} (HTTP ${res.status}; ${this.credentials.description})`, true);
    }
    if (res.status !== 200) {
      throw new FerryError('REGISTRY_UNAVAILABLE', `token server ${realm.host} answered HTTP ${res.status}`, {
        side: this.side,
        status: res.status,
        retryable: res.status >= 500 || res.status === 429,
      });
    }
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      doc = JSON.parse(text);
    } catch {
      throw this.authError(`token server ${realm.host} sent a response that is not JSON`, false);
    }
    const token = typeof doc.token === 'string' && doc.token ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : '';
    if (!token || token.length > 64 * 1024) throw this.authError(`token server ${realm.host} sent no usable token`, false);
    registerSecret(token);
    const expiresIn = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : 60;
    // Refresh a little early so a token never expires in the middle of a request.
    const margin = Math.min(30, expiresIn * 0.1) * 1000;
    this.logger.debug({ registry: this.registry, scopes, expires_in: expiresIn }, 'registry token obtained');
    return { token, expiresAt: started + expiresIn * 1000 - margin };
  }
}

function isDue(c: Credential): boolean {
  return (c.kind === 'basic' || c.kind === 'bearer') && c.expiresAt !== undefined && Date.now() >= c.expiresAt;
}

export function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}
