// A small registry that follows the OCI distribution spec for blobs, uploads and manifests the
// way the spec's conformance suite checks them (conformance/02_push_test.go, "Blob Upload
// Chunked"), in the test process on loopback. It exists for the one path no registry that runs
// here implements: resuming an upload whose PATCH was cut mid-body. distribution 2.8 invalidates
// such a session, crane's registry has no upload status; this one, like distribution 3.x, keeps
// the bytes it did receive and reports them.
//
// Uploads (relative Locations `/v2/<name>/blobs/uploads/<id>`, stable for the session):
//   POST                       → 202 Location, Range 0-0, Blob-Upload-Session-ID (optionally
//                                 OCI-Chunk-Min-Length); ?mount=&from= → 201 when `from` holds
//                                 the blob; ?digest= with a body → 201 (monolithic POST)
//   PATCH Content-Range a-b    → 202 Location, Range 0-<end>; `a` must equal the bytes held,
//                                 else 416 with the current Range (the session stays as it was);
//                                 without Content-Range the body is appended (streamed upload)
//   GET                        → 204 Location, Range 0-<end> (also on an older Location)
//   PUT ?digest= [final chunk] → 201 Location /v2/<name>/blobs/<digest>; 400 DIGEST_INVALID on a
//                                 mismatch (the session is then cancelled)
//   DELETE                     → 204; unknown, finished or cancelled sessions → 404 BLOB_UPLOAD_UNKNOWN
// A request body cut mid-stream keeps what arrived: the next status GET reports it. Requests on
// one session are served one at a time, so a status GET answers only after a cut PATCH has
// stored everything it received. `Range` is written `0-<last byte>`, and `0-0` for an empty
// upload (as distribution does; the spec leaves the empty case open).
// Blobs: HEAD/GET (with `Range: bytes=a-b` → 206), DELETE → 202. Manifests: PUT/GET/HEAD/DELETE
// by tag or digest (blobs and child manifests must exist: 400 MANIFEST_BLOB_UNKNOWN; a PUT with
// If-Match is written only over the ETag `"<digest>"` named, else 412; a PUT of a manifest with a
// subject is answered with OCI-Subject), tags list, referrers (the referrers API, with artifactType
// and annotations). No auth.
//
// Stored on disk (blobs, open uploads) in a temp dir; manifests in memory. Every upload body
// byte read is counted, per session, with the first bytes of the session's data so a test can
// attribute sessions (also abandoned ones) to blobs: `receivedPerBlob()`.
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { createReadStream, mkdirSync } from 'node:fs';
import { open, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { makeTempDir } from './process.ts';

export interface SpecRegistryOptions {
  /** Sent as OCI-Chunk-Min-Length on POST (advisory, as in the spec). */
  minChunkLength?: number;
  /** Serve the referrers API (default true). Without it: 404 there and no OCI-Subject, as a registry from before distribution-spec 1.1. */
  referrersApi?: boolean;
}

export interface UploadSessionInfo {
  id: string;
  repository: string;
  /** Bytes the session holds (what its Range reports). */
  offset: number;
  /** Upload body bytes read for this session, including bodies refused with 416 and bytes of cut requests. */
  received: number;
  /** Requests whose body was cut before Content-Length bytes arrived (the bytes that did arrive are kept). */
  cutRequests: number;
  /**
   * Requests on the session being served or waiting for it. A client killed mid-PATCH leaves its
   * request running here until the kernel has handed over everything the client had written
   * (loopback socket buffers hold tens of MiB): the session's offset is final only at 0.
   */
  active: number;
  /** Hex of the session's first 32 bytes ('' while it holds fewer). */
  head: string;
  state: 'open' | 'committed' | 'cancelled' | 'failed';
  /** The committed digest. */
  digest?: string;
}

export interface LoggedRequest {
  method: string;
  path: string;
  status: number;
}

export interface SpecRegistry {
  kind: 'spec';
  /** `127.0.0.1:PORT`. */
  host: string;
  url: string;
  storageDir: string;
  /** Every request so far (status 0: the connection went away before an answer). */
  requests: LoggedRequest[];
  /** Upload body bytes read so far, over all sessions. */
  receivedTotal(): number;
  /** Call `fn` (synchronously, from the data handler) once `receivedTotal()` reaches `bytes`; returns a function that cancels it. */
  onReceived(bytes: number, fn: () => void): () => void;
  /** Every session opened so far, in order. */
  sessions(): UploadSessionInfo[];
  /**
   * Upload bytes received per committed blob: each session is attributed to the committed blob
   * whose first 32 bytes it began with, in the same repository (sessions that never held 32 bytes
   * are left out). Only sessions of `repository` when given.
   */
  receivedPerBlob(repository?: string): Map<string, { size: number; received: number; sessions: number; cutRequests: number }>;
  stop(): Promise<void>;
}

const HEAD_BYTES = 32;
/** A tapped body pauses its connection when this much is waiting to be written. */
const TAP_HIGH = 4 * 1024 * 1024;
const MAX_MANIFEST = 4 * 1024 * 1024;
const NAME = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*(?:\\/[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*)*';
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const ROUTES = {
  upload: new RegExp(`^/v2/(${NAME})/blobs/uploads/([^/]*)$`),
  blob: new RegExp(`^/v2/(${NAME})/blobs/([^/]+)$`),
  manifest: new RegExp(`^/v2/(${NAME})/manifests/([^/]+)$`),
  tags: new RegExp(`^/v2/(${NAME})/tags/list$`),
  referrers: new RegExp(`^/v2/(${NAME})/referrers/([^/]+)$`),
};
const INDEX_TYPES = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

interface Session extends UploadSessionInfo {
  file: string;
  fh: FileHandle | undefined;
  hash: Hash;
  headBuf: Buffer;
  /** Requests on a session run one at a time: each waits for the previous one's promise. */
  tail: Promise<void>;
}

interface BodyTap {
  /** The body's pieces in order; throws after the last piece that arrived when the body was cut. */
  pieces(): AsyncGenerator<Buffer, void, undefined>;
  /** Read the rest without keeping it (still counted). */
  drop(): void;
}

interface StoredManifest {
  bytes: Buffer;
  mediaType: string;
  digest: string;
  subject?: string;
  artifactType?: string;
  annotations?: Record<string, string>;
}

interface Repo {
  blobs: Set<string>;
  manifests: Map<string, StoredManifest>;
  tags: Map<string, string>;
}

class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  readonly headers: Record<string, string>;
  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

export async function startSpecRegistry(opts: SpecRegistryOptions = {}): Promise<SpecRegistry> {
  const referrersApi = opts.referrersApi ?? true;
  const temp = makeTempDir('spec-registry');
  const blobDir = join(temp.path, 'blobs');
  const uploadDir = join(temp.path, 'uploads');
  mkdirSync(blobDir, { recursive: true });
  mkdirSync(uploadDir, { recursive: true });
  const sessions = new Map<string, Session>();
  const history: Session[] = [];
  const blobSizes = new Map<string, number>();
  const repos = new Map<string, Repo>();
  const requests: LoggedRequest[] = [];
  const watchers: Array<{ bytes: number; fn: () => void }> = [];
  let received = 0;

  const repo = (name: string): Repo => {
    let r = repos.get(name);
    if (!r) {
      r = { blobs: new Set(), manifests: new Map(), tags: new Map() };
      repos.set(name, r);
    }
    return r;
  };
  const blobPath = (digest: string) => join(blobDir, digest.replace(':', '-'));
  const countReceived = (s: Session | undefined, n: number) => {
    received += n;
    if (s) s.received += n;
    for (let i = watchers.length - 1; i >= 0; i--) {
      const w = watchers[i]!;
      if (received >= w.bytes) {
        watchers.splice(i, 1);
        w.fn();
      }
    }
  };
  const uploadHeaders = (s: Session): Record<string, string> => ({
    location: `/v2/${s.repository}/blobs/uploads/${s.id}`,
    range: `0-${Math.max(0, s.offset - 1)}`,
    'blob-upload-session-id': s.id,
    'docker-upload-uuid': s.id,
  });

  const openSession = (name: string): Session => {
    const id = randomUUID();
    const s: Session = {
      id,
      repository: name,
      offset: 0,
      received: 0,
      cutRequests: 0,
      active: 0,
      head: '',
      state: 'open',
      file: join(uploadDir, id),
      fh: undefined,
      hash: createHash('sha256'),
      headBuf: Buffer.alloc(0),
      tail: Promise.resolve(),
    };
    sessions.set(id, s);
    history.push(s);
    return s;
  };

  const serialized = async <T>(s: Session, fn: () => Promise<T>): Promise<T> => {
    const before = s.tail;
    let release!: () => void;
    s.tail = new Promise<void>((r) => (release = r));
    s.active++;
    try {
      await before;
      return await fn();
    } finally {
      s.active--;
      release();
    }
  };

  /**
   * Read a request body from the moment the request arrives (before the handler waits for its
   * session or a file), so the bytes that came before a cut are never lost to a handler that was
   * still waiting: a closed connection discards what a stream had buffered but not yet handed out.
   */
  const tapBody = (req: IncomingMessage, s: Session | undefined): BodyTap => {
    const queue: Buffer[] = [];
    let queued = 0;
    let ended = false;
    let cut = false;
    let dropping = false;
    let wake: (() => void) | undefined;
    const poke = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    req.on('data', (piece: Buffer) => {
      countReceived(s, piece.byteLength);
      if (dropping) return;
      queue.push(piece);
      queued += piece.byteLength;
      if (queued >= TAP_HIGH) req.pause();
      poke();
    });
    req.on('end', () => {
      ended = true;
      poke();
    });
    req.on('error', () => {
      cut = true;
      poke();
    });
    req.on('close', () => {
      if (!ended) cut = true;
      poke();
    });
    return {
      drop() {
        dropping = true;
        queue.length = 0;
        queued = 0;
        req.resume();
      },
      async *pieces() {
        for (;;) {
          const piece = queue.shift();
          if (piece) {
            queued -= piece.byteLength;
            if (queued < TAP_HIGH / 2 && req.isPaused()) req.resume();
            yield piece;
            continue;
          }
          if (ended) return;
          if (cut) throw new Error('request body cut');
          await new Promise<void>((r) => (wake = r));
        }
      },
    };
  };

  /** Append the request body to the session; false when the body was cut (what arrived is kept). */
  const append = async (s: Session, body: BodyTap, expected: number | undefined): Promise<boolean> => {
    s.fh ??= await open(s.file, 'a');
    let got = 0;
    try {
      for await (const piece of body.pieces()) {
        await s.fh.write(piece);
        s.hash.update(piece);
        if (s.headBuf.byteLength < HEAD_BYTES) {
          s.headBuf = Buffer.concat([s.headBuf, piece.subarray(0, HEAD_BYTES - s.headBuf.byteLength)]);
          if (s.headBuf.byteLength === HEAD_BYTES) s.head = s.headBuf.toString('hex');
        }
        s.offset += piece.byteLength;
        got += piece.byteLength;
      }
    } catch {
      s.cutRequests++;
      return false;
    }
    if (expected !== undefined && got < expected) {
      s.cutRequests++;
      return false;
    }
    return true;
  };

  const closeSession = async (s: Session, state: Session['state']): Promise<void> => {
    s.state = state;
    sessions.delete(s.id);
    await s.fh?.close().catch(() => undefined);
    s.fh = undefined;
  };

  /** Read a request body to its end without keeping it, counting it for `s`. */
  const discard = (req: IncomingMessage, s?: Session) => {
    req.on('data', (piece: Buffer) => countReceived(s, piece.byteLength));
    req.resume();
  };

  const send = (res: ServerResponse, status: number, headers: Record<string, string | number> = {}, body?: Buffer | string) => {
    const h: Record<string, string | number> = { 'docker-distribution-api-version': 'registry/2.0', ...headers };
    if (body !== undefined) h['content-length'] = Buffer.byteLength(body);
    else h['content-length'] ??= 0;
    res.writeHead(status, h);
    res.end(body);
  };

  const readSmall = async (req: IncomingMessage, limit: number): Promise<Buffer> => {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const piece of req as AsyncIterable<Buffer>) {
      n += piece.byteLength;
      if (n > limit) throw new HttpError(413, 'MANIFEST_INVALID', `manifest larger than ${limit} bytes`);
      parts.push(piece);
    }
    return Buffer.concat(parts);
  };

  const commit = async (s: Session, digest: string | null): Promise<string> => {
    if (!digest || !DIGEST.test(digest)) {
      await cancel(s, 'failed');
      throw new HttpError(400, 'DIGEST_INVALID', `digest parameter ${JSON.stringify(digest)} is missing or not sha256:<64 hex>`);
    }
    const actual = `sha256:${s.hash.copy().digest('hex')}`;
    if (actual !== digest) {
      await cancel(s, 'failed');
      throw new HttpError(400, 'DIGEST_INVALID', `uploaded content hashes to ${actual}, not ${digest}`);
    }
    await s.fh?.close();
    s.fh = undefined;
    if (!blobSizes.has(digest)) {
      // An empty upload never created its file.
      if (s.offset === 0) await (await open(s.file, 'a')).close();
      await rename(s.file, blobPath(digest));
      blobSizes.set(digest, s.offset);
    } else {
      await unlink(s.file).catch(() => undefined);
    }
    repo(s.repository).blobs.add(digest);
    s.digest = digest;
    await closeSession(s, 'committed');
    return digest;
  };

  const cancel = async (s: Session, state: 'cancelled' | 'failed'): Promise<void> => {
    await closeSession(s, state);
    await unlink(s.file).catch(() => undefined);
  };

  const blobCreated = (res: ServerResponse, name: string, digest: string) =>
    send(res, 201, { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest });

  // ---- handlers ------------------------------------------------------------------------------

  const handleUpload = async (req: IncomingMessage, res: ServerResponse, url: URL, name: string, id: string): Promise<void> => {
    const method = req.method ?? 'GET';
    if (id === '') {
      if (method !== 'POST') throw new HttpError(405, 'UNSUPPORTED', `${method} on the uploads endpoint`);
      const mount = url.searchParams.get('mount');
      const from = url.searchParams.get('from');
      if (mount && from && repos.get(from)?.blobs.has(mount)) {
        discard(req);
        repo(name).blobs.add(mount);
        return blobCreated(res, name, mount);
      }
      const s = openSession(name);
      const digest = url.searchParams.get('digest');
      if (digest !== null && !mount) {
        // Monolithic POST: the body is the blob.
        const body = tapBody(req, s);
        return serialized(s, async () => {
          if (!(await append(s, body, contentLength(req)))) return;
          await commit(s, digest);
          blobCreated(res, name, digest);
        });
      }
      discard(req);
      const headers: Record<string, string> = uploadHeaders(s);
      if (opts.minChunkLength) headers['oci-chunk-min-length'] = String(opts.minChunkLength);
      return send(res, 202, headers);
    }

    const s = sessions.get(id);
    if (!s || s.repository !== name) {
      discard(req);
      throw new HttpError(404, 'BLOB_UPLOAD_UNKNOWN', `upload ${id} is unknown to ${name}`);
    }
    const body = method === 'PATCH' || method === 'PUT' ? tapBody(req, s) : undefined;
    await serialized(s, async () => {
      if (s.state !== 'open') {
        if (body) body.drop();
        else discard(req, s);
        throw new HttpError(404, 'BLOB_UPLOAD_UNKNOWN', `upload ${id} is no longer open`);
      }
      switch (method) {
        case 'GET':
          return send(res, 204, uploadHeaders(s));
        case 'DELETE':
          discard(req);
          await cancel(s, 'cancelled');
          return send(res, 204);
        case 'PATCH':
        case 'PUT': {
          if (!body) throw new Error('unreachable: no body tap for a PATCH or PUT');
          const length = contentLength(req);
          const range = req.headers['content-range'];
          if (range !== undefined) {
            const m = /^(\d+)-(\d+)$/.exec(range.trim());
            const start = m ? Number(m[1]) : NaN;
            const end = m ? Number(m[2]) : NaN;
            // Out of order, repeated, malformed or not matching the body: 416 with the session as it is.
            if (!m || start !== s.offset || end < start || (length !== undefined && length !== end - start + 1)) {
              body.drop();
              return send(res, 416, uploadHeaders(s));
            }
          }
          if (method === 'PATCH' && length === undefined && req.headers['transfer-encoding'] === undefined) {
            body.drop();
            throw new HttpError(400, 'SIZE_INVALID', 'PATCH without Content-Length or chunked body');
          }
          const complete = await append(s, body, length);
          if (!complete) return; // the client is gone; the bytes that arrived are kept
          if (method === 'PATCH') return send(res, 202, uploadHeaders(s));
          const digest = await commit(s, url.searchParams.get('digest'));
          return blobCreated(res, name, digest);
        }
        default:
          discard(req, s);
          throw new HttpError(405, 'UNSUPPORTED', `${method} on an upload`);
      }
    });
  };

  const handleBlob = async (req: IncomingMessage, res: ServerResponse, name: string, digest: string): Promise<void> => {
    discard(req);
    const method = req.method ?? 'GET';
    const r = repos.get(name);
    if (!DIGEST.test(digest)) throw new HttpError(400, 'DIGEST_INVALID', `${digest} is not sha256:<64 hex>`);
    const size = blobSizes.get(digest);
    if (!r?.blobs.has(digest) || size === undefined) throw new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest} is unknown to ${name}`);
    if (method === 'DELETE') {
      r.blobs.delete(digest);
      return send(res, 202);
    }
    if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'UNSUPPORTED', `${method} on a blob`);
    const base = { 'docker-content-digest': digest, 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', etag: `"${digest}"` };
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    if (range !== undefined) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && (m[1] !== '' || m[2] !== '')) {
        if (m[1] === '') {
          start = Math.max(0, size - Number(m[2]));
        } else {
          start = Number(m[1]);
          if (m[2] !== '') end = Math.min(end, Number(m[2]));
        }
        if (start >= size || start > end) throw new HttpError(416, 'BLOB_UNKNOWN', `range ${range} outside ${size} bytes`, { 'content-range': `bytes */${size}` });
        status = 206;
      }
    }
    const headers: Record<string, string | number> = { ...base, 'content-length': end - start + 1 };
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${size}`;
    res.writeHead(status, headers);
    if (method === 'HEAD' || size === 0) {
      res.end();
      return;
    }
    await new Promise<void>((resolve) => {
      const rs = createReadStream(blobPath(digest), { start, end });
      rs.on('error', () => {
        res.destroy();
        resolve();
      });
      res.on('close', () => {
        rs.destroy();
        resolve();
      });
      rs.pipe(res);
    });
  };

  const handleManifest = async (req: IncomingMessage, res: ServerResponse, name: string, ref: string): Promise<void> => {
    const method = req.method ?? 'GET';
    const isDigest = ref.includes(':');
    if (isDigest ? !DIGEST.test(ref) : !TAG.test(ref)) {
      discard(req);
      throw new HttpError(400, isDigest ? 'DIGEST_INVALID' : 'TAG_INVALID', `invalid reference ${ref}`);
    }
    if (method === 'PUT') {
      const bytes = await readSmall(req, MAX_MANIFEST);
      const mediaType = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      if (isDigest && digest !== ref) throw new HttpError(400, 'DIGEST_INVALID', `manifest hashes to ${digest}, not ${ref}`);
      let doc: {
        mediaType?: string;
        config?: { digest: string };
        layers?: Array<{ digest: string }>;
        manifests?: Array<{ digest: string }>;
        subject?: { digest: string };
        artifactType?: string;
      };
      try {
        doc = JSON.parse(bytes.toString('utf8'));
      } catch {
        throw new HttpError(400, 'MANIFEST_INVALID', 'manifest is not JSON');
      }
      if (typeof doc !== 'object' || doc === null) throw new HttpError(400, 'MANIFEST_INVALID', 'manifest is not a JSON object');
      if (!mediaType) throw new HttpError(400, 'MANIFEST_INVALID', 'Content-Type is required');
      if (doc.mediaType && doc.mediaType !== mediaType) throw new HttpError(400, 'MANIFEST_INVALID', `Content-Type ${mediaType} differs from the manifest's mediaType ${doc.mediaType}`);
      const r = repo(name);
      // Conditional writes (RFC 9110 If-Match), which the spec lets clients use on the referrers fallback tag.
      const ifMatch = req.headers['if-match'];
      if (ifMatch !== undefined) {
        const current = isDigest ? (r.manifests.has(ref) ? ref : undefined) : r.tags.get(ref);
        const tags = ifMatch.split(',').map((t) => t.trim());
        const matches = current !== undefined && (tags.includes('*') || tags.includes(`"${current}"`));
        if (!matches) {
          throw new HttpError(412, 'PRECONDITION_FAILED', `${ref} is ${current ?? 'absent'}, not ${ifMatch}`);
        }
      }
      const missing: string[] = [];
      if (INDEX_TYPES.includes(mediaType)) {
        for (const m of doc.manifests ?? []) if (!r.manifests.has(m.digest)) missing.push(m.digest);
      } else {
        for (const b of [...(doc.config ? [doc.config] : []), ...(doc.layers ?? [])]) if (!r.blobs.has(b.digest)) missing.push(b.digest);
      }
      if (missing.length) throw new HttpError(400, 'MANIFEST_BLOB_UNKNOWN', `unknown blobs or manifests: ${missing.join(', ')}`);
      const stored: StoredManifest = { bytes, mediaType, digest };
      if (doc.subject?.digest) stored.subject = doc.subject.digest;
      const artifactType = doc.artifactType ?? (doc.config as { mediaType?: string } | undefined)?.mediaType;
      if (artifactType) stored.artifactType = artifactType;
      const annotations = (doc as { annotations?: unknown }).annotations;
      if (annotations && typeof annotations === 'object' && Object.keys(annotations).length > 0) stored.annotations = annotations as Record<string, string>;
      r.manifests.set(digest, stored);
      if (!isDigest) r.tags.set(ref, digest);
      const headers: Record<string, string> = { location: `/v2/${name}/manifests/${digest}`, 'docker-content-digest': digest };
      if (stored.subject && referrersApi) headers['oci-subject'] = stored.subject;
      return send(res, 201, headers);
    }
    discard(req);
    const r = repos.get(name);
    const digest = isDigest ? ref : r?.tags.get(ref);
    const m = digest ? r?.manifests.get(digest) : undefined;
    if (!r || !m) throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${ref} is unknown to ${name}`);
    if (method === 'DELETE') {
      if (isDigest) {
        r.manifests.delete(ref);
        for (const [t, d] of r.tags) if (d === ref) r.tags.delete(t);
      } else {
        r.tags.delete(ref);
      }
      return send(res, 202);
    }
    if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'UNSUPPORTED', `${method} on a manifest`);
    res.writeHead(200, { 'content-type': m.mediaType, 'docker-content-digest': m.digest, 'content-length': m.bytes.byteLength, etag: `"${m.digest}"` });
    res.end(method === 'HEAD' ? undefined : m.bytes);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://registry.invalid');
    const path = url.pathname;
    let m: RegExpExecArray | null;
    if (path === '/v2/' || path === '/v2') {
      discard(req);
      return send(res, 200, { 'content-type': 'application/json' }, '{}');
    }
    if ((m = ROUTES.upload.exec(path))) return handleUpload(req, res, url, m[1]!, m[2]!);
    if ((m = ROUTES.blob.exec(path))) return handleBlob(req, res, m[1]!, decodeURIComponent(m[2]!));
    if ((m = ROUTES.manifest.exec(path))) return handleManifest(req, res, m[1]!, decodeURIComponent(m[2]!));
    if ((m = ROUTES.tags.exec(path))) {
      discard(req);
      const r = repos.get(m[1]!);
      if (!r) throw new HttpError(404, 'NAME_UNKNOWN', `repository ${m[1]} is unknown`);
      return send(res, 200, { 'content-type': 'application/json' }, JSON.stringify({ name: m[1], tags: [...r.tags.keys()].sort() }));
    }
    if ((m = ROUTES.referrers.exec(path)) && referrersApi) {
      discard(req);
      const subject = decodeURIComponent(m[2]!);
      if (!DIGEST.test(subject)) throw new HttpError(400, 'DIGEST_INVALID', `${subject} is not sha256:<64 hex>`);
      const wanted = url.searchParams.get('artifactType');
      const manifests = [...(repos.get(m[1]!)?.manifests.values() ?? [])]
        .filter((x) => x.subject === subject && (!wanted || x.artifactType === wanted))
        .map((x) => ({
          mediaType: x.mediaType,
          digest: x.digest,
          size: x.bytes.byteLength,
          ...(x.artifactType ? { artifactType: x.artifactType } : {}),
          ...(x.annotations ? { annotations: x.annotations } : {}),
        }));
      const body = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests });
      return send(res, 200, { 'content-type': 'application/vnd.oci.image.index.v1+json', ...(wanted ? { 'oci-filters-applied': 'artifactType' } : {}) }, body);
    }
    discard(req);
    throw new HttpError(404, 'NAME_UNKNOWN', `no route for ${req.method} ${path}`);
  };

  const server = createServer({ requestTimeout: 0, headersTimeout: 0, keepAliveTimeout: 30_000 }, (req, res) => {
    const entry: LoggedRequest = { method: req.method ?? 'GET', path: req.url ?? '/', status: 0 };
    requests.push(entry);
    res.on('finish', () => (entry.status = res.statusCode));
    handle(req, res).catch((e: unknown) => {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      if (e instanceof HttpError) {
        const body = JSON.stringify({ errors: [{ code: e.code, message: e.message }] });
        send(res, e.status, { 'content-type': 'application/json', ...e.headers }, body);
        return;
      }
      const body = JSON.stringify({ errors: [{ code: 'UNKNOWN', message: String((e as Error)?.message ?? e) }] });
      send(res, 500, { 'content-type': 'application/json' }, body);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;

  const info = (s: Session): UploadSessionInfo => {
    const out: UploadSessionInfo = {
      id: s.id,
      repository: s.repository,
      offset: s.offset,
      received: s.received,
      cutRequests: s.cutRequests,
      active: s.active,
      head: s.head,
      state: s.state,
    };
    if (s.digest) out.digest = s.digest;
    return out;
  };

  return {
    kind: 'spec',
    host,
    url: `http://${host}`,
    storageDir: temp.path,
    requests,
    receivedTotal: () => received,
    onReceived(bytes, fn) {
      if (received >= bytes) {
        fn();
        return () => undefined;
      }
      const w = { bytes, fn };
      watchers.push(w);
      return () => {
        const i = watchers.indexOf(w);
        if (i >= 0) watchers.splice(i, 1);
      };
    },
    sessions: () => history.map(info),
    receivedPerBlob(repository) {
      const byHead = new Map<string, { digest: string; size: number }>();
      for (const s of history) if (s.state === 'committed' && s.head && s.digest) byHead.set(`${s.repository}\n${s.head}`, { digest: s.digest, size: s.offset });
      const out = new Map<string, { size: number; received: number; sessions: number; cutRequests: number }>();
      for (const s of history) {
        const blob = byHead.get(`${s.repository}\n${s.head}`);
        if (!s.head || !blob || (repository !== undefined && s.repository !== repository)) continue;
        const row = out.get(blob.digest) ?? { size: blob.size, received: 0, sessions: 0, cutRequests: 0 };
        row.received += s.received;
        row.sessions += 1;
        row.cutRequests += s.cutRequests;
        out.set(blob.digest, row);
      }
      return out;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions.values()) await s.fh?.close().catch(() => undefined);
      await rm(temp.path, { recursive: true, force: true }).catch(() => undefined);
      temp.remove();
    },
  };
}

function contentLength(req: IncomingMessage): number | undefined {
  const v = req.headers['content-length'];
  if (v === undefined) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}
