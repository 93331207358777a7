// The process's one HTTP transport: ferry's own kept-alive connections for every request whose
// body is in memory (src/transport/raw-http.ts), a single undici dispatcher, made on first use,
// for the rest (streamed uploads, answers ferry's connections do not read, everything behind a
// proxy), proxies from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (through undici only), extra CA
// certificates, and the scheme policy (TLS always, except loopback and hosts the operator named
// as plain HTTP).
// Redirects are followed here, by hand, so that credentials never leave their host.
// Every request, on either path and at every redirect hop, is admitted by the process's flow
// controller first (src/transport/flow.ts: per-host pauses, pace, ECR quotas) and reports its
// answer to it.
import { readFileSync } from 'node:fs';
import type { Dispatcher } from './undici.ts';
import { AbortedError, FerryError, NetworkError, UsageError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { hostOf, isLoopbackHost, checkRedirectTarget, parseUrlFrom } from './address.ts';
import { FlowControl, type FlowTicket } from './flow.ts';
import { proxyConfigured } from './proxy-env.ts';
import { probeScheme, type SchemeProbe } from './scheme-probe.ts';
import { isBodyReader, isTimeout, RawBodyReader, RawConnection, RawConnectionPool, RawUpload, rawExchange, type BodyReader, type PreparedRequest, type RawConnectOptions, type RawGetDeclined, type ResponseBodyStream, type UploadSink } from './raw-http.ts';
import { H2Connections } from './h2.ts';
import { TlsSessions } from './tls-sessions.ts';
import { DEFAULT_READ_FLOOR, FloorWatch, SlowBodyError, type ReadFloor } from './read-floor.ts';

export interface TransportOptions {
  /** Hosts (host or host:port) that speak plain HTTP, never asked. Loopback hosts are asked (resolveScheme) and may use it. */
  plainHttp?: string[];
  /** PEM files with extra CA certificates (on top of the system roots and NODE_EXTRA_CA_CERTS). */
  caFiles?: string[];
  userAgent?: string;
  /** Connections per origin. Registries are few; transfers are many. */
  connectionsPerOrigin?: number;
  /** No bytes for this long on a response body: the connection is considered stalled. */
  bodyTimeoutMs?: number;
  headersTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** A response body slower than this is stalled too (default: under 16 KiB/s for 30 s). */
  readFloor?: ReadFloor;
  /**
   * The most blob transfers at once towards one registry (`--concurrency`): the flow controller's
   * ceiling. Undefined: by how the registry is reached, 8 over HTTP/1.1, 64 over HTTP/2.
   */
  concurrency?: number;
  /**
   * Blob transfers at once in the whole process (the agent's shared limit): no registry's ceiling
   * is above it, so a throttled registry's first halving counts.
   */
  processConcurrency?: number;
  /** For the flow controller's lines (a registry starts or stops throttling). */
  logger?: Logger;
  /** The flow controller to use (default: one of this transport's own). */
  flow?: FlowControl;
  /** HTTP/2 to registries that offer it by ALPN (default true; FERRY_HTTP2=off turns it off). */
  http2?: boolean;
  /** HTTP/2 connections to one registry at most (default HTTP2_SESSIONS). */
  http2Sessions?: number;
}

export type Body = Uint8Array | AsyncIterable<Uint8Array> | NodeJS.ReadableStream | undefined;

export interface HttpRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: URL;
  headers?: Record<string, string>;
  body?: Body;
  signal?: AbortSignal | undefined;
  /** Follow 3xx for GET/HEAD (default true). Authorization is dropped when the host changes. */
  followRedirects?: boolean;
}

/** What callers do with an answer's body: read it as it comes, or drop it. */
export type ResponseBody = ResponseBodyStream;

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: ResponseBody;
  /** The URL that finally answered (after redirects). */
  url: URL;
}

const MAX_REDIRECTS = 5;
/**
 * Blob transfers at once towards a registry without a --concurrency: each one a connection over
 * HTTP/1.1, a stream over HTTP/2. Over HTTP/2 a transfer costs a stream, not a connection and its
 * handshakes, so every blob of an image can be in flight at once, over the HTTP/2 connections below;
 * the flow controller halves it when the registry throttles or times out. Measured in the WAN lab
 * (RTT 50 ms, `many`: 41 blobs): 4 connections and 32 transfers 1.59-1.69 s, 8 and 64 1.43-1.59 s,
 * 16 and 64 1.44-1.73 s (docs/performance.md, "Over a WAN").
 */
