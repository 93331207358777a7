// ferry's own HTTP/1.1: every request to a registry that goes direct (no proxy) and whose body,
// if any, is in memory. Three uses:
//
// - The pipe (src/ends/registry/blob-pipe.ts): the source's response body is read into one buffer that
//   is used again for every read (the socket's `onread`), each piece is shown to the caller (the
//   hash) and written to the destination's request on a second connection, and reading pauses
//   while a write is still with the kernel, so the buffer is never overwritten under it.
// - GETs (manifests, tokens, referrers, blobs read the regular way): the same reader, its body
//   handed out as copies (`RawBodyReader.stream`); an answer that is not a 2xx read whole.
// - Exchanges: requests whose body is in memory and whose answer is small, read whole (the
//   HEADs, upload sessions, commits and manifest writes around the bytes; `rawExchange`).
//
// Why not undici: every socket read there lands in a fresh 64 KiB buffer, and hashing and
// writing fresh memory costs about as much again as the copy itself. Between two distribution
// registries, 8 × 64 MiB layers took 1.45 CPU-s through undici and 0.84 through this. And per
// request its JavaScript (a handler chain, a Readable per body) costs more than the request:
// on 40 small layers, these connections took ferry's CPU from ~0.52 to ~0.47 s
// (docs/performance.md); and a copy that never needs undici does not load it (~10 ms of a start).
// Streamed request bodies (uploads read the regular way), a 2xx answer not framed by a
// Content-Length, and everything behind a proxy stay on undici (src/transport/http.ts).
//
// Connections are kept alive (RawConnectionPool): one request at a time on each, the next one
// once an answer has been read to its end. Deliberately small otherwise: no proxies, no
// pipelining, 2xx response bodies with a Content-Length (or none). The caller falls back to
// the regular path whenever an answer is anything else.
import net from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { AbortedError, NetworkError, type Side } from '../errors.ts';
import { FloorWatch, SlowBodyError, type ReadFloor } from './read-floor.ts';
import type { TlsSessions } from './tls-sessions.ts';

export interface PreparedRequest {
  url: URL;
  /** Lower-case names. No `host`, `content-length` or `connection`: those are the connection's. */
  headers: Record<string, string>;
}

export interface ResponseHead {
  status: number;
  /** Lower-case names; a repeated header's values joined with ", ". */
  headers: Record<string, string>;
}

/** A GET that is not read through RawBodyReader: why (a string), or the answer's head, with its body when it is not a 2xx. */
export interface RawGetDeclined {
  declined: ResponseHead | string;
  body?: Buffer;
}

export interface RawConnectOptions {
  /** Extra CA certificates (PEM) for TLS, on top of the process defaults. */
  ca?: string[] | undefined;
  connectTimeoutMs: number;
  /** A response head must arrive within this. */
  headersTimeoutMs: number;
  /** No bytes either way for this long: the connection is stalled. */
  idleTimeoutMs: number;
  userAgent: string;
  /** Where connections wait between requests; without one, each connection serves one request. */
  pool?: RawConnectionPool | undefined;
  /** A response body slower than this is stalled too (src/transport/read-floor.ts). */
  readFloor?: ReadFloor | undefined;
  /** Told of a body that stalled or dripped after its head came (the flow controller halves the host's concurrency). */
  onStall?: ((host: string) => void) | undefined;
  /** TLS: one secure context and each origin's session ticket (src/transport/tls-sessions.ts); without it, a context per connection. */
  tls?: TlsSessions | undefined;
}

/** A timeout (no head, no answer, no bytes): the transport tells the flow controller (src/transport/flow.ts). */
export function timeoutError(message: string, side?: Side): NetworkError {
  return Object.assign(new NetworkError(message, { side }), { timedOut: true });
}

/** Did this request fail for a timeout (ferry's own connections, or undici's)? */
export function isTimeout(e: unknown): boolean {
  const err = e as { timedOut?: unknown; code?: unknown; cause?: { code?: unknown } } | undefined;
  if (err?.timedOut === true) return true;
  const code = err?.code ?? err?.cause?.code;
  return code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
}

/** The size a source's read buffer starts at, and keeps while other pipes read too: 4× fewer reads than Node's 64 KiB. */
export const PIPE_BUFFER_BYTES = 256 * 1024;
/** The most the read buffer of a pipe that reads alone grows to. */
export const PIPE_BUFFER_MAX_BYTES = 4 * 1024 * 1024;
const MAX_HEAD_BYTES = 64 * 1024;
/** The most of an answer's body that is read when it is not the bytes asked for (an error, a redirect's page). */
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** A streamed body whose caller has not taken a piece for this many idle timeouts fails (RawBodyReader.onIdle). */
const MAX_IDLE_WAITS_FOR_CALLER = 5;
let readBuffersOpen = 0;

/**
 * The buffer a pipe's source reads land in, used again for every read. It starts at 256 KiB.
 * While this is the only pipe reading, it doubles (up to 4 MiB) each time a read fills it whole,
 * that is while the source is ahead of ferry: every read is a wake-up of the process, and for a
 * lone transfer those cost more than the bytes (a 512 MiB layer: 1.08 CPU-s with 256 KiB reads,
 * 0.83 with 4 MiB ones). When several pipes read at once (likely because one wake-up then
 * serves several sockets), growing their buffers saved nothing measurable on `big`
 * (8 × 64 MiB) and held 10 MiB more, so a grown buffer goes back to 256 KiB as soon as another pipe opens
 * (docs/performance.md, sixth round).
 */
export class ReadBuffer {
  private buffer: Buffer | undefined;
  /** Kept for the connection's next download, but not counted as reading. */
  private parked = false;

  /** The buffer for the next read, after one that brought `lastRead` bytes (0 before the first). */
  next(lastRead: number): Buffer {
    if (!this.buffer) {
      readBuffersOpen += 1;
      this.buffer = Buffer.allocUnsafe(PIPE_BUFFER_BYTES);
      return this.buffer;
    }
    this.claim();
    // A buffer replaced here may still be under a pending write; it is left to the garbage collector.
    const size = this.buffer.byteLength;
    if (readBuffersOpen > 1) {
      if (size > PIPE_BUFFER_BYTES) this.buffer = Buffer.allocUnsafe(PIPE_BUFFER_BYTES);
    } else if (lastRead === size && size < PIPE_BUFFER_MAX_BYTES) {
      this.buffer = Buffer.allocUnsafe(size * 2);
    }
    return this.buffer;
  }

