// Credentials from a docker `config.json`: inline `auths` entries, per-host `credHelpers` and the
// default `credsStore`, the latter two through the `docker-credential-<name>` helper protocol.
//
// Which file: an explicit path (`--authfile`), else `$DOCKER_CONFIG/config.json`, else
// `~/.docker/config.json`. A missing default file means "no credentials"; a missing explicit file,
// or any file that is not a valid docker config, is a UsageError naming the file.
//
// Lookup order for a registry (the first that applies wins):
//   1. `credHelpers[<registry>]`: that helper's answer is final, as in docker.
//   2. an `auths` entry for the registry with inline credentials (`identitytoken`, `registrytoken`,
//      `auth` or `username`/`password`).
//   3. `credsStore`, the default helper.
// Every secret learned is registered with the logger so it can never appear in a log line.
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { FerryError, UsageError, type ErrorCode, type Side } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { registerSecret } from '../log/logger.ts';
import type { Credential, CredentialProvider, CredentialRequest } from './credentials.ts';

export const DOCKER_HUB_REGISTRY = 'docker.io';
/** The key `docker login` writes for Docker Hub, and the server URL helpers know Hub by. */
export const DOCKER_HUB_AUTH_KEY = 'https://index.docker.io/v1/';
const DOCKER_HUB_HOSTS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** Most a credential helper may print before it is stopped. */
export const HELPER_MAX_OUTPUT_BYTES = 64 * 1024;
/** Longest a credential helper may take to answer. */
export const HELPER_TIMEOUT_MS = 10_000;

const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** One `auths` entry with credentials in it. */
export interface DockerAuthEntry {
  /** The key as written in the file, e.g. `https://index.docker.io/v1/` or `localhost:5000`. */
  key: string;
  username?: string;
  password?: string;
  identityToken?: string;
  registryToken?: string;
}

export interface DockerConfig {
  path: string;
  /** Normalized registry → entries keyed to it, in file order (empty `{}` entries included). */
  auths: Map<string, DockerAuthEntry[]>;
  /** Normalized registry → helper name (without the `docker-credential-` prefix). */
  credHelpers: Map<string, string>;
  credsStore?: string;
}

export interface DockerConfigOptions {
  /** `--authfile`: an explicit config file. Missing or malformed is a UsageError. */
  authFile?: string;
  /** How the explicit file was given, for messages. Default `--authfile`. */
  authFileSource?: string;
  /** Environment for DOCKER_CONFIG, HOME and the helpers' PATH. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Home directory for the default `~/.docker/config.json`. Default $HOME, else os.homedir(). */
  homeDir?: string;
  /** Which side of a copy these credentials are for: helper failures become that side's AUTH error. */
  side: Side;
  helperTimeoutMs?: number;
  helperMaxOutputBytes?: number;
  logger?: Logger;
}

/**
 * Normalize a registry as written in a docker config key or a reference: lowercase, no scheme, no
 * path, and every Docker Hub alias (`https://index.docker.io/v1/`, `index.docker.io`,
 * `registry-1.docker.io`) becomes `docker.io`.
 */