export const HTTP1_CONCURRENCY = 8;
export const HTTP2_CONCURRENCY = 64;
/**
 * HTTP/2 connections to one registry at most. Each has its own TCP window, which starts small and
 * grows with what it carries: far away, more connections move more in the first round trips (and
 * the server grants each its own upload window).
 */
export const HTTP2_SESSIONS = 8;

export class HttpTransport {
  private readonly makeDispatcher: () => Promise<Dispatcher>;
  private undici: Promise<Dispatcher> | undefined;
  private readonly plainHttp: Set<string>;
  private readonly background = new Set<Promise<void>>();
  private readonly raw: RawConnectOptions | undefined;
  private readonly rawPool = new RawConnectionPool();
  /** HTTP/2 sessions to the registries that speak it (none behind a proxy, or with http2 off). */
  private readonly h2: H2Connections | undefined;
  private readonly http2Sessions: number;
  /** Origins that speak HTTP/2 and refused a connection offering only HTTP/1.1 (ALPN): every upload goes on HTTP/2. */
  private readonly h2Only = new Set<string>();
  /** Loopback hosts (host:port) a probe found speaking TLS or plain HTTP. */
  private readonly probed = new Map<string, Promise<SchemeProbe>>();
  private readonly connectTimeoutMs: number;
  private readonly readFloor: ReadFloor;
  readonly userAgent: string;
  /** Per-registry pauses, pace and concurrency limits, shared by every request of this transport. */
  readonly flow: FlowControl;

  constructor(opts: TransportOptions = {}) {
    this.plainHttp = new Set((opts.plainHttp ?? []).map((h) => h.toLowerCase()));
    this.userAgent = opts.userAgent ?? 'ferry';
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 30_000;
    const cap = (n: number) => Math.min(n, opts.processConcurrency ?? n);
    this.flow =
      opts.flow ?? new FlowControl({ ceiling: cap(opts.concurrency ?? HTTP1_CONCURRENCY), multiplexedCeiling: cap(opts.concurrency ?? HTTP2_CONCURRENCY), logger: opts.logger });
    this.readFloor = opts.readFloor ?? DEFAULT_READ_FLOOR;
    const connect: Record<string, unknown> = { timeout: opts.connectTimeoutMs ?? 30_000 };
    const extraCa = loadCaFiles(opts.caFiles ?? []);
    if (extraCa.length > 0) {
      // Loaded here, not at the top: a copy between plain-HTTP registries never needs node:tls.
      const tls = process.getBuiltinModule('node:tls');
      // Prefer changing the process default, so every client (cloud SDKs too) trusts the CA.
      if (typeof tls.setDefaultCACertificates === 'function' && typeof tls.getCACertificates === 'function') {
        tls.setDefaultCACertificates([...tls.getCACertificates('default'), ...extraCa]);
      } else {
        connect.ca = [...tls.rootCertificates, ...extraCa];
      }
    }
    const poolOptions = {
      connections: opts.connectionsPerOrigin ?? 16,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 120_000,
      headersTimeout: opts.headersTimeoutMs ?? 60_000,
      bodyTimeout: opts.bodyTimeoutMs ?? 60_000,
      connect,
    };
    const proxied = proxyConfigured();
    const tlsSessions = new TlsSessions(connect.ca ? extraCa : undefined);
    // ferry's own connections for blob bytes (src/transport/raw-http.ts) speak to registries
    // directly only: behind a proxy everything goes through undici.
    this.raw = proxied
      ? undefined
      : {
          ca: connect.ca ? extraCa : undefined,
          connectTimeoutMs: opts.connectTimeoutMs ?? 30_000,
          headersTimeoutMs: poolOptions.headersTimeout,
          idleTimeoutMs: poolOptions.bodyTimeout,
          userAgent: this.userAgent,
          pool: this.rawPool,
          readFloor: this.readFloor,
          onStall: (host) => this.flow.timedOut(host),
          tls: tlsSessions,
        };
    const raw = this.raw;
    this.http2Sessions = opts.http2Sessions ?? HTTP2_SESSIONS;
    this.h2 =
      raw && opts.http2 !== false
        ? new H2Connections({
            connectTimeoutMs: raw.connectTimeoutMs,
            headersTimeoutMs: raw.headersTimeoutMs,
            idleTimeoutMs: raw.idleTimeoutMs,
            userAgent: this.userAgent,
            tls: tlsSessions,
            readFloor: this.readFloor,
            onStall: raw.onStall,
            maxSessions: this.http2Sessions,
            adoptHttp1: (url, socket) => RawConnection.adopt(url, socket, raw),
          })
        : undefined;
    // Loaded and made on first use: without a proxy, a copy between registries may never need
    // undici, and loading it (and node:http and node:assert with it) is ~10-20 ms of a start.
    this.makeDispatcher = async () => {
      const { Agent, EnvHttpProxyAgent } = await import('./undici.ts');
      return proxied ? new EnvHttpProxyAgent({ ...poolOptions, requestTls: connect, proxyTls: connect }) : new Agent(poolOptions);
    };
  }

