// ferry's own HTTP/1.1 for the one path that moves a blob's bytes from a registry to a
// registry (src/copy/blob-pipe.ts). The source's response body is read into one buffer that is
// used again for every read (the socket's `onread`), each piece is shown to the caller (the
// hash) and written to the destination's request on a second connection, and reading pauses
// while a write is still with the kernel, so the buffer is never overwritten under it.
//
// Why not undici: every socket read there lands in a fresh 64 KiB buffer, and hashing and
// writing fresh memory costs about as much again as the copy itself. Between two distribution
// registries, 8 × 64 MiB layers took 1.45 CPU-s through undici and 0.84 through this
// (docs/performance.md). Everything else (manifests, HEADs, tokens, small blobs, proxies)
// stays on undici (src/transport/http.ts).
//
// Deliberately small: one request per connection, no proxies, bodies
// with a Content-Length only. The caller falls back to the regular path whenever an answer is
// anything else.
import net from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { AbortedError, NetworkError, type Side } from '../errors.ts';

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

export interface RawConnectOptions {
  /** Extra CA certificates (PEM) for TLS, on top of the process defaults. */
  ca?: string[] | undefined;
  connectTimeoutMs: number;
  /** A response head must arrive within this. */
  headersTimeoutMs: number;
  /** No bytes either way for this long: the connection is stalled. */
  idleTimeoutMs: number;
  userAgent: string;
}