  /**
   * A download is over and its connection waits for the next one: the buffer no longer counts
   * as reading, and is kept for the connection's next download (allocating one per blob cost
   * more than reading into it). False for a grown buffer: Node reads next into the buffer it was
   * last given, so the connection would hold it, and hand its next answer over in one piece of
   * up to 4 MiB; that connection is closed instead (a large lone download: reuse buys little).
   */
  park(): boolean {
    if (!this.buffer || this.parked) return true;
    readBuffersOpen -= 1;
    if (this.buffer.byteLength > PIPE_BUFFER_BYTES) {
      this.buffer = undefined;
      return false;
    }
    this.parked = true;
    return true;
  }

  /** A download begins on a kept connection: its buffer counts as reading again from now (its first read may land in it before `next` is asked). */
  claim(): void {
    if (!this.parked) return;
    this.parked = false;
    readBuffersOpen += 1;
  }

  /** The connection is closed: this buffer no longer counts as reading. */
  release(): void {
    if (this.buffer && !this.parked) readBuffersOpen -= 1;
    this.buffer = undefined;
    this.parked = false;
  }

  /** How many pipes have a read buffer now (for tests). */
  static open(): number {
    return readBuffersOpen;
  }
}

/** The request line and headers, checked: nothing from a registry may smuggle a line break into them. */
function requestHead(method: string, req: PreparedRequest, userAgent: string, contentLength: number | undefined): string {
  let head = `${method} ${req.url.pathname}${req.url.search} HTTP/1.1\r\nhost: ${req.url.host}\r\nuser-agent: ${userAgent}\r\n`;
  // No `connection: close`: ferry closes each connection itself once it has what it came for.
  // A server told to close may do so right after an early answer (a refusal before the whole
  // upload body is in), and the bytes still arriving then reset the connection, often before
  // ferry has read that answer; a download's server closing first could lose the end of the
  // body over TLS while reading is paused.
  if (contentLength !== undefined) head += `content-length: ${contentLength}\r\n`;
  for (const [name, value] of Object.entries(req.headers)) {
    if (!/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(name) || /[\r\n\0]/.test(value)) throw new NetworkError(`refusing to send a malformed header ${JSON.stringify(name)}`, { retryable: false });
    if (name === 'host' || name === 'content-length' || name === 'connection' || name === 'user-agent') continue;
    head += `${name}: ${value}\r\n`;
  }
  return `${head}\r\n`;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Control characters other than HTAB: llhttp refuses them in a status line or a header value. */
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

/**
 * Parses a response head; undefined until the blank line after the final head has arrived.
 * Interim answers before it (100 Continue, 103 Early Hints: any 1xx but 101) are skipped, as
 * RFC 9110 §15.2 asks of every client; `bodyStart` is past all of them. Otherwise as strict as
 * llhttp: a malformed status line or header line, a control character, a Content-Length that is
 * not one number, or one beside Transfer-Encoding, is a NetworkError.
 */
function parseHead(bytes: Buffer): { head: ResponseHead; bodyStart: number; keepAlive: boolean } | undefined {
  for (let start = 0; ; ) {
    const end = bytes.indexOf('\r\n\r\n', start);
    if (end < 0) return undefined;
    const lines = bytes.subarray(start, end).toString('latin1').split('\r\n');
    const statusLine = lines[0] ?? '';
    const status = /^HTTP\/1\.([01]) (\d{3})(?: |$)/.exec(statusLine);
    if (!status || CONTROL.test(statusLine)) throw new NetworkError(`not an HTTP/1.1 response: ${JSON.stringify(statusLine.slice(0, 80))}`);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, Math.max(colon, 0));
      const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
      if (colon <= 0 || !HEADER_NAME.test(name) || CONTROL.test(value)) throw new NetworkError(`malformed response header line ${JSON.stringify(line.slice(0, 80))}`);
      const lower = name.toLowerCase();
      headers[lower] = headers[lower] === undefined ? value : `${headers[lower]}, ${value}`;
    }
    const code = Number(status[2]);
    if (code === 101) throw new NetworkError('the server switched protocols (HTTP 101) without being asked to');
    if (code < 200) {
      start = end + 4;
      continue;
    }
    const length = headers['content-length'];
    if (length !== undefined && (!/^\d{1,16}$/.test(length) || headers['transfer-encoding'] !== undefined)) {
      throw new NetworkError(`malformed response: Content-Length ${JSON.stringify(length.slice(0, 40))}${headers['transfer-encoding'] !== undefined ? ' beside Transfer-Encoding' : ''}`);
    }
    // HTTP/1.1 keeps a connection open unless either side says `close`; HTTP/1.0 closes it.
    const keepAlive = status[1] === '1' && !/(^|,)\s*close\s*(,|$)/i.test(headers.connection ?? '');
    return { head: { status: code, headers }, bodyStart: end + 4, keepAlive };
  }
}

/**
 * A small answer (a registry's reply to an upload or a short request) as its bytes arrive:
 * copied out of the read buffer, bounded, its head parsed once the blank line is in.
 */
class SmallAnswer {
  received: Buffer = Buffer.alloc(0);
  parsed: ReturnType<typeof parseHead>;

  /** Take bytes; an error when the answer outgrows its bound (`tooLarge` says it) or its head is malformed. */
  take(bytes: Buffer, tooLarge: () => Error): Error | undefined {
    if (this.received.byteLength + bytes.byteLength > MAX_HEAD_BYTES + MAX_ERROR_BODY_BYTES) return tooLarge();
    this.received = Buffer.concat([this.received, bytes]);
    try {
      this.parsed ??= parseHead(this.received);
    } catch (e) {
      return e as Error;
    }
    return undefined;
  }

  /** The body bytes that have arrived (the head must be in). */
  get body(): Buffer {
    return this.received.subarray(this.parsed!.bodyStart);
  }
}

/** A Content-Length that is one plain non-negative integer, else undefined. */
export function contentLengthOf(head: ResponseHead): number | undefined {
  const v = head.headers['content-length'];
  if (v === undefined || !/^\d{1,16}$/.test(v)) return undefined;
  return Number(v);
}

