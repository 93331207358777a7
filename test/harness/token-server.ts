// A real Docker token-auth server (the `auth: token` flow of distribution), so ferry's bearer
// handling is tested against distribution's own JWT checks instead of a mock.
//
// distribution verifies: `iss` is its configured issuer, `aud` is its service, exp/nbf (with a
// 60 s leeway), and an ES256 signature by the key of the x5c certificate, which must chain to
// `rootcertbundle`. Node cannot create X.509 certificates, so the `openssl` CLI makes the key and
// a self-signed certificate; Node signs the JWTs.
import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { makeTempDir } from './process.ts';

export type Action = 'pull' | 'push' | 'delete' | '*';

/** Repository patterns to actions. Patterns are globs where `*` matches anything, `/` included. */
export type RepoGrants = Record<string, Action[]>;

export interface TokenUser {
  password: string;
  repos: RepoGrants;
}

export interface TokenServerOptions {
  /** Users who authenticate with Basic credentials on the token request. */
  users?: Record<string, TokenUser>;
  /** What a request without credentials may get, e.g. `{ 'public/*': ['pull'] }`. Default nothing. */
  anonymous?: RepoGrants;
  /** `expires_in` in the response and, by default, the JWT lifetime (seconds). Default 300. */
  expiresIn?: number;
  /**
   * Seconds distribution will accept the token for. distribution adds a 60 s leeway to `exp`, so
   * the JWT gets `exp = now + registryValidFor - 60` (may lie in the past). Use it to test expiry
   * without waiting a minute. Default `expiresIn + 60` (i.e. exp = now + expiresIn).
   */
  registryValidFor?: number;
  /** JWT issuer; the registry config must name the same one. */
  issuer?: string;
  /** Audience used when a request names no `service`. */
  service?: string;
}

export interface GrantedAccess {
  type: 'repository';
  name: string;
  actions: string[];
}

export interface TokenRequestRecord {
  /** When it arrived (Date.now()). */
  at: number;
  /** The Basic user, or null for an anonymous request. */
  user: string | null;
  /** The Basic password presented (test secrets only), or null. */
  password: string | null;
  /** Why a 401 was answered: no such user, a wrong password, or one that has expired. */
  refused?: 'unknown' | 'expired';
  service: string | null;
  scopes: string[];
  status: number;
  granted: GrantedAccess[];
}

export interface TokenServer {
  /** Base URL, e.g. http://127.0.0.1:4321; the realm is `${url}/token`. */
  url: string;
  realm: string;
  issuer: string;
  service: string;
  /** PEM certificate to configure as distribution's `rootcertbundle`. */
  certPath: string;
  /** Every token request so far, oldest first. */
  requests: TokenRequestRecord[];
  /** Number of token requests so far. */
  count(): number;
  resetLog(): void;
  /** Change token lifetimes for later requests. */
  setExpiry(opts: { expiresIn?: number; registryValidFor?: number }): void;
  /**
   * Let `user` (one of `users`) also sign in with `password` until `expiresAt` (ms), alongside
   * the others it has: short-lived credentials such as a control plane hands out, a new one per call.
   */
  addPassword(user: string, password: string, expiresAt: number): void;
  /** Sign a token directly (for tests of the token itself). */
  issue(sub: string, service: string, access: GrantedAccess[]): string;
  stop(): Promise<void>;
}

/** distribution's clock-skew leeway on exp and nbf (registry/auth/token, 2.7 to 3.x). */
export const DISTRIBUTION_TOKEN_LEEWAY_SECONDS = 60;

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

function makeKeyAndCert(dir: string): { key: KeyObject; certPath: string; certDerB64: string } {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=ferry-test-token-issuer'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('openssl not found: run "apt-get install openssl" (or bash .ci/run)');
    throw new Error(`openssl could not make the token signing certificate: ${err.stderr?.toString() ?? err.message}`);
  }
  const key = createPrivateKey(readFileSync(keyPath));
  const certDerB64 = new X509Certificate(readFileSync(certPath)).raw.toString('base64');
  return { key, certPath, certDerB64 };
}

/**
 * Split `repository:<name>:<actions>`. Names may contain `:` (a `host:port` prefix), so the type
 * is up to the first colon and the actions after the last.
 */
export function parseScope(scope: string): { type: string; name: string; actions: string[] } | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first) return undefined;
  const type = scope.slice(0, first).replace(/\(.*\)$/, ''); // drop a resource class: repository(plugin)
  return { type, name: scope.slice(first + 1, last), actions: scope.slice(last + 1).split(',').filter(Boolean) };
}

