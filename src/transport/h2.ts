// HTTP/2 to registries that offer it by ALPN (node:http2): many requests at once on a few
// connections, each opened with one TCP and one TLS handshake, instead of a connection per
// request in flight. Across a network 20-150 ms away every handshake is two round trips, and
// over TLS a dozen HTTP/1.1 connections cost more CPU than the bytes (docs/performance.md,
// "Over a WAN"). ferry's own HTTP/1.1 (raw-http.ts) stays for plain HTTP and for registries that
// answer ALPN with http/1.1.
//
// The first connection to an HTTPS origin offers h2 and http/1.1; the registry's choice is kept
// for the process. An HTTP/1.1 answer's socket goes to the HTTP/1.1 pool (nothing is wasted).
// On an h2 origin, streams go to the session with the fewest body-carrying streams; another
// session is opened in the background (up to `maxSessions`) once each carries `bulkPerSession`:
// one TCP connection's window grows from ten segments, and a server grants an upload a window
// of its own per connection (distribution's Go server: 1 MiB), so several connections move a
// large copy's bytes sooner than one.
//
// As careful as the HTTP/1.1 path (raw-http.ts):
// - the registry's headers are bounded (SETTINGS_MAX_HEADER_LIST_SIZE, a count of fields, and
//   checked again here), and so are bodies ferry reads whole (64 KiB) and the session's memory;
// - interim answers (1xx) are skipped; a push is refused (SETTINGS_ENABLE_PUSH 0);
// - GOAWAY: the session takes no new streams; a stream the server refused (REFUSED_STREAM, or
//   above GOAWAY's last stream id) never reached it and is sent again on another session when it
//   can be (no body, or one in memory); other resets and protocol errors are NetworkErrors
//   (retryable, REGISTRY_UNAVAILABLE once retries run out), never INTERNAL;
// - timeouts as on HTTP/1.1: connect, the answer's head, a stream with nothing moving (not when
//   only the source has nothing to send), and the read floor for bodies;
// - what flows through the flow controller (src/transport/flow.ts) is decided by the caller
//   (src/transport/http.ts admits and settles every request, on either protocol).
import type { ClientHttp2Session, ClientHttp2Stream, IncomingHttpHeaders, IncomingHttpStatusHeader, OutgoingHttpHeaders } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { AbortedError, NetworkError, type Side } from '../errors.ts';
import { FloorWatch, SlowBodyError, type ReadFloor } from './read-floor.ts';
import { MAX_ERROR_BODY_BYTES, bodyStream, connectError, timeoutError, type BodyReader, type PreparedRequest, type RawGetDeclined, type ResponseBodyStream, type ResponseHead, type UploadSink } from './raw-http.ts';
import type { TlsSessions } from './tls-sessions.ts';

export interface H2Options {
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  /** Nothing moving on a stream for this long: stalled. */
  idleTimeoutMs: number;
  userAgent: string;
  tls: TlsSessions;
  readFloor?: ReadFloor | undefined;
  onStall?: ((host: string) => void) | undefined;
  /** Sessions to one origin at most. */
  maxSessions?: number;
  /** Body-carrying streams on each session before another one is opened. */
  bulkPerSession?: number;
  /** A first connection that agreed on HTTP/1.1: for the HTTP/1.1 pool. */
  adoptHttp1?: (url: URL, socket: TLSSocket) => void;
  /** A session unused this long is closed. */
  idleSessionMs?: number;
}

/** What the registry at an origin speaks: learned from its first connection's ALPN. */
export type Protocol = 'h2' | 'http/1.1';

/** The most header bytes (names and values, as HPACK counts them) ferry accepts in one answer: as on HTTP/1.1. */
export const MAX_HEADER_LIST_BYTES = 64 * 1024;
/** Header fields in one answer at most. */
const MAX_HEADER_FIELDS = 128;
/** Receive windows: a stream may have this much in flight towards ferry, a session all of its streams' (the bandwidth × delay of a fast link far away). */
const STREAM_WINDOW = 4 * 1024 * 1024;
const SESSION_WINDOW = 16 * 1024 * 1024;
/** A reader whose pieces are its own stops reading while this much waits to be sent on. */
const SINK_BACKLOG_BYTES = 1024 * 1024;
const DEFAULT_MAX_SESSIONS = 8;
/** An upload goes on HTTP/2 up to this many of the server's stream windows (uploadFits). */
const UPLOAD_WINDOWS = 4;
/** RFC 9113's initial window, for a server that did not say. */
const DEFAULT_REMOTE_WINDOW = 65_535;
const DEFAULT_BULK_PER_SESSION = 6;
const DEFAULT_IDLE_SESSION_MS = 30_000;
/** Headers a client must not send over HTTP/2 (RFC 9113 §8.2.2), and those the stream sets itself. */
const NOT_SENT = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'user-agent']);
/** RST_STREAM / GOAWAY codes (RFC 9113 §7). */
const REFUSED_STREAM = 7;
const CODE_NAMES = ['NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT', 'STREAM_CLOSED', 'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR', 'ENHANCE_YOUR_CALM', 'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED'];

