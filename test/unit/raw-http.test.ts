// ferry's own HTTP/1.1 for blob bytes (src/transport/raw-http.ts), against Node servers that
// play the source (a blob GET, over TLS too) and the destination (a PUT that may read slowly
// or refuse early). The slow destination is the case that matters most: the source is read
// into one reused buffer, so a write still with the kernel must hold reading back, or the
// destination would get bytes overwritten by the next read.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { HttpTransport } from '../../src/transport/http.ts';
import { FerryError } from '../../src/errors.ts';
import { PIPE_BUFFER_BYTES, PIPE_BUFFER_MAX_BYTES, RawBodyReader, RawConnectionPool, RawUpload, ReadBuffer, rawExchange } from '../../src/transport/raw-http.ts';
import { makeTestPki, type TestPki } from '../harness/cloud-registry.ts';
import { seededBytes } from '../harness/seed.ts';
import { waitFor } from '../harness/wait.ts';

const MiB = 1024 * 1024;
const BLOB = seededBytes('raw-http/blob', 8 * MiB + 4321);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** The source: GET /blob serves BLOB; /moved redirects to /blob, /away to the other host. */
function sourceHandler(seen: { path: string; authorization: string | undefined }[], otherOrigin: () => string) {
  return (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ path: req.url ?? '', authorization: req.headers.authorization });
    if (req.url === '/moved') return res.writeHead(307, { location: '/blob', 'content-length': 0 }).end();
    if (req.url === '/away') return res.writeHead(307, { location: `${otherOrigin()}/blob`, 'content-length': 0 }).end();
    if (req.url === '/chunked') return res.writeHead(200).end(BLOB.subarray(0, 1000));
    res.writeHead(200, { 'content-length': BLOB.byteLength });
    // Several writes, so the body crosses many reads on the client.
    for (let o = 0; o < BLOB.byteLength; o += 300_000) res.write(BLOB.subarray(o, o + 300_000));
    res.end();
  };
}

/** The destination: PUT /slow reads the body in small sips with pauses. */
function sinkHandler(received: Map<string, Buffer>) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    let n = 0;
    req.on('data', (d: Buffer) => {
      parts.push(d);
      n += d.byteLength;
      if (req.url?.startsWith('/slow') && n % (512 * 1024) < d.byteLength) {
        req.pause();
        setTimeout(() => req.resume(), 15);
      }
    });
    req.on('end', () => {
      received.set(req.url ?? '', Buffer.concat(parts));
      res.writeHead(201, { location: '/done', 'content-length': 0 }).end();
    });
  };
}