/** An answer's whole body once it has all arrived (Content-Length, chunked, or none by status), else undefined; a NetworkError when its chunked framing is malformed. */
function completeBody(head: ResponseHead, body: Buffer): Buffer | undefined {
  if (head.status === 204 || head.status === 304 || head.status < 200) return Buffer.alloc(0);
  if ((head.headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) return dechunk(body);
  const length = contentLengthOf(head);
  if (length !== undefined && body.byteLength >= length) return body.subarray(0, Math.min(length, MAX_ERROR_BODY_BYTES));
  return undefined;
}

/** completeBody, a malformed body given back as the error to fail with, its sender named. */
function wholeBody(head: ResponseHead, body: Buffer, host: string): Buffer | undefined | NetworkError {
  try {
    return completeBody(head, body);
  } catch (e) {
    return new NetworkError(`answer from ${host}: ${(e as Error).message}`, { cause: e });
  }
}

/** A chunk-size line: hex digits (at most 13: 2^52), then optional extensions; no spaces, as llhttp. */
const CHUNK_SIZE = /^([0-9A-Fa-f]{1,13})(;[^\x00-\x08\x0a-\x1f\x7f]*)?$/;
/** What a chunk-size line may start as while the rest is on its way. */
const CHUNK_SIZE_SO_FAR = /^[0-9A-Fa-f]{0,13}(;[^\x00-\x08\x0a-\x1f\x7f]*)?\r?$/;

/**
 * A chunked body decoded, once its last chunk (and trailers) have arrived; undefined until then.
 * Malformed framing (a chunk size that is not hex, data not followed by CRLF, a bad trailer
 * line) throws a NetworkError at once, as llhttp would: waiting for more would only time out.
 */
export function dechunk(bytes: Buffer): Buffer | undefined {
  const malformed = (why: string) => new NetworkError(`malformed chunked body: ${why}`);
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = bytes.indexOf('\r\n', at);
    if (eol < 0) {
      const soFar = bytes.subarray(at, at + 4096).toString('latin1');
      if (!CHUNK_SIZE_SO_FAR.test(soFar)) throw malformed(`chunk size ${JSON.stringify(soFar.slice(0, 40))}`);
      return undefined;
    }
    const line = bytes.subarray(at, eol).toString('latin1');
    const m = CHUNK_SIZE.exec(line);
    if (!m) throw malformed(`chunk size ${JSON.stringify(line.slice(0, 40))}`);
    const size = Number.parseInt(m[1]!, 16);
    if (size === 0) return trailersEnd(bytes, eol + 2, malformed) ? Buffer.concat(parts) : undefined;
    const dataEnd = eol + 2 + size;
    if (bytes.byteLength < dataEnd + 2) {
      if (bytes.byteLength > dataEnd && bytes[dataEnd] !== 0x0d) throw malformed('chunk data not followed by CRLF');
      return undefined;
    }
    if (bytes[dataEnd] !== 0x0d || bytes[dataEnd + 1] !== 0x0a) throw malformed('chunk data not followed by CRLF');
    parts.push(bytes.subarray(eol + 2, dataEnd));
    at = dataEnd + 2;
  }
}

/** After the last chunk: trailer lines, then a blank line. True once that blank line is in. */
function trailersEnd(bytes: Buffer, at: number, malformed: (why: string) => Error): boolean {
  for (;;) {
    const eol = bytes.indexOf('\r\n', at);
    if (eol < 0) return false;
    if (eol === at) return true;
    const line = bytes.subarray(at, eol).toString('latin1');
    const colon = line.indexOf(':');
    if (colon <= 0 || !HEADER_NAME.test(line.slice(0, colon)) || CONTROL.test(line.slice(colon + 1))) throw malformed(`trailer line ${JSON.stringify(line.slice(0, 40))}`);
    at = eol + 2;
  }
}

/** What a connection's current user is told: bytes read, and how the connection broke. */
interface ConnectionUser {
  /** Bytes read (see `bulk` for whose memory they are in); false: stop reading (plain HTTP). */
  bytes(bytes: Buffer): boolean;
  /**
   * Plain HTTP: reads land in the connection's read buffer (a download's body, shown to the user
   * and written on before the next read); otherwise in a small buffer the user must copy from.
   */
  bulk?: boolean;
  error(e: Error): void;
  timeout(): void;
  /** The server ended or closed the connection. */
  ended(): void;
}

/** A connection idle this long is not used again (a server may close idle ones, and a request sent into a closing connection is lost). */
export const KEEP_ALIVE_MS = 4_000;
const MAX_IDLE_PER_ORIGIN = 16;
const OWN_BUFFER_BYTES = 16 * 1024;

/**
 * One of ferry's own connections. It serves one request at a time; once an answer has been
 * read to its end (and neither side asked to close), it goes back to its pool and the next
 * request to the same origin uses it again: HTTP/1.1 keep-alive. The socket's listeners stay
 * for its life and pass each event to the current user; while idle, any event closes it.
 */
export class RawConnection {
  readonly socket: net.Socket;
  readonly url: URL;
  /** Requests this connection has served before the current one. */
  served = 0;
  private user: ConnectionUser | undefined;
  private ownBuffer: Buffer | undefined;
  /** Plain HTTP's downloads read into this, one download after another (ReadBuffer). */
  private readonly readBuffer = new ReadBuffer();
  private ready = false;
  private readonly pool: RawConnectionPool | undefined;

