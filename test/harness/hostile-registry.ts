// A hostile registry: a small node:http(s) server that speaks just enough of the OCI
// distribution API to serve crafted content — manifests and blobs whose bytes do not match the
// digest asked for, a lying Docker-Content-Digest, oversized manifests, unknown media types,
// referrers responses that loop, token challenges whose realm points at a cloud metadata
// address or at plain HTTP, and blob downloads redirected to such places or to another host.
// As a destination it opens upload sessions with whatever Location a test gives it. Faults on
// the wire (`fault`): a chunked answer cut in the middle or with a malformed chunk size, on
// manifests and tokens alike; and interim answers (100 Continue, 103 Early Hints) before every
// answer about a repository (`interim`).
//
// It answers on two names per scheme, told apart by the Host header:
//   - the registry: `127.0.0.1:PORT` over HTTP, or `hostile-registry.test` over HTTPS;
//   - "another host" (a CDN a registry might redirect blob downloads to): `localhost:PORT`
//     over HTTP, `cdn.hostile-cdn.test` over HTTPS. It serves `/cdn/<repo>/<digest>` and records
//     every request's headers, so a test can check that no Authorization reached it.
// HTTPS names are reached through a CONNECT proxy (cloud-registry.ts: startConnectProxy) with a
// certificate from a test CA (makeTestPki): ferry runs its real TLS and proxy code.
//
// Every /v2/ request needs a bearer token from the registry's own token endpoint (`/token`,
// Basic auth with the registry's user and password), unless a repository overrides the realm,
// so every run exercises ferry's token path and has secrets to keep out of its logs. Tokens are
// random from the suite seed.
import { createHash } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { seededBytes, seedFor } from './seed.ts';

export const HOSTILE_HTTPS_NAME = 'hostile-registry.test';
export const HOSTILE_CDN_NAME = 'cdn.hostile-cdn.test';

export const OCI = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  empty: 'application/vnd.oci.empty.v1+json',
} as const;

/** Bytes with their digest: a blob or a manifest as a registry would store it. */
export interface Content {
  bytes: Buffer;
  digest: string;
  size: number;
  mediaType: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
  artifactType?: string;
}

export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function content(bytes: Buffer, mediaType: string): Content {
  return { bytes, digest: sha256(bytes), size: bytes.byteLength, mediaType };
}

/** A JSON document as exact bytes (as a manifest is stored and hashed). */
export function jsonContent(doc: unknown, mediaType: string): Content {
  return content(Buffer.from(JSON.stringify(doc)), mediaType);
}

export function descriptorOf(c: Content, extra: Partial<Descriptor> = {}): Descriptor {
  return { mediaType: c.mediaType, digest: c.digest, size: c.size, ...extra };
}

/** A single-platform image: config, layers and manifest, every byte from the suite seed and `label`. */
export interface Image {
  manifest: Content;
  config: Content;
  layers: Content[];
}

export interface ImageOptions {
  layers?: number;
  layerSize?: number;
  layerMediaType?: string;
  configMediaType?: string;
  manifestMediaType?: string;
  /** Extra top-level manifest fields (artifactType, subject, annotations). */
  extra?: Record<string, unknown>;
  platform?: { os: string; architecture: string };
}

export function makeImage(label: string, opts: ImageOptions = {}): Image {
  const platform = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const layers = Array.from({ length: opts.layers ?? 2 }, (_, i) => content(seededBytes(seedFor(`hostile/${label}/layer/${i}`), opts.layerSize ?? 4096 + i * 1000), opts.layerMediaType ?? OCI.layer));
  const config = jsonContent(
    { ...platform, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, config: { Labels: { 'hostile.label': label } } },
    opts.configMediaType ?? OCI.config,
  );
  const mediaType = opts.manifestMediaType ?? OCI.manifest;
  const manifest = jsonContent(
    { schemaVersion: 2, mediaType, config: descriptorOf(config), layers: layers.map((l) => descriptorOf(l)), ...opts.extra },
    mediaType,
  );
  return { manifest, config, layers };
}