  private dispatcher(): Promise<Dispatcher> {
    return (this.undici ??= this.makeDispatcher());
  }

  /** Named with --plain-http (as host or host:port)? */
  private namedPlain(h: string): boolean {
    return this.plainHttp.has(h) || this.plainHttp.has(hostOf(h));
  }

  /**
   * The scheme for a registry host as far as it is known without asking the host: `http` for
   * hosts named with --plain-http, `https` for every other host but loopback ones (asked by
   * resolveScheme), `http` for those.
   */
  schemeFor(host: string): 'http' | 'https' {
    return this.fixedScheme(host.toLowerCase()) ?? 'http';
  }

  private fixedScheme(h: string): 'http' | 'https' | undefined {
    if (this.namedPlain(h)) return 'http';
    return isLoopbackHost(hostOf(h)) ? undefined : 'https';
  }

  /**
   * The scheme to speak to a registry host in. A loopback host not named with --plain-http is
   * asked whether it speaks TLS (src/transport/scheme-probe.ts): HTTPS first, plain HTTP when it
   * does not. A non-loopback host is never asked and never falls back. Answers are kept for the
   * process; a probe that got no answer (`decided` false) is made again next time.
   */
  async resolveScheme(host: string): Promise<SchemeProbe> {
    const h = host.toLowerCase();
    const fixed = this.fixedScheme(h);
    if (fixed) return { scheme: fixed, decided: true, why: fixed === 'http' ? 'named with --plain-http' : 'not loopback' };
    let probe = this.probed.get(h);
    if (!probe) {
      const url = new URL(`https://${h}`);
      probe = probeScheme(url.hostname.replace(/^\[|\]$/g, ''), Number(url.port) || 443, Math.min(this.connectTimeoutMs, 5_000));
      this.probed.set(h, probe);
    }
    const answer = await probe;
    if (!answer.decided && this.probed.get(h) === probe) this.probed.delete(h);
    return answer;
  }

  /** How to open ferry's own connections for moving blob bytes; undefined when they must not be used (a proxy is configured). */
  rawConnections(): RawConnectOptions | undefined {
    return this.raw;
  }

  /**
   * A GET on ferry's own connection (src/transport/raw-http.ts), redirects followed as
   * `request` follows them. The reader for a 2xx answer with a Content-Length; otherwise the
   * last answer's head, or why the connection could not be used.
   */
  async openRawBody(req: PreparedRequest, signal?: AbortSignal): Promise<BodyReader | RawGetDeclined> {
    if (!this.raw) return { declined: 'a proxy is configured' };
    let { url, headers } = req;
    for (let hop = 0; ; hop++) {
      this.checkScheme(url);
      const ticket = await this.flow.admit(url, 'GET', signal);
      let r: BodyReader | RawGetDeclined;
      try {
        const h2 = await this.h2For(url);
        r = h2 ? await h2.get({ url, headers }, signal, 'source', true) : await RawBodyReader.open({ url, headers }, this.raw, signal, 'source');
      } catch (e) {
        this.flow.settle(ticket, isTimeout(e) ? 'timeout' : 'failed');
        throw e;
      }
      this.settleHead(ticket, r);
      if (isBodyReader(r) || typeof r.declined === 'string') return r;
      const { status } = r.declined;
      if (status < 300 || status >= 400 || status === 304 || hop >= MAX_REDIRECTS) return r;
      ({ url, headers } = this.redirect(url, status, r.declined.headers.location, headers));
    }
  }