export function normalizeRegistryKey(key: string): string {
  let s = key.trim().toLowerCase();
  s = s.replace(/^[a-z][a-z0-9+.-]*:\/\//, '');
  const slash = s.indexOf('/');
  if (slash >= 0) s = s.slice(0, slash);
  if (DOCKER_HUB_HOSTS.has(s)) return DOCKER_HUB_REGISTRY;
  return s;
}

/** Which config file to read, and whether it was named explicitly. */
export function dockerConfigPath(opts: Pick<DockerConfigOptions, 'authFile' | 'env' | 'homeDir'> = {}): {
  path: string;
  explicit: boolean;
} {
  if (opts.authFile !== undefined && opts.authFile !== '') return { path: opts.authFile, explicit: true };
  const env = opts.env ?? process.env;
  const dir = env.DOCKER_CONFIG;
  if (dir) return { path: join(dir, 'config.json'), explicit: false };
  const home = opts.homeDir ?? (env.HOME || homedir());
  return { path: join(home, '.docker', 'config.json'), explicit: false };
}

/**
 * Parse and validate the text of a docker config file. Throws UsageError naming the file (and
 * the offending key, never a secret). Registers every secret found.
 */
export function parseDockerConfig(text: string, path: string): DockerConfig {
  const bad = (what: string): UsageError => new UsageError(`docker config "${path}" is malformed: ${what}`);
  let doc: unknown;
  try {
    doc = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (e) {
    // V8's message can quote a snippet of the file, which may hold a password: keep only where.
    const msg = (e as Error).message;
    const where = /(?:at )?position \d+(?: \(line \d+ column \d+\))?/.exec(msg)?.[0];
    throw bad(`not valid JSON${where ? ` (${where.startsWith('at ') ? where : `at ${where}`})` : ''}`);
  }
  if (!isObject(doc)) throw bad('the top level is not a JSON object');

  const config: DockerConfig = { path, auths: new Map(), credHelpers: new Map() };

  if (doc.auths !== undefined && doc.auths !== null) {
    if (!isObject(doc.auths)) throw bad('"auths" is not an object');
    for (const [key, raw] of Object.entries(doc.auths)) {
      if (raw === null) continue;
      if (!isObject(raw)) throw bad(`auths["${key}"] is not an object`);
      const entry = parseAuthEntry(key, raw, bad);
      const registry = normalizeRegistryKey(key);
      if (registry === '') throw bad(`auths key "${key}" names no registry`);
      const list = config.auths.get(registry) ?? [];
      list.push(entry);
      config.auths.set(registry, list);
    }
  }

  if (doc.credHelpers !== undefined && doc.credHelpers !== null) {
    if (!isObject(doc.credHelpers)) throw bad('"credHelpers" is not an object');
    for (const [key, helper] of Object.entries(doc.credHelpers)) {
      if (typeof helper !== 'string') throw bad(`credHelpers["${key}"] is not a string`);
      if (helper === '') continue;
      if (!HELPER_NAME.test(helper)) throw bad(`credHelpers["${key}"] names an invalid helper "${helper}"`);
      const registry = normalizeRegistryKey(key);
      if (!config.credHelpers.has(registry)) config.credHelpers.set(registry, helper);
    }
  }

  if (doc.credsStore !== undefined && doc.credsStore !== null) {
    if (typeof doc.credsStore !== 'string') throw bad('"credsStore" is not a string');
    if (doc.credsStore !== '') {
      if (!HELPER_NAME.test(doc.credsStore)) throw bad(`"credsStore" names an invalid helper "${doc.credsStore}"`);
      config.credsStore = doc.credsStore;
    }
  }
  return config;
}

function parseAuthEntry(key: string, raw: Record<string, unknown>, bad: (what: string) => UsageError): DockerAuthEntry {
  const str = (field: string): string | undefined => {
    const v = raw[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw bad(`auths["${key}"].${field} is not a string`);
    return v === '' ? undefined : v;
  };
  const entry: DockerAuthEntry = { key };
  const auth = str('auth');
  let username = str('username');
  let password = str('password');
  if (auth !== undefined) {
    registerSecret(auth);
    const b64 = auth.trim();
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw bad(`auths["${key}"].auth is not base64`);
    const decoded = Buffer.from(b64, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw bad(`auths["${key}"].auth does not decode to "username:password"`);
    username = decoded.slice(0, colon);
    password = decoded.slice(colon + 1);
  }
  if (password !== undefined) {
    registerSecret(password);
    registerSecret(Buffer.from(`${username ?? ''}:${password}`, 'utf8').toString('base64'));
  }
  if (username !== undefined) entry.username = username;
  if (password !== undefined) entry.password = password;
  const identityToken = str('identitytoken');
  if (identityToken !== undefined) {
    registerSecret(identityToken);
    entry.identityToken = identityToken;
  }
  const registryToken = str('registrytoken');
  if (registryToken !== undefined) {
    registerSecret(registryToken);
    entry.registryToken = registryToken;
  }
  return entry;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An entry's inline credential, or undefined when it has none (e.g. `{}` written next to a credsStore). */
export function entryCredential(e: DockerAuthEntry): Credential | undefined {
  if (e.identityToken !== undefined) return { kind: 'identity-token', token: e.identityToken };
  if (e.registryToken !== undefined) return { kind: 'bearer', token: e.registryToken };
  if (e.password !== undefined && e.username !== undefined && e.username !== '') {
    return { kind: 'basic', username: e.username, password: e.password };
  }
  return undefined;
}

/** The key docker would know this registry by: Hub's URL key, or the host itself. */
function preferredKey(registry: string): string {
  return registry === DOCKER_HUB_REGISTRY ? DOCKER_HUB_AUTH_KEY : registry;
}

export interface HelperOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  maxOutputBytes?: number;
  /** Where the helper was named, for messages: e.g. `credsStore in /home/u/.docker/config.json`. */
  origin?: string;
  /** Whose credentials: a failing helper is that side's AUTH error. */
  side: Side;
}

/**
 * Ask `docker-credential-<helper> get` for a server URL's credentials. Undefined when the helper
 * has none. Throws FerryError: USAGE when the program is not on PATH, the side's AUTH code when
 * it fails, times out, or answers nonsense.
 */
export async function runCredentialHelper(helper: string, serverURL: string, opts: HelperOptions): Promise<Credential | undefined> {
  const program = `docker-credential-${helper}`;
  const origin = opts.origin ? ` (named by ${opts.origin})` : '';
  const timeoutMs = opts.timeoutMs ?? HELPER_TIMEOUT_MS;
  const maxBytes = opts.maxOutputBytes ?? HELPER_MAX_OUTPUT_BYTES;
  const failCode: ErrorCode = opts.side === 'source' ? 'SOURCE_AUTH' : 'DESTINATION_AUTH';
  const fail = (what: string, cause?: unknown): FerryError =>
    new FerryError(failCode, `credential helper ${program}${origin} ${what}`, cause === undefined ? { side: opts.side } : { side: opts.side, cause });

  // Loaded only when a helper runs: child_process (and dgram with it) cost every start otherwise.
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    let settled = false;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let stdoutBytes = 0;
    let stderrBytes = 0;

    const child = spawn(program, ['get'], {
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      windowsHide: true,
    });
    const timer = setTimeout(() => {
      finish(() => reject(fail(`did not answer for ${serverURL} within ${Math.round(timeoutMs / 100) / 10} s`)));
    }, timeoutMs);

    function finish(settle: () => void): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.stdin?.destroy();
      settle();
    }

    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        finish(() =>
          reject(
            new FerryError(
              'USAGE',
              `credential helper ${program}${origin} is not on PATH: install ${program}, or remove it from the docker config (or pass credentials another way)`,
              { cause: e },
            ),
          ),
        );
      } else if (e.code === 'EACCES') {
        finish(() => reject(new FerryError('USAGE', `credential helper ${program}${origin} cannot be run (permission denied): make it executable`, { cause: e })));
      } else {
        finish(() => reject(fail(`could not be started: ${e.message}`, e)));
      }
    });
    child.stdout.on('data', (chunk: Buffer) => {
      stdoutBytes += chunk.byteLength;
      if (stdoutBytes > maxBytes) {
        finish(() => reject(fail(`printed more than ${maxBytes} bytes for ${serverURL}`)));
        return;
      }
      stdout.push(chunk);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (stderrBytes < maxBytes) stderr.push(chunk);
      stderrBytes += chunk.byteLength;
    });
    // The helper may exit without reading its input; that is its business, not an error here.
    child.stdin.on('error', () => {});
    child.stdin.end(serverURL);

    child.on('close', (code, signal) => {
      const out = Buffer.concat(stdout).toString('utf8').trim();
      if (code !== 0) {
        const errText = Buffer.concat(stderr).toString('utf8').trim();
        const said = [out, errText].filter((s) => s !== '').join(' / ');
        if (/credentials not found/i.test(said)) {
          finish(() => resolve(undefined));
          return;
        }
        const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        finish(() => reject(fail(`${how} for ${serverURL}${said ? `: ${truncate(said, 500)}` : ''}`)));
        return;
      }
      let doc: unknown;
      try {
        doc = JSON.parse(out);
      } catch {
        // Never quote the output: it may hold the secret.
        finish(() => reject(fail(`printed something that is not JSON for ${serverURL}`)));
        return;
      }
      if (!isObject(doc) || (doc.Secret !== undefined && typeof doc.Secret !== 'string') || (doc.Username !== undefined && typeof doc.Username !== 'string')) {
        finish(() => reject(fail(`printed JSON without string "Username" and "Secret" fields for ${serverURL}`)));
        return;
      }
      const username = (doc.Username as string | undefined) ?? '';
      const secret = (doc.Secret as string | undefined) ?? '';
      if (secret === '') {
        finish(() => resolve(undefined));
        return;
      }
      registerSecret(secret);
      if (username === '<token>') {
        finish(() => resolve({ kind: 'identity-token', token: secret }));
        return;
      }
      if (username === '') {
        finish(() => reject(fail(`returned a secret without a username for ${serverURL}`)));
        return;
      }
      registerSecret(Buffer.from(`${username}:${secret}`, 'utf8').toString('base64'));
      finish(() => resolve({ kind: 'basic', username, password: secret }));
    });
  });
}