/** An OCI index over `children` (descriptors as given). */
export function makeIndex(children: Descriptor[], extra: Record<string, unknown> = {}): Content {
  return jsonContent({ schemaVersion: 2, mediaType: OCI.index, manifests: children, ...extra }, OCI.index);
}

/** An OCI artifact (empty config, one payload layer) whose subject is `subject`. */
export function makeArtifact(label: string, subject: Descriptor, artifactType = 'application/vnd.example.sbom.v1+json'): { manifest: Content; blobs: Content[] } {
  const empty = content(Buffer.from('{}'), OCI.empty);
  const payload = content(seededBytes(seedFor(`hostile/${label}/artifact`), 512), 'application/vnd.example.payload.v1');
  const manifest = jsonContent(
    {
      schemaVersion: 2,
      mediaType: OCI.manifest,
      artifactType,
      config: descriptorOf(empty),
      layers: [descriptorOf(payload)],
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
      annotations: { 'hostile.label': label },
    },
    OCI.manifest,
  );
  return { manifest, blobs: [empty, payload] };
}

// ---------------------------------------------------------------------------------------------

/** How a manifest is served. */
export interface ServedManifest {
  /** The bytes sent, whatever digest was asked for. */
  bytes: Buffer;
  contentType: string;
  /** Docker-Content-Digest to send; default the true sha256 of `bytes`. */
  headerDigest?: string;
  /** Send no Content-Length (chunked), so only a bounded read can catch the size. */
  chunked?: boolean;
}

/** How a blob is served: bytes (whatever digest was asked for), or a redirect. */
export type ServedBlob = { bytes: Buffer } | { redirect: string };

/** Referrers API pages for one subject: each page links to the next; `loopTo` makes the last link back. */
export interface ServedReferrers {
  pages: Buffer[];
  /** The last page's Link points at this page (0-based) instead of ending. */
  loopTo?: number;
}

export class HostileRepo {
  readonly name: string;
  readonly manifests = new Map<string, ServedManifest>();
  readonly blobs = new Map<string, ServedBlob>();
  /** What the other host serves at `/cdn/<repo>/<digest>`. */
  readonly cdn = new Map<string, Buffer>();
  readonly referrers = new Map<string, ServedReferrers>();
  /** Referrers made up on the fly for any subject not in `referrers` (an endless chain). */
  dynamicReferrers: ((subject: string) => Content | undefined) | undefined;
  /** The token realm of this repository's challenges, instead of the registry's own `/token`. */
  realm: string | undefined;
  /** As a destination: the Location of every upload session opened here (POST /blobs/uploads/ → 202). */
  uploadLocation: string | undefined;
  /** Send 100 Continue and 103 Early Hints before every answer about this repository. */
  interim = false;
  /** Requests to this repository (method and path), in order. */
  readonly requests: Array<{ method: string; path: string }> = [];

  constructor(name: string) {
    this.name = name;
  }

  /** Serve `c` as a manifest under `ref` (a tag or a digest) with its true bytes. */
  manifest(ref: string, c: Content, opts: Partial<ServedManifest> = {}): this {
    this.manifests.set(ref, { bytes: c.bytes, contentType: c.mediaType, ...opts });
    return this;
  }

  blob(c: Content | { digest: string }, served?: ServedBlob): this {
    this.blobs.set(c.digest, served ?? { bytes: (c as Content).bytes });
    return this;
  }

  /** Redirect every blob of `img` to `base` + `/cdn/<repo>/<digest>?sig=…`, where the other host serves it. */
  redirectBlobs(img: Image, base: string): this {
    for (const b of [img.config, ...img.layers]) {
      this.cdn.set(b.digest, b.bytes);
      this.blob(b, { redirect: `${base}/cdn/${this.name}/${b.digest}?sig=presigned` });
    }
    return this;
  }