describe('raw HTTP/1.1 for blob bytes', () => {
  let pki: TestPki;
  let https: Server;
  let http: Server;
  let sink: Server;
  let httpsOrigin: string;
  let httpOrigin: string;
  let sinkOrigin: string;
  const seen: { path: string; authorization: string | undefined }[] = [];
  const received = new Map<string, Buffer>();
  let transport: HttpTransport;

  before(async () => {
    pki = makeTestPki(['localhost']);
    const serveBlob = sourceHandler(seen, () => httpOrigin);
    const takeUpload = sinkHandler(received);
    // Over TLS the same server is source (GET) and destination (PUT).
    https = createHttpsServer({ cert: pki.cert, key: pki.key }, (req, res) => (req.method === 'PUT' ? takeUpload(req, res) : serveBlob(req, res)));
    http = createHttpServer(sourceHandler(seen, () => httpsOrigin));
    sink = createHttpServer(sinkHandler(received));
    httpsOrigin = `https://localhost:${await listen(https)}`;
    httpOrigin = `http://127.0.0.1:${await listen(http)}`;
    sinkOrigin = `http://127.0.0.1:${await listen(sink)}`;
    transport = new HttpTransport({ caFiles: [pki.caPath], userAgent: 'ferry-test' });
  });
  after(async () => {
    await transport.close();
    for (const s of [https, http, sink]) s.closeAllConnections();
    await Promise.all([https, http, sink].map((s) => new Promise((r) => s.close(r))));
  });

  /** GET `from`, PUT it into `to`; returns the sink's answer and what `inspect` saw. */
  async function pipe(from: string, to: string, headers: Record<string, string> = {}) {
    return pipeFrom(await transport.openRawBody({ url: new URL(from), headers }), to);
  }

  /** PUT what an opened download reads into `to`. */
  async function pipeFrom(reader: Awaited<ReturnType<HttpTransport['openRawBody']>>, to: string) {
    assert.ok(reader instanceof RawBodyReader, `declined: ${JSON.stringify(reader)}`);
    const upload = (await transport.openRawUpload('PUT', { url: new URL(to), headers: { 'content-type': 'application/octet-stream' } }, reader.remaining)) as RawUpload;
    const hash = createHash('sha256');
    let inspected = 0;
    let largestPiece = 0;
    await reader.pipeInto(upload, reader.remaining, (piece) => {
      hash.update(piece);
      inspected += piece.byteLength;
      largestPiece = Math.max(largestPiece, piece.byteLength);
    });
    return { answer: await upload.response(), inspectedHex: hash.digest('hex'), inspected, largestPiece };
  }

  test('into a destination that reads slowly: every byte arrives unchanged', async () => {
    const r = await pipe(`${httpOrigin}/blob`, `${sinkOrigin}/slow`);
    assert.equal(r.answer.status, 201);
    assert.equal(r.inspected, BLOB.byteLength);
    assert.equal(r.inspectedHex, sha(BLOB));
    assert.equal(sha(received.get('/slow')!), sha(BLOB), 'the destination got other bytes than were read: the buffer was reused under a pending write');
  });

  test('a pipe that reads alone gets reads larger than 256 KiB; two at once stay at 256 KiB; bytes unchanged either way', async () => {
    await waitFor('the earlier pipes to give their read buffers back', () => ReadBuffer.open() === 0, 2000, 10);
    const alone = await pipe(`${httpOrigin}/blob`, `${sinkOrigin}/slow`);
    assert.equal(sha(received.get('/slow')!), sha(BLOB));
    assert.ok(alone.largestPiece > PIPE_BUFFER_BYTES, `a lone pipe behind a slow destination never read more than ${alone.largestPiece} bytes at once: its buffer did not grow`);
    await waitFor('the earlier pipes to give their read buffers back', () => ReadBuffer.open() === 0, 2000, 10);
    // Both downloads open (each counts as reading from its first read on) before either is piped.
    const [ra, rb] = await Promise.all([transport.openRawBody({ url: new URL(`${httpOrigin}/blob`), headers: {} }), transport.openRawBody({ url: new URL(`${httpOrigin}/blob`), headers: {} })]);
    const [a, b] = await Promise.all([pipeFrom(ra, `${sinkOrigin}/slow`), pipeFrom(rb, `${sinkOrigin}/slow2`)]);
    for (const [r, path] of [[a, '/slow'], [b, '/slow2']] as const) {
      assert.equal(r.inspectedHex, sha(BLOB));
      assert.equal(sha(received.get(path)!), sha(BLOB), `${path}: other bytes than were read`);
    }
    // The one that finished first read only while the other was reading too: 256 KiB at most.
    // (The other may grow once it reads alone.)
    assert.ok(Math.min(a.largestPiece, b.largestPiece) <= PIPE_BUFFER_BYTES, `two pipes at once read ${a.largestPiece} and ${b.largestPiece} bytes at most`);
    await waitFor('every closed pipe to give its read buffer back', () => ReadBuffer.open() === 0, 2000, 10);
  });

  test('over TLS (the CA from --ca-file), into a slow destination, in parts', async () => {
    const reader = await transport.openRawBody({ url: new URL(`${httpsOrigin}/blob`), headers: {} });
    assert.ok(reader instanceof RawBodyReader);
    const first = 5 * MiB + 3;
    for (const [path, length] of [['/tls0', first], ['/slow', BLOB.byteLength - first]] as const) {
      const upload = (await transport.openRawUpload('PUT', { url: new URL(`${sinkOrigin}${path}`), headers: {} }, length)) as RawUpload;
      await reader.pipeInto(upload, length, () => undefined);
      assert.equal((await upload.response()).status, 201);
    }
    assert.equal(sha(Buffer.concat([received.get('/tls0')!, received.get('/slow')!])), sha(BLOB));
  });

  for (const [name, from] of [['plain HTTP (the reused buffer)', () => httpOrigin], ['TLS', () => httpsOrigin]] as const) {
    test(`${name} into a destination over TLS that reads slowly: every byte arrives unchanged`, async () => {
      received.delete('/slow');
      const r = await pipe(`${from()}/blob`, `${httpsOrigin}/slow`);
      assert.equal(r.answer.status, 201);
      assert.equal(r.inspectedHex, sha(BLOB));
      assert.equal(sha(received.get('/slow')!), sha(BLOB));
    });
  }

  test('a body taken in parts (chunked uploads): the bytes past one part wait for the next', async () => {
    const reader = await transport.openRawBody({ url: new URL(`${httpOrigin}/blob`), headers: {} });
    assert.ok(reader instanceof RawBodyReader);
    const parts = [3 * MiB + 17, 3 * MiB, BLOB.byteLength - 6 * MiB - 17];
    for (const [i, length] of parts.entries()) {
      const upload = (await transport.openRawUpload('PUT', { url: new URL(`${sinkOrigin}/part${i}`), headers: {} }, length)) as RawUpload;
      await reader.pipeInto(upload, length, () => undefined);
      assert.equal((await upload.response()).status, 201);
    }
    assert.equal(sha(Buffer.concat(parts.map((_, i) => received.get(`/part${i}`)!))), sha(BLOB));
  });

  test('redirects are followed; Authorization goes only to the same host', async () => {
    seen.length = 0;
    const same = await pipe(`${httpOrigin}/moved`, `${sinkOrigin}/r1`, { authorization: 'Bearer secret' });
    assert.equal(same.inspectedHex, sha(BLOB));
    assert.deepEqual(seen.map((s) => [s.path, s.authorization]), [['/moved', 'Bearer secret'], ['/blob', 'Bearer secret']]);
    seen.length = 0;
    const away = await pipe(`${httpOrigin}/away`, `${sinkOrigin}/r2`, { authorization: 'Bearer secret' });
    assert.equal(away.inspectedHex, sha(BLOB));
    assert.deepEqual(seen.map((s) => [s.path, s.authorization]), [['/away', 'Bearer secret'], ['/blob', undefined]]);
  });

  test('TLS is verified: without the CA the connection is refused', async () => {
    const strict = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      // The process-wide CA list now has the test CA (the first transport added it); a name the certificate does not carry must fail.
      const url = new URL(`${httpsOrigin.replace('localhost', '127.0.0.1')}/blob`);
      await assert.rejects(strict.openRawBody({ url, headers: {} }), /ERR_TLS_CERT_ALTNAME_INVALID|certificate|altname/i);
    } finally {
      await strict.close();
    }
  });

  test('an answer without a Content-Length is declined, not guessed at', async () => {
    const r = await transport.openRawBody({ url: new URL(`${httpOrigin}/chunked`), headers: {} });
    assert.ok(!(r instanceof RawBodyReader) && 'declined' in r);
    assert.equal(typeof r.declined === 'object' && r.declined.status, 200);
  });

  test('a destination that refuses before the body is in: the transfer stops and its answer is kept', async () => {
    const reader = await transport.openRawBody({ url: new URL(`${httpOrigin}/blob`), headers: {} });
    assert.ok(reader instanceof RawBodyReader);
    // Like Go's net/http: the answer goes out at once, the rest of the body is read and dropped.
    const refusing = createNetServer((socket) => {
      let answered = false;
      socket.on('data', () => {
        if (answered) return;
        answered = true;
        const body = '{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}';
        socket.write(`HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      });
      socket.on('error', () => undefined);
    });
    const port = await new Promise<number>((r) => refusing.listen(0, '127.0.0.1', () => r((refusing.address() as AddressInfo).port)));
    after(() => refusing.close());
    const upload = (await transport.openRawUpload('PUT', { url: new URL(`http://127.0.0.1:${port}/refuse`), headers: {} }, reader.remaining)) as RawUpload;
    await assert.rejects(reader.pipeInto(upload, reader.remaining, () => undefined), /answered before the whole body was sent/);
    assert.equal(upload.hasAnswer, true);
    const answer = await upload.response();
    assert.equal(answer.status, 401);
    assert.match(answer.body.toString(), /UNAUTHORIZED/);
  });

  test('a header value with a line break is refused, not sent', async () => {
    await assert.rejects(transport.openRawBody({ url: new URL(`${httpOrigin}/blob`), headers: { authorization: 'Bearer x\r\nx-evil: 1' } }), /malformed header/);
  });
});

describe('answers to an upload', () => {
  test('a chunked body, a 204 without a length, and no close from the server: each answer is complete when its body is', async () => {
    const { dechunk } = await import('../../src/transport/raw-http.ts');
    assert.equal(dechunk(Buffer.from('5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n'))?.toString(), 'hello world');
    assert.equal(dechunk(Buffer.from('5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n'))?.toString(), 'hello');
    assert.equal(dechunk(Buffer.from('5\r\nhello\r\n')), undefined, 'not finished yet');
    assert.throws(() => dechunk(Buffer.from('zz\r\n')), /malformed chunked body: chunk size "zz"/);

    // A server that keeps every connection open and answers in these shapes.
    const answers: Record<string, string> = {
      '/chunked': 'HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n',
      '/nocontent': 'HTTP/1.1 204 No Content\r\nlocation: /next\r\n\r\n',
    };
    const server = createNetServer((socket) => {
      let head = '';
      socket.on('data', (d: Buffer) => {
        head += d.toString('latin1');
        const m = /^PUT (\S+)/.exec(head);
        if (m && head.includes('\r\n\r\nxyz')) socket.write(answers[m[1]!]!);
      });
      socket.on('error', () => undefined);
    });
    const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      for (const [path, status, body] of [['/chunked', 400, '{"a":1}'], ['/nocontent', 204, '']] as const) {
        const upload = (await transport.openRawUpload('PUT', { url: new URL(`http://127.0.0.1:${port}${path}`), headers: {} }, 3)) as RawUpload;
        upload.write(Buffer.from('xyz'), () => undefined);
        const answer = await upload.response();
        assert.equal(answer.status, status);
        assert.equal(answer.body.toString(), body);
      }
    } finally {
      await transport.close();
      server.close();
    }
  });
});

/**
 * A server that answers each request by script: `answer(request, nth request on its connection)`
 * returns the raw answer, or 'drop' to close the connection without one. Requests' bodies are
 * read by their Content-Length. Counts connections.
 */
async function scriptedServer(answer: (request: { method: string; path: string; body: Buffer }, nthOnConnection: number) => string | 'drop') {
  let connections = 0;
  let open = 0;
  const server = createNetServer((socket) => {
    connections++;
    open++;
    socket.on('close', () => open--);
    let buffered = Buffer.alloc(0);
    let nth = 0;
    socket.on('data', (d: Buffer) => {
      buffered = Buffer.concat([buffered, d]);
      for (;;) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffered.subarray(0, end).toString('latin1');
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.byteLength < end + 4 + length) return;
        const [method, path] = head.split(' ') as [string, string];
        const body = buffered.subarray(end + 4, end + 4 + length);
        buffered = buffered.subarray(end + 4 + length);
        const a = answer({ method, path, body }, ++nth);
        if (a === 'drop') return void socket.destroy();
        socket.write(a);
      }
    });
    socket.on('error', () => undefined);
  });
  const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
  return {
    origin: `http://127.0.0.1:${port}`,
    connections: () => connections,
    /** Connections not yet closed. */
    open: () => open,
    close: () => new Promise<void>((r) => {
      server.close(() => r());
    }),
  };
}

const blobAnswer = (body: string, extra = '') => `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`;
const created = (extra = '') => `HTTP/1.1 201 Created\r\nlocation: /done\r\ncontent-length: 0\r\n${extra}\r\n`;

describe('kept-alive connections', () => {
  /** GET `from` and PUT it to `to` on the transport's own connections. */
  async function pipeOnce(transport: HttpTransport, from: string, to: string): Promise<number> {
    const reader = await transport.openRawBody({ url: new URL(from), headers: {} });
    assert.ok(reader instanceof RawBodyReader, `declined: ${JSON.stringify(reader)}`);
    const upload = (await transport.openRawUpload('PUT', { url: new URL(to), headers: {} }, reader.remaining)) as RawUpload;
    await reader.pipeInto(upload, reader.remaining, () => undefined);
    return (await upload.response()).status;
  }

  test('downloads, uploads and small requests in a row each reuse one connection per server; close() closes the idle ones', async () => {
    const uploaded: string[] = [];
    const source = await scriptedServer(() => blobAnswer('hello blob'));
    const sink = await scriptedServer((q) => {
      if (q.method === 'PUT') uploaded.push(q.body.toString());
      return q.method === 'HEAD' ? 'HTTP/1.1 404 Not Found\r\ncontent-length: 19\r\n\r\n' : created();
    });
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      for (let i = 0; i < 4; i++) {
        const head = await transport.request({ method: 'HEAD', url: new URL(`${sink.origin}/v2/x/blobs/sha256:${i}`) });
        assert.equal(head.status, 404, 'a HEAD has no body, whatever its Content-Length says');
        const post = await transport.request({ method: 'POST', url: new URL(`${sink.origin}/v2/x/blobs/uploads/`) });
        assert.equal(post.status, 201);
        assert.equal(post.headers.location, '/done');
        assert.equal(await pipeOnce(transport, `${source.origin}/blob`, `${sink.origin}/up/${i}`), 201);
      }
      assert.deepEqual(uploaded, ['hello blob', 'hello blob', 'hello blob', 'hello blob']);
      assert.equal(source.connections(), 1, 'one connection to the source for four downloads');
      assert.equal(sink.connections(), 1, 'one connection to the destination for four HEADs, POSTs and PUTs');
      assert.equal(ReadBuffer.open(), 0, 'no download counts as reading once done');
      await transport.close();
      await waitFor('close() to close the idle connections', () => source.open() === 0 && sink.open() === 0, 2000, 10);
    } finally {
      await transport.close().catch(() => undefined);
      await Promise.all([source.close(), sink.close()]);
    }
  });

  test('a connection the server dropped while idle is not used; a request it drops is sent again on a new one', async () => {
    // Each connection serves its first request and drops the second without an answer, the way
    // a server closing an idle connection looks to a client that has just sent into it.
    const source = await scriptedServer((_q, nth) => (nth === 1 ? blobAnswer('abc') : 'drop'));
    const sink = await scriptedServer((_q, nth) => (nth === 1 ? created() : 'drop'));
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      assert.equal(await pipeOnce(transport, `${source.origin}/a`, `${sink.origin}/up`), 201);
      // The GET and a POST go out on the kept connections, are dropped, and go again on new ones.
      const reader = await transport.openRawBody({ url: new URL(`${source.origin}/b`), headers: {} });
      assert.ok(reader instanceof RawBodyReader);
      assert.equal(reader.remaining, 3);
      reader.close();
      const post = await transport.request({ method: 'POST', url: new URL(`${sink.origin}/v2/x/blobs/uploads/`) });
      assert.equal(post.status, 201);
      assert.equal(source.connections(), 2);
      assert.equal(sink.connections(), 2);
    } finally {
      await transport.close();
      await Promise.all([source.close(), sink.close()]);
    }
  });

  test('an answer that says close, an HTTP/1.0 answer, or a body left unread: the connection is not used again', async () => {
    const shapes: Record<string, string> = {
      '/close': blobAnswer('x', 'connection: close\r\n'),
      '/old': 'HTTP/1.0 201 Created\r\ncontent-length: 0\r\n\r\n',
      '/long': blobAnswer('0123456789'),
    };
    const server = await scriptedServer((q) => shapes[q.path] ?? created());
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    const raw = transport.rawConnections()!;
    try {
      for (const path of ['/close', '/old']) {
        const r = await rawExchange('POST', { url: new URL(`${server.origin}${path}`), headers: {} }, undefined, raw);
        assert.ok(r.status < 300);
        const before = server.connections();
        await transport.request({ method: 'POST', url: new URL(`${server.origin}/next`) });
        assert.equal(server.connections(), before + 1, `after ${path}: a new connection`);
      }
      // A download given up halfway: its connection is closed, not handed to the next request.
      const reader = await transport.openRawBody({ url: new URL(`${server.origin}/long`), headers: {} });
      assert.ok(reader instanceof RawBodyReader);
      reader.close();
      const before = server.connections();
      await transport.request({ method: 'POST', url: new URL(`${server.origin}/next`) });
      assert.equal(server.connections(), before + 1, 'the half-read download\'s connection was not reused');
    } finally {
      await transport.close();
      await server.close();
    }
  });

  test('an idle connection is closed once it has waited its keep-alive time', async () => {
    const server = await scriptedServer(() => created());
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    const pool = new RawConnectionPool(150);
    const raw = { ...transport.rawConnections()!, pool };
    try {
      await rawExchange('POST', { url: new URL(`${server.origin}/a`), headers: {} }, undefined, raw);
      assert.equal(pool.size(), 1);
      await rawExchange('POST', { url: new URL(`${server.origin}/b`), headers: {} }, undefined, raw);
      assert.equal(server.connections(), 1, 'used again within its keep-alive time');
      await waitFor('the idle connection to be closed', () => server.open() === 0, 3000, 10);
      assert.equal(pool.size(), 0);
      await rawExchange('POST', { url: new URL(`${server.origin}/c`), headers: {} }, undefined, raw);
      assert.equal(server.connections(), 2, 'a new one after it was closed');
    } finally {
      pool.close();
      await transport.close();
      await server.close();
    }
  });
});