  private constructor(url: URL, opts: RawConnectOptions, adopted?: TLSSocket) {
    this.url = url;
    this.pool = opts.pool;
    const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (adopted) {
      // A connection opened to learn which protocol the origin speaks (src/transport/h2.ts) that chose HTTP/1.1.
      this.socket = adopted;
      this.ready = true;
      this.socket.on('data', (d: Buffer) => this.deliver(d));
    } else if (url.protocol === 'https:' && opts.tls) {
      this.socket = opts.tls.connect(url, ['http/1.1']);
      this.socket.on('data', (d: Buffer) => this.deliver(d));
    } else if (url.protocol === 'https:') {
      // Loaded here: a copy between plain-HTTP registries never needs node:tls.
      const tls = process.getBuiltinModule('node:tls');
      const tlsOptions: ConnectionOptions & { noDelay: boolean } = { host, port, noDelay: true, ALPNProtocols: ['http/1.1'] };
      if (net.isIP(host) === 0) tlsOptions.servername = host;
      if (opts.ca && opts.ca.length > 0) tlsOptions.ca = [...tls.rootCertificates, ...opts.ca];
      // Over TLS each read is a fresh buffer, from 'data' events: a TLS socket paused with
      // decrypted bytes still inside it does not hand them over when resumed (they wait for the
      // next record from the network), so it cannot read into a buffer that must wait for a write.
      this.socket = tls.connect(tlsOptions) as TLSSocket;
      this.socket.on('data', (d: Buffer) => this.deliver(d));
    } else {
      let lastRead = 0;
      // Node asks `buffer` for the buffer before the first read and again after every callback.
      this.socket = net.connect({
        host,
        port,
        noDelay: true,
        onread: {
          buffer: () => (this.user?.bulk ? this.readBuffer.next(lastRead) : (this.ownBuffer ??= Buffer.allocUnsafe(OWN_BUFFER_BYTES))),
          callback: (n: number, buf: Uint8Array) => {
            lastRead = n;
            return this.deliver((buf as Buffer).subarray(0, n));
          },
        },
      } as net.NetConnectOpts);
    }
    if (!adopted) {
      this.socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
        this.ready = true;
      });
    }
    this.socket.on('error', (e) => (this.user ? this.user.error(e) : this.socket.destroy()));
    this.socket.on('timeout', () => (this.user ? this.user.timeout() : this.socket.destroy()));
    this.socket.on('end', () => (this.user ? this.user.ended() : this.socket.destroy()));
    this.socket.on('close', () => {
      this.readBuffer.release();
      this.pool?.forget(this);
      this.user?.ended();
    });
  }

  /**
   * A TLS connection already open to `url`'s origin that agreed on HTTP/1.1 (the first connection
   * to an origin offers HTTP/2 too): into the pool, for the next request.
   */
  static adopt(url: URL, socket: TLSSocket, opts: RawConnectOptions): void {
    const conn = new RawConnection(url, opts, socket);
    if (opts.pool) opts.pool.give(conn);
    else conn.destroy();
  }

  /** An idle connection to this origin from the pool (unless `fresh`), else a new one, for `user`. */
  static open(url: URL, opts: RawConnectOptions, fresh: boolean, user: ConnectionUser): RawConnection {
    const conn = (fresh ? undefined : opts.pool?.take(url)) ?? new RawConnection(url, opts);
    conn.user = user;
    if (user.bulk) conn.readBuffer.claim();
    conn.socket.setTimeout(opts.idleTimeoutMs);
    return conn;
  }

  private deliver(bytes: Buffer): boolean {
    if (this.user) return this.user.bytes(bytes);
    // Bytes nobody asked for on an idle connection: it is out of step; close it.
    this.socket.destroy();
    return false;
  }

  /** Run `send` once the connection can carry a request (at once when it is reused). */
  whenReady(send: () => void): void {
    if (this.ready) send();
    else this.socket.once(this.url.protocol === 'https:' ? 'secureConnect' : 'connect', send);
  }

  /**
   * `user` is done: `reusable` when its answer was read to the end and nobody asked to close.
   * A user that has already let go (or lost the connection) changes nothing: the connection may
   * be serving someone else by then.
   */
  release(user: ConnectionUser, reusable: boolean): void {
    if (this.user !== user) return;
    this.user = undefined;
    const bufferKept = this.readBuffer.park();
    if (reusable && bufferKept && this.pool && !this.socket.destroyed) {
      this.served += 1;
      this.pool.give(this);
    } else this.socket.destroy();
  }

  /** Close the connection, whoever holds it (the pool, for an idle one). */
  destroy(): void {
    this.user = undefined;
    this.socket.destroy();
  }
}

/** The idle keep-alive connections of one transport, per origin. */
export class RawConnectionPool {
  private readonly idle = new Map<string, { conn: RawConnection; timer: NodeJS.Timeout }[]>();
  private closed = false;
  private readonly keepAliveMs: number;

  constructor(keepAliveMs = KEEP_ALIVE_MS) {
    this.keepAliveMs = keepAliveMs;
  }

  take(url: URL): RawConnection | undefined {
    const list = this.idle.get(url.origin);
    for (let entry = list?.pop(); entry; entry = list?.pop()) {
      clearTimeout(entry.timer);
      // Closed by the server a moment ago ('close' is still on its way): not this one.
      if (entry.conn.socket.destroyed) continue;
      entry.conn.socket.ref();
      return entry.conn;
    }
    return undefined;
  }

  give(conn: RawConnection): void {
    const list = this.idle.get(conn.url.origin) ?? [];
    if (this.closed || list.length >= MAX_IDLE_PER_ORIGIN) return conn.destroy();
    conn.socket.setTimeout(0);
    // An idle connection keeps no process alive, and is read from so a close is noticed.
    conn.socket.unref();
    conn.socket.resume();
    const timer = setTimeout(() => conn.destroy(), this.keepAliveMs);
    timer.unref();
    list.push({ conn, timer });
    this.idle.set(conn.url.origin, list);
  }

  /** A connection closed: if it was idle, it is no longer offered. */
  forget(conn: RawConnection): void {
    const list = this.idle.get(conn.url.origin);
    const i = list?.findIndex((e) => e.conn === conn) ?? -1;
    if (i < 0) return;
    clearTimeout(list![i]!.timer);
    list!.splice(i, 1);
  }

  /** Idle connections now (for tests). */
  size(): number {
    let n = 0;
    for (const list of this.idle.values()) n += list.length;
    return n;
  }

  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const { conn, timer } of list.splice(0)) {
      clearTimeout(timer);
      conn.destroy();
    }
  }
}

export function connectError(e: unknown, url: URL, side: Side | undefined): NetworkError {
  const err = e as Error & { code?: string };
  return new NetworkError(`${url.host}: ${err.code ?? err.message}`, { side, cause: e });
}

/** A connection from the pool that broke before its answer began: the server had closed it. The request is sent again on a new one. */
class StaleConnection extends Error {
  readonly reason: Error;
  constructor(reason: Error) {
    super(reason.message);
    this.reason = reason;
  }
}

/** Run `attempt` on a pooled connection; if that one turns out stale, once more on a new one. */
async function retryIfStale<T>(attempt: (fresh: boolean) => Promise<T>): Promise<T> {
  try {
    return await attempt(false);
  } catch (e) {
    if (!(e instanceof StaleConnection)) throw e;
    try {
      return await attempt(true);
    } catch (again) {
      throw again instanceof StaleConnection ? again.reason : again;
    }
  }
}

/**
 * A source GET whose body is read into one reused buffer. `open` resolves once the response
 * head is in; the body is then taken with `pipeInto`, piece by piece, as the sink takes it.
 * Once the whole body has been taken and written, the connection goes back to its pool.
 */
export class RawBodyReader implements BodyReader {
  readonly head: ResponseHead;
  /** Body bytes not yet taken. */
  remaining: number;
  private readonly conn: RawConnection;
  private readonly user: ConnectionUser;
  private readonly keepAlive: boolean;
  /** Whose failures these are, when the caller knows (the pipe: the source); else the caller blames them. */
  private readonly side: Side | undefined;
  private pending: Buffer | undefined;
  private deliver: ((bytes: Buffer) => void) | undefined;
  private failure: Error | undefined;
  private onFailure: ((e: Error) => void) | undefined;
  private ended = false;
  /** Read as a stream (`stream`): the caller, not the server, is who the connection waits for while bytes are pending. */
  private streaming = false;
  /** Idle periods in a row spent waiting for a streaming caller to take what was read. */
  private waitedForCaller = 0;
  private readonly opts: RawConnectOptions;
  /** The body's rate against the read floor, over the time spent waiting for its bytes. */
  private readonly watch: FloorWatch | undefined;

