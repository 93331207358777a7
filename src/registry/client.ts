// The registry client: the OCI distribution API for one registry, seen from one side of a
// copy. Every request goes through `send`, which adds auth, retries what is safe to retry,
// and turns failures into FerryErrors blamed on the right side.
import { AbortedError, FerryError, NetworkError, RegistryError, type ErrorCode, type Side } from '../errors.ts';
import type { CredentialProvider } from '../auth/credentials.ts';
import type { Logger } from '../log/logger.ts';
import { formatTarget, registryEndpoint } from '../reference/reference.ts';
import { digestOf, isDigest, type Digest } from '../reference/digest.ts';
import { MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES } from '../oci/manifest.ts';
import type { Body, HttpResponse, HttpTransport } from '../transport/http.ts';
import { isBodyReader, type BodyReader, type UploadSink } from '../transport/raw-http.ts';
import { parseChallenges, repositoryScope } from '../transport/challenge.ts';
import { checkRedirectTarget, isMetadataOrLinkLocal, parseUrlFrom } from '../transport/address.ts';
import { DEFAULT_RETRY, backoffDelay, isRetryableStatus, parseRetryAfter, sleep, type RetryPolicy } from '../transport/retry.ts';
import { pullLimitExhausted } from '../transport/flow.ts';
import { RegistryAuth } from './auth.ts';
import { abortable } from '../util/abortable.ts';

import { drain, parseRegistryErrors, readBounded } from './body.ts';
import { cloudRegistryHint, credentialExpired, registryProfile, type RegistryProfile } from './profile.ts';

/** How long a session-opening POST may still take after its copy was cancelled (its session is then deleted). */
const POST_AFTER_CANCEL_MS = 15_000;

export interface RegistryClientOptions {
  /** Registry name as in references: `docker.io`, `localhost:5000`. */
  registry: string;
  transport: HttpTransport;
  credentials: CredentialProvider;
  side: Side;
  logger: Logger;
  retry?: RetryPolicy;
  /** Counts every request sent; the benchmark and the agent's metrics read it. */
  onRequest?: (method: string, path: string) => void;
}

export interface ManifestHead {
  digest: Digest | undefined;
  mediaType: string | undefined;
  size: number | undefined;
  /** For a write back that must not overwrite a change made since (If-Match). */
  etag?: string | undefined;
}

export interface FetchedManifest {
  bytes: Buffer;
  mediaType: string;
  digest: Digest;
}

export interface SendOptions {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path below the registry root (`/v2/...`) or an absolute URL (upload Locations). */
  path: string | URL;
  /** Token scopes this request needs. */
  scopes: string[];
  headers?: Record<string, string>;
  /** A Buffer can be re-sent on retry; a stream cannot, so a request with one is tried once. */
  body?: Body;
  signal?: AbortSignal | undefined;
  /** Statuses the caller handles itself (no error thrown, no retry). */
  accept: number[];
  /** What the request is about, for error messages. */
  what: string;
  followRedirects?: boolean;
}

/** An answer for `RegistryClient.judge`: its status and headers, and how to drop or read its body. */
interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  discard: () => Promise<unknown>;
  readText: () => Promise<Buffer>;
}

/** The attempt an answer is to: what was asked, with which credentials, how often already. */
interface Attempt {
  opts: Pick<SendOptions, 'method' | 'accept' | 'scopes' | 'what' | 'signal'>;
  authorization: string | undefined;
  /** Credential renewals so far for this request (shared by its attempts). */
  authAttempts: { count: number };
  /** The request can be sent again from here (no streamed body). */
  replayable: boolean;
  url: URL;
  /** Failed attempts so far. */
  failures: number;
}

export class RegistryClient {
  readonly registry: string;
  readonly side: Side;
  readonly profile: RegistryProfile;
  readonly logger: Logger;
  /** Where this client's credentials come from (the ECR layer-upload API finds the AWS identity here). */
  readonly credentials: CredentialProvider;
  private readonly transport: HttpTransport;
  private readonly auth: RegistryAuth;
  private readonly retry: RetryPolicy;
  private readonly onRequest: ((method: string, path: string) => void) | undefined;
  /** `host[:port]` of the registry's API. */
  private readonly endpoint: string;
  /** The API's URL once its scheme is settled (a loopback registry is asked whether it speaks TLS). */
  private settled: URL | undefined;
  private settling: Promise<URL> | undefined;

  constructor(opts: RegistryClientOptions) {
    this.registry = opts.registry;
    this.side = opts.side;
    this.transport = opts.transport;
    this.logger = opts.logger;
    this.retry = opts.retry ?? DEFAULT_RETRY;
    this.onRequest = opts.onRequest;
    this.credentials = opts.credentials;
    this.endpoint = registryEndpoint(opts.registry);
    this.profile = registryProfile(opts.registry);
    this.auth = new RegistryAuth({
      registry: opts.registry,
      registryUrl: () => this.baseUrl,
      transport: opts.transport,
      retry: this.retry,
      credentials: opts.credentials,
      side: opts.side,
      logger: opts.logger,
    });
  }

  /**
   * The registry API's root URL. Every request settles the scheme first (base()); before the
   * first one this is the scheme known without asking (plain HTTP for loopback).
   */
  get baseUrl(): URL {
    return this.settled ?? new URL(`${this.transport.schemeFor(this.endpoint)}://${this.endpoint}`);
  }