  /** A whole image: its blobs by digest, its manifest by digest and under `tag`. */
  image(img: Image, tag?: string): this {
    for (const b of [img.config, ...img.layers]) this.blob(b);
    this.manifest(img.manifest.digest, img.manifest);
    if (tag !== undefined) this.manifest(tag, img.manifest);
    return this;
  }
}

export interface HostileRequest {
  /** 'registry' or 'cdn' (the other host). */
  role: 'registry' | 'cdn';
  scheme: 'http' | 'https';
  host: string;
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
}

/** A broken answer on the wire, in place of a 200 the registry would have sent. */
export type WireFault =
  /** Chunked, the connection closed after part of the first chunk. */
  | 'cut-chunked'
  /** Chunked, with a chunk size that is not hex; the connection then stays open, silent. */
  | 'bad-chunk-size';

export interface FaultRule {
  kind: WireFault;
  /** Which answers: by method and path (with query). Only answers that would have been a 200 are broken. */
  match: (method: string, path: string) => boolean;
  /** How many answers to break; default every one. */
  times?: number;
}

export interface ActiveFault {
  /** Answers broken so far. */
  hits(): number;
  remove(): void;
}

export interface HostileRegistryOptions {
  /** Also listen with TLS (for `hostile-registry.test` and `cdn.hostile-cdn.test` through a proxy). */
  tls?: { cert: Buffer; key: Buffer };
}

export interface HostileRegistry {
  /** `127.0.0.1:PORT`: the registry over plain HTTP. */
  host: string;
  /** `localhost:PORT`: another host over plain HTTP (the same server, another name). */
  otherHost: string;
  /** The TLS listener's port, to route `hostile-registry.test:443` and `cdn.hostile-cdn.test:443` to. */
  tlsPort: number | undefined;
  user: string;
  password: string;
  /** Every bearer token the token endpoint issued. */
  readonly issuedTokens: string[];
  /** Every request, in order. */
  readonly requests: HostileRequest[];
  repo(name: string): HostileRepo;
  /** Break matching answers on the wire (tried in the order added). */
  fault(rule: FaultRule): ActiveFault;
  stop(): Promise<void>;
}

const V2 = /^\/v2\/(.+?)\/(manifests|blobs|referrers)\/([^/]+)$/;
const UPLOADS = /^\/v2\/(.+?)\/blobs\/uploads\/?$/;