function codeName(code: number | undefined): string {
  return code === undefined ? 'unknown' : (CODE_NAMES[code] ?? `code ${code}`);
}

/** A stream the server did not process (refused, or above its GOAWAY): safe to send again on another session. */
export class RefusedStream extends NetworkError {
  constructor(host: string, why: string, side?: Side) {
    super(`${host} refused an HTTP/2 stream (${why}): not processed, sent again on another connection`, side ? { side } : {});
    this.name = 'RefusedStream';
  }
}

/** One HTTP/2 connection and what runs on it. */
class Session {
  readonly session: ClientHttp2Session;
  /** Streams open now, and those of them carrying a blob's bytes. */
  streams = 0;
  bulk = 0;
  /** No new streams: GOAWAY came, or it failed or closed. */
  draining = false;
  /** Streams above this id were not processed (GOAWAY). */
  lastStreamId = Number.POSITIVE_INFINITY;
  /** The streams open on it: a GOAWAY ends those the server says it did not take. */
  readonly live = new Set<ClientHttp2Stream>();
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly idleMs: number;

  constructor(session: ClientHttp2Session, idleMs: number) {
    this.session = session;
    this.idleMs = idleMs;
    this.armIdle();
  }

  /** Room for another stream (the server's SETTINGS_MAX_CONCURRENT_STREAMS). */
  get usable(): boolean {
    if (this.draining || this.session.closed || this.session.destroyed) return false;
    const max = this.session.remoteSettings?.maxConcurrentStreams ?? 100;
    return this.streams < max;
  }

  opened(bulk: boolean): void {
    this.streams += 1;
    if (bulk) this.bulk += 1;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    // A session with streams keeps the process alive; an idle one does not.
    (this.session as ClientHttp2Session & { ref(): void }).ref();
  }

  closed(bulk: boolean): void {
    this.streams = Math.max(0, this.streams - 1);
    if (bulk) this.bulk = Math.max(0, this.bulk - 1);
    if (this.streams === 0) this.armIdle();
  }

  private armIdle(): void {
    (this.session as ClientHttp2Session & { unref(): void }).unref();
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.draining = true;
      this.session.close();
    }, this.idleMs);
    this.idleTimer.unref();
  }

  stop(): void {
    clearTimeout(this.idleTimer);
    this.draining = true;
    this.session.destroy();
  }
}

/** The sessions to one origin, and what it speaks. */
class Origin {
  protocol: Promise<Protocol> | undefined;
  known: Protocol | undefined;
  readonly sessions: Session[] = [];
  /** Sessions being opened now. */
  readonly opening = new Set<Promise<Session | undefined>>();
}

/** A stream and its answer's head, once it came. */
interface Answer {
  stream: ClientHttp2Stream;
  head: ResponseHead;
  session: Session;
  bulk: boolean;
}

export class H2Connections {
  private readonly opts: H2Options;
  private readonly origins = new Map<string, Origin>();
  private closed = false;

  constructor(opts: H2Options) {
    this.opts = opts;
  }

  private origin(url: URL): Origin {
    let o = this.origins.get(url.origin);
    if (!o) {
      o = new Origin();
      this.origins.set(url.origin, o);
    }
    return o;
  }

  /**
   * What `url`'s origin speaks, asked by a first connection offering h2 and http/1.1 (kept for the
   * process once known; a connection that failed is asked again next time). Rejects with the
   * socket's own error (refused, TLS verification) for the transport to explain.
   */
  protocolOf(url: URL): Promise<Protocol> {
    const o = this.origin(url);
    if (o.protocol) return o.protocol;
    const asked = this.firstConnection(url, o);
    o.protocol = asked;
    asked.catch(() => {
      if (o.protocol === asked) o.protocol = undefined;
    });
    return asked;
  }

  /** The protocol when it is known already, without asking. */
  knownProtocol(url: URL): Protocol | undefined {
    return this.origins.get(url.origin)?.known;
  }

  private firstConnection(url: URL, o: Origin): Promise<Protocol> {
    let protocol: Protocol = 'http/1.1';
    return this.openEither(url, o, (p) => (protocol = p)).then(() => protocol);
  }

  /**
   * A connection offering both protocols, used as the server chose: an h2 session, or a
   * connection for the HTTP/1.1 pool. `chose` hears the choice.
   */
  private openEither(url: URL, o: Origin, chose?: (p: Protocol) => void): Promise<Session | undefined> {
    return this.track(
      o,
      this.connectTls(url).then((socket) => {
        const protocol: Protocol = socket.alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
        o.known ??= protocol;
        chose?.(protocol);
        if (protocol === 'h2') return this.addSession(url, o, socket);
        if (this.opts.adoptHttp1 && !this.closed) this.opts.adoptHttp1(url, socket);
        else socket.destroy();
        return undefined;
      }),
    );
  }