  /**
   * Open the connections this registry's transfers will need before they are asked for (the
   * transport's HTTP/2 sessions; for an HTTP/1.1 registry, idle connections), so that their
   * handshakes happen while the manifest is read, not when the blobs start.
   */
  warm(): void {
    this.base().then(
      (url) => this.transport.warm(url),
      () => undefined,
    );
  }

  /** The API's root URL, its scheme settled: for a loopback registry, HTTPS when it speaks TLS, else plain HTTP. */
  private base(): Promise<URL> {
    if (this.settled) return Promise.resolve(this.settled);
    this.settling ??= this.transport.resolveScheme(this.endpoint).then((probe) => {
      const url = new URL(`${probe.scheme}://${this.endpoint}`);
      this.settling = undefined;
      if (probe.decided) this.settled = url;
      if (probe.why !== 'not loopback') this.logger.debug({ registry: this.registry, scheme: probe.scheme, why: probe.why }, `speaking ${probe.scheme === 'https' ? 'HTTPS' : 'plain HTTP'} to ${this.registry}`);
      return url;
    });
    return this.settling;
  }

  // ---- manifests -------------------------------------------------------------------------

  /** HEAD a manifest (with its ETag, where the registry sends one); undefined when it does not exist. */
  async headManifest(repository: string, target: string, signal?: AbortSignal): Promise<ManifestHead | undefined> {
    const res = await this.readManifest('HEAD', repository, target, signal);
    await drain(res.body);
    if (res.status === 404) return undefined;
    const digest = header(res, 'docker-content-digest');
    const length = header(res, 'content-length');
    return {
      digest: digest && isDigest(digest) ? digest : undefined,
      mediaType: header(res, 'content-type')?.split(';')[0]?.trim(),
      size: length !== undefined ? Number(length) : undefined,
      etag: header(res, 'etag'),
    };
  }