export async function startHostileRegistry(opts: HostileRegistryOptions = {}): Promise<HostileRegistry> {
  const user = 'hostile-puller';
  const password = `pw-${seededBytes(seedFor('hostile/password'), 12).toString('hex')}`;
  const basic = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const issuedTokens: string[] = [];
  const valid = new Set<string>();
  const requests: HostileRequest[] = [];
  const repos = new Map<string, HostileRepo>();
  const faults: Array<FaultRule & { hits: number; removed: boolean }> = [];

  /** The fault to apply to this answer, if any (counted). */
  const faultFor = (method: string, path: string): WireFault | undefined => {
    const f = faults.find((x) => !x.removed && (x.times === undefined || x.hits < x.times) && x.match(method, path));
    if (!f) return undefined;
    f.hits += 1;
    return f.kind;
  };

  /** Write a broken chunked 200 straight to the socket (node:http would frame it correctly). */
  const breakAnswer = (res: ServerResponse, kind: WireFault, contentType: string, body: Buffer): void => {
    const socket = res.socket!;
    res.detachSocket(socket);
    const head = `HTTP/1.1 200 OK\r\ncontent-type: ${contentType}\r\ntransfer-encoding: chunked\r\n\r\n`;
    if (kind === 'cut-chunked') {
      const part = body.subarray(0, Math.max(1, Math.floor(body.byteLength / 2)));
      socket.write(`${head}${body.byteLength.toString(16)}\r\n`);
      socket.write(part, () => socket.destroy());
    } else {
      socket.write(`${head}zz\r\n`);
      socket.write(body);
    }
  };

  const handler = (scheme: 'http' | 'https') => (req: IncomingMessage, res: ServerResponse) => {
    const hostHeader = String(req.headers.host ?? '');
    const hostname = hostHeader.startsWith('[') ? hostHeader.slice(0, hostHeader.indexOf(']') + 1) : hostHeader.split(':')[0]!;
    const role: 'registry' | 'cdn' = hostname === 'localhost' || hostname === HOSTILE_CDN_NAME ? 'cdn' : 'registry';
    const url = new URL(req.url ?? '/', `${scheme}://${hostHeader || 'unknown'}`);
    requests.push({ role, scheme, host: hostHeader, method: req.method ?? 'GET', path: url.pathname + url.search, headers: req.headers });
    res.on('error', () => undefined);
    req.resume();
    const method = req.method ?? 'GET';
    const head = method === 'HEAD';

    if (role === 'cdn') {
      // /cdn/<repo>/<digest>: the blob's bytes, as a pre-signed CDN URL would serve them.
      const m = /^\/cdn\/(.+)\/(sha256:[0-9a-f]{64})$/.exec(url.pathname);
      const served = m ? repos.get(m[1]!)?.cdn.get(m[2]!) : undefined;
      if (!served) return end(res, 404, {}, 'not found');
      return end(res, 200, { 'content-type': 'application/octet-stream', 'content-length': String(served.byteLength) }, head ? undefined : served);
    }

    if (url.pathname === '/token') {
      if (req.headers.authorization !== basic) {
        return end(res, 401, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="hostile-token"' }, JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
      }
      const token = `hostile-token-${seededBytes(seedFor(`hostile/token/${issuedTokens.length}`), 18).toString('base64url')}`;
      issuedTokens.push(token);
      valid.add(token);
      const answer = Buffer.from(JSON.stringify({ token, expires_in: 300 }));
      const broken = faultFor(method, url.pathname + url.search);
      if (broken) return breakAnswer(res, broken, 'application/json', answer);
      return end(res, 200, { 'content-type': 'application/json' }, answer);
    }

    const m = V2.exec(url.pathname) ?? UPLOADS.exec(url.pathname);
    const repo = m ? repos.get(m[1]!) : undefined;
    repo?.requests.push({ method, path: url.pathname + url.search });
    const auth = req.headers.authorization;
    const authorized = typeof auth === 'string' && auth.startsWith('Bearer ') && valid.has(auth.slice(7));
    if (!authorized && url.pathname.startsWith('/v2/')) {
      const realm = repo?.realm ?? `${scheme}://${hostHeader}/token`;
      const scope = m ? `,scope="repository:${m[1]}:pull"` : '';
      return end(
        res,
        401,
        { 'content-type': 'application/json', 'www-authenticate': `Bearer realm="${realm}",service="hostile"${scope}` },
        head ? undefined : JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }),
      );
    }
    if (url.pathname === '/v2/' || url.pathname === '/v2') return end(res, 200, { 'content-type': 'application/json' }, '{}');
    if (!m || !repo) return notFound(res, 'NAME_UNKNOWN', head);
    if (repo.interim) {
      res.writeContinue();
      res.writeEarlyHints({ link: '</v2/>; rel=preconnect' });
    }
    if (UPLOADS.test(url.pathname)) {
      if (method !== 'POST' || repo.uploadLocation === undefined) return end(res, 405, {}, undefined);
      return end(res, 202, { location: repo.uploadLocation, range: '0-0', 'content-length': '0', 'docker-upload-uuid': 'hostile' }, undefined);
    }
    const [, , kind, ref] = m as unknown as [string, string, string, string];

    if (kind === 'manifests') {
      const served = repo.manifests.get(ref);
      if (!served) return notFound(res, 'MANIFEST_UNKNOWN', head);
      const headers: Record<string, string> = { 'content-type': served.contentType, 'docker-content-digest': served.headerDigest ?? sha256(served.bytes) };
      const broken = head ? undefined : faultFor(method, url.pathname + url.search);
      if (broken) return breakAnswer(res, broken, served.contentType, served.bytes);
      if (!served.chunked) headers['content-length'] = String(served.bytes.byteLength);
      if (head || !served.chunked) return end(res, 200, headers, head ? undefined : served.bytes);
      // Chunked: written in pieces, with no length up front.
      res.writeHead(200, headers);
      for (let at = 0; at < served.bytes.byteLength; at += 64 * 1024) res.write(served.bytes.subarray(at, at + 64 * 1024));
      res.end();
      return;
    }

    if (kind === 'blobs') {
      const served = repo.blobs.get(ref);
      if (!served) return notFound(res, 'BLOB_UNKNOWN', head);
      if ('redirect' in served) return end(res, 307, { location: served.redirect }, undefined);
      let bytes = served.bytes;
      let status = 200;
      const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'docker-content-digest': ref };
      const range = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ''));
      if (range && Number(range[1]) < bytes.byteLength) {
        const start = Number(range[1]);
        headers['content-range'] = `bytes ${start}-${bytes.byteLength - 1}/${bytes.byteLength}`;
        bytes = bytes.subarray(start);
        status = 206;
      }
      headers['content-length'] = String(bytes.byteLength);
      return end(res, status, headers, head ? undefined : bytes);
    }

    // referrers
    if (method !== 'GET') return end(res, 405, {}, undefined);
    const pages = repo.referrers.get(ref);
    let page: Buffer | undefined;
    let next: string | undefined;
    if (pages) {
      const n = Number(url.searchParams.get('page') ?? '0');
      page = pages.pages[n];
      // Page 0 is the bare path (as first asked for); page n > 0 is `?page=n`.
      const link = (k: number) => (k === 0 ? url.pathname : `${url.pathname}?page=${k}`);
      if (n + 1 < pages.pages.length) next = link(n + 1);
      else if (pages.loopTo !== undefined) next = link(pages.loopTo);
    } else {
      const made = repo.dynamicReferrers?.(ref);
      if (made) page = makeIndex([descriptorOf(made, { artifactType: 'application/vnd.example.chain.v1' })]).bytes;
    }
    if (!page) return notFound(res, 'NAME_UNKNOWN', false);
    const headers: Record<string, string> = { 'content-type': OCI.index, 'content-length': String(page.byteLength) };
    if (next) headers.link = `<${next}>; rel="next"`;
    return end(res, 200, headers, page);
  };

  const sockets = new Set<Socket>();
  const track = (server: Server) =>
    server.on('connection', (s: Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
  const http = track(createHttpServer(handler('http')));
  await listen(http);
  const port = (http.address() as AddressInfo).port;
  let https: Server | undefined;
  if (opts.tls) {
    https = track(createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handler('https')));
    https.on('secureConnection', (s: Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await listen(https);
  }

  return {
    host: `127.0.0.1:${port}`,
    otherHost: `localhost:${port}`,
    tlsPort: https ? (https.address() as AddressInfo).port : undefined,
    user,
    password,
    issuedTokens,
    requests,
    fault(rule) {
      const f = { ...rule, hits: 0, removed: false };
      faults.push(f);
      return {
        hits: () => f.hits,
        remove: () => {
          f.removed = true;
        },
      };
    },
    repo(name) {
      let r = repos.get(name);
      if (!r) {
        r = new HostileRepo(name);
        repos.set(name, r);
      }
      return r;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await Promise.all([http, https].filter((s): s is Server => s !== undefined).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    },
  };
}

function listen(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
}

function end(res: ServerResponse, status: number, headers: Record<string, string>, body: Buffer | string | undefined): void {
  res.writeHead(status, headers);
  res.end(body);
}

function notFound(res: ServerResponse, code: string, head: boolean): void {
  const body = JSON.stringify({ errors: [{ code, message: 'not found' }] });
  end(res, 404, { 'content-type': 'application/json' }, head ? undefined : body);
}