  /** A PUT or PATCH on ferry's own connection (HTTP/2 where the registry speaks it), its body written by the caller; undefined behind a proxy. */
  async openRawUpload(method: 'PUT' | 'PATCH' | 'POST', req: PreparedRequest, contentLength: number, signal?: AbortSignal): Promise<UploadSink | undefined> {
    if (!this.raw) return undefined;
    this.checkScheme(req.url);
    const ticket = await this.flow.admit(req.url, method, signal);
    let settled = false;
    const settle = (answer: { status: number; headers: Record<string, string> } | Error) => {
      if (settled) return;
      settled = true;
      this.flow.settle(ticket, answer instanceof Error ? (isTimeout(answer) ? 'timeout' : 'failed') : answer);
    };
    try {
      // A large upload to an h2 registry gets an HTTP/1.1 connection of its own (H2Connections.uploadFits),
      // unless the registry turned HTTP/1.1 down (then it goes on HTTP/2 after all, and so does every later one).
      const h2 = await this.h2For(req.url);
      if (h2 && this.uploadOnH2(h2, req.url, contentLength)) return await h2.upload(method, req, contentLength, signal, settle);
      try {
        return await RawUpload.open(method, req, contentLength, this.raw, signal, settle);
      } catch (e) {
        if (!h2 || !refusedHttp1(e)) throw e;
        this.h2Only.add(req.url.origin);
        return await h2.upload(method, req, contentLength, signal, settle);
      }
    } catch (e) {
      settle(e as Error);
      throw e;
    }
  }

  /** Tell the flow controller what a GET on ferry's own connection got. */
  private settleHead(ticket: FlowTicket, r: BodyReader | RawGetDeclined): void {
    if (isBodyReader(r)) this.flow.settle(ticket, r.head);
    else if (typeof r.declined === 'string') this.flow.settle(ticket, 'failed');
    else this.flow.settle(ticket, r.declined);
  }

  /**
   * Plain HTTP only to loopback and the hosts named with --plain-http. Every URL ferry builds
   * itself is checked before this; one that gets here came from a registry (a Location, a Link):
   * the serving side's fault (the registry client blames the destination when it sent it).
   */
  private checkScheme(url: URL): void {
    if (url.protocol === 'http:' && !this.allowsPlainHttp(url.host)) {
      throw new FerryError('SOURCE_INVALID', `refusing plain HTTP to ${url.host}: only loopback and hosts named with --plain-http may use it`);
    }
  }

  /** May this host be spoken to in plain HTTP? Loopback hosts and those named with --plain-http. */
  allowsPlainHttp(host: string): boolean {
    const h = host.toLowerCase();
    return this.namedPlain(h) || isLoopbackHost(hostOf(h));
  }