describe('the read buffer of a pipe', () => {
  // How a buffer grows depends on how many pipes read at once, which raw-http.ts counts for the
  // whole process: a test above that left a pipe open would change what these see. Each takes a
  // module instance of its own (a distinct URL is a distinct ES module), with its own count.
  let instances = 0;
  const isolated = async (): Promise<typeof import('../../src/transport/raw-http.ts')> => {
    const fresh = (await import(`../../src/transport/raw-http.ts?isolated=${++instances}`)) as typeof import('../../src/transport/raw-http.ts');
    assert.equal(fresh.ReadBuffer.open(), 0, 'a fresh module instance counts no open buffer');
    return fresh;
  };

  test('alone, it doubles after each read that fills it, up to 4 MiB; beside another it goes back to 256 KiB', async () => {
    const { ReadBuffer, PIPE_BUFFER_BYTES, PIPE_BUFFER_MAX_BYTES } = await isolated();
    const a = new ReadBuffer();
    let buf = a.next(0);
    assert.equal(buf.byteLength, PIPE_BUFFER_BYTES);
    assert.equal(ReadBuffer.open(), 1);
    assert.equal(a.next(100).byteLength, PIPE_BUFFER_BYTES, 'a read that did not fill the buffer is no reason to grow');
    const sizes: number[] = [];
    for (let i = 0; i < 6; i++) {
      buf = a.next(buf.byteLength);
      sizes.push(buf.byteLength);
    }
    assert.deepEqual(sizes, [512, 1024, 2048, 4096, 4096, 4096].map((k) => k * 1024));
    assert.equal(PIPE_BUFFER_MAX_BYTES, 4 * 1024 * 1024);
    const b = new ReadBuffer();
    assert.equal(b.next(0).byteLength, PIPE_BUFFER_BYTES);
    assert.equal(a.next(buf.byteLength).byteLength, PIPE_BUFFER_BYTES, 'beside another pipe a grown buffer goes back');
    assert.equal(b.next(PIPE_BUFFER_BYTES).byteLength, PIPE_BUFFER_BYTES, 'beside another pipe a full read does not grow it');
    b.release();
    b.release();
    assert.equal(ReadBuffer.open(), 1, 'a second release counts nothing');
    assert.equal(a.next(PIPE_BUFFER_BYTES).byteLength, 2 * PIPE_BUFFER_BYTES, 'alone again, it grows again');
    a.release();
    assert.equal(ReadBuffer.open(), 0);
  });

  test('between two downloads on one connection a 256 KiB buffer is kept, not counted; a grown one is not kept', async () => {
    const { ReadBuffer, PIPE_BUFFER_BYTES } = await isolated();
    const c = new ReadBuffer();
    const first = c.next(0);
    assert.equal(c.park(), true);
    assert.equal(ReadBuffer.open(), 0, 'a parked buffer does not count as reading');
    c.claim();
    assert.equal(ReadBuffer.open(), 1);
    assert.equal(c.next(100), first, 'the next download reads into the same memory');
    c.release();
    assert.equal(ReadBuffer.open(), 0);
    const g = new ReadBuffer();
    let buf = g.next(0);
    buf = g.next(buf.byteLength);
    assert.equal(buf.byteLength, 2 * PIPE_BUFFER_BYTES);
    assert.equal(g.park(), false, 'a grown buffer: the connection is closed, not kept');
    assert.equal(ReadBuffer.open(), 0);
    g.release();
    assert.equal(ReadBuffer.open(), 0);
  });

  test('the isolation holds: a pipe left open in the shared module does not reach an isolated one', async () => {
    const leaked = new ReadBuffer();
    leaked.next(0);
    try {
      const { ReadBuffer, PIPE_BUFFER_BYTES } = await isolated();
      const a = new ReadBuffer();
      const buf = a.next(0);
      assert.equal(a.next(buf.byteLength).byteLength, 2 * PIPE_BUFFER_BYTES, 'it grew: the leaked pipe was not counted');
      a.release();
    } finally {
      leaked.release();
    }
  });
});