  private constructor(conn: RawConnection, user: ConnectionUser, head: ResponseHead, bodyLength: number, keepAlive: boolean, side: Side | undefined, opts: RawConnectOptions) {
    this.side = side;
    this.conn = conn;
    this.user = user;
    this.head = head;
    this.remaining = bodyLength;
    this.keepAlive = keepAlive;
    this.opts = opts;
    this.watch = opts.readFloor && opts.readFloor.bytesPerSecond > 0 ? new FloorWatch(opts.readFloor) : undefined;
  }

  /** Stop reading from the socket: nobody takes bytes now (the time does not count against the source). */
  private holdReading(): void {
    this.conn.socket.pause();
    this.watch?.hold();
  }

  private resumeReading(): void {
    this.watch?.release();
    this.conn.socket.resume();
  }

  /**
   * Send the GET and wait for the head. Resolves with the reader for a 2xx answer with a
   * Content-Length. Any other answer is `declined`: one that is not a 2xx comes with its body,
   * read whole (the first 64 KiB: an error's explanation, a redirect's page); a 2xx framed some
   * other way (chunked, or ended by closing) comes as its head alone, the connection closed.
   */
  static open(req: PreparedRequest, opts: RawConnectOptions, signal?: AbortSignal, side?: Side): Promise<RawBodyReader | RawGetDeclined> {
    return retryIfStale((fresh) => RawBodyReader.request(req, opts, signal, side, fresh));
  }

