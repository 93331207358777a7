// Credentials and where they come from. A CredentialProvider answers "what do I present to
// this registry host?"; providers are tried in order (a keychain) and the first answer wins.
// Cloud providers (ECR, Artifact Registry) and the control plane's one-time token exchange
// implement the same interface.

export type Credential =
  | { kind: 'anonymous' }
  | { kind: 'basic'; username: string; password: string; expiresAt?: number }
  /** A registry bearer token used as is (no token-server round trip). */
  | { kind: 'bearer'; token: string; expiresAt?: number }
  /** An OAuth2 refresh token for the registry's token server (docker config `identitytoken`). */
  | { kind: 'identity-token'; token: string };

export interface CredentialRequest {
  /** Registry host[:port] as named in the reference (e.g. `docker.io`, `localhost:5000`). */
  registry: string;
  /** Set when the registry rejected the previous answer: bypass caches and fetch anew. */
  refresh?: boolean;
  /**
   * With `refresh`: the credential that was refused, as this provider handed it out. A provider
   * that has renewed it since (for another request refused at the same time) may answer with
   * the newer one instead of renewing again.
   */
  rejected?: Credential;
}

export interface CredentialProvider {
  /** For logs and error messages: where the credential came from (never the secret). */
  readonly description: string;
  /** For a refusal's message: what the operator changes to give other credentials (e.g. "check --creds or --authfile"). */
  readonly hint?: string;
  /** Credentials for the registry, or undefined when this provider has none for it. */
  resolve(req: CredentialRequest): Promise<Credential | undefined>;
}

// `expiresAt` (epoch ms) on a short-lived credential (an ECR authorization token, a Google
// access token, the control plane's source credentials) tells its user to ask the provider
// again from that instant on; the provider renews it then (src/auth/renewal.ts says when).
// Without it, a credential is kept until the registry refuses it.

export const ANONYMOUS: Credential = { kind: 'anonymous' };

/** Try providers in order; the first that answers wins; anonymous if none does. */
export class Keychain implements CredentialProvider {
  readonly providers: CredentialProvider[];
  readonly hint: string | undefined;
  constructor(providers: CredentialProvider[], hint?: string) {
    this.providers = providers;
    this.hint = hint;
  }
  get description(): string {
    return this.providers.map((p) => p.description).join(', ') || 'anonymous';
  }
  async resolve(req: CredentialRequest): Promise<Credential> {
    for (const p of this.providers) {
      const c = await p.resolve(req);
      if (c) return c;
    }
    return ANONYMOUS;
  }
}

/** Fixed credentials for exactly one registry (from `--src-creds`, a plan, the agent's config). */
export class StaticCredentials implements CredentialProvider {
  readonly description: string;
  private readonly registry: string | undefined;
  private readonly credential: Credential;
  /** registry undefined: these credentials apply to whichever registry the copy side names. */
  constructor(credential: Credential, registry: string | undefined, description: string) {
    this.credential = credential;
    this.registry = registry;
    this.description = description;
  }
  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    if (this.registry !== undefined && this.registry !== req.registry) return undefined;
    return this.credential;
  }
}
