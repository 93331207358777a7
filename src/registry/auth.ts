// Registry authentication for one registry and one side of a copy: learns the registry's
// scheme from its 401 challenge (anonymous, Basic or Bearer), fetches and caches bearer
// tokens per scope set until shortly before they expire, and widens scopes on
// `insufficient_scope`. No ping: the first real request discovers the scheme, so a warm sync
// costs one request per registry.
import { FerryError, NetworkError, type Side } from '../errors.ts';
import type { Credential, CredentialProvider } from '../auth/credentials.ts';
import { registerSecret, type Logger } from '../log/logger.ts';
import type { HttpTransport } from '../transport/http.ts';
import { mergeScopes, type Challenge } from '../transport/challenge.ts';
import { checkRedirectTarget } from '../transport/address.ts';
import { DEFAULT_RETRY, backoffDelay, parseRetryAfter, sleep, type RetryPolicy } from '../transport/retry.ts';
import { readBounded } from './body.ts';

type Scheme = { kind: 'unknown' } | { kind: 'none' } | { kind: 'basic' } | { kind: 'bearer'; realm: URL; service: string | undefined };

interface CachedToken {
  token: string;
  expiresAt: number;
  /** The credential the token server took for it. */
  credential: Credential;
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
  /** The registry's API root (its scheme may be settled only once the first request goes out). */
  private readonly registryUrl: () => URL;
  private readonly transport: HttpTransport;
  private readonly retry: RetryPolicy;
  private readonly credentials: CredentialProvider;
  private readonly side: Side;
  private readonly logger: Logger;