  private static request(req: PreparedRequest, opts: RawConnectOptions, signal: AbortSignal | undefined, side: Side | undefined, fresh: boolean): Promise<RawBodyReader | RawGetDeclined> {
    return new Promise((resolve, reject) => {
      let headBytes: Buffer = Buffer.alloc(0);
      let reader: RawBodyReader | undefined;
      /** A non-2xx answer whose body is being read whole. */
      let refusal: { head: ResponseHead; keepAlive: boolean; body: Buffer } | undefined;
      let settled = false;
      const fail = (e: Error) => {
        if (reader) return reader.fail(e);
        if (settled) return;
        settled = true;
        cleanup();
        const reused = conn.served > 0;
        conn.release(user, false);
        reject(reused && headBytes.byteLength === 0 && !signal?.aborted ? new StaleConnection(e) : e);
      };
      const onAbort = () => fail(new AbortedError());
      const cleanup = () => {
        clearTimeout(headTimer);
        signal?.removeEventListener('abort', onAbort);
      };
      /** The refusal's body, once it is all in (or all there will be: `ended`). */
      const refusalBody = (ended: boolean): void => {
        const r = refusal!;
        const whole = wholeBody(r.head, r.body, req.url.host);
        if (whole instanceof Error) return fail(whole);
        const framed = contentLengthOf(r.head) !== undefined || r.head.headers['transfer-encoding'] !== undefined;
        const truncated = r.body.byteLength >= MAX_ERROR_BODY_BYTES;
        if (!whole && !truncated && !ended) return;
        if (!whole && ended && framed && !truncated) return fail(new NetworkError(`${req.url.host} closed the connection in the middle of an answer`, { side }));
        settled = true;
        cleanup();
        conn.release(user, Boolean(whole) && r.keepAlive && answerEndsCleanly(r.head, r.body));
        resolve({ declined: r.head, body: whole ?? r.body.subarray(0, MAX_ERROR_BODY_BYTES) });
      };
      const onBytes = (chunk: Buffer): boolean => {
        if (reader) {
          reader.take(chunk);
          return true;
        }
        if (settled) return false;
        if (refusal) {
          refusal.body = Buffer.concat([refusal.body, chunk]);
          refusalBody(false);
          return true;
        }
        headBytes = Buffer.concat([headBytes, chunk]);
        let parsed: ReturnType<typeof parseHead>;
        try {
          parsed = parseHead(headBytes);
        } catch (e) {
          fail(e as Error);
          return false;
        }
        if (!parsed) {
          if (headBytes.byteLength > MAX_HEAD_BYTES) fail(new NetworkError(`response head from ${req.url.host} larger than ${MAX_HEAD_BYTES} bytes`, { side }));
          return true;
        }
        const length = contentLengthOf(parsed.head);
        if (parsed.head.status < 200 || parsed.head.status >= 300) {
          // Copied: the head's bytes are this request's own, not the connection's read buffer.
          refusal = { head: parsed.head, keepAlive: parsed.keepAlive, body: Buffer.from(headBytes.subarray(parsed.bodyStart)) };
          refusalBody(false);
          return true;
        }
        settled = true;
        cleanup();
        if (length === undefined || parsed.head.headers['transfer-encoding'] !== undefined) {
          conn.release(user, false);
          resolve({ declined: parsed.head });
          return false;
        }
        reader = new RawBodyReader(conn, user, parsed.head, length, parsed.keepAlive, side, opts);
        // Body bytes that came with the head (headBytes is a copy, not the shared buffer).
        const early = headBytes.subarray(parsed.bodyStart);
        if (early.byteLength > 0) reader.take(early);
        resolve(reader);
        if (reader.remaining === 0) reader.done();
        return true;
      };
      const user: ConnectionUser = {
        bytes: onBytes,
        // Plain TCP reads land in the connection's read buffer; over TLS reads are fresh buffers (RawConnection).
        bulk: true,
        // Before the answer and without a side, the socket's own error (its code: refused, reset,
        // TLS verification) for the transport to explain; in the body, a retryable network error.
        error: (e) => fail(side || reader ? connectError(e, req.url, side) : e),
        timeout: () => {
          const stalled = timeoutError(`download from ${req.url.host} stalled: no bytes for ${opts.idleTimeoutMs} ms (read timeout)`, side);
          if (reader) reader.onIdle(stalled, opts.idleTimeoutMs);
          else fail(stalled);
        },
        ended: () => {
          if (reader) reader.onEnd();
          else if (refusal && !settled) refusalBody(true);
          else fail(new NetworkError(`${req.url.host} closed the connection before a response`, { side }));
        },
      };
      const conn = RawConnection.open(req.url, opts, fresh, user);
      const headTimer = setTimeout(() => fail(timeoutError(`no response head from ${req.url.host} within ${opts.headersTimeoutMs} ms`, side)), opts.headersTimeoutMs + opts.connectTimeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      conn.whenReady(() => {
        try {
          conn.socket.write(requestHead('GET', req, opts.userAgent, undefined));
        } catch (e) {
          fail(e as Error);
        }
      });
      if (signal?.aborted) onAbort();
    });
  }

  private take(bytes: Buffer): void {
    if (bytes.byteLength === 0) return;
    if (bytes.byteLength > this.remaining) {
      this.fail(new NetworkError(`${this.conn.url.host} sent more than its Content-Length`, { side: this.side, retryable: false }));
      return;
    }
    const slow = this.watch?.took(bytes.byteLength);
    if (slow) {
      // A drip: stalled as surely as a silent body; the caller resumes with Range on a new connection.
      this.fail(new SlowBodyError(this.conn.url.host, slow.bytes, slow.ms, this.opts.readFloor!, this.side));
      this.opts.onStall?.(this.conn.url.host);
      return;
    }
    if (this.deliver) {
      this.deliver(bytes);
      return;
    }
    // Nobody is taking bytes now (between two sinks): hold them, and read no more until taken.
    this.pending = bytes;
    this.holdReading();
  }

  /**
   * The connection was idle this long: stalled, unless it is waiting for a streaming caller to
   * take what it read. A caller may take its time (its own sink is slow), but not forever: one
   * that has left the body behind would otherwise hold the connection, and the process, open.
   */
  private onIdle(e: Error, idleTimeoutMs: number): void {
    if (this.streaming && this.pending && ++this.waitedForCaller < MAX_IDLE_WAITS_FOR_CALLER) {
      // A socket's timeout fires once per idle spell: arm it again to count the next one.
      this.conn.socket.setTimeout(idleTimeoutMs);
      return;
    }
    this.fail(e);
    this.opts.onStall?.(this.conn.url.host);
  }

  private onEnd(): void {
    if (this.ended) return;
    this.ended = true;
    const short = this.remaining - (this.pending?.byteLength ?? 0);
    if (short > 0) this.fail(new NetworkError(`download ended ${short} bytes short`, { side: this.side }));
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.conn.release(this.user, false);
    this.onFailure?.(e);
  }

  /** The whole body is taken and written: the connection may serve another request. */
  private done(): void {
    this.conn.release(this.user, this.keepAlive && !this.ended && !this.failure);
  }

  /**
   * Move the next `length` bytes of the body into `sink`, showing each piece to `inspect`
   * before it is written. Resolves when all are written; rejects with the first failure on
   * either side (bytes moved so far are in `sink.written`).
   */
  pipeInto(sink: UploadSink, length: number, inspect: (piece: Buffer) => void, signal?: AbortSignal): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (length > this.remaining) return Promise.reject(new NetworkError(`asked for ${length} bytes, the response has ${this.remaining} left`, { side: this.side, retryable: false }));
    return new Promise<void>((resolve, reject) => {
      let left = length;
      let done = false;
      const finish = (e?: Error) => {
        if (done) return;
        done = true;
        this.deliver = undefined;
        this.onFailure = undefined;
        sink.onFailure = undefined;
        signal?.removeEventListener('abort', onAbort);
        if (e) {
          this.fail(e);
          reject(e);
          return;
        }
        // Every write of the body is off the read buffer now: the connection can read again for someone else.
        if (this.remaining === 0) this.done();
        resolve();
      };
      const onAbort = () => finish(new AbortedError());
      const deliver = (bytes: Buffer) => {
        const piece = bytes.byteLength > left ? bytes.subarray(0, left) : bytes;
        const rest = bytes.byteLength > left ? bytes.subarray(left) : undefined;
        try {
          inspect(piece);
        } catch (e) {
          finish(e as Error);
          return;
        }
        left -= piece.byteLength;
        this.remaining -= piece.byteLength;
        const flushed = sink.write(piece, (err) => {
          if (done) return;
          if (err) return finish(err);
          // An earlier write's callback can come after a later write went pending: finish, or
          // read again, only once every write is off the buffer.
          if (sink.busy) return;
          if (left === 0) return finish();
          if (!this.pending) this.resumeReading();
        });
        if (rest) this.pending = rest;
        if (!flushed || left === 0) this.holdReading();
        if (flushed && left === 0) finish();
      };
      this.deliver = (bytes) => {
        if (!done) deliver(bytes);
      };
      this.onFailure = (e) => finish(e);
      sink.onFailure = (e) => finish(e);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted) return onAbort();
      if (length === 0) return finish();
      const held = this.pending;
      this.pending = undefined;
      if (held) deliver(held);
      if (!done && !this.pending && !sink.busy) this.resumeReading();
    });
  }

  /**
   * The body as a stream of its bytes, for callers that keep what they read (a manifest, a
   * token, a blob into a file): each piece is a copy, since the reads land in a buffer that is
   * used again. One piece is read ahead at most; the connection waits while the caller does
   * not ask. Once the last byte is taken, the connection goes back to its pool.
   */
  stream(signal?: AbortSignal): ResponseBodyStream {
    this.streaming = true;
    const onAbort = () => this.fail(new AbortedError());
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    const finished = () => signal?.removeEventListener('abort', onAbort);
    const next = async (): Promise<IteratorResult<Uint8Array>> => {
      const piece = await this.nextPiece().catch((e: unknown) => {
        finished();
        throw e;
      });
      if (piece) return { value: piece, done: false };
      finished();
      return { value: undefined, done: true };
    };
    const stop = () => {
      finished();
      if (this.remaining > 0 || this.pending) this.close();
    };
    // Not read to the end: the connection is closed rather than drained (it may be a large blob).
    return bodyStream(next, stop);
  }

  private nextPiece(): Promise<Buffer | undefined> {
    this.waitedForCaller = 0;
    if (this.failure) return Promise.reject(this.failure);
    const taken = (bytes: Buffer): Buffer => {
      const piece = Buffer.from(bytes);
      this.remaining -= piece.byteLength;
      if (this.remaining === 0) this.done();
      return piece;
    };
    if (this.pending) {
      const piece = taken(this.pending);
      this.pending = undefined;
      if (this.remaining > 0) this.resumeReading();
      return Promise.resolve(piece);
    }
    if (this.remaining === 0) {
      this.done();
      return Promise.resolve(undefined);
    }
    return new Promise((resolve, reject) => {
      this.deliver = (bytes) => {
        this.deliver = undefined;
        this.onFailure = undefined;
        resolve(taken(bytes));
      };
      this.onFailure = (e) => {
        this.deliver = undefined;
        this.onFailure = undefined;
        reject(e);
      };
    });
  }

  close(): void {
    this.deliver = undefined;
    this.conn.release(this.user, false);
  }
}

