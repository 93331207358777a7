// The training copy behind the single executable's code cache (scripts/sea-code-cache.ts).
//
// A V8 code cache holds the functions compiled by the time it is made. Made straight after the
// bundle is compiled, it holds the top level of each module and little else, so every function
// a copy runs (yargs' parser, the copy engine, the transport, the logger) is compiled from source
// at every start: ~40 ms of a small copy (docs/performance.md, ninth round). Made after the bundle
// has copied an image, it holds those too.
//
// The copy goes between two repositories of the registry below, on loopback, in memory: the least
// of the distribution API a copy uses (ping, manifests, blobs, monolithic and chunked uploads, a
// referrers API that is not there, as distribution 2.8 answers). It is build tooling, not a test
// double: nothing is checked against it, and a copy that fails fails the build.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

interface Stored {
  mediaType: string;
  body: Buffer;
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Deterministic filler: the bytes do not matter, only that they hash to their digest. */
function filler(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(String(seed)).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** A two-platform index whose images share a base layer: small and large blobs, an index and its manifests. */
function trainingImage(): { blobs: Buffer[]; manifests: Stored[]; index: Stored } {
  const base = filler(3 << 20, 1); // large enough to stream in many chunks
  const blobs: Buffer[] = [base];
  const manifests: Stored[] = [];
  for (const [i, arch] of ['amd64', 'arm64'].entries()) {
    const layers = [base, filler(96 << 10, 10 + i), filler(300 << 10, 20 + i)];
    const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha256) } }));
    blobs.push(config, ...layers.slice(1));
    const manifest = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(l), size: l.length })),
    };
    manifests.push({ mediaType: OCI_MANIFEST, body: Buffer.from(JSON.stringify(manifest)) });
  }
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: manifests.map((m, i) => ({ mediaType: m.mediaType, digest: sha256(m.body), size: m.body.length, platform: { os: 'linux', architecture: ['amd64', 'arm64'][i] } })),
  };
  return { blobs, manifests, index: { mediaType: OCI_INDEX, body: Buffer.from(JSON.stringify(index)) } };
}

class Repository {
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, Stored>(); // by digest and by tag
}

/** The in-memory registry. Every socket is unref'd: once the copy is done, nothing keeps the process alive. */
export class TrainingRegistry {
  private readonly repos = new Map<string, Repository>();
  private readonly uploads = new Map<string, { repo: string; parts: Buffer[] }>();
  private nextUpload = 0;
  private readonly server: Server;

  private constructor(server: Server) {
    this.server = server;
  }

  /** Starts it on loopback with `train/source:1`, a two-platform index. */
  static async start(): Promise<TrainingRegistry> {
    let registry: TrainingRegistry | undefined;
    const server = createServer((req, res) => {
      const body: Buffer[] = [];
      req.on('data', (c: Buffer) => body.push(c));
      req.on('end', () => registry!.handle(req, Buffer.concat(body), res));
    });
    server.on('connection', (socket) => socket.unref());
    registry = new TrainingRegistry(server);
    const image = trainingImage();
    const source = registry.repo('train/source');
    for (const b of image.blobs) source.blobs.set(sha256(b), b);
    for (const m of image.manifests) source.manifests.set(sha256(m.body), m);
    source.manifests.set(sha256(image.index.body), image.index);
    source.manifests.set('1', image.index);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    server.unref();
    return registry;
  }

  get host(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }

  private repo(name: string): Repository {
    let r = this.repos.get(name);
    if (!r) this.repos.set(name, (r = new Repository()));
    return r;
  }

  private handle(req: IncomingMessage, body: Buffer, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://registry');
    const path = url.pathname;
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    if (path === '/v2/' || path === '/v2') return send(res, 200, Buffer.from('{}'), 'application/json');
    const m = /^\/v2\/(.+)\/(manifests|blobs|referrers)\/([^/]+)$/.exec(path) ?? /^\/v2\/(.+)\/blobs\/(uploads)\/([^/]*)$/.exec(path);
    if (!m) return fail(res, 404, 'NAME_UNKNOWN');
    const [, name, kind, ref] = m as unknown as [string, string, string, string];
    const repo = this.repo(name);
    const head = req.method === 'HEAD';
    switch (`${req.method} ${kind}`) {
      case 'GET manifests':
      case 'HEAD manifests': {
        const stored = repo.manifests.get(ref);
        if (!stored) return fail(res, 404, 'MANIFEST_UNKNOWN');
        res.setHeader('Docker-Content-Digest', sha256(stored.body));
        return send(res, 200, stored.body, stored.mediaType, head);
      }
      case 'PUT manifests': {
        const stored = { mediaType: String(req.headers['content-type']), body };
        repo.manifests.set(sha256(body), stored);
        repo.manifests.set(ref, stored);
        res.setHeader('Docker-Content-Digest', sha256(body));
        res.setHeader('Location', `/v2/${name}/manifests/${sha256(body)}`);
        return send(res, 201);
      }
      case 'GET blobs':
      case 'HEAD blobs': {
        const blob = repo.blobs.get(ref);
        if (!blob) return fail(res, 404, 'BLOB_UNKNOWN');
        res.setHeader('Docker-Content-Digest', ref);
        return send(res, 200, blob, 'application/octet-stream', head);
      }
      case 'GET referrers':
        return fail(res, 404, 'NAME_UNKNOWN'); // distribution 2.8 has no referrers API
      case 'POST uploads': {
        const id = String(this.nextUpload++);
        this.uploads.set(id, { repo: name, parts: [] });
        return this.accepted(res, name, id, 0);
      }
      case 'PATCH uploads':
      case 'PUT uploads': {
        const upload = this.uploads.get(ref);
        if (!upload || upload.repo !== name) return fail(res, 404, 'BLOB_UPLOAD_UNKNOWN');
        upload.parts.push(body);
        const size = upload.parts.reduce((n, p) => n + p.length, 0);
        if (req.method === 'PATCH') return this.accepted(res, name, ref, size);
        const blob = Buffer.concat(upload.parts);
        const digest = url.searchParams.get('digest');
        if (digest !== sha256(blob)) return fail(res, 400, 'DIGEST_INVALID');
        this.uploads.delete(ref);
        repo.blobs.set(digest, blob);
        res.setHeader('Docker-Content-Digest', digest);
        res.setHeader('Location', `/v2/${name}/blobs/${digest}`);
        return send(res, 201);
      }
      default:
        return fail(res, 405, 'UNSUPPORTED');
    }
  }

  private accepted(res: ServerResponse, name: string, id: string, size: number): void {
    res.setHeader('Location', `/v2/${name}/blobs/uploads/${id}`);
    res.setHeader('Docker-Upload-UUID', id);
    res.setHeader('Range', `0-${Math.max(0, size - 1)}`);
    send(res, 202);
  }
}

function send(res: ServerResponse, status: number, body?: Buffer, type?: string, headOnly = false): void {
  res.statusCode = status;
  if (type) res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', body?.length ?? 0);
  res.end(headOnly ? undefined : body);
}

function fail(res: ServerResponse, status: number, code: string): void {
  send(res, status, Buffer.from(JSON.stringify({ errors: [{ code, message: code.toLowerCase().replace(/_/g, ' ') }] })), 'application/json');
}