  /** A session being opened: counted while it is, so that others wait for it rather than open their own. */
  private track(o: Origin, opening: Promise<Session | undefined>): Promise<Session | undefined> {
    o.opening.add(opening);
    const done = () => o.opening.delete(opening);
    opening.then(done, done);
    return opening;
  }

  /** A TLS connection offering h2 and http/1.1, once its handshake is done. */
  private connectTls(url: URL): Promise<TLSSocket> {
    return new Promise((resolve, reject) => {
      const socket = this.opts.tls.connect(url, ['h2', 'http/1.1']);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(timeoutError(`cannot connect to ${url.host} within ${this.opts.connectTimeoutMs} ms`));
      }, this.opts.connectTimeoutMs);
      const onError = (e: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      socket.once('error', onError);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        if (this.closed) {
          socket.destroy();
          reject(new AbortedError('transport closed'));
          return;
        }
        resolve(socket);
      });
    });
  }

  private addSession(url: URL, o: Origin, socket: TLSSocket): Session {
    const http2 = process.getBuiltinModule('node:http2');
    const session = http2.connect(url.origin, {
      createConnection: () => socket,
      maxHeaderListPairs: MAX_HEADER_FIELDS,
      maxSessionMemory: 32,
      settings: { enablePush: false, initialWindowSize: STREAM_WINDOW, maxHeaderListSize: MAX_HEADER_LIST_BYTES },
    });
    const s = new Session(session, this.opts.idleSessionMs ?? DEFAULT_IDLE_SESSION_MS);
    o.sessions.push(s);
    const drop = () => {
      s.draining = true;
      const i = o.sessions.indexOf(s);
      if (i >= 0) o.sessions.splice(i, 1);
    };
    session.on('connect', () => session.setLocalWindowSize(SESSION_WINDOW));
    session.on('goaway', (_code: number, lastStreamId: number) => {
      s.draining = true;
      s.lastStreamId = lastStreamId;
      // Streams above the last one the server processed never reached it: end them here (their
      // requests are sent again elsewhere), rather than wait for answers that will not come.
      for (const stream of s.live) if (stream.id !== undefined && stream.id > lastStreamId && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    // A session's failure reaches its streams as theirs; here it only leaves the pool.
    session.on('error', drop);
    session.on('close', drop);
    // ALPN said h2: node's own 'connect' may already have passed on an established socket.
    return s;
  }

  /** Open another session to an origin known to speak h2; undefined when it no longer offers h2. */
  private openSession(url: URL, o: Origin): Promise<Session | undefined> {
    return this.track(
      o,
      this.connectTls(url).then((socket) => {
        if (socket.alpnProtocol !== 'h2') {
          socket.destroy();
          return undefined;
        }
        return this.addSession(url, o, socket);
      }),
    );
  }

  /** Another session in the background (a failure to open one costs nothing: the others carry on). */
  private growSession(url: URL, o: Origin): void {
    this.openSession(url, o).catch(() => undefined);
  }

  /**
   * Have up to `sessions` connections open (or opening) to `url`'s origin before they are needed:
   * while the manifest is read, the connections for the blobs get their handshakes done.
   */
  async warm(url: URL, sessions: number): Promise<void> {
    const o = this.origin(url);
    const max = Math.min(sessions, this.opts.maxSessions ?? DEFAULT_MAX_SESSIONS);
    if (o.known === undefined) {
      // Not known yet: all at once, each used as the server answers (idle HTTP/1.1 ones wait in that pool).
      const first = this.protocolOf(url);
      while (!this.closed && o.sessions.length + o.opening.size < max) this.openEither(url, o).catch(() => undefined);
      await first.catch(() => undefined);
      return;
    }
    if (o.known !== 'h2') return;
    while (!this.closed && o.sessions.length + o.opening.size < max) this.growSession(url, o);
  }

  /** A session for a new stream: the least loaded; another is opened in the background when all are busy. */
  private async pick(url: URL, bulk: boolean, avoid?: Session): Promise<Session> {
    const o = this.origin(url);
    for (let tries = 0; ; tries++) {
      const usable = o.sessions.filter((s) => s.usable && s !== avoid);
      const best = usable.reduce<Session | undefined>((a, b) => (!a || (bulk ? b.bulk < a.bulk || (b.bulk === a.bulk && b.streams < a.streams) : b.streams < a.streams) ? b : a), undefined);
      const max = this.opts.maxSessions ?? DEFAULT_MAX_SESSIONS;
      const per = this.opts.bulkPerSession ?? DEFAULT_BULK_PER_SESSION;
      if (bulk && best && best.bulk >= per && o.sessions.length + o.opening.size < max) this.growSession(url, o);
      if (best) return best;
      // None usable (idle ones were closed, or all are draining): one being opened, or a new one.
      if (tries >= 3) throw new NetworkError(`cannot open an HTTP/2 connection to ${url.host}`);
      const next = o.opening.size > 0 ? Promise.race(o.opening) : this.openSession(url, o);
      if ((await next) === undefined && o.opening.size === 0 && !o.sessions.some((s) => s.usable)) {
        throw new NetworkError(`${url.host} no longer offers HTTP/2 on a new connection`);
      }
    }
  }

  /** Request headers for HTTP/2: pseudo-headers, lower-case names, nothing connection-specific. */
  private headersFor(method: string, url: URL, headers: Record<string, string>, contentLength: number | undefined): OutgoingHttpHeaders {
    const out: OutgoingHttpHeaders = { ':method': method, ':path': `${url.pathname}${url.search}`, ':authority': url.host, ':scheme': 'https', 'user-agent': this.opts.userAgent };
    for (const [name, value] of Object.entries(headers)) {
      const n = name.toLowerCase();
      if (!/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(n) || /[\r\n\0]/.test(value)) throw new NetworkError(`refusing to send a malformed header ${JSON.stringify(name)}`, { retryable: false });
      if (NOT_SENT.has(n) || n === 'content-length') continue;
      out[n] = value;
    }
    if (contentLength !== undefined) out['content-length'] = String(contentLength);
    return out;
  }

  /**
   * Send a request and wait for its answer's head. `body`: written whole (in memory), or `stream`
   * for the caller to write. A stream refused by the server is sent again once on another session
   * when `replayable`.
   */
  private async open(
    method: string,
    url: URL,
    headers: Record<string, string>,
    o: { body?: Uint8Array | undefined; streamed?: number | undefined; bulk: boolean; side?: Side | undefined; signal?: AbortSignal | undefined; replayable: boolean; onStream?: (stream: ClientHttp2Stream) => void },
  ): Promise<Answer> {
    let avoid: Session | undefined;
    for (let attempt = 0; ; attempt++) {
      const session = await this.pick(url, o.bulk, avoid);
      try {
        return await this.attempt(session, method, url, headers, o);
      } catch (e) {
        if (!(e instanceof RefusedStream) || !o.replayable || attempt >= 2 || o.signal?.aborted) throw e;
        avoid = session;
      }
    }
  }

  private attempt(
    session: Session,
    method: string,
    url: URL,
    headers: Record<string, string>,
    o: { body?: Uint8Array | undefined; streamed?: number | undefined; bulk: boolean; side?: Side | undefined; signal?: AbortSignal | undefined; onStream?: (stream: ClientHttp2Stream) => void },
  ): Promise<Answer> {
    if (o.signal?.aborted) return Promise.reject(new AbortedError());
    const contentLength = o.body !== undefined ? o.body.byteLength : o.streamed;
    const endStream = o.body === undefined && o.streamed === undefined;
    let stream: ClientHttp2Stream;
    try {
      stream = session.session.request(this.headersFor(method, url, headers, contentLength ?? (method === 'POST' || method === 'PUT' || method === 'PATCH' ? 0 : undefined)), { endStream: endStream && method !== 'POST' && method !== 'PUT' && method !== 'PATCH' });
    } catch (e) {
      // The session went away between the pick and the request (GOAWAY, closed): another one.
      if ((e as { code?: string }).code?.startsWith('ERR_HTTP2_')) return Promise.reject(new RefusedStream(url.host, (e as Error).message, o.side));
      throw e;
    }
    session.opened(o.bulk);
    session.live.add(stream);
    // Errors reach whoever reads the stream; none may go unheard between two readers.
    stream.on('error', ignore);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      session.live.delete(stream);
      session.closed(o.bulk);
    };
    stream.once('close', release);
    if (o.body !== undefined) stream.end(o.body);
    else if (endStream && (method === 'POST' || method === 'PUT' || method === 'PATCH')) stream.end();
    o.onStream?.(stream);
    return new Promise<Answer>((resolve, reject) => {
      let settled = false;
      const settle = (e: Error | undefined, head?: ResponseHead) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
        stream.off('response', onResponse);
        stream.off('error', onError);
        stream.off('close', onClose);
        if (e) {
          stream.close(8 /* CANCEL */);
          reject(e);
        } else resolve({ stream, head: head!, session, bulk: o.bulk });
      };
      const onAbort = () => settle(new AbortedError());
      const onResponse = (h: IncomingHttpHeaders & IncomingHttpStatusHeader) => {
        const head = responseHead(h, url.host, o.side);
        if (head instanceof Error) settle(head);
        else settle(undefined, head);
      };
      const onError = (e: Error) => settle(streamError(e, stream, session, url.host, o.side));
      const onClose = () => settle(closedError(stream, session, url.host, o.side));
      // An upload's answer is owed once its body is in: its caller keeps that deadline (H2Upload.response).
      const timer = o.streamed === undefined ? setTimeout(() => settle(timeoutError(`no answer from ${url.host} to ${method} within ${this.opts.headersTimeoutMs} ms`, o.side)), this.opts.headersTimeoutMs) : undefined;
      stream.on('response', onResponse);
      stream.on('error', onError);
      stream.on('close', onClose);
      o.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** A request whose body (if any) is in memory and whose answer is small, read whole (bounded). */
  async exchange(method: string, req: PreparedRequest, body: Uint8Array | undefined, signal?: AbortSignal): Promise<ResponseHead & { body: Buffer }> {
    const a = await this.open(method, req.url, req.headers, { body, bulk: false, signal, replayable: true });
    const bytes = await readWhole(a, req.url.host, undefined, this.opts.idleTimeoutMs, signal, method === 'HEAD');
    return { ...a.head, body: bytes };
  }

  /**
   * A GET whose 2xx body is read as it arrives (the reader); any other answer's body read whole
   * (bounded), as `declined`. `side`: whose failures the body's are (the pipe: the source).
   * `needLength`: a 2xx without a Content-Length is declined too (the pipe needs to know it).
   */
  async get(req: PreparedRequest, signal: AbortSignal | undefined, side: Side | undefined, needLength: boolean): Promise<H2BodyReader | RawGetDeclined> {
    const a = await this.open('GET', req.url, req.headers, { bulk: true, side, signal, replayable: true });
    const { status } = a.head;
    if (status < 200 || status >= 300) {
      const body = await readWhole(a, req.url.host, side, this.opts.idleTimeoutMs, signal, false).catch(() => Buffer.alloc(0));
      return { declined: a.head, body };
    }
    const length = contentLengthOf(a.head);
    if (needLength && length === undefined) {
      a.stream.close(8);
      return { declined: a.head };
    }
    return new H2BodyReader(a, req.url.host, length, side, this.opts);
  }

  /**
   * A PUT or PATCH (or a POST with a body) whose body the caller writes piece by piece, its
   * length known up front. Resolves once the stream is open (not waiting for an answer: a server
   * answers an upload when its body is in).
   */
  async upload(method: string, req: PreparedRequest, contentLength: number, signal?: AbortSignal, onAnswer?: (answer: ResponseHead | Error) => void): Promise<H2Upload> {
    const session = await this.pick(req.url, true);
    if (signal?.aborted) throw new AbortedError();
    return new H2Upload(this, session, method, req, contentLength, this.opts, onAnswer);
  }

  /** For H2Upload: open its stream. */
  startUpload(session: Session, method: string, req: PreparedRequest, contentLength: number, answered: Promise<Answer> | undefined, onStream: (s: ClientHttp2Stream) => void): Promise<Answer> {
    return answered ?? this.attempt(session, method, req.url, req.headers, { streamed: contentLength, bulk: true, side: 'destination', onStream });
  }

  close(): void {
    this.closed = true;
    for (const o of this.origins.values()) for (const s of o.sessions.splice(0)) s.stop();
  }

  /**
   * Does an upload of `length` bytes belong on HTTP/2? A server grants each stream a window
   * (its SETTINGS_INITIAL_WINDOW_SIZE; distribution's Go server: 1 MiB) and can only take that
   * much per round trip on it: far away, a large upload on one stream crawls where a connection
   * of its own is held back by TCP's window alone (distribution: crane and oras, one HTTP/2
   * connection, fill 45 % of a 200 Mbit/s link). Up to UPLOAD_WINDOWS windows it goes on HTTP/2;
   * larger uploads take an HTTP/1.1 connection (docs/performance.md, "Over a WAN").
   */
  uploadFits(url: URL, length: number): boolean {
    const s = this.origins.get(url.origin)?.sessions.find((x) => x.usable);
    const window = s?.session.remoteSettings?.initialWindowSize ?? DEFAULT_REMOTE_WINDOW;
    return length <= UPLOAD_WINDOWS * window;
  }

  /** Sessions open to an origin now (for tests and the benchmark's notes). */
  sessionsTo(origin: string): number {
    return this.origins.get(origin)?.sessions.length ?? 0;
  }
}

function ignore(): void {}

/** A response head from HTTP/2 headers: lower-case names, repeated values joined; bounded. */
function responseHead(h: IncomingHttpHeaders & IncomingHttpStatusHeader, host: string, side: Side | undefined): ResponseHead | NetworkError {
  const status = Number(h[':status']);
  if (!Number.isInteger(status) || status < 200 || status > 999) return new NetworkError(`${host} sent an HTTP/2 answer with status ${JSON.stringify(h[':status'])}`, { side });
  const headers: Record<string, string> = {};
  let bytes = 0;
  let fields = 0;
  for (const [name, value] of Object.entries(h)) {
    if (name.startsWith(':')) continue;
    const v = Array.isArray(value) ? value.join(', ') : String(value ?? '');
    bytes += name.length + v.length + 32;
    fields += 1;
    if (bytes > MAX_HEADER_LIST_BYTES || fields > MAX_HEADER_FIELDS) return new NetworkError(`answer headers from ${host} larger than ${MAX_HEADER_LIST_BYTES} bytes`, { side, retryable: false });
    headers[name] = v;
  }
  return { status, headers };
}

function contentLengthOf(head: ResponseHead): number | undefined {
  const v = head.headers['content-length'];
  return v !== undefined && /^\d{1,16}$/.test(v) ? Number(v) : undefined;
}

/** A stream's error, with the host named: refused streams marked so they can be sent again. */
function streamError(e: Error, stream: ClientHttp2Stream, session: Session, host: string, side: Side | undefined): NetworkError {
  if (e instanceof NetworkError) return e;
  const code = (e as { code?: string }).code;
  if (stream.rstCode === REFUSED_STREAM || (stream.id !== undefined && stream.id > session.lastStreamId) || code === 'ERR_HTTP2_GOAWAY_SESSION') {
    return new RefusedStream(host, code ?? codeName(stream.rstCode), side);
  }
  // A TLS or socket failure under the session: its own code for the transport to explain.
  if (code && !code.startsWith('ERR_HTTP2_') && !code.startsWith('ERR_STREAM')) return Object.assign(connectError(e, new URL(`https://${host}`), side), { code });
  const rst = stream.rstCode ? `, reset with ${codeName(stream.rstCode)}` : '';
  return new NetworkError(`HTTP/2 stream to ${host} failed: ${code ?? e.message}${rst}`, { side, cause: e });
}

/** A stream that closed before its answer. */
function closedError(stream: ClientHttp2Stream, session: Session, host: string, side: Side | undefined): NetworkError {
  if (stream.rstCode === REFUSED_STREAM || (stream.id !== undefined && stream.id > session.lastStreamId) || (stream.id === undefined && session.draining)) {
    return new RefusedStream(host, codeName(stream.rstCode), side);
  }
  return new NetworkError(`${host} closed an HTTP/2 stream before answering (${codeName(stream.rstCode)})`, { side });
}

/** The rest of an answer's body, read whole; more than MAX_ERROR_BODY_BYTES is cut off there (the stream is cancelled). */
function readWhole(a: Answer, host: string, side: Side | undefined, idleMs: number, signal: AbortSignal | undefined, head: boolean): Promise<Buffer> {
  const { stream } = a;
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    let done = false;
    const finish = (e?: Error) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      stream.setTimeout(0);
      stream.off('data', onData);
      if (e) {
        stream.close(8);
        reject(e);
      } else resolve(Buffer.concat(parts));
    };
    const onAbort = () => finish(new AbortedError());
    const onData = (d: Buffer) => {
      if (head) return;
      const room = MAX_ERROR_BODY_BYTES - n;
      if (d.byteLength >= room) {
        parts.push(d.subarray(0, room));
        n += room;
        // Enough of it: the rest is not read.
        stream.close(8);
        finish();
        return;
      }
      parts.push(d);
      n += d.byteLength;
    };
    stream.on('data', onData);
    stream.once('end', () => finish());
    stream.once('close', () => finish(stream.rstCode && stream.rstCode !== 0 && !stream.readableEnded ? new NetworkError(`${host} reset an HTTP/2 answer (${codeName(stream.rstCode)})`, { side }) : undefined));
    stream.once('error', (e: Error) => finish(streamError(e, stream, a.session, host, side)));
    stream.setTimeout(idleMs, () => finish(timeoutError(`answer from ${host} stalled: nothing moved for ${idleMs} ms`, side)));
    signal?.addEventListener('abort', onAbort, { once: true });
    if (stream.readableEnded) finish();
  });
}