function truncate(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n)}…`;
}

/** A CredentialProvider over a docker config file. The file is read once and cached; a refresh re-reads it. */
export class DockerConfigCredentials implements CredentialProvider {
  readonly description: string;
  readonly path: string;
  readonly explicit: boolean;
  private readonly opts: DockerConfigOptions;
  private loaded: Promise<DockerConfig | undefined> | undefined;
  private readonly helperCache = new Map<string, Promise<Credential | undefined>>();

  constructor(opts: DockerConfigOptions) {
    this.opts = opts;
    const where = dockerConfigPath(opts);
    this.path = where.path;
    this.explicit = where.explicit;
    this.description = `docker config ${this.path}`;
  }

  /** The parsed file, or undefined when the default file does not exist. */
  load(refresh = false): Promise<DockerConfig | undefined> {
    if (!this.loaded || refresh) {
      const p = this.read();
      this.loaded = p;
      // A failed read is not cached: the next call tries again (and fails the same way, or not).
      p.catch(() => {
        if (this.loaded === p) this.loaded = undefined;
      });
    }
    return this.loaded;
  }

  private async read(): Promise<DockerConfig | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const missing = code === 'ENOENT' || code === 'ENOTDIR';
      if (missing && !this.explicit) return undefined;
      const given = this.explicit ? ` (given by ${this.opts.authFileSource ?? '--authfile'})` : '';
      if (missing) throw new UsageError(`auth file "${this.path}"${given} does not exist`, { cause: e });
      throw new UsageError(`cannot read docker config "${this.path}"${given}: ${(e as Error).message}`, { cause: e });
    }
    const config = parseDockerConfig(text, this.path);
    this.opts.logger?.debug({ path: this.path, registries: [...config.auths.keys()] }, 'loaded docker config');
    return config;
  }

  async resolve(req: CredentialRequest): Promise<Credential | undefined> {
    const config = await this.load(req.refresh === true);
    if (!config) return undefined;
    const registry = normalizeRegistryKey(req.registry);
    const entries = config.auths.get(registry) ?? [];
    const want = preferredKey(registry);
    // The key docker login wrote wins over aliases; otherwise file order.
    const ordered = [...entries.filter((e) => e.key === want), ...entries.filter((e) => e.key !== want)];
    const serverURL = ordered[0]?.key ?? want;

    const helper = config.credHelpers.get(registry);
    if (helper !== undefined) {
      return this.fromHelper(helper, serverURL, `credHelpers["${registry}"] in ${config.path}`, req);
    }
    for (const e of ordered) {
      const c = entryCredential(e);
      if (c) {
        this.opts.logger?.debug({ registry, path: config.path, key: e.key, kind: c.kind }, 'credentials from docker config');
        return c;
      }
    }
    if (config.credsStore !== undefined) {
      return this.fromHelper(config.credsStore, serverURL, `credsStore in ${config.path}`, req);
    }
    return undefined;
  }

  private fromHelper(helper: string, serverURL: string, origin: string, req: CredentialRequest): Promise<Credential | undefined> {
    const cacheKey = `${helper}\u0000${serverURL}`;
    const cached = this.helperCache.get(cacheKey);
    if (cached && !req.refresh) return cached;
    const o: HelperOptions = { origin, side: this.opts.side };
    if (this.opts.env !== undefined) o.env = this.opts.env;
    if (this.opts.helperTimeoutMs !== undefined) o.timeoutMs = this.opts.helperTimeoutMs;
    if (this.opts.helperMaxOutputBytes !== undefined) o.maxOutputBytes = this.opts.helperMaxOutputBytes;
    const p = runCredentialHelper(helper, serverURL, o);
    this.helperCache.set(cacheKey, p);
    p.then(
      (c) => this.opts.logger?.debug({ registry: req.registry, helper, found: c !== undefined }, 'credential helper answered'),
      () => {
        if (this.helperCache.get(cacheKey) === p) this.helperCache.delete(cacheKey);
      },
    );
    return p;
  }
}