describe('which blobs take the pipe', () => {
  test('every blob, over plain HTTP and TLS alike; FERRY_PIPE_MIN_BYTES decides when set', async () => {
    const { pipeMinBytes } = await import('../../src/ends/registry/blob-pipe.ts');
    const { pipeTuning } = await import('../../src/ends/registry/tuning.ts');
    assert.equal(pipeMinBytes(undefined), 0);
    assert.equal(pipeMinBytes(pipeTuning({ FERRY_PIPE_MIN_BYTES: String(32 * MiB) }).pipeMinBytes), 32 * MiB);
    assert.equal(pipeMinBytes(pipeTuning({ FERRY_PIPE_MIN_BYTES: 'off' }).pipeMinBytes), Number.POSITIVE_INFINITY);
    assert.equal(pipeTuning({}).pipeMinBytes, undefined);
    assert.throws(() => pipeTuning({ FERRY_PIPE_MIN_BYTES: '4M' }), /FERRY_PIPE_MIN_BYTES must be a whole number of bytes, or off/);
  });
});

describe('GETs on ferry\'s own connections (HttpTransport.request)', () => {
  /** Reads a response body whole, keeping every piece as it came (as readBounded does). */
  async function collect(body: AsyncIterable<Uint8Array>, pauseMs = 0): Promise<Buffer> {
    const pieces: Uint8Array[] = [];
    for await (const piece of body) {
      pieces.push(piece);
      if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
    }
    return Buffer.concat(pieces);
  }

  test('a 2xx body comes as pieces that stay as they were (copies of the reused buffer); an error answer comes with its body; one connection serves them all', async () => {
    // ASCII: the scripted server writes strings as UTF-8.
    const big = Buffer.from(BLOB.subarray(0, 2 * MiB).toString('base64'));
    const unknown = JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] });
    const server = await scriptedServer((q) => {
      if (q.path === '/big') return `HTTP/1.1 200 OK\r\ncontent-length: ${big.byteLength}\r\n\r\n${big.toString('latin1')}`;
      if (q.path === '/missing') return `HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${unknown.length}\r\n\r\n${unknown}`;
      if (q.path === '/moved') return 'HTTP/1.1 307 Temporary Redirect\r\nlocation: /small\r\ncontent-length: 4\r\n\r\nmove';
      return blobAnswer('small answer');
    });
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      const missing = await transport.request({ method: 'GET', url: new URL(`${server.origin}/missing`) });
      assert.equal(missing.status, 404);
      assert.match((await collect(missing.body)).toString(), /MANIFEST_UNKNOWN/);
      const moved = await transport.request({ method: 'GET', url: new URL(`${server.origin}/moved`) });
      assert.equal(moved.status, 200, 'the redirect was followed');
      assert.equal((await collect(moved.body)).toString(), 'small answer');
      const res = await transport.request({ method: 'GET', url: new URL(`${server.origin}/big`) });
      assert.equal(res.status, 200);
      // Every piece is kept until the end: had one been a view of the connection's read buffer,
      // later reads would have overwritten it.
      assert.equal(sha(await collect(res.body)), sha(big));
      assert.equal(server.connections(), 1, 'one connection for every GET: none went through undici, none was closed');
    } finally {
      await transport.close();
      await server.close();
    }
  });

  test('a 2xx framed another way (chunked) is sent again through undici and read whole; the connection that saw it is closed', async () => {
    const seen: string[] = [];
    const server = createHttpServer((req, res) => {
      seen.push(req.url ?? '');
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: 'x'.repeat(5000) }));
    });
    const port = await listen(server);
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      const res = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/token`) });
      assert.equal(res.status, 200);
      assert.equal(JSON.parse((await collect(res.body)).toString()).token.length, 5000);
      assert.deepEqual(seen, ['/token', '/token'], 'asked twice: on ferry\'s connection, then through undici');
    } finally {
      await transport.close();
      server.close();
    }
  });

  test('an error body past 64 KiB is cut there, and its connection is not used again', async () => {
    const page = 'x'.repeat(200 * 1024);
    const server = await scriptedServer((q) => (q.path === '/huge-404' ? `HTTP/1.1 404 Not Found\r\ncontent-length: ${page.length}\r\n\r\n${page}` : blobAnswer('ok')));
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      const res = await transport.request({ method: 'GET', url: new URL(`${server.origin}/huge-404`) });
      assert.equal(res.status, 404);
      const body = await collect(res.body);
      assert.ok(body.byteLength >= 64 * 1024 && body.byteLength < page.length, `cut at 64 KiB, got ${body.byteLength}`);
      assert.equal((await collect((await transport.request({ method: 'GET', url: new URL(`${server.origin}/next`) })).body)).toString(), 'ok');
      assert.equal(server.connections(), 2, 'the cut answer\'s connection was closed');
    } finally {
      await transport.close();
      await server.close();
    }
  });

  test('a caller that takes its time is not a stalled server; a server that stops sending is, after the idle timeout', async () => {
    const body = BLOB.subarray(0, 2 * MiB);
    const server = createNetServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', (d: Buffer) => {
        const stall = d.toString('latin1').startsWith('GET /stall');
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.byteLength}\r\n\r\n`);
        // /stall sends half the body, then nothing.
        socket.write(stall ? body.subarray(0, MiB) : body);
      });
    });
    const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
    const transport = new HttpTransport({ userAgent: 'ferry-test', bodyTimeoutMs: 150 });
    try {
      const slow = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/slow`) });
      // The caller waits 400 ms between pieces, the idle timeout is 150 ms: the bytes wait for it.
      const iterator = slow.body[Symbol.asyncIterator]();
      const first = await iterator.next();
      await new Promise((r) => setTimeout(r, 400));
      const rest: Uint8Array[] = [first.value as Uint8Array];
      for (let n = await iterator.next(); !n.done; n = await iterator.next()) rest.push(n.value);
      assert.equal(sha(Buffer.concat(rest)), sha(body));
      const stalled = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/stall`) });
      await assert.rejects(collect(stalled.body), (e: Error & { retryable?: boolean }) => /stalled/.test(e.message) && e.retryable === true);
      // A body its caller left behind does not hold the connection forever: after five idle
      // timeouts without a piece taken, it fails, and the next read says so.
      const abandoned = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/abandoned`) });
      const later = abandoned.body[Symbol.asyncIterator]();
      await later.next();
      const left = Date.now();
      await new Promise((r) => setTimeout(r, 1100));
      await assert.rejects(
        (async () => {
          for (;;) if ((await later.next()).done) return;
        })(),
        /stalled/,
      );
      assert.ok(Date.now() - left >= 5 * 150, 'not before five idle timeouts');
    } finally {
      await transport.close();
      server.close();
    }
  });

  test('a GET cancelled in the middle of its body rejects as cancelled; an error body cut short by the server is a retryable network error', async () => {
    const server = createNetServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', (d: Buffer) => {
        if (d.toString('latin1').startsWith('GET /cut')) {
          socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 100\r\n\r\n{"errors":');
          return;
        }
        if (d.toString('latin1').startsWith('GET /reset')) {
          socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${4 * MiB}\r\n\r\n`);
          socket.write(BLOB.subarray(0, 100_000), () => setTimeout(() => socket.resetAndDestroy(), 20));
          return;
        }
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${4 * MiB}\r\n\r\n`);
        socket.write(BLOB.subarray(0, MiB));
      });
    });
    const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
    const transport = new HttpTransport({ userAgent: 'ferry-test' });
    try {
      const controller = new AbortController();
      const res = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/blob`), signal: controller.signal });
      const iterator = res.body[Symbol.asyncIterator]();
      await iterator.next();
      controller.abort();
      await assert.rejects(
        (async () => {
          for (;;) if ((await iterator.next()).done) return;
        })(),
        (e: Error) => e.name === 'AbortedError',
      );
      await assert.rejects(transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/cut`) }), (e: Error & { retryable?: boolean }) => /in the middle of an answer/.test(e.message) && e.retryable === true);
      // A connection reset in the middle of a 2xx body: a retryable network error, not a bare socket error.
      const reset = await transport.request({ method: 'GET', url: new URL(`http://127.0.0.1:${port}/reset`) });
      await assert.rejects(collect(reset.body), (e: Error & { retryable?: boolean }) => e instanceof FerryError && e.retryable === true && /ECONNRESET|short/.test(e.message));
    } finally {
      await transport.close();
      server.close();
    }
  });
});