  async request(req: HttpRequest): Promise<HttpResponse> {
    let url = req.url;
    let headers: Record<string, string> = { 'user-agent': this.userAgent, ...req.headers };
    const follow = req.followRedirects ?? (req.method === 'GET' || req.method === 'HEAD');
    for (let hop = 0; ; hop++) {
      this.checkScheme(url);
      let res: Pick<Dispatcher.ResponseData, 'statusCode' | 'headers'> & { body: ResponseBody };
      // Without a proxy, requests whose body (if any) is in memory go on ferry's own kept-alive
      // connections: GETs (manifests, tokens, blobs read the regular way) streamed, everything
      // else (HEADs, upload sessions, commits, manifest writes) with its small answer read whole.
      // Streamed request bodies, and a GET whose 2xx answer is not framed by a Content-Length,
      // go through undici.
      // Registries that speak HTTP/2 get every request on it, streamed bodies too.
      const inMemory = req.body === undefined || req.body instanceof Uint8Array;
      const ticket = await this.flow.admit(url, req.method, req.signal);
      let viaUndici = false;
      try {
        const multiplexed = this.raw ? await this.h2For(url) : undefined;
        // A large streamed upload to an h2 registry goes on HTTP/1.1 (H2Connections.uploadFits).
        const h2 = multiplexed && (inMemory || this.uploadOnH2(multiplexed, url, Number(headers['content-length'] ?? headers['Content-Length'] ?? Infinity))) ? multiplexed : undefined;
        const own = h2 !== undefined || (this.raw !== undefined && inMemory);
        const answer = !own
          ? undefined
          : h2
            ? await this.h2Request(h2, req.method, url, headers, req.body, req.signal)
            : req.method === 'GET'
              ? await this.get(url, headers, req.signal)
              : await this.exchange(req.method, url, headers, req.body as Uint8Array | undefined, req.signal);
        viaUndici = answer === undefined;
        res =
          answer ??
          (await (await this.dispatcher()).request({
              origin: url.origin,
              path: url.pathname + url.search,
              method: req.method,
              // A copy: undici's proxy agent writes `host` into the object it is given, which would
              // then go with the next hop of a redirect — to another host, under the wrong name.
              headers: { ...headers },
              body: req.body as Dispatcher.DispatchOptions['body'],
              signal: req.signal ?? null,
              // undici closes the connection after every HEAD (for servers that wrongly send a body
              // with it). Registries are well-behaved, and a copy HEADs every blob: without this,
              // each HEAD costs a new connection (and, over TLS, a handshake).
              ...(req.method === 'HEAD' ? { reset: false } : {}),
            }));
      } catch (e) {
        this.flow.settle(ticket, isTimeout(e) ? 'timeout' : 'failed');
        throw networkError(e, url, req.signal);
      }
      this.flow.settle(ticket, { status: res.statusCode, headers: res.headers });
      // A body streamed through undici gets the read floor too (ferry's own connections watch theirs).
      if (viaUndici && req.method === 'GET' && this.readFloor.bytesPerSecond > 0) {
        res = { ...res, body: new FlooredBody(res.body, url.host, this.readFloor, () => this.flow.timedOut(url.host)) };
      }
      if (!follow || res.statusCode < 300 || res.statusCode >= 400 || res.statusCode === 304) {
        return { status: res.statusCode, headers: res.headers, body: res.body, url };
      }
      const location = res.headers.location;
      await res.body.dump().catch(() => undefined);
      if (hop >= MAX_REDIRECTS) throw new FerryError('SOURCE_INVALID', `more than ${MAX_REDIRECTS} redirects from ${req.url.host} (a redirect loop?); refusing`);
      const next = this.redirect(url, res.statusCode, location, headers);
      headers = next.headers;
      url = next.url;
    }
  }

  /**
   * The HTTP/2 sessions for `url`'s origin when it speaks HTTP/2 (asked by its first connection,
   * src/transport/h2.ts); undefined for plain HTTP, HTTP/1.1 registries, or with HTTP/2 off.
   */
  private async h2For(url: URL): Promise<H2Connections | undefined> {
    if (!this.h2 || url.protocol !== 'https:') return undefined;
    if ((await this.h2.protocolOf(url)) !== 'h2') return undefined;
    this.flow.multiplexed(url.host);
    return this.h2;
  }

  /** Does an upload of `length` bytes go on HTTP/2? Small ones do; large ones where the registry refused HTTP/1.1. */
  private uploadOnH2(h2: H2Connections, url: URL, length: number): boolean {
    return this.h2Only.has(url.origin) || h2.uploadFits(url, length);
  }

  /**
   * Open connections to `url`'s origin before they are needed (while a manifest is read): up to
   * `connections` HTTP/2 sessions where it speaks HTTP/2. Failures are not reported here; the
   * requests that follow meet them.
   */
  warm(url: URL, connections = this.http2Sessions): void {
    if (!this.h2 || url.protocol !== 'https:' || connections < 1) return;
    void this.h2.warm(url, connections).catch(() => undefined);
  }

  /** A request on HTTP/2: a GET's body streamed, a streamed request body written as it comes, other answers read whole. */
  private async h2Request(h2: H2Connections, method: string, url: URL, headers: Record<string, string>, body: Body, signal: AbortSignal | undefined): Promise<OwnAnswer> {
    const req = { url, headers: lowerCased(headers) };
    if (method === 'GET') {
      const r = await h2.get(req, signal, undefined, false);
      if (isBodyReader(r)) return { statusCode: r.head.status, headers: r.head.headers, body: r.stream(signal) };
      return { statusCode: (r.declined as { status: number }).status, headers: (r.declined as { headers: Record<string, string> }).headers, body: new BufferedBody(r.body ?? Buffer.alloc(0)) };
    }
    if (body === undefined || body instanceof Uint8Array) {
      const answer = await h2.exchange(method, req, body, signal);
      return { statusCode: answer.status, headers: answer.headers, body: new BufferedBody(answer.body) };
    }
    const length = Number(req.headers['content-length']);
    if (!Number.isSafeInteger(length) || length < 0) throw new FerryError('INTERNAL', `a streamed ${method} to ${url.host} without a Content-Length`);
    const upload = await h2.upload(method, req, length, signal);
    try {
      for await (const chunk of body as AsyncIterable<Uint8Array>) {
        if (upload.hasAnswer) break;
        const piece = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        const written = new Promise<void>((resolve, reject) => upload.write(piece, (e) => (e ? reject(e) : resolve())));
        // Written on without waiting, unless the stream is backed up (flow control).
        if (upload.buffered >= 1024 * 1024) await written;
        else written.catch(() => undefined);
      }
    } catch (e) {
      // An answer that came early (a refusal) is what counts, not the write it cut short.
      if (!upload.hasAnswer) {
        upload.close();
        throw e;
      }
    }
    const answer = await upload.response();
    return { statusCode: answer.status, headers: answer.headers, body: new BufferedBody(answer.body) };
  }