/** A 2xx GET's body on an HTTP/2 stream: piped into an upload, or streamed to the caller. */
export class H2BodyReader implements BodyReader {
  readonly head: ResponseHead;
  /** Body bytes not yet taken (Infinity when the answer did not say its length). */
  remaining: number;
  private readonly h2: ClientHttp2Stream;
  private readonly host: string;
  private readonly side: Side | undefined;
  private readonly opts: H2Options;
  private readonly watch: FloorWatch | undefined;
  /** Body bytes arrived so far, and what the answer said there would be. */
  private arrivedBytes = 0;
  private readonly declared: number | undefined;
  private failure: Error | undefined;
  private ended = false;
  /** Bytes arrived and not yet taken. */
  private pending: Buffer[] = [];
  private wake: (() => void) | undefined;

  constructor(a: Answer, host: string, length: number | undefined, side: Side | undefined, opts: H2Options) {
    this.h2 = a.stream;
    this.head = a.head;
    this.host = host;
    this.side = side;
    this.opts = opts;
    this.declared = length;
    this.remaining = length ?? Number.POSITIVE_INFINITY;
    this.watch = opts.readFloor && opts.readFloor.bytesPerSecond > 0 ? new FloorWatch(opts.readFloor) : undefined;
    // Nothing is read until a caller takes the body.
    this.h2.pause();
    this.h2.on('error', (e: Error) => this.fail(streamError(e, this.h2, a.session, host, side)));
    this.h2.on('end', () => {
      this.ended = true;
      if (this.declared !== undefined && this.arrivedBytes < this.declared) this.fail(new NetworkError(`download from ${host} ended ${this.declared - this.arrivedBytes} bytes short`, { side }));
      this.poke();
    });
    this.h2.on('close', () => {
      if (!this.ended) this.fail(new NetworkError(`${host} reset the download (HTTP/2 ${codeName(this.h2.rstCode)})`, { side }));
      this.poke();
    });
    this.h2.setTimeout(opts.idleTimeoutMs, () => {
      // Held back by ferry (its sink is slow, its caller has not asked): not the source stalling.
      if (this.h2.isPaused()) return;
      this.fail(timeoutError(`download from ${host} stalled: no bytes for ${opts.idleTimeoutMs} ms (read timeout)`, side));
      opts.onStall?.(host);
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    if (!this.h2.closed) this.h2.close(8);
    this.poke();
  }

  /** A piece arrived: counted against the declared length and the read floor. */
  private arrived(d: Buffer): Error | undefined {
    this.arrivedBytes += d.byteLength;
    if (this.declared !== undefined && this.arrivedBytes > this.declared) return new NetworkError(`${this.host} sent more than its Content-Length`, { side: this.side, retryable: false });
    const slow = this.watch?.took(d.byteLength);
    if (slow) {
      this.opts.onStall?.(this.host);
      return new SlowBodyError(this.host, slow.bytes, slow.ms, this.opts.readFloor!, this.side);
    }
    return undefined;
  }

  private hold(): void {
    this.h2.pause();
    this.watch?.hold();
  }

  private release(): void {
    this.watch?.release();
    this.h2.resume();
  }

  pipeInto(sink: UploadSink, length: number, inspect: (piece: Buffer) => void, signal?: AbortSignal): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (length > this.remaining) return Promise.reject(new NetworkError(`asked for ${length} bytes, the response has ${this.remaining} left`, { side: this.side, retryable: false }));
    const h2 = this.h2;
    return new Promise<void>((resolve, reject) => {
      let left = length;
      let done = false;
      const finish = (e?: Error) => {
        if (done) return;
        done = true;
        h2.off('data', onData);
        signal?.removeEventListener('abort', onAbort);
        sink.onFailure = undefined;
        this.wake = undefined;
        this.hold();
        if (e) {
          this.fail(e);
          reject(e);
        } else resolve();
      };
      const onAbort = () => finish(new AbortedError());
      const write = (piece: Buffer) => {
        try {
          inspect(piece);
        } catch (e) {
          finish(e as Error);
          return;
        }
        left -= piece.byteLength;
        this.remaining -= piece.byteLength;
        // The pieces are this reader's own: the sink may keep them; reading pauses only while it is backed up.
        sink.write(piece, (err) => {
          if (done) return;
          if (err) return finish(err);
          if (left === 0 && !sink.busy) return finish();
          if (left > 0 && sink.buffered < SINK_BACKLOG_BYTES) this.release();
        });
        if (left === 0) {
          this.hold();
          if (!sink.busy) finish();
        } else if (sink.buffered >= SINK_BACKLOG_BYTES) this.hold();
      };
      const onData = (d: Buffer) => {
        if (done) return;
        const err = this.arrived(d);
        if (err) return finish(err);
        if (d.byteLength > left) {
          // More than this pipe wants: the rest waits for the next one.
          this.pending.push(d.subarray(left));
          d = d.subarray(0, left);
          this.hold();
        }
        write(d);
      };
      this.wake = () => {
        if (this.failure) finish(this.failure);
      };
      sink.onFailure = (e) => finish(e);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted) return onAbort();
      if (length === 0) return finish();
      // What an earlier pipe left over goes first.
      while (!done && left > 0 && this.pending.length > 0) {
        const p = this.pending.shift()!;
        if (p.byteLength > left) {
          this.pending.unshift(p.subarray(left));
          write(p.subarray(0, left));
        } else write(p);
      }
      if (done || left === 0) return;
      if (this.failure) return finish(this.failure);
      h2.on('data', onData);
      if (sink.buffered < SINK_BACKLOG_BYTES) this.release();
    });
  }