/** A streamed answer body (what src/transport/http.ts calls a ResponseBody). */
export type ResponseBodyStream = AsyncIterable<Uint8Array> & { dump(): Promise<void>; destroy(): void };

/** A body read piece by piece (`next`); leaving it early (`return`, `dump`, `destroy`) calls `stop`. */
export function bodyStream(next: () => Promise<IteratorResult<Uint8Array>>, stop: () => void): ResponseBodyStream {
  return {
    [Symbol.asyncIterator]: () => ({
      next,
      return: async () => {
        stop();
        return { value: undefined, done: true };
      },
    }),
    dump: async () => stop(),
    destroy: stop,
  };
}

/**
 * Where a pipe writes a blob's bytes: the body of an upload request whose length is known up
 * front, on an HTTP/1.1 connection (RawUpload) or an HTTP/2 stream (src/transport/h2.ts).
 */
export interface UploadSink {
  /** Body bytes handed on so far. */
  readonly written: number;
  /** A write is still pending: the memory it was given must not change yet. */
  readonly busy: boolean;
  /** Bytes written and not yet sent on (backpressure for readers whose pieces are their own). */
  readonly buffered: number;
  /** Write one piece; true when it was taken at once (its memory is free again). `done` when it is. */
  write(piece: Buffer, done: (err?: Error) => void): boolean;
  /** Told of a failure (or of an early answer) while the reader is writing. */
  onFailure: ((e: Error) => void) | undefined;
  /** The server has answered (possibly before the whole body was sent). */
  readonly hasAnswer: boolean;
  /** The answer: head and (bounded) body. An abort of `signal` gives up waiting (a cancel does not wait for it). */
  response(signal?: AbortSignal): Promise<ResponseHead & { body: Buffer }>;
  close(): void;
}

/**
 * A 2xx answer's body, read as it arrives: piped into an upload (`pipeInto`, the blob pipe) or
 * handed out as a stream of copies. HTTP/1.1 (RawBodyReader) or HTTP/2 (src/transport/h2.ts).
 */
export interface BodyReader {
  readonly head: ResponseHead;
  /** Body bytes not yet taken. */
  readonly remaining: number;
  /** Move the next `length` bytes into `sink`, each piece shown to `inspect` before it is written. */
  pipeInto(sink: UploadSink, length: number, inspect: (piece: Buffer) => void, signal?: AbortSignal): Promise<void>;
  stream(signal?: AbortSignal): ResponseBodyStream;
  close(): void;
}

/** A reader (as openRawBody gives one), not a declined answer. */
export function isBodyReader(r: BodyReader | RawGetDeclined): r is BodyReader {
  return !('declined' in r);
}

/** Does this complete answer leave the connection ready for the next request (its body exactly as long as it said)? */
function answerEndsCleanly(head: ResponseHead, body: Buffer): boolean {
  if (head.headers['transfer-encoding'] !== undefined) return false;
  if (head.status === 204 || head.status === 304 || head.status < 200) return body.byteLength === 0;
  return contentLengthOf(head) === body.byteLength;
}

/**
 * A PUT or PATCH whose body ferry writes piece by piece (`Content-Length` known up front),
 * then `response()` reads the answer. The answer may also come early (a registry refusing
 * the request before the body is in): writes then fail and `response()` has it.
 */
export class RawUpload implements UploadSink {
  /** Body bytes handed to the kernel so far. */
  written = 0;
  onFailure: ((e: Error) => void) | undefined;
  private readonly conn: RawConnection;
  private readonly user: ConnectionUser;
  private readonly url: URL;
  private readonly opts: RawConnectOptions;
  private readonly contentLength: number;
  private readonly answer = new SmallAnswer();
  private closed = false;
  private failure: Error | undefined;
  private waiters: (() => void)[] = [];
  /** Until the request head is sent: where a connection failure goes (open's reject). */
  private beforeOpen: ((e: Error) => void) | undefined;
  /** Told once of the answer, or of why there is none (the transport's flow controller). */
  private onAnswer: ((answer: ResponseHead | Error) => void) | undefined;

  private constructor(url: URL, contentLength: number, opts: RawConnectOptions, beforeOpen: (e: Error) => void) {
    this.url = url;
    this.contentLength = contentLength;
    this.opts = opts;
    this.beforeOpen = beforeOpen;
    // What arrives is copied out at once, so reads may land in the connection's own buffer.
    this.user = {
      bytes: (d) => {
        const failed = this.answer.take(d, () => new NetworkError(`answer from ${url.host} too large`, { side: 'destination' }));
        if (failed) {
          this.fail(failed);
          return false;
        }
        // An answer before the whole body: the registry refused it (or cut it short); stop writing.
        if (this.answer.parsed && this.written < this.contentLength) this.onFailure?.(new NetworkError(`${url.host} answered before the whole body was sent`, { side: 'destination' }));
        this.wake();
        return true;
      },
      error: (e) => (this.beforeOpen ? this.beforeOpen(e) : this.fail(connectError(e, url, 'destination'))),
      timeout: () => {
        // Idle because the source has sent nothing to write (its reader times out on its own) is
        // not the destination stalling; idle with bytes still unsent to it, or its answer owed, is.
        if (!this.busy && this.written < this.contentLength && !this.answer.parsed) return;
        this.fail(timeoutError(`upload to ${url.host} stalled: nothing moved for ${opts.idleTimeoutMs} ms`, 'destination'));
      },
      ended: () => {
        this.closed = true;
        if (!this.answer.parsed) this.fail(new NetworkError(`${url.host} closed the connection before answering`, { side: 'destination' }));
        this.wake();
      },
    };
    this.conn = RawConnection.open(url, opts, false, this.user);
  }

