// A minimal registry client, written independently of ferry's src/ so tests can seed registries
// and check what ferry wrote without trusting ferry's own code. Plain global fetch; auth is
// anonymous, Basic, or Docker token (Bearer) as the registry's 401 challenge asks.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';

export const MANIFEST_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

/** All four, always: distribution 404s without the OCI types and picks a child without the list type. */
export const MANIFEST_ACCEPT = Object.values(MANIFEST_TYPES).join(', ');

const INDEX_TYPES: readonly string[] = [MANIFEST_TYPES.ociIndex, MANIFEST_TYPES.dockerList];
const MANIFEST_MEDIA_TYPES: readonly string[] = Object.values(MANIFEST_TYPES);

export interface BlobRef {
  digest: string;
  size: number;
  mediaType?: string;
}

export interface ClientOptions {
  /** `host:port` of the registry (or of a fault proxy in front of it). */
  host: string;
  username?: string;
  password?: string;
  /** Default 'http' (every harness registry is plain HTTP on loopback). */
  scheme?: 'http' | 'https';
  /** Per-request timeout. Default 120 s. */
  timeoutMs?: number;
}

/** A non-success answer from a registry or token server. */
export class RegistryHttpError extends Error {
  readonly status: number;
  readonly method: string;
  readonly url: string;
  readonly body: string;
  /** `code`s of the registry's JSON error body, e.g. ['UNAUTHORIZED']. */
  readonly codes: string[];

  constructor(method: string, url: string, status: number, body: string) {
    super(`${method} ${url} → ${status}${body ? `: ${body.slice(0, 300)}` : ''}`);
    this.name = 'RegistryHttpError';
    this.method = method;
    this.url = url;
    this.status = status;
    this.body = body;
    this.codes = errorCodes(body);
  }
}

function errorCodes(body: string): string[] {
  try {
    const doc = JSON.parse(body) as { errors?: Array<{ code?: unknown }> };
    return (doc.errors ?? []).map((e) => String(e.code));
  } catch {
    return [];
  }
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse `WWW-Authenticate: Bearer realm="…",service="…",scope="a b"` (quoted values may hold commas). */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m?.[1]) return undefined;
  const params: Record<string, string> = {};
  const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
  const rest = m[2] ?? '';
  let p: RegExpExecArray | null;
  while ((p = re.exec(rest)) !== null && p[0].length > 0) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: m[1].toLowerCase(), params };
}

interface RequestOptions {
  /** Repository the request is about: decides the token scope. */
  repo?: string;
  /** Ask for push as well as pull. */
  push?: boolean;
  headers?: Record<string, string>;
  /** Bodies that can be re-sent after a 401 (Buffer/string). Streams go through `stream`. */
  body?: Uint8Array | string;
  /** A one-shot streaming body; not retried on 401, so authenticate first. */
  stream?: AsyncIterable<Uint8Array>;
  /** Accept these statuses without throwing (default: any 2xx). */
  ok?: number[];
}

export interface ManifestResult {
  /** The exact bytes the registry served. */
  bytes: Buffer;
  /** Content-Type of the response (without parameters). */
  mediaType: string;
  /** sha256 of `bytes`. */
  digest: string;
  /** The Docker-Content-Digest header, if sent. */
  headerDigest: string | undefined;
}

export interface VerifiedManifest {
  digest: string;
  mediaType: string;
  size: number;
}

export interface VerifiedImage {
  digest: string;
  mediaType: string;
  size: number;
  /** Every manifest reached, the root first (an index, then its children). */
  manifests: VerifiedManifest[];
  /** Every config and layer blob reached, each once, in walk order. */
  blobs: BlobRef[];
}

export class OciClient {
  readonly host: string;
  readonly base: string;
  private readonly username: string | undefined;
  private readonly password: string | undefined;
  private readonly timeoutMs: number;
  /** Authorization header per token scope ('' = registry-wide). */
  private readonly authByScope = new Map<string, string>();
  private useBasic = false;