  stream(signal?: AbortSignal): ResponseBodyStream {
    const h2 = this.h2;
    const onAbort = () => this.fail(new AbortedError());
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    const finished = () => signal?.removeEventListener('abort', onAbort);
    const onData = (d: Buffer) => {
      const err = this.arrived(d);
      if (err) return this.fail(err);
      this.pending.push(d);
      // One piece read ahead at most: the stream waits while the caller does not ask.
      this.hold();
      this.poke();
    };
    h2.on('data', onData);
    const next = async (): Promise<IteratorResult<Uint8Array>> => {
      for (;;) {
        const piece = this.pending.shift();
        if (piece) {
          this.remaining -= piece.byteLength;
          return { value: piece, done: false };
        }
        if (this.failure) {
          finished();
          throw this.failure;
        }
        if (this.ended) {
          finished();
          return { value: undefined, done: true };
        }
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          this.release();
        });
      }
    };
    const stop = () => {
      finished();
      h2.off('data', onData);
      if (!this.ended) this.close();
    };
    return bodyStream(next, stop);
  }

  close(): void {
    this.pending = [];
    if (!this.ended && !this.h2.closed) this.h2.close(8);
  }
}

/**
 * An upload's body on an HTTP/2 stream, written piece by piece, then `response()`. As RawUpload:
 * an answer that comes before the whole body (a refusal) stops the writes and is what counts.
 */