  /** Connect (or take an idle connection) and send the request head. */
  static open(
    method: 'PUT' | 'PATCH' | 'POST',
    req: PreparedRequest,
    contentLength: number,
    opts: RawConnectOptions,
    signal?: AbortSignal,
    onAnswer?: (answer: ResponseHead | Error) => void,
  ): Promise<RawUpload> {
    const head = requestHead(method, req, opts.userAgent, contentLength);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AbortedError());
      const upload = new RawUpload(req.url, contentLength, opts, (e) => {
        clearTimeout(timer);
        upload.close();
        reject(connectError(e, req.url, 'destination'));
      });
      const timer = setTimeout(() => {
        upload.close();
        reject(timeoutError(`cannot connect to ${req.url.host} within ${opts.connectTimeoutMs} ms`, 'destination'));
      }, opts.connectTimeoutMs);
      upload.conn.whenReady(() => {
        clearTimeout(timer);
        upload.beforeOpen = undefined;
        upload.onAnswer = onAnswer;
        upload.conn.socket.write(head);
        resolve(upload);
      });
    });
  }

  /** A write is still with the kernel: the memory it was given must not change yet. */
  get busy(): boolean {
    return this.conn.socket.writableLength > 0;
  }

  get buffered(): number {
    return this.conn.socket.writableLength;
  }

  /** Write one piece; true when the kernel took all of it at once (the piece's memory is free again). */
  write(piece: Buffer, done: (err?: Error) => void): boolean {
    if (this.failure) {
      done(this.failure);
      return false;
    }
    this.conn.socket.write(piece, (err) => done(err ? (this.failure ?? connectError(err, this.url, 'destination')) : undefined));
    this.written += piece.byteLength;
    return this.conn.socket.writableLength === 0;
  }

  private fail(e: Error): void {
    if (this.failure) return;
    // An answer already in (a registry refusing early) is what counts, not the broken write after it.
    if (this.answer.parsed) return this.wake();
    this.failure = e;
    this.conn.release(this.user, false);
    this.onFailure?.(e);
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The registry has answered (possibly before the whole body was sent). */
  get hasAnswer(): boolean {
    return this.answer.parsed !== undefined;
  }

  /** The registry's answer: head and (bounded) body. An abort of `signal` gives up waiting and drops the connection. */
  async response(signal?: AbortSignal): Promise<ResponseHead & { body: Buffer }> {
    let timedOut = false;
    let reusable = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      this.fail(timeoutError(`no answer from ${this.url.host} within ${this.opts.headersTimeoutMs} ms`, 'destination'));
      this.wake();
    }, this.opts.headersTimeoutMs);
    const onAbort = () => this.fail(new AbortedError());
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    try {
      for (;;) {
        if (this.answer.parsed) {
          const { head, keepAlive } = this.answer.parsed;
          const body = this.answer.body;
          const complete = wholeBody(head, body, this.url.host);
          if (complete instanceof Error) throw complete;
          if (complete) {
            reusable = keepAlive && !this.closed && this.written === this.contentLength && answerEndsCleanly(head, body);
            this.answered(head);
            return { ...head, body: complete };
          }
          // Cut short, or never finished: what arrived is the answer (its status is what counts).
          if (this.closed || timedOut) {
            this.answered(head);
            return { ...head, body };
          }
        } else if (this.failure) {
          this.answered(this.failure);
          throw this.failure;
        }
        await new Promise<void>((r) => this.waiters.push(r));
      }
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener('abort', onAbort);
      this.conn.release(this.user, reusable);
    }
  }

  private answered(answer: ResponseHead | Error): void {
    const told = this.onAnswer;
    this.onAnswer = undefined;
    told?.(answer);
  }

  close(): void {
    this.answered(this.failure ?? new AbortedError('upload closed before its answer'));
    this.conn.release(this.user, false);
  }
}

/**
 * A request whose body (if any) is in memory and whose answer is small, read whole: the HEADs,
 * upload sessions, commits and manifest writes around the blob bytes. On a kept-alive
 * connection these cost a fraction of a request through undici (docs/performance.md).
 */
export function rawExchange(method: string, req: PreparedRequest, body: Uint8Array | undefined, opts: RawConnectOptions, signal?: AbortSignal): Promise<ResponseHead & { body: Buffer }> {
  return retryIfStale((fresh) => exchangeOnce(method, req, body, opts, signal, fresh));
}

function exchangeOnce(method: string, req: PreparedRequest, body: Uint8Array | undefined, opts: RawConnectOptions, signal: AbortSignal | undefined, fresh: boolean): Promise<ResponseHead & { body: Buffer }> {
  const head = requestHead(method, req, opts.userAgent, body !== undefined || method === 'POST' || method === 'PUT' || method === 'PATCH' ? (body?.byteLength ?? 0) : undefined);
  return new Promise((resolve, reject) => {
    const incoming = new SmallAnswer();
    let settled = false;
    const settle = (e: Error | undefined, answer?: ResponseHead & { body: Buffer }, reusable = false) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      const reused = conn.served > 0;
      conn.release(user, reusable);
      if (e) reject(reused && incoming.received.byteLength === 0 && !signal?.aborted ? new StaleConnection(e) : e);
      else resolve(answer!);
    };
    const onAbort = () => settle(new AbortedError());
    const user: ConnectionUser = {
      bytes: (d) => {
        const failed = incoming.take(d, () => new NetworkError(`answer from ${req.url.host} to ${method} too large`, { retryable: false }));
        if (failed) {
          settle(failed);
          return false;
        }
        const { parsed } = incoming;
        if (!parsed) return true;
        const rest = incoming.body;
        // A HEAD's answer has no body, whatever its Content-Length says.
        const whole = method === 'HEAD' ? Buffer.alloc(0) : wholeBody(parsed.head, rest, req.url.host);
        if (whole instanceof Error) {
          settle(whole);
          return false;
        }
        if (whole) settle(undefined, { ...parsed.head, body: whole }, parsed.keepAlive && (method === 'HEAD' ? rest.byteLength === 0 : answerEndsCleanly(parsed.head, rest)));
        return true;
      },
      // The socket's own error (its code: refused, reset, TLS verification) for the transport to explain.
      error: (e) => settle(e),
      timeout: () => settle(timeoutError(`${method} to ${req.url.host} stalled: nothing moved for ${opts.idleTimeoutMs} ms`)),
      ended: () => {
        // A body without a length ends with the connection.
        const { parsed } = incoming;
        if (parsed && contentLengthOf(parsed.head) === undefined && parsed.head.headers['transfer-encoding'] === undefined) {
          settle(undefined, { ...parsed.head, body: incoming.body.subarray(0, MAX_ERROR_BODY_BYTES) });
        } else settle(new NetworkError(`${req.url.host} closed the connection before answering ${method}`));
      },
    };
    const conn = RawConnection.open(req.url, opts, fresh, user);
    const timer = setTimeout(() => settle(timeoutError(`no answer from ${req.url.host} to ${method} within ${opts.headersTimeoutMs} ms`)), opts.headersTimeoutMs + opts.connectTimeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) return onAbort();
    conn.whenReady(() => {
      if (settled) return;
      if (body && body.byteLength > 0) conn.socket.write(Buffer.concat([Buffer.from(head, 'latin1'), body]));
      else conn.socket.write(head, 'latin1');
    });
  });
}