  /** A request with a body in memory on ferry's own kept-alive connection (src/transport/raw-http.ts), its small answer read whole. */
  private async exchange(method: string, url: URL, headers: Record<string, string>, body: Uint8Array | undefined, signal: AbortSignal | undefined): Promise<OwnAnswer> {
    const answer = await rawExchange(method, { url, headers: lowerCased(headers) }, body, this.raw!, signal);
    return { statusCode: answer.status, headers: answer.headers, body: new BufferedBody(answer.body) };
  }

  /**
   * A GET on ferry's own kept-alive connection: a 2xx body streamed as it arrives, any other
   * answer's read whole. Undefined for a 2xx not framed by a Content-Length (chunked, say):
   * that connection is closed, and the caller sends the GET again through undici.
   */
  private async get(url: URL, headers: Record<string, string>, signal: AbortSignal | undefined): Promise<OwnAnswer | undefined> {
    const r = await RawBodyReader.open({ url, headers: lowerCased(headers) }, this.raw!, signal);
    if (r instanceof RawBodyReader) return { statusCode: r.head.status, headers: r.head.headers, body: r.stream(signal) };
    if (typeof r.declined === 'string' || !r.body) return undefined;
    return { statusCode: r.declined.status, headers: r.declined.headers, body: new BufferedBody(r.body) };
  }

  /**
   * Where a redirect may lead, and with which headers: the scheme and address policy, and no
   * credentials to another host. What a server redirects to is its doing: refusals are the
   * serving side's fault (SOURCE_INVALID; the registry client re-blames them on the destination
   * when it is one).
   */
  redirect(from: URL, status: number, location: string | string[] | undefined, headers: Record<string, string>): { url: URL; headers: Record<string, string> } {
    if (typeof location !== 'string') {
      throw new FerryError('SOURCE_INVALID', `redirect ${status} from ${from.host} without a Location`);
    }
    const next = parseUrlFrom(location, from, `redirect ${status}'s Location`);
    checkRedirectTarget(from, next);
    if (next.protocol === 'http:' && !this.allowsPlainHttp(next.host)) {
      throw new FerryError('SOURCE_INVALID', `redirect from ${from.host} to plain-HTTP host ${next.host}; refusing: only loopback and hosts named with --plain-http may use plain HTTP`);
    }
    if (next.host !== from.host || next.protocol !== from.protocol) {
      // Never send the registry's credentials to another host (S3, a CDN, an attacker).
      return { url: next, headers: Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization')) };
    }
    return { url: next, headers };
  }

  /**
   * Clean-up that must reach the server even though its caller has moved on (deleting an upload
   * session opened by a cancelled copy): close() waits for it. It must bound its own time.
   */
  track(work: Promise<unknown>): void {
    const done = work.then(
      () => undefined,
      () => undefined,
    );
    this.background.add(done);
    void done.then(() => this.background.delete(done));
  }

  async close(): Promise<void> {
    while (this.background.size > 0) await Promise.all(this.background);
    this.rawPool.close();
    this.h2?.close();
    if (this.undici) await (await this.undici).close();
  }
}

type OwnAnswer = { statusCode: number; headers: Record<string, string>; body: ResponseBody };

function lowerCased(headers: Record<string, string>): Record<string, string> {
  const lower: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) lower[name.toLowerCase()] = value;
  return lower;
}

/**
 * An undici response body held to the read floor: its rate counts only the time spent waiting
 * for it (not the time its reader takes between pieces). Too slow, it fails with a
 * SlowBodyError; a body timeout is told to the flow controller.
 */
