// A real CNCF distribution registry (Debian's docker-registry, 2.8.x) per test: filesystem
// storage in a temp dir, deletes enabled, and anonymous, htpasswd or token auth; plain HTTP, or
// TLS served by distribution itself (http.tls) with a certificate from a test CA.
import bcrypt from 'bcryptjs';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './ports.ts';
import { findOnPath, makeTempDir, manageRegistry, readLog, startProcess, waitForRegistry, type RegistryHandle } from './process.ts';
import { startTokenServer, type TokenServer, type TokenServerOptions } from './token-server.ts';

export interface DistributionOptions {
  /** Default 'none'. */
  auth?: 'none' | 'htpasswd' | 'token';
  /** name → password. htpasswd users; for token auth, users granted everything unless `token` says otherwise. */
  users?: Record<string, string>;
  /** Token server settings (ACL, anonymous grants, lifetimes) when auth is 'token'. */
  token?: TokenServerOptions;
  /** Use this token server instead of starting one (it is then not stopped by stop()). */
  tokenServer?: TokenServer;
  /** Listen on this port (default: a free one). */
  port?: number;
  /** Use this storage directory, e.g. one shared with another registry (then not deleted by stop()). */
  storageDir?: string;
  /**
   * distribution signs upload `_state` with http.secret. Fixed by default so open uploads survive
   * restart(); null leaves it unset (random per start), as a misconfigured replica would.
   */
  httpSecret?: string | null;
  /**
   * Serve TLS (http.tls; distribution then offers HTTP/2 by ALPN) with this certificate and key
   * (PEM files), e.g. from makeTestPki. `host` names the registry in host and url (default
   * 127.0.0.1; the certificate must hold it, e.g. `localhost` or IP:127.0.0.1). The readiness
   * check trusts `caPath` when given; otherwise the caller's process must trust the CA.
   */
  tls?: { certPath: string; keyPath: string; caPath?: string; host?: string };
  /**
   * Run under `prlimit --fsize`: any file the registry writes stops at this many bytes, and the
   * write fails ("file too large"), as on a full disk: distribution answers that upload with 500.
   */
  fileSizeLimitBytes?: number;
}

export interface DistributionRegistry extends RegistryHandle {
  kind: 'distribution';
  auth: 'none' | 'htpasswd' | 'token';
  /** The token server, when auth is 'token'. */
  tokenServer?: TokenServer;
  /** Path of config.yml (for reading in a failing test). */
  configPath: string;
}

export const DISTRIBUTION_NOT_FOUND = 'docker-registry not found: run "apt-get install docker-registry" (or bash .ci/run)';

const FIXED_HTTP_SECRET = 'ferry-test-http-secret-fixed-so-uploads-survive-restart';

function q(s: string): string {
  return JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar
}

export async function startDistribution(opts: DistributionOptions = {}): Promise<DistributionRegistry> {
  const binary = findOnPath('docker-registry');
  if (!binary) throw new Error(DISTRIBUTION_NOT_FOUND);

  const auth = opts.auth ?? 'none';
  const users = opts.users ?? {};
  const temp = makeTempDir('distribution');
  const dir = temp.path;
  const storageDir = opts.storageDir ?? join(dir, 'storage');
  mkdirSync(storageDir, { recursive: true });
  const logFile = join(dir, 'registry.log');
  const configPath = join(dir, 'config.yml');
  const port = opts.port ?? (await freePort());
  const host = `${opts.tls?.host ?? '127.0.0.1'}:${port}`;
  const url = `${opts.tls ? 'https' : 'http'}://${host}`;

  let tokenServer: TokenServer | undefined;
  const ownsTokenServer = auth === 'token' && !opts.tokenServer;
  let authYaml = '';
  if (auth === 'htpasswd') {
    // bcrypt is the only scheme distribution's htpasswd accepts; cost 4 keeps startup fast.
    const lines = Object.entries(users).map(([name, pw]) => `${name}:${bcrypt.hashSync(pw, 4)}`);
    const htpasswd = join(dir, 'htpasswd');
    writeFileSync(htpasswd, lines.join('\n') + '\n');
    authYaml = `auth:\n  htpasswd:\n    realm: "ferry-test"\n    path: ${q(htpasswd)}\n`;
  } else if (auth === 'token') {
    tokenServer =
      opts.tokenServer ??
      (await startTokenServer({
        users: Object.fromEntries(Object.entries(users).map(([name, password]) => [name, { password, repos: { '*': ['*'] } }])),
        ...opts.token,
      }));
    authYaml =
      `auth:\n  token:\n    realm: ${q(tokenServer.realm)}\n    service: ${q(tokenServer.service)}\n` +
      `    issuer: ${q(tokenServer.issuer)}\n    rootcertbundle: ${q(tokenServer.certPath)}\n`;
  }

  const secret = opts.httpSecret === undefined ? FIXED_HTTP_SECRET : opts.httpSecret;
  const config =
    `version: 0.1\n` +
    `log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n` +
    `storage:\n  filesystem:\n    rootdirectory: ${q(storageDir)}\n  delete:\n    enabled: true\n` +
    // No background purge of upload sessions: tests decide when uploads die.
    `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
    `http:\n  addr: ${q(`127.0.0.1:${port}`)}\n` +
    (opts.tls ? `  tls:\n    certificate: ${q(opts.tls.certPath)}\n    key: ${q(opts.tls.keyPath)}\n` : '') +
    (secret === null ? '' : `  secret: ${q(secret)}\n`) +
    `  headers:\n    X-Content-Type-Options: [nosniff]\n` +
    authYaml;
  writeFileSync(configPath, config);

  const lifecycle = await manageRegistry(
    async () => {
      const proc =
        opts.fileSizeLimitBytes === undefined
          ? startProcess(binary, ['serve', configPath], { logFile, cwd: dir })
          : startProcess(findOnPath('prlimit') ?? 'prlimit', [`--fsize=${opts.fileSizeLimitBytes}`, binary, 'serve', configPath], { logFile, cwd: dir });
      await waitForRegistry(url, proc, logFile, undefined, opts.tls?.caPath);
      return proc;
    },
    async () => {
      if (ownsTokenServer) await tokenServer?.stop();
      // A caller-supplied storageDir lies outside the temp dir and is left alone.
      temp.remove();
    },
  );

  return {
    kind: 'distribution',
    auth,
    host,
    url,
    storageDir,
    configPath,
    ...(tokenServer ? { tokenServer } : {}),
    logs: () => readLog(logFile),
    ...lifecycle,
  };
}