describe('interim answers and framing, as strict as llhttp', () => {
  /**
   * A server that answers each request's head with `answer(firstLine)`: raw bytes, so it can send
   * what node:http would not (interim answers before any final one, broken framing). It keeps
   * every connection open, so a client that waited for more would wait until its timeout.
   */
  async function rawServer(answer: (firstLine: string, socket: import('node:net').Socket, bodySoFar: number) => void): Promise<{ origin: string; close: () => void }> {
    const sockets = new Set<import('node:net').Socket>();
    const server = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      let head = '';
      socket.on('data', (d: Buffer) => {
        if (head.includes('\r\n\r\n')) return;
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) answer(head.slice(0, head.indexOf('\r\n')), socket, head.length - head.indexOf('\r\n\r\n') - 4);
      });
    });
    const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)));
    return {
      origin: `http://127.0.0.1:${port}`,
      close: () => {
        for (const s of sockets) s.destroy();
        server.close();
      },
    };
  }
  const opts = { connectTimeoutMs: 5_000, headersTimeoutMs: 60_000, idleTimeoutMs: 60_000, userAgent: 'ferry-test' };
  const INTERIM = 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n';

  test('100 Continue and 103 Early Hints before the answer are skipped (RFC 9110 §15.2): exchanges, GETs and uploads', async () => {
    const server = await rawServer((line, socket, bodySoFar) => {
      if (line.startsWith('POST')) socket.write(`${INTERIM}HTTP/1.1 202 Accepted\r\nlocation: /v2/a/blobs/uploads/1\r\ncontent-length: 0\r\n\r\n`);
      else if (line.startsWith('HEAD')) socket.write(`${INTERIM}HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n`);
      else if (line.startsWith('GET /missing')) socket.write(`${INTERIM}HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found`);
      else if (line.startsWith('GET')) socket.write(`${INTERIM}HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nmanifst`);
      else if (line.startsWith('PUT')) {
        // 100 Continue at once, as a server that reads the body only then would; the final answer after the body.
        socket.write('HTTP/1.1 100 Continue\r\n\r\n');
        let got = bodySoFar;
        const done = () => socket.write('HTTP/1.1 201 Created\r\nlocation: /v2/a/blobs/x\r\ncontent-length: 0\r\n\r\n');
        if (got >= 5) return done();
        socket.on('data', (d: Buffer) => {
          got += d.byteLength;
          if (got >= 5) done();
        });
      }
    });
    try {
      const posted = await rawExchange('POST', { url: new URL(`${server.origin}/v2/a/blobs/uploads/`), headers: {} }, undefined, opts);
      assert.equal(posted.status, 202);
      assert.equal(posted.headers.location, '/v2/a/blobs/uploads/1');
      assert.equal(posted.headers.link, undefined, "an interim answer's headers are not the final answer's");
      const head = await rawExchange('HEAD', { url: new URL(`${server.origin}/v2/a/manifests/v1`), headers: {} }, undefined, opts);
      assert.equal(head.status, 200);
      const got = await RawBodyReader.open({ url: new URL(`${server.origin}/v2/a/manifests/v1`), headers: {} }, opts);
      assert.ok(got instanceof RawBodyReader, 'the GET was declined');
      assert.equal(got.head.status, 200);
      const pieces: Uint8Array[] = [];
      for await (const p of got.stream()) pieces.push(p);
      assert.equal(Buffer.concat(pieces).toString(), 'manifst');
      const missing = await RawBodyReader.open({ url: new URL(`${server.origin}/missing`), headers: {} }, opts);
      assert.ok(!(missing instanceof RawBodyReader) && typeof missing.declined !== 'string');
      assert.equal(missing.declined.status, 404);
      assert.equal(missing.body?.toString(), 'not found');
      const upload = await RawUpload.open('PUT', { url: new URL(`${server.origin}/v2/a/blobs/uploads/1?digest=x`), headers: {} }, 5, opts);
      await new Promise<void>((resolve, reject) => upload.write(Buffer.from('hello'), (e) => (e ? reject(e) : resolve())));
      const answer = await upload.response();
      assert.equal(answer.status, 201, 'the 100 Continue was taken for the final answer');
    } finally {
      server.close();
    }
  });

  test('an upload whose answer does not come: a cancel stops the wait at once and drops the connection (Ctrl-C, a cancelled job)', async () => {
    let closed!: () => void;
    const dropped = new Promise<void>((r) => (closed = r));
    // Takes the whole body and never answers.
    const server = await rawServer((_line, socket) => socket.on('close', () => closed()));
    try {
      const upload = await RawUpload.open('PATCH', { url: new URL(`${server.origin}/v2/a/blobs/uploads/1`), headers: {} }, 5, { ...opts, headersTimeoutMs: 3_600_000, idleTimeoutMs: 3_600_000 });
      await new Promise<void>((resolve, reject) => upload.write(Buffer.from('hello'), (e) => (e ? reject(e) : resolve())));
      const cancel = new AbortController();
      const answer = upload.response(cancel.signal);
      cancel.abort();
      await assert.rejects(answer, (e: unknown) => e instanceof FerryError && e.code === 'INTERRUPTED');
      await dropped;
    } finally {
      server.close();
    }
  });

  test('a malformed chunked answer fails at once as a retryable network error, instead of waiting for more', async () => {
    const bodies: Record<string, string> = {
      '/bad-size': 'zz\r\n{"errors":[]}\r\n0\r\n\r\n',
      '/space-in-size': '5 \r\nhello\r\n0\r\n\r\n',
      '/signed-size': '+5\r\nhello\r\n0\r\n\r\n',
      '/overflow': 'fffffffffffffffff\r\nhello',
      '/no-crlf-after-data': '5\r\nhelloXX0\r\n\r\n',
      '/bare-lf': '5\nhello\n0\n\n',
      '/bad-trailer': '5\r\nhello\r\n0\r\nno colon here\r\n\r\n',
    };
    const server = await rawServer((line, socket) => {
      const path = line.split(' ')[1]!;
      socket.write(`HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${bodies[path]}`);
    });
    try {
      for (const path of Object.keys(bodies)) {
        for (const method of ['POST', 'GET'] as const) {
          const url = new URL(`${server.origin}${path}`);
          const asked = method === 'POST' ? rawExchange('POST', { url, headers: {} }, Buffer.from('x'), opts) : RawBodyReader.open({ url, headers: {} }, opts);
          await assert.rejects(asked, (e: Error & { retryable?: boolean }) => {
            assert.ok(e instanceof FerryError && e.code === 'REGISTRY_UNAVAILABLE' && e.retryable, `${method} ${path}: ${e.message}`);
            assert.match(e.message, /malformed chunked body/, `${method} ${path}`);
            assert.match(e.message, /127\.0\.0\.1:\d+/, 'the message names who sent it');
            return true;
          });
        }
      }
    } finally {
      server.close();
    }
  });

  test('a malformed head is refused: a space before the colon, a control character, Content-Length beside Transfer-Encoding or not a number, an unasked 101', async () => {
    const heads: Record<string, string> = {
      '/space-before-colon': 'HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\n{}',
      '/control-in-value': 'HTTP/1.1 200 OK\r\nx-a: b\x01c\r\ncontent-length: 2\r\n\r\n{}',
      '/cl-and-te': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
      '/cl-twice': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}',
      '/cl-not-a-number': 'HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\n{}',
      '/switching': 'HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n',
    };
    const server = await rawServer((line, socket) => socket.write(heads[line.split(' ')[1]!]!));
    try {
      for (const path of Object.keys(heads)) {
        await assert.rejects(rawExchange('POST', { url: new URL(`${server.origin}${path}`), headers: {} }, Buffer.from('x'), opts), (e: Error) => {
          assert.ok(e instanceof FerryError && e.code === 'REGISTRY_UNAVAILABLE', `${path}: ${e.message}`);
          assert.match(e.message, /malformed|switched protocols/, path);
          return true;
        });
      }
    } finally {
      server.close();
    }
  });
});