  constructor(opts: ClientOptions) {
    this.host = opts.host;
    this.base = `${opts.scheme ?? 'http'}://${opts.host}`;
    this.username = opts.username;
    this.password = opts.password;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  /** `GET /v2/` with authentication; resolves with the status (200), throws on 401. */
  async ping(): Promise<number> {
    const res = await this.request('GET', '/v2/');
    await res.arrayBuffer();
    return res.status;
  }

  /**
   * One request with authentication: on a 401 the challenge is answered (Basic, or a token from
   * the realm) and a re-sendable request is sent once more. Throws RegistryHttpError unless the
   * status is 2xx or listed in `ok`.
   */
  async request(method: string, pathOrUrl: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(pathOrUrl, this.base).toString();
    const scope = opts.repo ? `repository:${opts.repo}:${opts.push ? 'pull,push' : 'pull'}` : '';
    const send = (): Promise<Response> => {
      const headers: Record<string, string> = { ...opts.headers };
      // Credentials only ever go to the registry's own origin.
      const auth = this.authFor(scope);
      if (auth && new URL(url).host === this.host) headers.authorization = auth;
      const init: RequestInit & { duplex?: 'half' } = { method, headers, signal: AbortSignal.timeout(this.timeoutMs) };
      if (opts.stream) {
        init.body = opts.stream as unknown as RequestInit['body'];
        init.duplex = 'half';
      } else if (opts.body !== undefined) {
        init.body = opts.body as RequestInit['body'];
      }
      return fetch(url, init);
    };

    let res = await send();
    if (res.status === 401 && !opts.stream) {
      const challenge = parseChallenge(res.headers.get('www-authenticate') ?? '');
      if (challenge && (await this.answer(challenge, scope))) {
        await res.arrayBuffer();
        res = await send();
      }
    }
    const accepted = opts.ok ?? [];
    if ((res.status < 200 || res.status > 299) && !accepted.includes(res.status)) {
      throw new RegistryHttpError(method, url, res.status, await res.text());
    }
    return res;
  }

  private authFor(scope: string): string | undefined {
    const cached = this.authByScope.get(scope);
    if (cached) return cached;
    if (this.useBasic) return this.basicHeader();
    return undefined;
  }

  private basicHeader(): string | undefined {
    if (this.username === undefined) return undefined;
    return `Basic ${Buffer.from(`${this.username}:${this.password ?? ''}`).toString('base64')}`;
  }

  /** Get credentials for a challenge; false if there is nothing new to try. */
  private async answer(challenge: Challenge, scope: string): Promise<boolean> {
    if (challenge.scheme === 'basic') {
      if (this.username === undefined || this.useBasic) return false;
      this.useBasic = true;
      return true;
    }
    if (challenge.scheme !== 'bearer' || !challenge.params.realm) return false;
    const realm = new URL(challenge.params.realm);
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    // Ask for our own scope and whatever the registry says it needed (they can differ, e.g. a mount).
    const scopes = new Set<string>();
    if (scope) scopes.add(scope);
    if (challenge.params.scope) scopes.add(challenge.params.scope);
    for (const s of scopes) realm.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    const basic = this.basicHeader();
    if (basic) headers.authorization = basic;
    const res = await fetch(realm, { headers, signal: AbortSignal.timeout(this.timeoutMs) });
    const text = await res.text();
    if (res.status !== 200) throw new RegistryHttpError('GET', realm.toString(), res.status, text);
    const doc = JSON.parse(text) as { token?: string; access_token?: string };
    const token = doc.token ?? doc.access_token;
    if (!token) throw new Error(`token server ${realm.origin} answered without a token`);
    this.authByScope.set(scope, `Bearer ${token}`);
    return true;
  }

  /** Forget cached tokens (e.g. to force a fresh token request). */
  clearTokens(): void {
    this.authByScope.clear();
  }

  async blobExists(repo: string, digest: string): Promise<boolean> {
    const res = await this.request('HEAD', `/v2/${repo}/blobs/${digest}`, { repo, ok: [404] });
    await res.arrayBuffer();
    return res.status === 200;
  }

  /** Start an upload session; returns the Location to use next and the chunk minimum if any. */
  private async startUpload(repo: string): Promise<{ location: string; minChunk: number }> {
    const res = await this.request('POST', `/v2/${repo}/blobs/uploads/`, { repo, push: true, headers: { 'content-length': '0' } });
    await res.arrayBuffer();
    if (res.status !== 202) throw new RegistryHttpError('POST', `/v2/${repo}/blobs/uploads/`, res.status, 'expected 202');
    return { location: this.location(res), minChunk: Number(res.headers.get('oci-chunk-min-length') ?? 0) };
  }

  private location(res: Response): string {
    const loc = res.headers.get('location');
    if (!loc) throw new Error(`${res.url} answered ${res.status} without a Location`);
    return new URL(loc, res.url).toString();
  }

  private withDigest(location: string, digest: string): string {
    const u = new URL(location);
    u.searchParams.set('digest', digest);
    return u.toString();
  }

  /** Monolithic upload (POST, then PUT with the whole body). Skips blobs already present. */
  async pushBlob(repo: string, bytes: Uint8Array, opts: { force?: boolean } = {}): Promise<BlobRef> {
    const ref = { digest: sha256Digest(bytes), size: bytes.byteLength };
    if (!opts.force && (await this.blobExists(repo, ref.digest))) return ref;
    const { location } = await this.startUpload(repo);
    const res = await this.request('PUT', this.withDigest(location, ref.digest), {
      repo,
      push: true,
      body: bytes,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes.byteLength) },
    });
    await res.arrayBuffer();
    if (res.status !== 201) throw new RegistryHttpError('PUT', location, res.status, 'expected 201');
    return ref;
  }

  /**
   * Chunked upload of a stream of unknown digest: PATCHes of `chunkSize` bytes (default 8 MiB,
   * raised to the registry's OCI-Chunk-Min-Length), then a PUT with the digest computed on the
   * way. Holds at most one chunk in memory.
   */
  async pushBlobStream(repo: string, source: Readable | AsyncIterable<Uint8Array>, opts: { chunkSize?: number } = {}): Promise<BlobRef> {
    let { location, minChunk } = await this.startUpload(repo);
    const chunkSize = Math.max(opts.chunkSize ?? 8 * 1024 * 1024, minChunk);
    const hash = createHash('sha256');
    const chunk = Buffer.allocUnsafe(chunkSize);
    let filled = 0;
    let offset = 0;

    const flush = async (): Promise<void> => {
      if (filled === 0) return;
      const body = chunk.subarray(0, filled);
      const res = await this.request('PATCH', location, {
        repo,
        push: true,
        body,
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(filled),
          'content-range': `${offset}-${offset + filled - 1}`,
        },
      });
      await res.arrayBuffer();
      location = this.location(res); // always the newest Location (distribution's _state changes)
      offset += filled;
      filled = 0;
    };

    for await (const piece of source as AsyncIterable<Uint8Array>) {
      hash.update(piece);
      let at = 0;
      while (at < piece.byteLength) {
        const n = Math.min(chunkSize - filled, piece.byteLength - at);
        chunk.set(piece.subarray(at, at + n), filled);
        filled += n;
        at += n;
        if (filled === chunkSize) await flush();
      }
    }
    await flush();
    const digest = `sha256:${hash.digest('hex')}`;
    const res = await this.request('PUT', this.withDigest(location, digest), { repo, push: true, body: Buffer.alloc(0), headers: { 'content-length': '0' } });
    await res.arrayBuffer();
    if (res.status !== 201) throw new RegistryHttpError('PUT', location, res.status, 'expected 201');
    return { digest, size: offset };
  }

  /** PUT a manifest under a tag or digest; returns the digest of the bytes (checked against the registry's). */
  async pushManifest(repo: string, ref: string, bytes: Uint8Array, mediaType: string): Promise<string> {
    const digest = sha256Digest(bytes);
    const res = await this.request('PUT', `/v2/${repo}/manifests/${ref}`, {
      repo,
      push: true,
      body: bytes,
      headers: { 'content-type': mediaType, 'content-length': String(bytes.byteLength) },
    });
    await res.arrayBuffer();
    const said = res.headers.get('docker-content-digest');
    if (said && said !== digest) throw new Error(`registry stored manifest ${repo}:${ref} as ${said}, but its bytes hash to ${digest}`);
    return digest;
  }

  async getManifest(repo: string, ref: string): Promise<ManifestResult> {
    const res = await this.request('GET', `/v2/${repo}/manifests/${ref}`, { repo, headers: { accept: MANIFEST_ACCEPT } });
    const bytes = Buffer.from(await res.arrayBuffer());
    return {
      bytes,
      mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(),
      digest: sha256Digest(bytes),
      headerDigest: res.headers.get('docker-content-digest') ?? undefined,
    };
  }

  /** HEAD a manifest: its digest, media type and size, or undefined when absent. */
  async headManifest(repo: string, ref: string): Promise<{ digest: string | undefined; mediaType: string; size: number } | undefined> {
    const res = await this.request('HEAD', `/v2/${repo}/manifests/${ref}`, { repo, headers: { accept: MANIFEST_ACCEPT }, ok: [404] });
    await res.arrayBuffer();
    if (res.status === 404) return undefined;
    return {
      digest: res.headers.get('docker-content-digest') ?? undefined,
      mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(),
      size: Number(res.headers.get('content-length') ?? -1),
    };
  }

  async deleteManifest(repo: string, digest: string): Promise<void> {
    const res = await this.request('DELETE', `/v2/${repo}/manifests/${digest}`, { repo, push: true, headers: { 'content-length': '0' } });
    await res.arrayBuffer();
  }

  /** A whole blob in memory (for configs and small test blobs). */
  async getBlob(repo: string, digest: string): Promise<Buffer> {
    const res = await this.request('GET', `/v2/${repo}/blobs/${digest}`, { repo });
    return Buffer.from(await res.arrayBuffer());
  }

  /** Download a blob, hashing it as it streams: the digest and size of what was actually served. */
  async getBlobDigest(repo: string, digest: string): Promise<{ digest: string; size: number }> {
    const res = await this.request('GET', `/v2/${repo}/blobs/${digest}`, { repo });
    const hash = createHash('sha256');
    let size = 0;
    if (res.body) {
      for await (const piece of res.body) {
        hash.update(piece);
        size += piece.byteLength;
      }
    }
    return { digest: `sha256:${hash.digest('hex')}`, size };
  }

  /** All tags of a repository (following `Link` pagination); [] when the repository is unknown. */
  async listTags(repo: string): Promise<string[]> {
    const tags: string[] = [];
    let next: string | undefined = `/v2/${repo}/tags/list`;
    while (next) {
      const res = await this.request('GET', next, { repo, ok: [404] });
      if (res.status === 404) {
        await res.arrayBuffer();
        return tags;
      }
      const doc = (await res.json()) as { tags?: string[] | null };
      tags.push(...(doc.tags ?? []));
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(res.headers.get('link') ?? '');
      next = link?.[1];
    }
    return tags;
  }

  /**
   * Check that `repo:ref` is complete and intact: fetch the manifest (and, for an index, every
   * child manifest), then download every config and layer blob and compare its sha256 and size
   * with the descriptor that names it. Throws on the first problem; returns what it checked.
   */
  async verifyImage(repo: string, ref: string): Promise<VerifiedImage> {
    const manifests: VerifiedManifest[] = [];
    const blobs = new Map<string, BlobRef>();

    const walk = async (reference: string, expected?: { digest: string; size: number; mediaType: string }): Promise<VerifiedManifest> => {
      const m = await this.getManifest(repo, reference);
      const where = `${repo}@${m.digest}`;
      if (reference.startsWith('sha256:') && m.digest !== reference) throw new Error(`manifest ${repo}@${reference} hashes to ${m.digest}`);
      if (m.headerDigest && m.headerDigest !== m.digest) throw new Error(`${where}: Docker-Content-Digest says ${m.headerDigest}`);
      if (expected && m.bytes.byteLength !== expected.size) {
        throw new Error(`${where}: ${m.bytes.byteLength} bytes, its descriptor says ${expected.size}`);
      }
      const doc = JSON.parse(m.bytes.toString('utf8')) as {
        mediaType?: string;
        manifests?: Array<{ digest: string; size: number; mediaType: string }>;
        config?: BlobRef;
        layers?: BlobRef[];
      };
      const mediaType = doc.mediaType ?? m.mediaType;
      if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw new Error(`${where}: unknown manifest media type ${mediaType}`);
      if (doc.mediaType && m.mediaType && doc.mediaType !== m.mediaType) {
        throw new Error(`${where}: served as ${m.mediaType} but declares ${doc.mediaType}`);
      }
      if (expected && expected.mediaType !== mediaType) throw new Error(`${where}: is ${mediaType}, its descriptor says ${expected.mediaType}`);
      const result = { digest: m.digest, mediaType, size: m.bytes.byteLength };
      manifests.push(result);

      if (INDEX_TYPES.includes(mediaType)) {
        if (!Array.isArray(doc.manifests)) throw new Error(`${where}: index without a manifests array`);
        for (const child of doc.manifests) await walk(child.digest, child);
        return result;
      }
      if (!doc.config) throw new Error(`${where}: image manifest without a config`);
      for (const desc of [doc.config, ...(doc.layers ?? [])]) {
        if (blobs.has(desc.digest)) continue;
        const got = await this.getBlobDigest(repo, desc.digest);
        if (got.digest !== desc.digest) throw new Error(`${where}: blob ${desc.digest} downloads as ${got.digest}`);
        if (got.size !== desc.size) throw new Error(`${where}: blob ${desc.digest} is ${got.size} bytes, its descriptor says ${desc.size}`);
        blobs.set(desc.digest, { digest: desc.digest, size: desc.size, ...(desc.mediaType ? { mediaType: desc.mediaType } : {}) });
      }
      return result;
    };

    const root = await walk(ref);
    return { ...root, manifests, blobs: [...blobs.values()] };
  }
}

/** Shorthand for `new OciClient(...)` with a registry handle's host. */
export function clientFor(registry: { host: string }, creds?: { username: string; password: string }): OciClient {
  return new OciClient({ host: registry.host, ...creds });
}