export class H2Upload implements UploadSink {
  written = 0;
  onFailure: ((e: Error) => void) | undefined;
  private readonly url: URL;
  private readonly contentLength: number;
  private readonly opts: H2Options;
  private stream: ClientHttp2Stream | undefined;
  private readonly answer: Promise<Answer>;
  private head: ResponseHead | undefined;
  private failure: Error | undefined;
  private onAnswer: ((answer: ResponseHead | Error) => void) | undefined;
  private pendingWrites = 0;

  constructor(owner: H2Connections, session: Session, method: string, req: PreparedRequest, contentLength: number, opts: H2Options, onAnswer?: (answer: ResponseHead | Error) => void) {
    this.url = req.url;
    this.contentLength = contentLength;
    this.opts = opts;
    this.onAnswer = onAnswer;
    this.answer = owner.startUpload(session, method, req, contentLength, undefined, (s) => {
      this.stream = s;
      s.setTimeout(opts.idleTimeoutMs, () => {
        // Idle because the source has sent nothing to write is not the destination stalling.
        if (this.buffered === 0 && this.written < this.contentLength && !this.head) return s.setTimeout(opts.idleTimeoutMs);
        this.fail(timeoutError(`upload to ${this.url.host} stalled: nothing moved for ${opts.idleTimeoutMs} ms`, 'destination'));
      });
    });
    this.answer.then(
      (a) => {
        this.head = a.head;
        if (this.written < this.contentLength) this.onFailure?.(new NetworkError(`${this.url.host} answered before the whole body was sent`, { side: 'destination' }));
      },
      (e: Error) => this.fail(e),
    );
    if (contentLength === 0) this.stream?.end();
  }

