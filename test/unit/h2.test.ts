// HTTP/2 to registries that offer it (src/transport/h2.ts), through the transport as ferry uses
// it, against node:http2 servers that behave as registries do and as hostile peers might:
// GOAWAY and refused streams, resets in the middle of a body, headers past their bounds, more
// body than announced, answers that never come, an upload window never opened, early answers,
// interim answers, redirects to another host, and a peer that agrees on h2 and then speaks
// something else. Each failure must be a NetworkError naming the host (REGISTRY_UNAVAILABLE
// once retries run out), never INTERNAL, and every request must pass the flow controller.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http2, { type Http2SecureServer, type Http2Session, type ServerHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { HttpTransport } from '../../src/transport/http.ts';
import { FlowControl, type FlowOutcome, type FlowTicket } from '../../src/transport/flow.ts';
import { isBodyReader, type UploadSink } from '../../src/transport/raw-http.ts';
import { FerryError, NetworkError } from '../../src/errors.ts';
import { makeTestPki, type TestPki } from '../harness/cloud-registry.ts';
import { seededBytes } from '../harness/seed.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor } from '../harness/oci-client.ts';
import { pushImage } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from '../e2e/ferry-cli.ts';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';

const BLOB = seededBytes('h2/blob', 3 * 1024 * 1024 + 777);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const { NGHTTP2_REFUSED_STREAM, NGHTTP2_PROTOCOL_ERROR, NGHTTP2_NO_ERROR } = http2.constants;

type Handler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, session: Http2Session) => void;

/** An h2 registry stand-in: handlers by path, the sessions (connections) it saw, every request's path. */
interface H2Server {
  origin: string;
  host: string;
  sessions: Http2Session[];
  requests: Array<{ method: string; path: string; authorization: string | undefined; session: Http2Session }>;
  handle(path: string, h: Handler): void;
  close(): Promise<void>;
}