class FlooredBody implements ResponseBody {
  private readonly inner: ResponseBody;
  private readonly host: string;
  private readonly floor: ReadFloor;
  private readonly onStall: () => void;

  constructor(inner: ResponseBody, host: string, floor: ReadFloor, onStall: () => void) {
    this.inner = inner;
    this.host = host;
    this.floor = floor;
    this.onStall = onStall;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const watch = new FloorWatch(this.floor);
    const it = this.inner[Symbol.asyncIterator]();
    try {
      for (;;) {
        watch.release();
        let r: IteratorResult<Uint8Array>;
        try {
          r = await it.next();
        } catch (e) {
          if (isTimeout(e)) this.onStall();
          throw e;
        }
        watch.hold();
        if (r.done) return;
        const slow = watch.took(r.value.byteLength);
        if (slow) {
          this.onStall();
          throw new SlowBodyError(this.host, slow.bytes, slow.ms, this.floor, undefined);
        }
        yield r.value;
      }
    } finally {
      // Left early (a break, an error, the floor): the connection must not keep the rest.
      await it.return?.();
    }
  }

  dump(): Promise<void> {
    return this.inner.dump();
  }

  destroy(): void {
    this.inner.destroy();
  }
}

/** An answer's body already read whole. */
class BufferedBody implements ResponseBody {
  private bytes: Buffer | undefined;
  constructor(bytes: Buffer) {
    this.bytes = bytes;
  }
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const bytes = this.bytes;
    this.bytes = undefined;
    if (bytes && bytes.byteLength > 0) yield bytes;
  }
  async dump(): Promise<void> {
    this.bytes = undefined;
  }
  destroy(): void {
    this.bytes = undefined;
  }
}

function loadCaFiles(files: string[]): string[] {
  const out: string[] = [];
  for (const f of files) {
    let pem: string;
    try {
      pem = readFileSync(f, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read CA file ${f}: ${(e as Error).message}`);
    }
    const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
    if (!certs) throw new UsageError(`CA file ${f} contains no PEM certificate`);
    out.push(...certs);
  }
  return out;
}

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
]);

function networkError(e: unknown, url: URL, signal?: AbortSignal): FerryError {
  if (e instanceof FerryError) return e;
  const err = e as Error & { code?: string; cause?: { code?: string } };
  // undici also says UND_ERR_ABORTED when nobody cancelled: a proxy that refused the tunnel.
  const tunnel = /^Proxy response \((\d{3})\) !== 200/.exec(err.message ?? '');
  if (tunnel && !signal?.aborted) {
    return new NetworkError(`the proxy refused to open a tunnel to ${url.host} (HTTP ${tunnel[1]}): check HTTPS_PROXY / NO_PROXY and what the proxy allows`, {
      cause: e,
      retryable: tunnel[1] === '502' || tunnel[1] === '503' || tunnel[1] === '504',
    });
  }
  if (err.name === 'AbortError' || err.code === 'UND_ERR_ABORTED') {
    return new AbortedError(`request to ${url.host} was cancelled`, { cause: e });
  }
  const code = err.code ?? err.cause?.code ?? '';
  if (TLS_CODES.has(code)) {
    // On loopback too: a registry that speaks TLS is never tried again in plain HTTP.
    const loopback = isLoopbackHost(url.hostname) ? ' (it speaks TLS, so ferry does not fall back to plain HTTP)' : '';
    return new FerryError('REGISTRY_UNAVAILABLE', `TLS verification failed for ${url.host} (${code}): add its CA with --ca-file or NODE_EXTRA_CA_CERTS${loopback}`, {
      cause: e,
      retryable: false,
    });
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
    return new NetworkError(`cannot resolve ${url.hostname} (${code})`, { cause: e, retryable: code === 'EAI_AGAIN' });
  }
  if (code === 'ECONNREFUSED') {
    return new NetworkError(`cannot connect to ${url.host} (connection refused): check the address and that the registry is running`, { cause: e });
  }
  return new NetworkError(`${url.host}: ${code || err.message}`, { cause: e });
}

/** A TLS server that offers no protocol the client asked for (an HTTP/2-only server asked for http/1.1). */
function refusedHttp1(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c instanceof Error && depth < 4; c = c.cause, depth++) {
    if ((c as NodeJS.ErrnoException).code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL') return true;
  }
  return false;
}