  get busy(): boolean {
    return this.pendingWrites > 0;
  }

  get buffered(): number {
    return this.stream?.writableLength ?? 0;
  }

  get hasAnswer(): boolean {
    return this.head !== undefined;
  }

  write(piece: Buffer, done: (err?: Error) => void): boolean {
    const stream = this.stream;
    if (this.failure || !stream || stream.destroyed) {
      done(this.failure ?? new NetworkError(`upload to ${this.url.host} closed`, { side: 'destination' }));
      return false;
    }
    this.pendingWrites += 1;
    this.written += piece.byteLength;
    const last = this.written >= this.contentLength;
    const cb = (err?: Error | null) => {
      this.pendingWrites -= 1;
      done(err ? (this.failure ?? new NetworkError(`upload to ${this.url.host}: ${err.message}`, { side: 'destination', cause: err })) : undefined);
    };
    if (last) stream.end(piece, () => cb());
    else stream.write(piece, cb);
    return false;
  }

  private fail(e: Error): void {
    if (this.failure || this.head) return;
    this.failure = e;
    this.stream?.close(8);
    this.onFailure?.(e);
  }

  async response(signal?: AbortSignal): Promise<ResponseHead & { body: Buffer }> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    // The body is in (or the answer came early): the answer is owed within the head timeout.
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const e = timeoutError(`no answer from ${this.url.host} within ${this.opts.headersTimeoutMs} ms`, 'destination');
        this.fail(e);
        reject(e);
      }, this.opts.headersTimeoutMs);
      // A cancel does not wait for the answer: the stream is reset.
      onAbort = () => {
        const e = new AbortedError();
        this.fail(e);
        reject(e);
      };
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
    try {
      const a = await Promise.race([this.answer, deadline]);
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      const body = await readWhole(a, this.url.host, 'destination', this.opts.idleTimeoutMs, undefined, false).catch(() => Buffer.alloc(0));
      this.answered(a.head);
      return { ...a.head, body };
    } catch (e) {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      const err = this.failure ?? (e as Error);
      this.answered(err);
      throw err;
    }
  }

  private answered(answer: ResponseHead | Error): void {
    const told = this.onAnswer;
    this.onAnswer = undefined;
    told?.(answer);
  }

  close(): void {
    this.answered(this.failure ?? new AbortedError('upload closed before its answer'));
    if (this.stream && !this.stream.closed) this.stream.close(8);
  }
}