async function startH2(pki: TestPki, settings: http2.Settings = {}): Promise<H2Server> {
  const handlers = new Map<string, Handler>();
  const sessions: Http2Session[] = [];
  const requests: H2Server['requests'] = [];
  const server: Http2SecureServer = http2.createSecureServer({ cert: pki.cert, key: pki.key, settings });
  server.on('session', (s) => sessions.push(s));
  server.on('stream', (stream, headers) => {
    const path = String(headers[':path']);
    requests.push({ method: String(headers[':method']), path, authorization: headers.authorization as string | undefined, session: stream.session! });
    stream.on('error', () => undefined);
    const h = handlers.get(path.split('?')[0]!);
    if (!h) return stream.respond({ ':status': 404, 'content-length': '0' }, { endStream: true });
    h(stream, headers, stream.session!);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    origin: `https://localhost:${port}`,
    host: `localhost:${port}`,
    sessions,
    requests,
    handle: (path, h) => handlers.set(path, h),
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/**
 * An HTTP/2 peer written frame by frame (no nghttp2 on its side, so it can say what a library
 * would not): on a request's HEADERS, `act(connection index)` decides: `goaway` sends GOAWAY
 * with last stream 0 (the request was not taken); `ok` answers :status 200 with no body.
 */
async function rawH2Peer(pki: TestPki, act: (conn: number) => 'goaway' | 'ok'): Promise<{ host: string; connections(): number; close(): Promise<void> }> {
  const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
    const h = Buffer.alloc(9);
    h.writeUIntBE(payload.byteLength, 0, 3);
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(stream, 5);
    return Buffer.concat([h, payload]);
  };
  let count = 0;
  const server: TlsServer = createTlsServer({ cert: pki.cert, key: pki.key, ALPNProtocols: ['h2'] }, (socket) => {
    const conn = count++;
    let buf = Buffer.alloc(0);
    let prefaceSeen = false;
    socket.on('error', () => undefined);
    socket.write(frame(4, 0, 0, Buffer.alloc(0))); // SETTINGS
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!prefaceSeen) {
        if (buf.byteLength < 24) return;
        buf = buf.subarray(24);
        prefaceSeen = true;
      }
      while (buf.byteLength >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.byteLength < 9 + len) return;
        const type = buf[3]!;
        const flags = buf[4]!;
        const stream = buf.readUInt32BE(5) & 0x7fffffff;
        buf = buf.subarray(9 + len);
        if (type === 4 && !(flags & 1)) socket.write(frame(4, 1, 0, Buffer.alloc(0))); // SETTINGS ACK
        if (type === 1) {
          if (act(conn) === 'goaway') {
            const g = Buffer.alloc(8); // last stream 0, NO_ERROR
            socket.write(frame(7, 0, 0, g));
          } else socket.write(frame(1, 0x5, stream, Buffer.from([0x88]))); // HEADERS :status 200, END_STREAM | END_HEADERS
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    host: `localhost:${(server.address() as AddressInfo).port}`,
    connections: () => count,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** A flow controller that counts what it admits and what is settled. */
class CountingFlow extends FlowControl {
  admitted = 0;
  settled: FlowOutcome[] = [];
  override async admit(url: URL, method: string, signal?: AbortSignal): Promise<FlowTicket> {
    this.admitted += 1;
    return super.admit(url, method, signal);
  }
  override settle(ticket: FlowTicket, outcome: FlowOutcome): void {
    this.settled.push(outcome);
    super.settle(ticket, outcome);
  }
}

/** An upload sink in memory: what a pipe wrote. */
function memorySink(): UploadSink & { bytes(): Buffer } {
  const parts: Buffer[] = [];
  let written = 0;
  return {
    get written() {
      return written;
    },
    busy: false,
    buffered: 0,
    hasAnswer: false,
    onFailure: undefined,
    write(piece, done) {
      parts.push(Buffer.from(piece));
      written += piece.byteLength;
      queueMicrotask(() => done());
      return true;
    },
    response: async () => ({ status: 201, headers: {}, body: Buffer.alloc(0) }),
    close: () => undefined,
    bytes: () => Buffer.concat(parts),
  };
}

/** Answer 200 with `body`. */
function answer(s: ServerHttp2Stream, body: string, headers: Record<string, string> = {}): void {
  s.respond({ ':status': 200, 'content-length': String(Buffer.byteLength(body)), ...headers });
  s.end(body);
}

function assertNotInternal(e: unknown, host: string): true {
  assert.ok(e instanceof FerryError, `not a FerryError: ${String(e)}`);
  assert.notEqual(e.code, 'INTERNAL', e.message);
  assert.equal(e.code, 'REGISTRY_UNAVAILABLE', e.message);
  assert.ok(e.message.includes(host), `the message names ${host}: ${e.message}`);
  return true;
}

async function text(res: { body: AsyncIterable<Uint8Array> }): Promise<string> {
  const parts: Buffer[] = [];
  for await (const p of res.body) parts.push(Buffer.from(p));
  return Buffer.concat(parts).toString();
}

describe('HTTP/2 to registries that offer it', () => {
  let pki: TestPki;
  let srv: H2Server;
  let flow: CountingFlow;
  let transport: HttpTransport;

  before(async () => {
    pki = makeTestPki(['localhost', '127.0.0.1']);
    srv = await startH2(pki);
    srv.handle('/v2/', (s) => answer(s, '{}', { 'content-type': 'application/json', 'content-length': '2' }));
    srv.handle('/blob', (s) => {
      s.respond({ ':status': 200, 'content-length': String(BLOB.byteLength) });
      s.end(BLOB);
    });
    flow = new CountingFlow({ ceiling: 8 });
    transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', flow, http2Sessions: 4, headersTimeoutMs: 2000, bodyTimeoutMs: 2000, connectTimeoutMs: 5000 });
  });
  after(async () => {
    await transport.close();
    await srv.close();
  });

  test('chosen by ALPN: forty requests at once on at most four connections (http2Sessions 4), every one admitted and settled by the flow controller', async () => {
    const before = { admitted: flow.admitted, settled: flow.settled.length, sessions: srv.sessions.length };
    const answers = await Promise.all(Array.from({ length: 40 }, () => transport.request({ method: 'GET', url: new URL(`${srv.origin}/v2/`) })));
    for (const a of answers) assert.equal(await text(a), '{}');
    assert.ok(srv.sessions.length - before.sessions <= 4, `${srv.sessions.length - before.sessions} connections for 40 requests`);
    assert.ok(srv.sessions.every((s) => s.alpnProtocol === 'h2'));
    assert.equal(flow.admitted - before.admitted, 40);
    assert.equal(flow.settled.length - before.settled, 40);
    assert.ok(flow.settled.slice(before.settled).every((o) => typeof o === 'object' && o.status === 200));
    // The host is now known to multiplex: its ceiling is the HTTP/2 one (here the explicit 8 for both).
    assert.equal(flow.concurrency(srv.host), 8);
  });

  test('a blob piped from an HTTP/2 download arrives whole and verified', async () => {
    const reader = await transport.openRawBody({ url: new URL(`${srv.origin}/blob`), headers: {} });
    assert.ok(isBodyReader(reader), `declined: ${JSON.stringify(reader)}`);
    assert.equal(reader.remaining, BLOB.byteLength);
    const sink = memorySink();
    const hash = createHash('sha256');
    await reader.pipeInto(sink, reader.remaining, (piece) => hash.update(piece));
    assert.equal(hash.digest('hex'), sha(BLOB));
    assert.equal(sha(sink.bytes()), sha(BLOB));
  });

  test('an upload over HTTP/2 sends the body and reads the answer; an early answer (401) stops it and is kept', async () => {
    // This server grants 64 KiB per stream and speaks only HTTP/2: a 3 MiB upload is first tried on an
    // HTTP/1.1 connection of its own (uploadFits), refused by ALPN, and sent on HTTP/2 after all.
    let got = Buffer.alloc(0);
    srv.handle('/upload', (s) => {
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => {
        got = Buffer.concat(parts);
        s.respond({ ':status': 201, location: '/done', 'content-length': '0' }, { endStream: true });
      });
    });
    srv.handle('/refuse', (s) => {
      // As a registry does when the token is wrong: answer at once, and tell the client to stop sending.
      s.respond({ ':status': 401, 'content-type': 'application/json' });
      s.end('{"errors":[{"code":"UNAUTHORIZED"}]}', () => s.close(NGHTTP2_NO_ERROR));
    });
    const up = await transport.openRawUpload('PUT', { url: new URL(`${srv.origin}/upload`), headers: { 'content-type': 'application/octet-stream' } }, BLOB.byteLength);
    assert.ok(up);
    for (let o = 0; o < BLOB.byteLength; o += 100_000) {
      await new Promise<void>((resolve, reject) => up.write(BLOB.subarray(o, o + 100_000), (e) => (e ? reject(e) : resolve())));
    }
    const answer = await up.response();
    assert.equal(answer.status, 201);
    assert.equal(sha(got), sha(BLOB));

    const refused = await transport.openRawUpload('PUT', { url: new URL(`${srv.origin}/refuse`), headers: {} }, BLOB.byteLength);
    assert.ok(refused);
    const early = await refused.response();
    assert.equal(early.status, 401);
    assert.match(early.body.toString(), /UNAUTHORIZED/);
  });

  test('interim answers (103 Early Hints) are skipped', async () => {
    srv.handle('/hints', (s) => {
      s.additionalHeaders({ ':status': 103, link: '</x>; rel=preload' });
      s.respond({ ':status': 200, 'content-length': '2' });
      s.end('ok');
    });
    const res = await transport.request({ method: 'GET', url: new URL(`${srv.origin}/hints`) });
    assert.equal(res.status, 200);
    assert.equal(await text(res), 'ok');
  });

  test('a redirect to another host on HTTP/2 drops the Authorization header', async () => {
    const other = await startH2(pki);
    try {
      other.handle('/there', (s) => answer(s, 'ok', { 'content-length': '2' }));
      srv.handle('/moved', (s) => s.respond({ ':status': 307, location: `https://127.0.0.1:${other.host.split(':')[1]}/there`, 'content-length': '0' }, { endStream: true }));
      const res = await transport.request({ method: 'GET', url: new URL(`${srv.origin}/moved`), headers: { authorization: 'Bearer secret' } });
      assert.equal(res.status, 200);
      assert.equal(await text(res), 'ok');
      assert.equal(srv.requests.findLast((r) => r.path === '/moved')?.authorization, 'Bearer secret');
      assert.equal(other.requests.find((r) => r.path === '/there')?.authorization, undefined, 'credentials followed the redirect to another host');
    } finally {
      await other.close();
    }
  });
});

describe('hostile HTTP/2 peers', () => {
  let pki: TestPki;
  let srv: H2Server;
  let flow: CountingFlow;
  let transport: HttpTransport;

  before(async () => {
    pki = makeTestPki(['localhost', '127.0.0.1']);
    srv = await startH2(pki);
    flow = new CountingFlow({ ceiling: 8 });
    transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', flow, headersTimeoutMs: 1500, bodyTimeoutMs: 1500, connectTimeoutMs: 5000 });
  });
  after(async () => {
    await transport.close();
    await srv.close();
  });

  test('GOAWAY on a connection: the next request goes on a new one', async () => {
    srv.handle('/bye', (s, _h, session) => {
      answer(s, 'ok');
      // A graceful shutdown (a registry restarting, an idle timeout): no new streams on this one.
      setImmediate(() => session.goaway(NGHTTP2_NO_ERROR));
    });
    srv.handle('/next', (s) => answer(s, 'next'));
    assert.equal(await text(await transport.request({ method: 'GET', url: new URL(`${srv.origin}/bye`) })), 'ok');
    const byeSession = srv.requests.findLast((r) => r.path === '/bye')!.session;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await text(await transport.request({ method: 'GET', url: new URL(`${srv.origin}/next`) })), 'next');
    assert.notEqual(srv.requests.findLast((r) => r.path === '/next')!.session, byeSession, 'the request went on the connection that said GOAWAY');
  });

  test('GOAWAY naming a last stream below the request: it was not taken, and is sent again on a new connection', async () => {
    // A peer written frame by frame: the first connection answers the request with GOAWAY(last stream 0); the next answers 200.
    const peer = await rawH2Peer(pki, (conn) => (conn === 0 ? 'goaway' : 'ok'));
    const t = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', headersTimeoutMs: 1500 });
    try {
      const res = await t.request({ method: 'GET', url: new URL(`https://${peer.host}/v2/`) });
      assert.equal(res.status, 200);
      assert.equal(peer.connections(), 2);
    } finally {
      await t.close();
      await peer.close();
    }
  });

  test('a stream refused (REFUSED_STREAM) is sent again; one refused every time fails retryable, naming the host', async () => {
    let refusals = 0;
    srv.handle('/refused-once', (s) => {
      if (refusals++ === 0) return s.close(NGHTTP2_REFUSED_STREAM);
      s.respond({ ':status': 200, 'content-length': '2' });
      s.end('ok');
    });
    const res = await transport.request({ method: 'GET', url: new URL(`${srv.origin}/refused-once`) });
    assert.equal(await text(res), 'ok');
    srv.handle('/refused-always', (s) => s.close(NGHTTP2_REFUSED_STREAM));
    await assert.rejects(transport.request({ method: 'GET', url: new URL(`${srv.origin}/refused-always`) }), (e) => {
      assert.ok(e instanceof NetworkError && e.retryable);
      return assertNotInternal(e, srv.host);
    });
  });

  test('a reset in the middle of a blob: a retryable error on the source side, never INTERNAL', async () => {
    srv.handle('/cut', (s) => {
      s.respond({ ':status': 200, 'content-length': String(BLOB.byteLength) });
      s.write(BLOB.subarray(0, 500_000), () => setTimeout(() => s.close(NGHTTP2_PROTOCOL_ERROR), 20));
    });
    const reader = await transport.openRawBody({ url: new URL(`${srv.origin}/cut`), headers: {} });
    assert.ok(isBodyReader(reader));
    const sink = memorySink();
    await assert.rejects(reader.pipeInto(sink, reader.remaining, () => undefined), (e) => {
      assert.ok(e instanceof NetworkError && e.retryable, String(e));
      assert.equal(e.side, 'source');
      return assertNotInternal(e, srv.host);
    });
    assert.ok(sink.written < BLOB.byteLength);
  });

  test('more body than its Content-Length is refused', async () => {
    srv.handle('/over', (s) => {
      s.respond({ ':status': 200, 'content-length': '10' });
      s.end(Buffer.alloc(5000, 1));
    });
    await assert.rejects(
      (async () => {
        const res = await transport.request({ method: 'GET', url: new URL(`${srv.origin}/over`) });
        await text(res);
      })(),
      (e) => assertNotInternal(e, srv.host),
    );
  });

  test('headers past the bounds (one huge field; more fields than 128) fail the request, not the process', async () => {
    srv.handle('/huge-header', (s) => {
      try {
        s.respond({ ':status': 200, 'x-huge': 'a'.repeat(200_000) }, { endStream: true });
      } catch {
        s.close(NGHTTP2_PROTOCOL_ERROR);
      }
    });
    srv.handle('/many-headers', (s) => {
      const h: Record<string, string | number> = { ':status': 200 };
      for (let i = 0; i < 300; i++) h[`x-field-${i}`] = 'v';
      s.respond(h, { endStream: true });
    });
    for (const path of ['/huge-header', '/many-headers']) {
      await assert.rejects(transport.request({ method: 'GET', url: new URL(`${srv.origin}${path}`) }), (e) => assertNotInternal(e, srv.host), path);
    }
    // The transport still works afterwards (a broken session is not reused).
    srv.handle('/after', (s) => answer(s, 'ok', { 'content-length': '2' }));
    assert.equal(await text(await transport.request({ method: 'GET', url: new URL(`${srv.origin}/after`) })), 'ok');
  });

  test('an answer that never comes: a timeout, told to the flow controller', async () => {
    srv.handle('/silent', () => undefined);
    const before = flow.settled.length;
    await assert.rejects(transport.request({ method: 'GET', url: new URL(`${srv.origin}/silent`) }), (e) => {
      assert.match((e as Error).message, /no answer/);
      return assertNotInternal(e, srv.host);
    });
    assert.ok(flow.settled.slice(before).includes('timeout'));
  });

  test('a download that stalls after its head: a read timeout on the source side', async () => {
    srv.handle('/stall', (s) => {
      s.respond({ ':status': 200, 'content-length': String(BLOB.byteLength) });
      s.write(BLOB.subarray(0, 1000));
    });
    const reader = await transport.openRawBody({ url: new URL(`${srv.origin}/stall`), headers: {} });
    assert.ok(isBodyReader(reader));
    await assert.rejects(reader.pipeInto(memorySink(), reader.remaining, () => undefined), (e) => {
      assert.match((e as Error).message, /stalled/);
      assert.equal((e as NetworkError).side, 'source');
      return assertNotInternal(e, srv.host);
    });
  });
});

describe('HTTP/2 peers that break the protocol or grant nothing', () => {
  let pki: TestPki;

  before(() => {
    pki = makeTestPki(['localhost', '127.0.0.1']);
  });

  test('an upload whose server never opens its window: stalled on the destination side, retryable', async () => {
    // SETTINGS_INITIAL_WINDOW_SIZE 0: the client may send no body byte until the server says so, and it never does.
    const srv = await startH2(pki, { initialWindowSize: 0 });
    srv.handle('/put', () => undefined);
    const transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', headersTimeoutMs: 1000, bodyTimeoutMs: 800 });
    try {
      const up = await transport.openRawUpload('PUT', { url: new URL(`${srv.origin}/put`), headers: {} }, 100_000);
      assert.ok(up);
      const failed = new Promise<Error>((resolve) => (up.onFailure = resolve));
      up.write(Buffer.alloc(100_000, 7), () => undefined);
      const e = await failed;
      assert.ok(e instanceof NetworkError && e.retryable, String(e));
      assert.equal(e.side, 'destination');
      assert.match(e.message, /stalled/);
      await assert.rejects(up.response(), (err) => assertNotInternal(err, srv.host));
    } finally {
      await transport.close();
      await srv.close();
    }
  });

  test('a peer that agrees on h2 by ALPN and then speaks HTTP/1.1: REGISTRY_UNAVAILABLE naming it', async () => {
    const liar: TlsServer = createTlsServer({ cert: pki.cert, key: pki.key, ALPNProtocols: ['h2'] }, (socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'));
    });
    await new Promise<void>((r) => liar.listen(0, '127.0.0.1', () => r()));
    const host = `localhost:${(liar.address() as AddressInfo).port}`;
    const transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', headersTimeoutMs: 1500, connectTimeoutMs: 3000 });
    try {
      await assert.rejects(transport.request({ method: 'GET', url: new URL(`https://${host}/v2/`) }), (e) => assertNotInternal(e, host));
    } finally {
      await transport.close();
      await new Promise((r) => liar.close(r));
    }
  });

  test('a registry that answers ALPN with http/1.1 keeps HTTP/1.1, and the connection that asked serves the requests', async () => {
    let connections = 0;
    const h1: HttpsServer = createHttpsServer({ cert: pki.cert, key: pki.key }, (_req, res) => res.writeHead(200, { 'content-length': '2' }).end('ok'));
    h1.on('secureConnection', (s) => {
      connections += 1;
      assert.notEqual(s.alpnProtocol, 'h2');
    });
    await new Promise<void>((r) => h1.listen(0, '127.0.0.1', () => r()));
    const origin = `https://localhost:${(h1.address() as AddressInfo).port}`;
    const transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test' });
    try {
      for (let i = 0; i < 3; i++) assert.equal(await text(await transport.request({ method: 'GET', url: new URL(`${origin}/v2/`) })), 'ok');
      assert.equal(connections, 1, 'the first connection (which offered h2) was kept for HTTP/1.1');
    } finally {
      await transport.close();
      h1.closeAllConnections();
      await new Promise((r) => h1.close(r));
    }
  });

  test('warm(): the connections are opened before any request', async () => {
    const srv = await startH2(pki);
    const transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test', http2Sessions: 3 });
    try {
      transport.warm(new URL(srv.origin));
      const deadline = Date.now() + 5000;
      while (srv.sessions.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(srv.sessions.length, 3);
      assert.equal(srv.requests.length, 0, 'warming sends no request');
    } finally {
      await transport.close();
      await srv.close();
    }
  });
});

/**
 * An HTTP/2 front for a real registry, as a load balancer would be: every stream is forwarded to
 * `upstream` (distribution serving TLS, over HTTP/2). It misbehaves on purpose: each connection
 * is told GOAWAY after `streamsPerSession` streams (the next requests must go on a new one), and
 * the first blob download of `resetDigest` is reset in the middle of its body.
 */
async function h2Front(pki: TestPki, upstream: string, streamsPerSession: number, resetDigest: string): Promise<{ host: string; sessions: number; goaways: number; resets: number; close(): Promise<void> }> {
  const up = http2.connect(upstream, { ca: readFileSync(pki.caPath) });
  up.on('error', () => undefined);
  const state = { sessions: 0, goaways: 0, resets: 0 };
  const server = http2.createSecureServer({ cert: pki.cert, key: pki.key });
  const open = new Set<Http2Session>();
  server.on('session', (s) => {
    state.sessions++;
    open.add(s);
    s.on('close', () => open.delete(s));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    const session = stream.session!;
    const n = ((session as unknown as { served?: number }).served = ((session as unknown as { served?: number }).served ?? 0) + 1);
    if (n === streamsPerSession) {
      state.goaways++;
      // Graceful: this stream is served, none after it on this connection.
      setImmediate(() => session.goaway(NGHTTP2_NO_ERROR, stream.id));
    }
    const out: http2.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(headers)) if (k !== ':authority' && k !== ':scheme' && v !== undefined) out[k] = v;
    const req = up.request(out);
    req.on('error', () => stream.close(NGHTTP2_PROTOCOL_ERROR));
    stream.pipe(req);
    const cut = headers[':method'] === 'GET' && String(headers[':path']).endsWith(`/blobs/${resetDigest}`) && state.resets === 0;
    req.on('response', (h) => {
      const back: http2.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(h)) if (v !== undefined) back[k] = v;
      if (stream.destroyed) return req.close();
      stream.respond(back);
      if (!cut) return req.pipe(stream);
      state.resets++;
      let sent = 0;
      req.on('data', (d: Buffer) => {
        if (sent > 100_000) return;
        sent += d.byteLength;
        stream.write(d);
        if (sent > 100_000) {
          stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
          req.close();
        }
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    host: `localhost:${(server.address() as AddressInfo).port}`,
    get sessions() {
      return state.sessions;
    },
    get goaways() {
      return state.goaways;
    },
    get resets() {
      return state.resets;
    },
    close: async () => {
      for (const s of open) s.destroy();
      up.close();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('a copy over HTTP/2 between two distribution registries serving TLS', () => {
  let pki: TestPki;
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let srcView: DistributionRegistry;
  let dstView: DistributionRegistry;
  let pushed: { digest: string; layers: string[] };
  const stateHome = tempStateHome();

  before(async () => {
    pki = makeTestPki(['localhost', '127.0.0.1']);
    const tls = { certPath: pki.certPath, keyPath: pki.keyPath, caPath: pki.caPath, host: 'localhost' };
    [src, dst] = await Promise.all([startDistribution({ tls }), startDistribution({ tls })]);
    // The same storage over plain HTTP: seeds and checks without trusting ferry.
    [srcView, dstView] = await Promise.all([startDistribution({ storageDir: src.storageDir }), startDistribution({ storageDir: dst.storageDir })]);
    // Small layers (HTTP/2) and one larger than four of distribution's 1 MiB stream windows (HTTP/1.1: uploadFits).
    const image = await pushImage(clientFor(srcView), 'h2/app', 'v1', { layerSizes: [300_000, 4096, 90_000, 6 * 1024 * 1024] });
    pushed = { digest: image.digest, layers: (JSON.parse(image.manifestBytes.toString()) as { layers: Array<{ digest: string }> }).layers.map((l) => l.digest) };
  });
  after(async () => {
    await Promise.all([src?.stop(), dst?.stop(), srcView?.stop(), dstView?.stop()]);
  });

  const copy = (from: string, to: string, env: NodeJS.ProcessEnv = {}) =>
    runFerry(['copy', '--json', '--ca-file', pki.caPath, '--state-dir', join(stateHome, String(Math.random()).slice(2)), from, to], {
      env: { HTTPS_PROXY: undefined, https_proxy: undefined, NODE_EXTRA_CA_CERTS: undefined, ...env },
      timeoutMs: 120_000,
    });
  /** Access-log lines of a registry: method, path, protocol. */
  const requests = (r: DistributionRegistry) =>
    [...r.logs().matchAll(/"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) (HTTP\/[0-9.]+)"/g)].map((m) => ({ method: m[1]!, path: m[2]!, proto: m[3]! }));

  test('byte-exact and verified; small blobs and manifests go on HTTP/2, the large upload on an HTTP/1.1 connection of its own', async () => {
    // The harness's own readiness checks (HTTP/1.1) are in the logs already: only the copy's requests count.
    const [srcBefore, dstBefore] = [requests(src).length, requests(dst).length];
    const r = await copy(`${src.host}/h2/app:v1`, `${dst.host}/h2/copy:v1`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await clientFor(dstView).verifyImage('h2/copy', 'v1')).digest, pushed.digest);
    const srcReqs = requests(src).slice(srcBefore);
    const dstReqs = requests(dst).slice(dstBefore);
    assert.ok(srcReqs.length > 0 && dstReqs.length > 0, 'the access logs were read');
    for (const q of srcReqs) assert.equal(q.proto, 'HTTP/2.0', `${q.method} ${q.path} on the source`);
    const commits = dstReqs.filter((q) => q.method === 'PUT' && q.path.includes('digest='));
    const large = pushed.layers[3]!.slice('sha256:'.length);
    for (const c of commits) assert.equal(c.proto, c.path.includes(large) ? 'HTTP/1.1' : 'HTTP/2.0', c.path);
    for (const q of dstReqs.filter((x) => x.method !== 'PUT' || !x.path.includes('digest='))) assert.equal(q.proto, 'HTTP/2.0', `${q.method} ${q.path} on the destination`);
    assert.equal(r.json.transfer.blobs_copied, 5);
  });

  test('GOAWAY every few streams and a reset in the middle of a blob: the copy goes on, verified', async () => {
    const front = await h2Front(pki, `https://${src.host}`, 2, pushed.layers[0]!);
    try {
      const r = await copy(`${front.host}/h2/app:v1`, `${dst.host}/h2/through-front:v1`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await clientFor(dstView).verifyImage('h2/through-front', 'v1')).digest, pushed.digest);
      assert.equal(front.resets, 1, 'the blob was cut once');
      assert.ok(front.goaways >= 2, `${front.goaways} GOAWAYs`);
      assert.ok(front.sessions > front.goaways, `${front.sessions} connections for ${front.goaways} GOAWAYs: the requests after one went on a new connection`);
    } finally {
      await front.close();
    }
  });

  test('HTTP/2 off (FERRY_HTTP2=off): the same copy on HTTP/1.1 alone', async () => {
    const r = await copy(`${src.host}/h2/app:v1`, `${dst.host}/h2/h1-only:v1`, { FERRY_HTTP2: 'off' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await clientFor(dstView).verifyImage('h2/h1-only', 'v1')).digest, pushed.digest);
    const onH2 = requests(dst).filter((q) => q.path.includes('/h2/h1-only/') && q.proto !== 'HTTP/1.1');
    assert.deepEqual(onH2, []);
  });
});