  constructor(opts: { registry: string; registryUrl: () => URL; transport: HttpTransport; credentials: CredentialProvider; side: Side; logger: Logger; retry?: RetryPolicy }) {
    this.registry = opts.registry;
    this.registryUrl = opts.registryUrl;
    this.transport = opts.transport;
    this.retry = opts.retry ?? DEFAULT_RETRY;
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
      checkRedirectTarget(this.registryUrl(), realm, 'token realm');
      if (realm.protocol === 'http:' && !this.transport.allowsPlainHttp(realm.host)) {
        throw this.authError(`registry ${this.registry} sent a plain-HTTP token realm ${realm.host}; refusing`, false);
      }
      this.scheme = { kind: 'bearer', realm, service: bearer.params.service };
      if (bearer.params.scope) for (const s of bearer.params.scope.split(' ')) this.extraScopes.add(s);
      if (sentHeader === undefined) return true;
      if (attempt > 1) return false;
      // We sent a token and it was refused. A token the registry had from the credential
      // itself: renew that. One from the token server: drop it, and let the next one come with
      // the same credential (the token server says if that is stale: fetchToken renews it
      // then); the second refusal of the same request renews the credential as well.
      const minted = this.dropToken(sentHeader);
      const direct = this.credential?.kind === 'bearer' && `Bearer ${this.credential.token}` === sentHeader ? this.credential : undefined;
      if (direct) await this.renew(direct);
      else if (attempt === 1 && bearer.params.error !== 'insufficient_scope') await this.renew(minted ?? this.credential);
      return true;
    }
    if (basic) {
      this.scheme = { kind: 'basic' };
      if (sentHeader === undefined) {
        const c = await this.getCredential(false);
        if (c.kind === 'basic') return true;
        throw this.authError(`registry ${this.registry} requires a username and password and none were given (${this.credentials.description})`, true);
      }
      if (attempt <= 1) {
        await this.renew(this.credentialBehind(sentHeader));
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
    const minted = this.dropToken(sentHeader);
    await this.renew(minted ?? this.credentialBehind(sentHeader));
    return true;
  }

  /** Forget the cached token(s) sent as `sentHeader`; the credential they were minted with, if any. */
  private dropToken(sentHeader: string): Credential | undefined {
    let minted: Credential | undefined;
    for (const [key, t] of this.tokens) {
      if (`Bearer ${t.token}` !== sentHeader) continue;
      minted = t.credential;
      this.tokens.delete(key);
    }
    return minted;
  }

  /** The current credential if `sentHeader` was made from it; undefined when it has been renewed since. */
  private credentialBehind(sentHeader: string): Credential | undefined {
    const c = this.credential;
    if (!c) return undefined;
    if (c.kind === 'basic' && basicHeader(c.username, c.password) === sentHeader) return c;
    if (c.kind === 'bearer' && `Bearer ${c.token}` === sentHeader) return c;
    return undefined;
  }

  /**
   * Renew a refused credential, unless it is no longer the current one (another request refused
   * at the same time renewed it already): N requests refused at once renew once.
   */
  private async renew(refused: Credential | undefined): Promise<void> {
    if (refused === undefined || refused !== this.credential) return;
    await this.getCredential(true, refused);
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

  private async getCredential(refresh: boolean, rejected?: Credential): Promise<Credential> {
    // A short-lived credential (ECR token, Google access token, the control plane's source
    // credentials) is asked for again once its provider says it is due for renewal, so a long
    // copy never presents an expired one.
    if (this.credential && !refresh && !isDue(this.credential)) return this.credential;
    const c = (await this.credentials.resolve({ registry: this.registry, refresh, ...(rejected ? { rejected } : {}) })) ?? { kind: 'anonymous' as const };
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

  /**
   * A token from the token server. When it refuses the credential, which may have gone stale
   * (short-lived source credentials), the credential is renewed once and asked with again;
   * refused again, it is the side's AUTH error.
   */
  private async fetchToken(scopes: string[], signal?: AbortSignal): Promise<CachedToken> {
    const cred = await this.getCredential(false);
    try {
      return await this.requestToken(scopes, cred, signal);
    } catch (e) {
      if (!(e instanceof TokenRefused)) throw e;
      const refused = (what: TokenRefused, suffix = '') => this.authError(`${what.message}${suffix}`, true, false, what.status);
      if (cred.kind === 'anonymous') throw refused(e);
      await this.renew(cred);
      const renewed = await this.getCredential(false);
      if (sameSecret(renewed, cred)) throw refused(e);
      this.logger.info({ registry: this.registry, status: e.status }, 'token server refused the credentials; renewed them and asking again');
      try {
        return await this.requestToken(scopes, renewed, signal);
      } catch (again) {
        if (!(again instanceof TokenRefused)) throw again;
        throw refused(again, ', also after they were renewed');
      }
    }
  }

  private async requestToken(scopes: string[], cred: Credential, signal?: AbortSignal): Promise<CachedToken> {
    if (this.scheme.kind !== 'bearer') throw new Error('fetchToken without a bearer challenge');
    const { realm, service } = this.scheme;
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
    const res = await this.tokenAnswer(method, url, headers, body, realm, signal);
    const { text } = res;
    if (res.status === 401 || res.status === 403) {
      throw new TokenRefused(`token server ${realm.host} refused the credentials for ${this.registry} (HTTP ${res.status}; ${this.credentials.description})`, res.status);
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
    // A token goes into a header: visible ASCII only (a line break in it would be refused on the wire, and retried as an outage).
    if (!token || token.length > 64 * 1024 || !/^[\x21-\x7e]+$/.test(token)) throw this.authError(`token server ${realm.host} sent no usable token`, false);
    registerSecret(token);
    const expiresIn = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : 60;
    // Refresh a little early so a token never expires in the middle of a request.
    const margin = Math.min(30, expiresIn * 0.1) * 1000;
    this.logger.debug({ registry: this.registry, scopes, expires_in: expiresIn }, 'registry token obtained');
    return { token, expiresAt: started + expiresIn * 1000 - margin, credential: cred };
  }

  /**
   * The token server's answer: its status and body. Asked again, with backoff as the registry
   * client asks again, when the request or its body breaks off (a reset, a chunked body cut short
   * or malformed) or the server answers 5xx / 429: a token stands before every request, and one
   * broken answer must not fail a copy. Gives up with the last problem once the attempts are spent.
   */
  private async tokenAnswer(method: 'GET' | 'POST', url: URL, headers: Record<string, string>, body: Uint8Array | undefined, realm: URL, signal: AbortSignal | undefined): Promise<{ status: number; text: string }> {
    for (let failures = 1; ; failures++) {
      let problem: FerryError;
      let asked = 0;
      try {
        const res = await this.transport.request({ method, url, headers, body, signal, followRedirects: true });
        const text = (await readBounded(res.body, MAX_TOKEN_RESPONSE, `token response from ${realm.host}`, this.side)).toString('utf8');
        if (res.status !== 429 && res.status < 500) return { status: res.status, text };
        problem = new FerryError('REGISTRY_UNAVAILABLE', `token server ${realm.host} answered HTTP ${res.status}`, { side: this.side, status: res.status, retryable: true });
        asked = parseRetryAfter(res.headers['retry-after']) ?? 0;
      } catch (e) {
        if (!(e instanceof NetworkError) || !e.retryable || signal?.aborted) throw e;
        problem = e;
      }
      if (failures >= this.retry.attempts || asked > this.retry.maxRetryAfterMs) throw problem;
      const delay = Math.max(asked, backoffDelay(this.retry, failures));
      this.logger.info({ registry: this.registry, err: problem.message, delay_ms: delay }, 'token request failed; retrying');
      await sleep(delay, signal);
    }
  }
}

/** The token server answered 401/403 to a credential (fetchToken turns it into the side's AUTH error). */
class TokenRefused extends Error {
  readonly status: number;
  constructor(message: string, status: number) {
    super(message);
    this.status = status;
  }
}

function sameSecret(a: Credential, b: Credential): boolean {
  if (a.kind === 'basic' && b.kind === 'basic') return a.username === b.username && a.password === b.password;
  if ((a.kind === 'bearer' || a.kind === 'identity-token') && a.kind === b.kind) return a.token === b.token;
  return a.kind === b.kind && a.kind === 'anonymous';
}

function isDue(c: Credential): boolean {
  return (c.kind === 'basic' || c.kind === 'bearer') && c.expiresAt !== undefined && Date.now() >= c.expiresAt;
}

export function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}