  /** GET a manifest's exact bytes, bounded, and verify them when asked for by digest. */
  async getManifest(repository: string, target: string, signal?: AbortSignal): Promise<FetchedManifest | undefined> {
    const read = await this.readAgainIfCut(signal, () => this.readManifest('GET', repository, target, signal), async (res) => {
      if (res.status === 404) {
        await drain(res.body);
        return undefined;
      }
      const declaredLength = Number(header(res, 'content-length') ?? '0');
      if (declaredLength > MAX_MANIFEST_BYTES) {
        await drain(res.body);
        throw this.invalid(`manifest ${formatTarget(repository, target)} is ${declaredLength} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
      }
      return { res, bytes: await readBounded(res.body, MAX_MANIFEST_BYTES, `manifest ${formatTarget(repository, target)}`, this.side) };
    });
    if (!read) return undefined;
    const { res, bytes } = read;
    const mediaType = header(res, 'content-type')?.split(';')[0]?.trim() ?? '';
    const expected = isDigest(target) ? target : header(res, 'docker-content-digest');
    const algorithm = expected?.startsWith('sha512:') ? 'sha512' : 'sha256';
    const digest = digestOf(bytes, algorithm);
    if (expected && isDigest(expected) && expected !== digest) {
      throw new FerryError('DIGEST_MISMATCH', `manifest ${formatTarget(repository, target)} hashes to ${digest}, not ${expected}`, { side: this.side });
    }
    return { bytes, mediaType, digest };
  }

  /** GET or HEAD a manifest with the full Accept set; 404 is returned, not thrown. */
  private readManifest(method: 'GET' | 'HEAD', repository: string, target: string, signal: AbortSignal | undefined): Promise<HttpResponse> {
    return this.send({
      method,
      path: `/v2/${repository}/manifests/${target}`,
      // The destination side reads with push scope: its token then serves the writes that follow.
      scopes: [repositoryScope(repository, this.side === 'source' ? ['pull'] : ['pull', 'push'])],
      headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') },
      accept: [200, 404],
      what: `manifest ${formatTarget(repository, target)}`,
      signal,
    });
  }

  /** PUT exact manifest bytes under a tag or digest. Returns the digest the registry reports. */
  async putManifest(repository: string, target: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<Digest> {
    const res = await this.send({
      method: 'PUT',
      path: `/v2/${repository}/manifests/${target}`,
      scopes: [repositoryScope(repository, ['pull', 'push'])],
      headers: { 'content-type': mediaType },
      body: bytes,
      accept: [200, 201],
      what: `manifest ${formatTarget(repository, target)}`,
      signal,
    });
    await drain(res.body);
    const local = digestOf(bytes, target.startsWith('sha512:') ? 'sha512' : 'sha256');
    const reported = header(res, 'docker-content-digest');
    if (reported && isDigest(reported) && reported.split(':')[0] === local.split(':')[0] && reported !== local) {
      throw new FerryError('DESTINATION_REJECTED', `registry stored manifest ${formatTarget(repository, target)} as ${reported}, expected ${local}`, { side: this.side });
    }
    return local;
  }

  /** Referrers through the API; undefined when the registry has no referrers API (404). */
  async getReferrers(repository: string, digest: Digest, signal?: AbortSignal): Promise<Buffer[] | undefined> {
    const pages: Buffer[] = [];
    let path: string | URL = `/v2/${repository}/referrers/${digest}`;
    // A Link back to a page already read is a loop: say so rather than reading it 20 times.
    const visited = new Set<string>([new URL(path, await this.base()).href]);
    for (let page = 0; page < 20; page++) {
      const pagePath: string | URL = path;
      const ask = (): Promise<HttpResponse> =>
        this.send({
          method: 'GET',
          path: pagePath,
          scopes: [repositoryScope(repository, ['pull'])],
          headers: { accept: 'application/vnd.oci.image.index.v1+json' },
          accept: [200, 404, 400, 405],
          what: `referrers of ${repository}@${digest}`,
          signal,
        });
      const { res, bytes }: { res: HttpResponse; bytes: Buffer | undefined } = await this.readAgainIfCut(signal, ask, async (res) => {
        if (res.status !== 200) {
          await drain(res.body);
          return { res, bytes: undefined };
        }
        return { res, bytes: await readBounded(res.body, MAX_MANIFEST_BYTES, `referrers of ${repository}@${digest}`, this.side) };
      });
      if (!bytes) return page === 0 ? undefined : pages;
      const ct = header(res, 'content-type') ?? '';
      if (!ct.includes('application/vnd.oci.image.index.v1+json')) return page === 0 ? undefined : pages;
      pages.push(bytes);
      const next = nextLink(header(res, 'link'));
      if (!next) return pages;
      let nextUrl: URL;
      try {
        nextUrl = parseUrlFrom(next, res.url, 'referrers pagination Link');
        checkRedirectTarget(res.url, nextUrl, 'referrers pagination Link');
      } catch (e) {
        throw this.blame(e);
      }
      if (nextUrl.host !== res.url.host) throw this.invalid(`referrers pagination of ${repository} points at another host (${nextUrl.host})`);
      if (visited.has(nextUrl.href)) {
        throw this.invalid(`referrers pagination of ${repository}@${digest} loops: page ${page + 1} links back to ${nextUrl.pathname}${nextUrl.search}, a page already read`);
      }
      visited.add(nextUrl.href);
      path = nextUrl;
    }
    throw this.invalid(`referrers of ${repository}@${digest} span more than 20 pages`);
  }

  /**
   * PUT exact manifest bytes and report what the registry said about them: the digest, and the
   * `OCI-Subject` header a registry with the referrers API answers a manifest with a subject with.
   * With `ifMatch` the write is conditional: `precondition-failed` when the manifest changed since
   * that ETag was read (a registry without conditional requests ignores it and writes).
   */
  async pushManifest(
    repository: string,
    target: string,
    bytes: Buffer,
    mediaType: string,
    opts: { ifMatch?: string | undefined; signal?: AbortSignal | undefined } = {},
  ): Promise<{ digest: Digest; ociSubject: string | undefined } | 'precondition-failed'> {
    const headers: Record<string, string> = { 'content-type': mediaType };
    if (opts.ifMatch !== undefined) headers['if-match'] = opts.ifMatch;
    const res = await this.send({
      method: 'PUT',
      path: `/v2/${repository}/manifests/${target}`,
      scopes: [repositoryScope(repository, ['pull', 'push'])],
      headers,
      body: bytes,
      accept: opts.ifMatch !== undefined ? [200, 201, 412] : [200, 201],
      what: `manifest ${repository}:${target}`,
      signal: opts.signal,
    });
    await drain(res.body);
    if (res.status === 412) return 'precondition-failed';
    const local = digestOf(bytes, target.startsWith('sha512:') ? 'sha512' : 'sha256');
    const reported = header(res, 'docker-content-digest');
    if (reported && isDigest(reported) && reported.split(':')[0] === local.split(':')[0] && reported !== local) {
      throw new FerryError('DESTINATION_REJECTED', `registry stored manifest ${repository}:${target} as ${reported}, expected ${local}`, { side: this.side });
    }
    return { digest: local, ociSubject: header(res, 'oci-subject') };
  }

  /**
   * The repository's tags (`/tags/list`, 1000 a page, following `Link`). Undefined when the registry
   * will not list them (no such endpoint, or the credentials may read manifests but not list tags)
   * or they span more than `maxPages` pages: the caller then asks for the tags it wants one by one.
   */
  async listTags(repository: string, signal?: AbortSignal, maxPages = 5): Promise<string[] | undefined> {
    const tags: string[] = [];
    let path: string | URL = `/v2/${repository}/tags/list?n=1000`;
    const visited = new Set<string>();
    for (let page = 0; page < maxPages; page++) {
      const url = new URL(path, this.baseUrl);
      if (visited.has(url.href)) throw this.invalid(`tag list of ${repository} loops: page ${page + 1} links back to ${url.pathname}${url.search}`);
      visited.add(url.href);
      const res = await this.send({
        method: 'GET',
        path: url,
        scopes: [repositoryScope(repository, ['pull'])],
        headers: { accept: 'application/json' },
        accept: [200, 403, 404, 405],
        what: `tag list of ${repository}`,
        signal,
      });
      if (res.status !== 200) {
        await drain(res.body);
        return undefined;
      }
      const bytes = await readBounded(res.body, MAX_MANIFEST_BYTES, `tag list of ${repository}`, this.side);
      let doc: unknown;
      try {
        doc = JSON.parse(bytes.toString('utf8'));
      } catch {
        throw this.invalid(`tag list of ${repository} is not JSON`);
      }
      const list = (doc as { tags?: unknown } | null)?.tags;
      if (list !== null && list !== undefined && (!Array.isArray(list) || !list.every((t) => typeof t === 'string'))) {
        throw this.invalid(`tag list of ${repository} is not a list of strings`);
      }
      tags.push(...((list as string[] | null | undefined) ?? []));
      const next = nextLink(header(res, 'link'));
      if (!next) return tags;
      const nextUrl = new URL(next, res.url);
      if (nextUrl.host !== res.url.host) throw this.invalid(`tag list pagination of ${repository} points at another host (${nextUrl.host})`);
      path = nextUrl;
    }
    this.logger.debug({ repository, pages: maxPages }, 'tag list spans more pages than it is worth reading; asking for tags one by one');
    return undefined;
  }

  // ---- blobs -----------------------------------------------------------------------------

  /** HEAD a blob: its size when present, undefined when absent. */
  async headBlob(repository: string, digest: Digest, signal?: AbortSignal): Promise<number | undefined> {
    const res = await this.send({
      method: 'HEAD',
      path: `/v2/${repository}/blobs/${digest}`,
      scopes: [repositoryScope(repository, this.side === 'source' ? ['pull'] : ['pull', 'push'])],
      accept: [200, 404],
      what: `blob ${digest} in ${repository}`,
      signal,
    });
    await drain(res.body);
    if (res.status === 404) return undefined;
    const len = header(res, 'content-length');
    return len !== undefined ? Number(len) : -1;
  }

  /**
   * Open a blob for reading from `offset` (Range). Redirects (S3, CDNs) get no Authorization.
   * With the blob's `size` the range is closed (`bytes=N-LAST`): go-containerregistry's registry
   * answers an open one (`bytes=N-`) with 416.
   */
  async openBlob(repository: string, digest: Digest, offset: number, signal?: AbortSignal, size?: number): Promise<HttpResponse> {
    const headers: Record<string, string> = {};
    if (offset > 0) headers.range = size !== undefined && size > offset ? `bytes=${offset}-${size - 1}` : `bytes=${offset}-`;
    const res = await this.send({
      method: 'GET',
      path: `/v2/${repository}/blobs/${digest}`,
      scopes: [repositoryScope(repository, ['pull'])],
      headers,
      accept: offset > 0 ? [200, 206] : [200],
      what: `blob ${digest} in ${repository}`,
      signal,
    });
    if (offset > 0 && res.status === 200) {
      // The server ignored Range: the caller must skip the prefix itself.
      (res as HttpResponse & { ignoredRange?: boolean }).ignoredRange = true;
    }
    // A blob whose size is not what its descriptor says (1 TiB declared, 200 KB served) is the
    // source's fault, not a download to resume until the retries run out.
    const served = size === undefined ? undefined : res.status === 200 ? contentLength(res) : totalOfContentRange(header(res, 'content-range'));
    if (served !== undefined && served !== size) {
      res.body.destroy();
      throw this.invalid(`blob ${digest} in ${repository} is ${served} bytes at the registry, but its descriptor says ${size}; refusing to copy it`);
    }
    return res;
  }

  /**
   * The blob from `offset` on ferry's own connection (src/transport/raw-http.ts), to be piped
   * into another registry's upload. Undefined when that connection cannot be used or the answer
   * is not plainly the bytes asked for (a proxy, a refusal, an ignored Range, no
   * Content-Length): the caller then reads with openBlob, which handles every answer.
   */
  async openBlobRaw(repository: string, digest: Digest, offset: number, size: number, signal?: AbortSignal): Promise<BodyReader | undefined> {
    if (!this.transport.rawConnections() || offset >= size) return undefined;
    const scopes = [repositoryScope(repository, ['pull'])];
    const authorization = await this.authorization(scopes, signal);
    const url = new URL(`/v2/${repository}/blobs/${digest}`, await this.base());
    const headers: Record<string, string> = {};
    if (authorization) headers.authorization = authorization;
    if (offset > 0) headers.range = `bytes=${offset}-${size - 1}`;
    this.onRequest?.('GET', url.pathname);
    let r: Awaited<ReturnType<HttpTransport['openRawBody']>>;
    try {
      r = await this.transport.openRawBody({ url, headers }, signal);
    } catch (e) {
      if (signal?.aborted) throw this.blame(e);
      this.logger.debug({ digest, err: (e as Error).message }, 'direct read of the blob failed; reading it the regular way');
      return undefined;
    }
    if (!isBodyReader(r)) {
      this.logger.debug({ digest, answer: typeof r.declined === 'string' ? r.declined : r.declined.status }, 'blob not read directly; reading it the regular way');
      // A busy or failing registry: the regular read is its retry, so it waits as a retry would (Retry-After included).
      if (typeof r.declined !== 'string' && isRetryableStatus(r.declined.status)) {
        const retryAfter = parseRetryAfter(r.declined.headers['retry-after']);
        const asked = retryAfter !== undefined && retryAfter <= this.retry.maxRetryAfterMs ? retryAfter : 0;
        await sleep(Math.max(asked, backoffDelay(this.retry, 1)), signal);
      }
      return undefined;
    }
    if (r.head.status !== (offset > 0 ? 206 : 200) || r.remaining !== size - offset) {
      r.close();
      this.logger.debug({ digest, status: r.head.status, length: r.remaining }, 'blob answer not as asked; reading it the regular way');
      return undefined;
    }
    this.auth.noteAnonymousOk();
    return r;
  }

  // ---- uploads ---------------------------------------------------------------------------

  /**
   * Try to mount a blob from another repository of this registry. Returns true when mounted
   * (201); otherwise the session the registry opened instead (202) is cancelled and false
   * is returned.
   */
  async mountBlob(repository: string, digest: Digest, from: string, signal?: AbortSignal): Promise<boolean> {
    const res = await this.send({
      method: 'POST',
      path: `/v2/${repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
      scopes: [repositoryScope(repository, ['pull', 'push']), repositoryScope(from, ['pull'])],
      accept: [201, 202],
      what: `mount of ${digest} into ${repository}`,
      signal,
    });
    await drain(res.body);
    if (res.status === 201) return true;
    // The session the registry opened instead is deleted, if its Location passes the checks every Location gets.
    let session: URL | undefined;
    try {
      session = header(res, 'location') ? this.uploadLocation(res, repository) : undefined;
    } catch (e) {
      this.logger.debug({ err: (e as Error).message }, 'not deleting the upload session a refused mount opened');
    }
    if (session) await this.cancelUpload(repository, session);
    return false;
  }

  /** Open an upload session. */
  async startUpload(repository: string, signal?: AbortSignal): Promise<{ location: URL; minChunk: number }> {
    if (signal?.aborted) throw new AbortedError();
    // A cancel does not cut the POST: the registry may open the session all the same, and one whose
    // Location ferry never saw could not be deleted. The caller stops waiting at once; the session
    // is deleted when the answer comes (within POST_AFTER_CANCEL_MS, then the request is dropped).
    const deadline = new AbortController();
    const opened = this.send({
      method: 'POST',
      path: `/v2/${repository}/blobs/uploads/`,
      scopes: [repositoryScope(repository, ['pull', 'push'])],
      accept: [202],
      what: `upload to ${repository}`,
      signal: deadline.signal,
    }).then(async (res) => {
      await drain(res.body);
      return { location: this.uploadLocation(res, repository), minChunk: Number(header(res, 'oci-chunk-min-length') ?? '0') || 0 };
    });
    if (!signal) return opened;
    try {
      return await abortable(opened, signal);
    } catch (e) {
      if (signal.aborted) {
        setTimeout(() => deadline.abort(), POST_AFTER_CANCEL_MS).unref();
        this.transport.track(opened.then((session) => this.cancelUpload(repository, session.location)));
      }
      throw e;
    }
  }

  /** PATCH one chunk at `start`. Returns the new Location and the acknowledged end (exclusive). */
  async patchChunk(
    repository: string,
    location: URL,
    start: number,
    length: number,
    body: Body,
    signal?: AbortSignal,
  ): Promise<{ location: URL; acknowledged: number | undefined }> {
    const { url, headers, ...request } = uploadStep(repository, location, start, length, undefined);
    const res = await this.send({ ...request, path: url, headers: { ...headers, 'content-length': String(length) }, body, signal });
    await drain(res.body);
    return { location: this.uploadLocation(res, repository, location), acknowledged: rangeEnd(header(res, 'range')) };
  }

  /** Ask how much of an upload the registry holds: end offset (exclusive), or undefined when the session is gone or status is unsupported. */
  async uploadStatus(repository: string, location: URL, signal?: AbortSignal): Promise<{ offset: number; location: URL } | 'gone' | 'unsupported'> {
    const res = await this.send({
      method: 'GET',
      path: location,
      scopes: [repositoryScope(repository, ['pull', 'push'])],
      accept: [204, 200, 400, 404, 405, 416],
      what: `status of an upload to ${repository}`,
      signal,
    });
    await drain(res.body);
    if (res.status === 404) return 'gone';
    if (res.status !== 204 && res.status !== 200) return 'unsupported';
    const end = rangeEnd(header(res, 'range'));
    return { offset: end ?? 0, location: this.uploadLocation(res, repository, location) };
  }

  /** Commit an upload: PUT with `?digest=`, optionally carrying the last bytes. */
  async commitUpload(repository: string, location: URL, digest: Digest, body: Body, length: number, signal?: AbortSignal): Promise<void> {
    const { url, headers, ...request } = uploadStep(repository, location, 0, length, digest);
    const res = await this.send({
      ...request,
      path: url,
      headers: { ...headers, 'content-length': String(length) },
      body: length > 0 ? body : Buffer.alloc(0),
      signal,
    });
    await drain(res.body);
  }

  /** Is ferry's own connection (pipeUpload) available towards this registry? */
  canPipe(): boolean {
    return this.transport.rawConnections() !== undefined;
  }

  /**
   * The next `length` bytes of an upload on ferry's own connection, written by `bytes` (the
   * pipe from the source, src/ends/registry/blob-pipe.ts): a PATCH at `start`, or with `commit` the PUT
   * that ends the upload. Answers are judged as `send` judges them.
   */
  async pipeUpload(
    repository: string,
    location: URL,
    start: number,
    length: number,
    commit: Digest | undefined,
    bytes: { pipeInto(sink: UploadSink, length: number, signal?: AbortSignal): Promise<void> },
    signal?: AbortSignal,
  ): Promise<{ location: URL; acknowledged: number | undefined }> {
    const { method, url, headers, scopes, accept, what } = uploadStep(repository, location, start, length, commit);
    const authorization = await this.authorization(scopes, signal);
    if (authorization && url.host === this.baseUrl.host) headers.authorization = authorization;
    this.onRequest?.(method, url.pathname);
    let upload: UploadSink | undefined;
    try {
      upload = await this.transport.openRawUpload(method, { url, headers }, length, signal);
    } catch (e) {
      throw this.blame(e);
    }
    if (!upload) throw new FerryError('INTERNAL', 'ferry\'s own connections are off (a proxy is configured); pipeUpload must not be called');
    let answer: Awaited<ReturnType<UploadSink['response']>>;
    try {
      try {
        await bytes.pipeInto(upload, length, signal);
      } catch (e) {
        // A registry that answered before taking the whole body: its answer says why.
        if (!upload.hasAnswer || signal?.aborted) throw e;
      }
      answer = await upload.response(signal);
    } catch (e) {
      upload.close();
      throw this.blame(e);
    }
    const verdict = await this.judge(
      { status: answer.status, headers: answer.headers, discard: async () => undefined, readText: async () => answer.body },
      { opts: { method, accept, scopes, what, signal }, authorization, authAttempts: { count: 0 }, replayable: false, url, failures: 0 },
    );
    if (verdict !== 'accept') throw new FerryError('INTERNAL', `unexpected verdict on ${what}`);
    return { location: this.uploadLocation({ headers: answer.headers, url }, repository, location), acknowledged: rangeEnd(answer.headers.range) };
  }

  /** Cancel an upload session. Failures are ignored: the registry will expire it anyway. */
  async cancelUpload(repository: string, location: URL): Promise<void> {
    try {
      const res = await this.send({
        method: 'DELETE',
        path: location,
        scopes: [repositoryScope(repository, ['pull', 'push'])],
        accept: [200, 202, 204, 400, 404, 405],
        what: `cancel of an upload to ${repository}`,
      });
      if (res.status !== 404) return await drain(res.body);
      // distribution 2.8 refuses to delete a session whose stored bytes no longer match the
      // Location's state (a chunk cut mid-body, or one whose answer was lost): nothing can delete it then.
      const text = (await readBounded(res.body, 64 * 1024, `error body from ${this.registry}`, this.side)).toString('utf8');
      if (parseRegistryErrors(text).codes.includes('BLOB_UPLOAD_INVALID')) {
        this.logger.warn(
          { repository, location: location.pathname },
          'the registry refused to delete an upload session whose chunk was cut (BLOB_UPLOAD_INVALID); it keeps the partial upload until its own upload purging removes it (distribution: storage.maintenance.uploadpurging, by default after 7 days)',
        );
      }
    } catch (e) {
      this.logger.debug({ err: e }, 'upload cancel failed (ignored)');
    }
  }

  /**
   * Where an upload goes on, from the registry's Location. That is the registry's word, checked
   * before any connection or lookup as a redirect is: a URL, not at a link-local or metadata
   * address, not taking an HTTPS registry's bytes to plain HTTP.
   */
  private uploadLocation(res: Pick<HttpResponse, 'headers' | 'url'>, repository: string, previous?: URL): URL {
    const location = header(res, 'location');
    if (!location) {
      if (previous) return previous;
      throw new RegistryError('DESTINATION_REJECTED', `registry ${this.registry} opened an upload to ${repository} without a Location`, { side: this.side });
    }
    const refuse = (why: string) => this.invalid(`registry ${this.registry} gave the upload to ${repository} a Location ${why}; refusing`);
    let url: URL;
    try {
      url = new URL(location, res.url);
    } catch {
      throw refuse(`that is not a URL (${JSON.stringify(location.slice(0, 200))})`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw refuse(`with the unsupported scheme ${url.protocol}`);
    if (isMetadataOrLinkLocal(url.hostname)) throw refuse(`at a link-local/metadata address (${url.host})`);
    if (res.url.protocol === 'https:' && url.protocol === 'http:') {
      throw refuse(`over plain HTTP (${url.origin}) although the registry speaks HTTPS: the image's bytes would travel unencrypted`);
    }
    if (url.protocol === 'http:' && !this.transport.allowsPlainHttp(url.host)) {
      throw refuse(`at plain-HTTP host ${url.host}: only loopback and hosts named with --plain-http may use plain HTTP`);
    }
    return url;
  }

  // ---- the request path ------------------------------------------------------------------

  /**
   * `ask` (send a request), then `read` its answer's body; asked again when the body broke off:
   * a connection closed or reset in the middle, a chunked body cut short or malformed. `send`
   * retries what fails before the answer; this does the same, with the same policy, for what
   * fails after it. Anything else (a refusal, a size limit) is final.
   */
  private async readAgainIfCut<T>(signal: AbortSignal | undefined, ask: () => Promise<HttpResponse>, read: (res: HttpResponse) => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      const res = await ask();
      try {
        return await read(res);
      } catch (e) {
        const err = this.blame(e);
        if (!(err instanceof NetworkError) || !err.retryable || signal?.aborted || failures >= this.retry.attempts) throw err;
        const delay = backoffDelay(this.retry, failures);
        this.logger.info({ registry: this.registry, err: err.message, delay_ms: delay }, 'an answer broke off; asking again');
        await sleep(delay, signal);
      }
    }
  }

  /** Send a request with auth and retries; throws a FerryError for statuses not in `accept`. */
  async send(opts: SendOptions): Promise<HttpResponse> {
    const url = typeof opts.path === 'string' ? new URL(opts.path, await this.base()) : opts.path;
    const replayable = opts.body === undefined || opts.body instanceof Uint8Array;
    const authAttempts = { count: 0 };
    let failures = 0;
    for (;;) {
      const authorization = await this.authorization(opts.scopes, opts.signal ?? undefined);
      const headers: Record<string, string> = { ...opts.headers };
      // Upload Locations on another host (S3-backed registries) must not get our credentials.
      if (authorization && url.host === this.baseUrl.host) headers.authorization = authorization;
      this.onRequest?.(opts.method, url.pathname);
      let res: HttpResponse;
      try {
        res = await this.transport.request({
          method: opts.method,
          url,
          headers,
          body: opts.body,
          signal: opts.signal,
          followRedirects: opts.followRedirects,
        });
      } catch (e) {
        const err = this.blame(e);
        if (err.retryable && replayable && !opts.signal?.aborted && ++failures < this.retry.attempts) {
          const delay = backoffDelay(this.retry, failures);
          this.logger.debug({ what: opts.what, err: err.message, delay_ms: delay }, 'request failed; retrying');
          await sleep(delay, opts.signal ?? undefined);
          continue;
        }
        throw err;
      }

      const verdict = await this.judge(
        { status: res.status, headers: res.headers, discard: () => drain(res.body), readText: () => readBounded(res.body, 64 * 1024, `error body from ${this.registry}`, this.side) },
        { opts, authorization, authAttempts, replayable, url, failures },
      );
      if (verdict === 'accept') return res;
      if (verdict === 'again-auth') continue;
      failures++;
      await sleep(verdict.delay, opts.signal ?? undefined);
    }
  }

  /** The Authorization header for these scopes. Auth errors are blamed like transport errors: a refused token realm on the destination is the destination's fault. */
  private authorization(scopes: string[], signal: AbortSignal | undefined): Promise<string | undefined> {
    return this.auth.header(scopes, signal).catch((e: unknown) => {
      throw this.blame(e);
    });
  }

  /**
   * What an answer means: accepted, worth sending again (after renewed credentials, or after a
   * pause when the registry is busy), or a FerryError blamed on this side.
   */
  private async judge(answer: Answer, attempt: Attempt): Promise<'accept' | 'again-auth' | { delay: number }> {
    const { status, headers, discard, readText } = answer;
    const { opts, authorization, authAttempts, replayable, url, failures } = attempt;
    if (status === 401 && !opts.accept.includes(401)) {
      await discard();
      const challenges = parseChallenges(headers['www-authenticate']);
      const canRetry = await this.auth.onUnauthorized(challenges, opts.scopes, authorization, authAttempts.count++).catch((e: unknown) => {
        throw this.blame(e);
      });
      if (canRetry && replayable) return 'again-auth';
      const detail = challenges.find((c) => c.params.error)?.params.error;
      if (canRetry) throw this.restartWithRenewedCredentials(opts.what, 401);
      throw this.auth.authError(`${this.registry} refused ${opts.what} (HTTP 401${detail ? `, ${detail}` : ''})`, true);
    }
    if (opts.accept.includes(status)) {
      if (status < 300) this.auth.noteAnonymousOk();
      return 'accept';
    }

    const text = (await readText().catch(() => Buffer.alloc(0))).toString('utf8');
    const parsed = parseRegistryErrors(text);
    if (credentialExpired(this.profile, status, parsed)) {
      // ECR: an expired authorization token is a 403 without a challenge. Renew it and go again.
      const canRetry = await this.auth.onCredentialRejected(authorization, authAttempts.count++);
      if (canRetry && replayable) {
        this.logger.info({ what: opts.what }, 'registry said the credentials expired; renewed them');
        return 'again-auth';
      }
      if (canRetry) throw this.restartWithRenewedCredentials(opts.what, status);
      throw this.auth.authError(`${this.registry} refused ${opts.what}, also with renewed credentials: ${parsed.message}`, false, false, status);
    }
    // A pull limit that is used up frees up in hours: fail now, saying so, rather than retry.
    const exhausted = pullLimitExhausted(this.registry, status, headers, parsed.message);
    if (exhausted) throw this.blame(exhausted);
    if (isRetryableStatus(status)) {
      const retryAfter = parseRetryAfter(headers['retry-after']);
      const tooLong = retryAfter !== undefined && retryAfter > this.retry.maxRetryAfterMs;
      if (replayable && !tooLong && failures + 1 < this.retry.attempts) {
        // Retry-After also paused the host for every request (src/transport/flow.ts): this wait
        // runs alongside that pause, not after it, and the next attempt is admitted at the pace.
        const delay = Math.max(retryAfter ?? 0, backoffDelay(this.retry, failures + 1));
        // Throttling is logged once per registry by the flow controller, not once per answer.
        const level = status === 429 || (status === 503 && retryAfter !== undefined) ? 'debug' : 'info';
        this.logger[level]({ what: opts.what, status, delay_ms: delay }, 'registry busy or failing; retrying');
        return { delay };
      }
      const detail = parsed.message ? `: ${parsed.message}` : '';
      // A write the destination answered 500 (distribution's answer when its storage fails, a
      // full disk among them) did reach it: the registry failed to store it, and no network
      // check will help. Still retryable: a blob upload starts over, in case it was passing.
      const storeFailed = this.side === 'destination' && status === 500 && (opts.method === 'PUT' || opts.method === 'PATCH' || opts.method === 'POST');
      const unavailable = storeFailed
        ? new RegistryError(
            'DESTINATION_REJECTED',
            `${this.registry} failed to store the data: it answered HTTP 500 to ${opts.what}${detail}. The registry could not write what it was sent (a full disk, a quota, a failing storage backend): check its storage and its logs`,
            { side: this.side, status, registryCodes: parsed.codes, retryable: true },
          )
        : new RegistryError('REGISTRY_UNAVAILABLE', `${this.registry} answered HTTP ${status} to ${opts.what}${detail}`, {
            side: this.side,
            status,
            registryCodes: parsed.codes,
            retryable: true,
          });
      // A streamed body is retried by the caller (the blob uploader): it must wait as long too.
      if (retryAfter !== undefined && !tooLong) Object.assign(unavailable, { retryAfterMs: retryAfter });
      throw unavailable;
    }
    throw this.statusError(status, parsed, opts.what, url);
  }

  /**
   * A streamed body was refused for its credentials, which are now renewed. It cannot be sent
   * again from here: the error is retryable, and the caller (the blob uploader) starts that
   * transfer over, this time with the renewed credentials.
   */
  private restartWithRenewedCredentials(what: string, status: number): FerryError {
    this.logger.info({ what, status }, 'credentials refused during a streamed request; renewed them, the transfer starts again');
    return this.auth.authError(`${this.registry} refused ${what} (HTTP ${status}); credentials renewed, the transfer starts again`, false, true, status);
  }

  private statusError(status: number, parsed: { codes: string[]; message: string }, what: string, url?: URL): RegistryError {
    const err = this.genericStatusError(status, parsed, what);
    const hint = cloudRegistryHint(this.profile, { ...parsed, status, registry: this.registry, repository: url ? repositoryOf(url) : undefined, side: this.side });
    if (!hint) return err;
    return new RegistryError(err.code, `${err.message}: ${hint}`, { side: this.side, status, registryCodes: parsed.codes });
  }

  private genericStatusError(status: number, parsed: { codes: string[]; message: string }, what: string): RegistryError {
    const detail = parsed.message ? `: ${parsed.message}` : '';
    const src = this.side === 'source';
    let code: ErrorCode;
    let message = `${this.registry} answered HTTP ${status} to ${what}${detail}`;
    if (status === 403) {
      code = src ? 'SOURCE_AUTH' : 'DESTINATION_AUTH';
      message += src ? ' (the credentials lack pull access)' : ' (the credentials lack push access)';
    } else if (status === 404) {
      code = src ? 'SOURCE_NOT_FOUND' : 'DESTINATION_REJECTED';
      if (!src && parsed.codes.includes('NAME_UNKNOWN')) message += ' (the destination repository does not exist: create it first)';
    } else if (parsed.codes.includes('DIGEST_INVALID')) {
      code = 'DIGEST_MISMATCH';
    } else if (!src && parsed.codes.includes('TAG_INVALID') && /immutab/i.test(parsed.message)) {
      code = 'DESTINATION_REJECTED';
      message = `${this.registry} refused to overwrite an immutable tag (${what}): the repository has tag immutability on; push to a new tag or turn immutability off${detail}`;
    } else if (status === 413 || parsed.codes.includes('DENIED') || parsed.codes.includes('SIZE_INVALID')) {
      code = src ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED';
    } else if (status === 507) {
      code = src ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED';
      message += ' (HTTP 507 Insufficient Storage: the registry is out of storage; free space or raise its quota, then run the copy again)';
    } else {
      code = src ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED';
    }
    return new RegistryError(code, message, { side: this.side, status, registryCodes: parsed.codes });
  }

  private blame(e: unknown): FerryError {
    if (e instanceof FerryError) {
      if (e.side === undefined && e.code === 'SOURCE_INVALID' && this.side === 'destination') {
        return new FerryError('DESTINATION_REJECTED', e.message, { side: this.side, cause: e });
      }
      if (e.side === undefined) Object.defineProperty(e, 'side', { value: this.side });
      return e;
    }
    return new NetworkError(`${this.registry}: ${(e as Error).message}`, { side: this.side, cause: e });
  }

  private invalid(message: string): FerryError {
    return new FerryError(this.side === 'source' ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED', message, { side: this.side });
  }
}

/**
 * The request that moves bytes into an upload session: a PATCH of the chunk at `start`, or with
 * `commit` the PUT (`?digest=`) that ends the session. Shared by the undici path (patchChunk,
 * commitUpload) and ferry's own connection (pipeUpload), so both send and accept the same.
 */
function uploadStep(repository: string, location: URL, start: number, length: number, commit: Digest | undefined) {
  const url = new URL(location);
  if (commit) url.searchParams.set('digest', commit);
  const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
  if (!commit) headers['content-range'] = `${start}-${start + length - 1}`;
  return {
    method: commit ? ('PUT' as const) : ('PATCH' as const),
    url,
    headers,
    scopes: [repositoryScope(repository, ['pull', 'push'])],
    accept: commit ? [201, 204] : [201, 202, 204],
    what: commit ? `commit of ${commit} to ${repository}` : `chunk ${start}-${start + length - 1} of an upload to ${repository}`,
  };
}

/** The repository a registry API URL names: `/v2/<name>/blobs/…` → `<name>`. */
function repositoryOf(url: URL): string | undefined {
  const m = /^\/v2\/(.+?)\/(?:manifests|blobs|tags|referrers)\//.exec(url.pathname);
  return m?.[1];
}

function header(res: Pick<HttpResponse, 'headers'>, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** `Range: 0-1023` → 1024 (exclusive end). Some registries write `bytes=0-1023`. */
export function rangeEnd(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const m = /^(?:bytes[= ])?(\d+)-(\d+)$/.exec(value.trim());
  if (!m) return undefined;
  // distribution writes `0-0` for an empty upload; a 1-byte upload is indistinguishable, and
  // assuming empty only costs re-sending one byte.
  if (m[1] === '0' && m[2] === '0') return 0;
  return Number(m[2]) + 1;
}

/** A Content-Length that is one plain integer, else undefined. */
function contentLength(res: Pick<HttpResponse, 'headers'>): number | undefined {
  const v = header(res, 'content-length');
  return v !== undefined && /^\d{1,16}$/.test(v) ? Number(v) : undefined;
}

/** `bytes 100-199/1000` → 1000; undefined when absent, `*` or malformed. */
function totalOfContentRange(value: string | undefined): number | undefined {
  const m = value ? /^bytes \d+-\d+\/(\d{1,16})$/.exec(value.trim()) : null;
  return m ? Number(m[1]) : undefined;
}

/** `<url>; rel="next"` from a Link header. */
function nextLink(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const m = /<([^>]+)>\s*;\s*rel="?next"?/.exec(value);
  return m?.[1];
}