/** The size a source's read buffer starts at, and keeps while other pipes read too: 4× fewer reads than Node's 64 KiB. */
export const PIPE_BUFFER_BYTES = 256 * 1024;
/** The most the read buffer of a pipe that reads alone grows to. */
export const PIPE_BUFFER_MAX_BYTES = 4 * 1024 * 1024;
const MAX_HEAD_BYTES = 64 * 1024;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
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

  /** The buffer for the next read, after one that brought `lastRead` bytes (0 before the first). */
  next(lastRead: number): Buffer {
    if (!this.buffer) {
      readBuffersOpen += 1;
      this.buffer = Buffer.allocUnsafe(PIPE_BUFFER_BYTES);
      return this.buffer;
    }
    // A buffer replaced here may still be under a pending write; it is left to the garbage collector.
    const size = this.buffer.byteLength;
    if (readBuffersOpen > 1) {
      if (size > PIPE_BUFFER_BYTES) this.buffer = Buffer.allocUnsafe(PIPE_BUFFER_BYTES);
    } else if (lastRead === size && size < PIPE_BUFFER_MAX_BYTES) {
      this.buffer = Buffer.allocUnsafe(size * 2);
    }
    return this.buffer;
  }

  /** The connection is closed: this buffer no longer counts as reading. */
  release(): void {
    if (this.buffer) readBuffersOpen -= 1;
    this.buffer = undefined;
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

/** Parses a response head; undefined until the blank line has arrived. */
function parseHead(bytes: Buffer): { head: ResponseHead; bodyStart: number } | undefined {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const lines = bytes.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
  if (!status) throw new NetworkError(`not an HTTP/1.1 response: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new NetworkError(`malformed response header line ${JSON.stringify(line.slice(0, 80))}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { head: { status: Number(status[1]), headers }, bodyStart: end + 4 };
}

/** A Content-Length that is one plain non-negative integer, else undefined. */
export function contentLengthOf(head: ResponseHead): number | undefined {
  const v = head.headers['content-length'];
  if (v === undefined || !/^\d{1,16}$/.test(v)) return undefined;
  return Number(v);
}

/** An answer's whole body once it has all arrived (Content-Length, chunked, or none by status), else undefined. */
function completeBody(head: ResponseHead, body: Buffer): Buffer | undefined {
  if (head.status === 204 || head.status === 304 || head.status < 200) return Buffer.alloc(0);
  if ((head.headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) return dechunk(body);
  const length = contentLengthOf(head);
  if (length !== undefined && body.byteLength >= length) return body.subarray(0, Math.min(length, MAX_ERROR_BODY_BYTES));
  return undefined;
}

/** A chunked body decoded, once its last chunk has arrived; undefined until then (or if malformed). */
export function dechunk(bytes: Buffer): Buffer | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = bytes.indexOf('\r\n', at);
    if (eol < 0) return undefined;
    const size = Number.parseInt(bytes.subarray(at, eol).toString('latin1').split(';')[0]!.trim(), 16);
    if (!Number.isSafeInteger(size) || size < 0) return undefined;
    // The last chunk, then optional trailers and the blank line that ends them.
    if (size === 0) return bytes.indexOf('\r\n\r\n', eol) >= 0 ? Buffer.concat(parts) : undefined;
    if (bytes.byteLength < eol + 2 + size + 2) return undefined;
    parts.push(bytes.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

/** A plain-HTTP socket whose reads land in one ReadBuffer and go to `onBytes` (false: stop reading); the buffer is released when the socket closes. */
function connectReadingInto(url: URL, opts: RawConnectOptions, onBytes: (bytes: Buffer) => boolean): net.Socket {
  const readBuffer = new ReadBuffer();
  let lastRead = 0;
  // Node asks `buffer` for the buffer before the first read and again after every callback.
  const socket = connectSocket(url, opts, {
    buffer: () => readBuffer.next(lastRead),
    callback: (n, buf) => {
      lastRead = n;
      return onBytes(buf.subarray(0, n));
    },
  });
  socket.once('close', () => readBuffer.release());
  return socket;
}

function connectSocket(url: URL, opts: RawConnectOptions, onread?: { buffer: () => Buffer; callback: (n: number, buf: Buffer) => boolean }): net.Socket {
  const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const base = { host, port, noDelay: true, ...(onread ? { onread } : {}) };
  if (url.protocol === 'https:') {
    // Loaded here: a copy between plain-HTTP registries never needs node:tls.
    const tls = process.getBuiltinModule('node:tls');
    const tlsOptions: ConnectionOptions = { ...base, ALPNProtocols: ['http/1.1'] };
    if (net.isIP(host) === 0) tlsOptions.servername = host;
    if (opts.ca && opts.ca.length > 0) tlsOptions.ca = [...tls.rootCertificates, ...opts.ca];
    return tls.connect(tlsOptions) as TLSSocket;
  }
  return net.connect(base as net.NetConnectOpts);
}

/** The event after which a request can be written: the TLS handshake's end, or the TCP connect. */
function readyEvent(url: URL): 'secureConnect' | 'connect' {
  return url.protocol === 'https:' ? 'secureConnect' : 'connect';
}

function connectError(e: unknown, url: URL, side: Side): NetworkError {
  const err = e as Error & { code?: string };
  return new NetworkError(`${url.host}: ${err.code ?? err.message}`, { side, cause: e });
}

/**
 * A source GET whose body is read into one reused buffer. `open` resolves once the response
 * head is in; the body is then taken with `pipeInto`, piece by piece, as the sink takes it.
 */
export class RawBodyReader {
  readonly head: ResponseHead;
  /** Body bytes not yet taken. */
  remaining: number;
  private readonly socket: net.Socket;
  private pending: Buffer | undefined;
  private deliver: ((bytes: Buffer) => void) | undefined;
  private failure: Error | undefined;
  private onFailure: ((e: Error) => void) | undefined;
  private ended = false;

  private constructor(socket: net.Socket, head: ResponseHead, bodyLength: number) {
    this.socket = socket;
    this.head = head;
    this.remaining = bodyLength;
  }

  /**
   * Send the GET and wait for the head. Resolves with the reader for a 2xx answer with a
   * Content-Length, or with the head alone for anything else (the connection is then closed).
   */
  static open(req: PreparedRequest, opts: RawConnectOptions, signal?: AbortSignal): Promise<RawBodyReader | { declined: ResponseHead | string }> {
    return new Promise((resolve, reject) => {
      let headBytes: Buffer = Buffer.alloc(0);
      let reader: RawBodyReader | undefined;
      let settled = false;
      const fail = (e: Error) => {
        if (reader) return reader.fail(e);
        if (settled) return;
        settled = true;
        cleanup();
        socket.destroy();
        reject(e);
      };
      const onAbort = () => fail(new AbortedError());
      const cleanup = () => {
        clearTimeout(headTimer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onBytes = (chunk: Buffer): boolean => {
        if (reader) {
          reader.take(chunk);
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
          if (headBytes.byteLength > MAX_HEAD_BYTES) fail(new NetworkError(`response head from ${req.url.host} larger than ${MAX_HEAD_BYTES} bytes`, { side: 'source' }));
          return true;
        }
        settled = true;
        cleanup();
        const length = contentLengthOf(parsed.head);
        if (parsed.head.status < 200 || parsed.head.status >= 300 || length === undefined || parsed.head.headers['transfer-encoding'] !== undefined) {
          socket.destroy();
          resolve({ declined: parsed.head });
          return false;
        }
        reader = new RawBodyReader(socket, parsed.head, length);
        socket.setTimeout(opts.idleTimeoutMs);
        // Body bytes that came with the head (headBytes is a copy, not the shared buffer).
        const early = headBytes.subarray(parsed.bodyStart);
        if (early.byteLength > 0) reader.take(early);
        resolve(reader);
        return true;
      };
      // Plain TCP reads into the one buffer. TLS does not: a TLS socket paused with decrypted
      // bytes still inside it does not hand them over when resumed (they wait for the next
      // record from the network), so over TLS each read is a fresh buffer, from 'data' events.
      const tlsSocket = req.url.protocol === 'https:';
      const socket = tlsSocket ? connectSocket(req.url, opts) : connectReadingInto(req.url, opts, onBytes);
      if (tlsSocket) socket.on('data', (d: Buffer) => onBytes(d));
      const headTimer = setTimeout(() => fail(new NetworkError(`no response head from ${req.url.host} within ${opts.headersTimeoutMs} ms`, { side: 'source' })), opts.headersTimeoutMs + opts.connectTimeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.on('error', (e) => fail(connectError(e, req.url, 'source')));
      socket.on('timeout', () => fail(new NetworkError(`download from ${req.url.host} stalled: no bytes for ${opts.idleTimeoutMs} ms`, { side: 'source' })));
      const ended = () => {
        if (reader) reader.onEnd();
        else fail(new NetworkError(`${req.url.host} closed the connection before a response`, { side: 'source' }));
      };
      socket.on('end', ended);
      socket.on('close', ended);
      socket.once(readyEvent(req.url), () => {
        try {
          socket.write(requestHead('GET', req, opts.userAgent, undefined));
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
      this.fail(new NetworkError(`${this.socket.remoteAddress ?? 'source'} sent more than its Content-Length`, { side: 'source', retryable: false }));
      return;
    }
    if (this.deliver) {
      this.deliver(bytes);
      return;
    }
    // Nobody is taking bytes now (between two sinks): hold them, and read no more until taken.
    this.pending = bytes;
    this.socket.pause();
  }

  private onEnd(): void {
    if (this.ended) return;
    this.ended = true;
    const short = this.remaining - (this.pending?.byteLength ?? 0);
    if (short > 0) this.fail(new NetworkError(`download ended ${short} bytes short`, { side: 'source' }));
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.socket.destroy();
    this.onFailure?.(e);
  }

  /**
   * Move the next `length` bytes of the body into `sink`, showing each piece to `inspect`
   * before it is written. Resolves when all are written; rejects with the first failure on
   * either side (bytes moved so far are in `sink.written`).
   */
  pipeInto(sink: RawUpload, length: number, inspect: (piece: Buffer) => void, signal?: AbortSignal): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (length > this.remaining) return Promise.reject(new NetworkError(`asked for ${length} bytes, the response has ${this.remaining} left`, { side: 'source', retryable: false }));
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
        } else resolve();
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
          if (left === 0) return finish();
          // Read again only once every write is off the buffer (an earlier write's callback can come after a later write went pending).
          if (!sink.busy && !this.pending) this.socket.resume();
        });
        if (rest) this.pending = rest;
        if (!flushed || left === 0) this.socket.pause();
        if (flushed && left === 0) finish();
        if (this.remaining === 0) this.socket.destroy();
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
      if (!done && !this.pending && !sink.busy) this.socket.resume();
    });
  }

  close(): void {
    this.deliver = undefined;
    this.socket.destroy();
  }
}

/**
 * A PUT or PATCH whose body ferry writes piece by piece (`Content-Length` known up front),
 * then `response()` reads the answer. The answer may also come early (a registry refusing
 * the request before the body is in): writes then fail and `response()` has it.
 */
export class RawUpload {
  /** Body bytes handed to the kernel so far. */
  written = 0;
  onFailure: ((e: Error) => void) | undefined;
  private readonly socket: net.Socket;
  private readonly url: URL;
  private readonly opts: RawConnectOptions;
  private readonly contentLength: number;
  private received: Buffer = Buffer.alloc(0);
  private answered: { head: ResponseHead; bodyStart: number } | undefined;
  private closed = false;
  private failure: Error | undefined;
  private waiters: (() => void)[] = [];

  private constructor(socket: net.Socket, url: URL, contentLength: number, opts: RawConnectOptions) {
    this.socket = socket;
    this.url = url;
    this.contentLength = contentLength;
    this.opts = opts;
    socket.on('data', (d: Buffer) => {
      if (this.received.byteLength + d.byteLength > MAX_HEAD_BYTES + MAX_ERROR_BODY_BYTES) return this.fail(new NetworkError(`answer from ${url.host} too large`, { side: 'destination' }));
      this.received = Buffer.concat([this.received, d]);
      try {
        this.answered ??= parseHead(this.received);
      } catch (e) {
        return this.fail(e as Error);
      }
      // An answer before the whole body: the registry refused it (or cut it short); stop writing.
      if (this.answered && this.written < this.contentLength) this.onFailure?.(new NetworkError(`${url.host} answered before the whole body was sent`, { side: 'destination' }));
      this.wake();
    });
    socket.on('error', (e) => this.fail(connectError(e, url, 'destination')));
    socket.on('timeout', () => this.fail(new NetworkError(`upload to ${url.host} stalled: nothing moved for ${opts.idleTimeoutMs} ms`, { side: 'destination' })));
    socket.on('close', () => {
      this.closed = true;
      if (!this.answered) this.fail(new NetworkError(`${url.host} closed the connection before answering`, { side: 'destination' }));
      this.wake();
    });
  }

  /** Connect and send the request head. */
  static open(method: 'PUT' | 'PATCH', req: PreparedRequest, contentLength: number, opts: RawConnectOptions, signal?: AbortSignal): Promise<RawUpload> {
    const head = requestHead(method, req, opts.userAgent, contentLength);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AbortedError());
      const socket = connectSocket(req.url, opts);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new NetworkError(`cannot connect to ${req.url.host} within ${opts.connectTimeoutMs} ms`, { side: 'destination' }));
      }, opts.connectTimeoutMs);
      const early = (e: Error) => {
        clearTimeout(timer);
        reject(connectError(e, req.url, 'destination'));
      };
      socket.once('error', early);
      socket.once(readyEvent(req.url), () => {
        clearTimeout(timer);
        socket.off('error', early);
        socket.setTimeout(opts.idleTimeoutMs);
        const upload = new RawUpload(socket, req.url, contentLength, opts);
        socket.write(head);
        resolve(upload);
      });
    });
  }

  /** A write is still with the kernel: the memory it was given must not change yet. */
  get busy(): boolean {
    return this.socket.writableLength > 0;
  }

  /** Write one piece; true when the kernel took all of it at once (the piece's memory is free again). */
  write(piece: Buffer, done: (err?: Error) => void): boolean {
    if (this.failure) {
      done(this.failure);
      return false;
    }
    this.socket.write(piece, (err) => done(err ? (this.failure ?? connectError(err, this.url, 'destination')) : undefined));
    this.written += piece.byteLength;
    return this.socket.writableLength === 0;
  }

  private fail(e: Error): void {
    if (this.failure) return;
    // An answer already in (a registry refusing early) is what counts, not the broken write after it.
    if (this.answered) return this.wake();
    this.failure = e;
    this.socket.destroy();
    this.onFailure?.(e);
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The registry has answered (possibly before the whole body was sent). */
  get hasAnswer(): boolean {
    return this.answered !== undefined;
  }

  /** The registry's answer: head and (bounded) body. */
  async response(): Promise<ResponseHead & { body: Buffer }> {
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      this.fail(new NetworkError(`no answer from ${this.url.host} within ${this.opts.headersTimeoutMs} ms`, { side: 'destination' }));
      this.wake();
    }, this.opts.headersTimeoutMs);
    try {
      for (;;) {
        if (this.answered) {
          const { head, bodyStart } = this.answered;
          const body = this.received.subarray(bodyStart);
          const complete = completeBody(head, body);
          if (complete) return { ...head, body: complete };
          // Cut short, or never finished: what arrived is the answer (its status is what counts).
          if (this.closed || timedOut) return { ...head, body };
        } else if (this.failure) throw this.failure;
        await new Promise<void>((r) => this.waiters.push(r));
      }
    } finally {
      clearTimeout(deadline);
      this.socket.destroy();
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