function globToRegExp(pattern: string): RegExp {
  const body = pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${body}$`);
}

/** Actions from `requested` that `grants` allow on repository `name`. */
function allowedActions(grants: RepoGrants, name: string, requested: string[]): string[] {
  const allowed = new Set<string>();
  for (const [pattern, actions] of Object.entries(grants)) {
    if (globToRegExp(pattern).test(name)) for (const a of actions) allowed.add(a);
  }
  return requested.filter((a) => allowed.has('*') || allowed.has(a));
}

function parseBasic(header: string | undefined): { user: string; password: string } | undefined {
  const m = /^Basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m?.[1]) return undefined;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServer> {
  const temp = makeTempDir('token');
  let made: ReturnType<typeof makeKeyAndCert>;
  try {
    made = makeKeyAndCert(temp.path);
  } catch (e) {
    temp.remove();
    throw e;
  }
  const { key, certPath, certDerB64 } = made;
  const issuer = opts.issuer ?? 'ferry-test-token-server';
  const defaultService = opts.service ?? 'ferry-test-registry';
  const users = opts.users ?? {};
  const anonymous = opts.anonymous ?? {};
  let expiresIn = opts.expiresIn ?? 300;
  let registryValidFor = opts.registryValidFor;
  const requests: TokenRequestRecord[] = [];
  const extraPasswords = new Map<string, Array<{ password: string; expiresAt: number }>>();

  const issue = (sub: string, service: string, access: GrantedAccess[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const exp = registryValidFor === undefined ? now + expiresIn : now + registryValidFor - DISTRIBUTION_TOKEN_LEEWAY_SECONDS;
    const header = { typ: 'JWT', alg: 'ES256', x5c: [certDerB64] };
    const claims = { iss: issuer, sub, aud: service, exp, nbf: now, iat: now, jti: randomUUID(), access };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    // JWS ES256 wants the raw r||s signature, not DER.
    const signature = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
    return `${signingInput}.${b64url(signature)}`;
  };

  const reply = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
    res.end(text);
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://token.invalid');
    if (req.method !== 'GET' || url.pathname !== '/token') {
      reply(res, 404, { details: 'only GET /token is served' });
      return;
    }
    const service = url.searchParams.get('service');
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    const record: TokenRequestRecord = { at: Date.now(), user: null, password: null, service, scopes, status: 0, granted: [] };
    requests.push(record);

    let grants = anonymous;
    const basic = parseBasic(req.headers.authorization);
    if (req.headers.authorization !== undefined) {
      const user = basic ? users[basic.user] : undefined;
      record.user = basic?.user ?? null;
      record.password = basic?.password ?? null;
      const extra = basic ? extraPasswords.get(basic.user)?.find((p) => p.password === basic.password) : undefined;
      const live = extra !== undefined && Date.now() < extra.expiresAt;
      if (!basic || !user || (user.password !== basic.password && !live)) {
        record.status = 401;
        record.refused = extra !== undefined ? 'expired' : 'unknown';
        reply(res, 401, { details: 'incorrect username or password' }, { 'www-authenticate': 'Basic realm="ferry-test-token"' });
        return;
      }
      grants = user.repos;
    }

    // Grant the intersection of what was asked and what the ACL allows; a partial (or empty)
    // grant is still a 200, as with real token servers. The registry says 401 later.
    const byName = new Map<string, Set<string>>();
    for (const scope of scopes) {
      const parsed = parseScope(scope);
      if (!parsed || parsed.type !== 'repository') continue;
      const actions = allowedActions(grants, parsed.name, parsed.actions);
      if (actions.length === 0) continue;
      const set = byName.get(parsed.name) ?? new Set<string>();
      for (const a of actions) set.add(a);
      byName.set(parsed.name, set);
    }
    record.granted = [...byName].map(([name, actions]) => ({ type: 'repository' as const, name, actions: [...actions] }));
    const token = issue(record.user ?? 'anonymous', service ?? defaultService, record.granted);
    record.status = 200;
    reply(res, 200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() });
  };

  const server = createServer(handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    realm: `${url}/token`,
    issuer,
    service: defaultService,
    certPath,
    requests,
    count: () => requests.length,
    resetLog: () => void requests.splice(0),
    setExpiry(next) {
      if (next.expiresIn !== undefined) expiresIn = next.expiresIn;
      if ('registryValidFor' in next) registryValidFor = next.registryValidFor;
    },
    addPassword(user, password, expiresAt) {
      if (!users[user]) throw new Error(`addPassword: no user ${user}`);
      const list = extraPasswords.get(user) ?? [];
      list.push({ password, expiresAt });
      extraPasswords.set(user, list);
    },
    issue,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      temp.remove();
    },
  };
}
