// The floor of a copier in Node: about the least a Node program can do to copy one image between
// two plain-HTTP registries. The benchmark runs it as tool `node-floor` beside ferry and the peers
// (on `big` and `many`), to tell what the runtime costs from what ferry costs (docs/performance.md).
// No HTTP library (neither undici nor node:http: HTTP/1.1 written and read by hand on keep-alive
// `net` sockets), no CLI parser, logger, retries, resume or auth. Per blob the four requests ferry
// and oras make (HEAD, POST, GET streamed into PUT), eight blobs at once, every byte hashed on the
// way through (checked after the fact, where ferry holds the last bytes until the digest checks
// out). Image manifests only, not indexes; answers must carry Content-Length (distribution's do).
// Plain JavaScript, so Node need not load its TypeScript stripper.
//   node bench/request-floor.mjs SRC_HOST/REPO:TAG DST_HOST/REPO:TAG
import { createHash } from 'node:crypto';
import net from 'node:net';

const [from, to] = process.argv.slice(2);
if (!from || !to) {
  console.error('usage: node bench/request-floor.mjs SRC_HOST/REPO:TAG DST_HOST/REPO:TAG');
  process.exit(2);
}
const parse = (ref) => {
  const slash = ref.indexOf('/');
  const colon = ref.lastIndexOf(':');
  return { host: ref.slice(0, slash), repo: ref.slice(slash + 1, colon), tag: ref.slice(colon + 1) };
};
const src = parse(from);
const dst = parse(to);
const MANIFEST_TYPES = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';
const EMPTY = Buffer.alloc(0);

/** One keep-alive connection: bytes that arrive while nobody reads wait in `pending`. */
class Conn {
  constructor(host) {
    const [hostname, port] = host.split(':');
    this.socket = net.connect(Number(port), hostname);
    this.socket.setNoDelay(true);
    this.pending = EMPTY;
    this.onData = undefined;
    this.fail = (e) => {
      throw e;
    };
    this.socket.on('data', (c) => (this.onData ? this.onData(c) : (this.pending = Buffer.concat([this.pending, c]))));
    this.socket.on('error', (e) => this.fail(e));
  }

  /** The status line and headers of the next answer. */
  readHead() {
    return new Promise((resolve, reject) => {
      this.fail = reject;
      let buf = this.pending;
      const check = () => {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return false;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const headers = {};
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(':');
          headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
        }
        this.pending = buf.subarray(end + 4);
        this.onData = undefined;
        resolve({ status: Number(lines[0].split(' ')[1]), headers });
        return true;
      };
      if (!check()) {
        this.onData = (c) => {
          buf = Buffer.concat([buf, c]);
          check();
        };
      }
    });
  }

  /** Exactly `length` body bytes, each piece handed to `sink`. */
  readBody(length, sink) {
    return new Promise((resolve, reject) => {
      this.fail = reject;
      let left = length;
      const take = (c) => {
        let piece = c;
        if (piece.byteLength > left) {
          this.pending = piece.subarray(left);
          piece = piece.subarray(0, left);
        } else this.pending = EMPTY;
        left -= piece.byteLength;
        if (piece.byteLength > 0) sink(piece);
        if (left === 0) {
          this.onData = undefined;
          resolve();
        }
      };
      take(this.pending);
      if (left > 0) this.onData = take;
    });
  }
}

const idle = new Map();
const open = (host) => idle.get(host)?.pop() ?? new Conn(host);
const release = (host, conn) => (idle.get(host) ?? idle.set(host, []).get(host)).push(conn);
const head = (host, method, path, headers) =>
  `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;

/** One request with an optional Buffer body; the answer's body read whole. */
async function call(host, method, path, headers = {}, body = EMPTY) {
  const conn = open(host);
  conn.socket.write(head(host, method, path, { ...headers, 'content-length': body.byteLength }));
  if (body.byteLength > 0) conn.socket.write(body);
  const answer = await conn.readHead();
  const chunks = [];
  await conn.readBody(method === 'HEAD' ? 0 : Number(answer.headers['content-length'] ?? 0), (c) => chunks.push(c));
  release(host, conn);
  return { ...answer, body: Buffer.concat(chunks) };
}

function expect(a, status, what) {
  if (a.status !== status) throw new Error(`${what}: HTTP ${a.status} ${a.body.toString().slice(0, 200)}`);
  return a;
}

async function copyBlob(digest, size) {
  if ((await call(dst.host, 'HEAD', `/v2/${dst.repo}/blobs/${digest}`)).status === 200) return;
  const post = expect(await call(dst.host, 'POST', `/v2/${dst.repo}/blobs/uploads/`), 202, 'POST');
  const location = new URL(post.headers.location, `http://${dst.host}`);
  location.searchParams.set('digest', digest);
  const get = open(src.host);
  get.socket.write(head(src.host, 'GET', `/v2/${src.repo}/blobs/${digest}`, {}));
  const got = await get.readHead();
  if (got.status !== 200) throw new Error(`GET ${digest}: HTTP ${got.status}`);
  const put = open(dst.host);
  put.socket.write(head(dst.host, 'PUT', location.pathname + location.search, { 'content-type': 'application/octet-stream', 'content-length': size }));
  const hash = createHash('sha256');
  await get.readBody(size, (piece) => {
    hash.update(piece);
    if (!put.socket.write(piece)) {
      get.socket.pause();
      put.socket.once('drain', () => get.socket.resume());
    }
  });
  release(src.host, get);
  if (`sha256:${hash.digest('hex')}` !== digest) throw new Error(`${digest} does not verify`);
  const answer = await put.readHead();
  await put.readBody(Number(answer.headers['content-length'] ?? 0), () => undefined);
  release(dst.host, put);
  if (answer.status !== 201) throw new Error(`PUT ${digest}: HTTP ${answer.status}`);
}

const manifest = expect(await call(src.host, 'GET', `/v2/${src.repo}/manifests/${src.tag}`, { accept: MANIFEST_TYPES }), 200, 'GET manifest');
const parsed = JSON.parse(manifest.body.toString());
const blobs = [parsed.config, ...parsed.layers];
let next = 0;
await Promise.all(
  Array.from({ length: 8 }, async () => {
    while (next < blobs.length) {
      const b = blobs[next++];
      await copyBlob(b.digest, b.size);
    }
  }),
);
expect(await call(dst.host, 'PUT', `/v2/${dst.repo}/manifests/${dst.tag}`, { 'content-type': manifest.headers['content-type'] }, manifest.body), 201, 'PUT manifest');
for (const conns of idle.values()) for (const c of conns) c.socket.destroy();
