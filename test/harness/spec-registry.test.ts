// The harness's spec-following registry (test/harness/spec-registry.ts) checked against the
// distribution-spec conformance suite's push cases (conformance/02_push_test.go: "Blob Upload
// Streamed", "Blob Upload Monolithic", "Blob Upload Chunked", "Manifest Upload"), step for step
// and with the same assertions, plus what the resume tests rely on: a body cut mid-stream keeps
// the bytes that arrived, and a status GET waits for the request in flight on its session.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { startSpecRegistry, type SpecRegistry } from './spec-registry.ts';
import { startFaultProxy, type FaultProxy } from './fault-proxy.ts';
import { sha256Digest, clientFor } from './oci-client.ts';
import { seededBytes, seedFor } from './seed.ts';
import { waitFor } from './wait.ts';

const NAME = 'conformance/app';

describe('spec registry: the conformance suite\'s push cases', () => {
  let reg: SpecRegistry;
  let base: string;
  // The conformance suite's chunked blob: split after size/2 + 1 bytes.
  const blobB = seededBytes(seedFor('spec-registry/blobB'), 1001);
  const chunk1 = blobB.subarray(0, 501);
  const chunk2 = blobB.subarray(501);
  const chunk1Range = `0-${chunk1.byteLength - 1}`;
  const chunk2Range = `${chunk1.byteLength}-${blobB.byteLength - 1}`;
  const digestB = sha256Digest(blobB);

  before(async () => {
    reg = await startSpecRegistry();
    base = reg.url;
  });
  after(async () => {
    await reg?.stop();
  });

  const call = (method: string, path: string, init: { headers?: Record<string, string>; body?: Uint8Array } = {}) =>
    fetch(new URL(path, base), { method, headers: init.headers ?? {}, ...(init.body ? { body: init.body } : {}) });
  const post = async (name = NAME) => {
    const res = await call('POST', `/v2/${name}/blobs/uploads/`, { headers: { 'content-length': '0' } });
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    const location = res.headers.get('location');
    assert.ok(location, 'POST answers with a Location');
    return location;
  };
  const patch = (location: string, body: Uint8Array, range?: string) =>
    call('PATCH', location, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.byteLength), ...(range ? { 'content-range': range } : {}) },
      body,
    });
  const put = (location: string, digest: string, body: Uint8Array = Buffer.alloc(0), range?: string) => {
    const u = new URL(location, base);
    u.searchParams.set('digest', digest);
    return call('PUT', u.toString(), {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.byteLength), ...(range ? { 'content-range': range } : {}) },
      body,
    });
  };
  const errorCodes = async (res: Response) => ((await res.json()) as { errors: Array<{ code: string }> }).errors.map((e) => e.code);

  test('Blob Upload Chunked, as the suite runs it', async () => {
    // Out-of-order blob upload should return 416.
    let location = await post();
    let res = await patch(location, chunk2, chunk2Range);
    await res.arrayBuffer();
    assert.equal(res.status, 416);
    assert.equal(res.headers.get('range'), '0-0', 'a 416 carries the current range');

    // PATCH request with first chunk should return 202 (Range = the chunk's range).
    const prev = await post();
    res = await patch(prev, chunk1, chunk1Range);
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    assert.equal(res.headers.get('range'), chunk1Range);
    assert.ok(res.headers.get('location'));

    // Retry previous blob chunk should return 416 (and leave the session as it was).
    res = await patch(prev, chunk1, chunk1Range);
    await res.arrayBuffer();
    assert.equal(res.status, 416);
    assert.equal(res.headers.get('range'), chunk1Range);

    // Get on stale blob upload should return 204 with a range and location.
    res = await call('GET', prev);
    await res.arrayBuffer();
    assert.equal(res.status, 204);
    assert.ok(res.headers.get('location'));
    assert.equal(res.headers.get('range'), chunk1Range);
    location = res.headers.get('location')!;

    // PATCH request with second chunk should return 202.
    res = await patch(location, chunk2, chunk2Range);
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    assert.equal(res.headers.get('range'), `0-${blobB.byteLength - 1}`);
    location = res.headers.get('location')!;

    // PUT request with digest should return 201.
    res = await put(location, digestB);
    await res.arrayBuffer();
    assert.equal(res.status, 201);
    assert.equal(res.headers.get('location'), `/v2/${NAME}/blobs/${digestB}`);
    assert.equal(res.headers.get('docker-content-digest'), digestB);

    // The blob reads back whole, and by range.
    res = await call('GET', `/v2/${NAME}/blobs/${digestB}`);
    assert.equal(res.status, 200);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), blobB);
    res = await call('GET', `/v2/${NAME}/blobs/${digestB}`, { headers: { range: 'bytes=500-' } });
    assert.equal(res.status, 206);
    assert.equal(res.headers.get('content-range'), `bytes 500-1000/1001`);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), blobB.subarray(500));
    res = await call('HEAD', `/v2/${NAME}/blobs/${digestB}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), '1001');

    // The finished session is gone.
    res = await call('GET', location);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UPLOAD_UNKNOWN']);
  });

  test('PUT with the final chunk (the suite\'s older chunked case) and a wrong digest', async () => {
    const other = seededBytes(seedFor('spec-registry/final-chunk'), 300);
    let location = await post();
    let res = await patch(location, other.subarray(0, 100), '0-99');
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    location = res.headers.get('location')!;
    // Wrong digest: 400 DIGEST_INVALID, and the session is cancelled.
    res = await put(location, sha256Digest(Buffer.from('something else')), other.subarray(100), '100-299');
    assert.equal(res.status, 400);
    assert.deepEqual(await errorCodes(res), ['DIGEST_INVALID']);
    res = await call('GET', location);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UPLOAD_UNKNOWN']);

    location = await post();
    res = await patch(location, other.subarray(0, 100), '0-99');
    await res.arrayBuffer();
    res = await put(res.headers.get('location')!, sha256Digest(other), other.subarray(100), '100-299');
    await res.arrayBuffer();
    assert.equal(res.status, 201);
    assert.ok(res.headers.get('location'));
  });

  test('Blob Upload Streamed and Monolithic; DELETE of an upload; unknown sessions', async () => {
    const blobA = Buffer.from('NBA Jam on my NBA toast');
    // Streamed: one PATCH without Content-Range, then PUT with the digest.
    let location = await post();
    let res = await call('PATCH', location, { headers: { 'content-type': 'application/octet-stream' }, body: blobA });
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    res = await put(res.headers.get('location')!, sha256Digest(blobA));
    await res.arrayBuffer();
    assert.equal(res.status, 201);

    // Monolithic: POST ?digest= with the body; and POST then PUT with the body.
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    res = await call('POST', `/v2/${NAME}/blobs/uploads/?digest=${sha256Digest(config)}`, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(config.byteLength) },
      body: config,
    });
    await res.arrayBuffer();
    assert.equal(res.status, 201);
    assert.ok(res.headers.get('location'));
    res = await call('GET', `/v2/${NAME}/blobs/${sha256Digest(config)}`);
    assert.equal(res.status, 200);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), config);
    const layer = seededBytes(seedFor('spec-registry/monolithic'), 4096);
    res = await put(await post(), sha256Digest(layer), layer);
    await res.arrayBuffer();
    assert.equal(res.status, 201);

    // GET of a nonexistent blob: 404.
    res = await call('GET', `/v2/${NAME}/blobs/${sha256Digest(Buffer.from('hello world'))}`);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UNKNOWN']);

    // DELETE of an upload: 204, then the session is unknown.
    location = await post();
    res = await call('DELETE', location);
    await res.arrayBuffer();
    assert.equal(res.status, 204);
    res = await patch(location, blobA, `0-${blobA.byteLength - 1}`);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UPLOAD_UNKNOWN']);

    // A session id that never existed, and one presented under another repository.
    res = await call('GET', `/v2/${NAME}/blobs/uploads/0b5b1a2e-0000-4000-8000-000000000000`);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UPLOAD_UNKNOWN']);
    location = await post();
    res = await call('GET', location.replace(`/v2/${NAME}/`, '/v2/another/repo/'));
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['BLOB_UPLOAD_UNKNOWN']);

    // Cross-repository mount: 201 when the source repository holds the blob, else a session (202).
    res = await call('POST', `/v2/mounted/app/blobs/uploads/?mount=${sha256Digest(blobA)}&from=${NAME}`, { headers: { 'content-length': '0' } });
    await res.arrayBuffer();
    assert.equal(res.status, 201);
    res = await call('POST', `/v2/mounted/app/blobs/uploads/?mount=${sha256Digest(Buffer.from('absent'))}&from=${NAME}`, { headers: { 'content-length': '0' } });
    await res.arrayBuffer();
    assert.equal(res.status, 202);
    assert.match(res.headers.get('location') ?? '', /^\/v2\/mounted\/app\/blobs\/uploads\//);
  });

  test('Manifest Upload: PUT by tag, GET/HEAD by tag and digest, missing blobs refused', async () => {
    const c = clientFor(reg);
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    const layer = seededBytes(seedFor('spec-registry/manifest-layer'), 2048);
    await c.pushBlob(NAME, config);
    await c.pushBlob(NAME, layer);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256Digest(config), size: config.byteLength },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256Digest(layer), size: layer.byteLength }],
      }),
    );
    let res = await call('GET', `/v2/${NAME}/manifests/nonexistent`);
    assert.equal(res.status, 404);
    assert.deepEqual(await errorCodes(res), ['MANIFEST_UNKNOWN']);
    for (let i = 0; i < 4; i++) {
      res = await call('PUT', `/v2/${NAME}/manifests/test${i}`, { headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: manifest });
      await res.arrayBuffer();
      assert.equal(res.status, 201);
      assert.ok(res.headers.get('location'));
    }
    const digest = sha256Digest(manifest);
    res = await call('GET', `/v2/${NAME}/manifests/${digest}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), digest);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), manifest);
    res = await call('HEAD', `/v2/${NAME}/manifests/test2`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), digest);
    assert.equal(res.headers.get('content-length'), String(manifest.byteLength));
    assert.deepEqual(await c.listTags(NAME), ['test0', 'test1', 'test2', 'test3']);
    assert.equal((await c.verifyImage(NAME, 'test0')).digest, digest);

    // A manifest naming a blob the repository lacks is refused.
    const broken = Buffer.from(manifest.toString().replace(sha256Digest(layer), sha256Digest(Buffer.from('not uploaded'))));
    res = await call('PUT', `/v2/${NAME}/manifests/broken`, { headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: broken });
    assert.equal(res.status, 400);
    assert.deepEqual(await errorCodes(res), ['MANIFEST_BLOB_UNKNOWN']);
    // PUT by digest must match the bytes.
    res = await call('PUT', `/v2/${NAME}/manifests/${sha256Digest(broken)}`, { headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: manifest });
    assert.equal(res.status, 400);
    assert.deepEqual(await errorCodes(res), ['DIGEST_INVALID']);
  });
});

describe('spec registry: interrupted uploads keep what arrived', () => {
  let reg: SpecRegistry;
  let proxy: FaultProxy;
  before(async () => {
    reg = await startSpecRegistry();
    proxy = await startFaultProxy(reg.host);
  });
  after(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  /** Start a PATCH of `declared` bytes at `start` and write `bytes` of it; returns the request, still open. */
  function openPatch(host: string, location: string, start: number, declared: number) {
    const [hostname, port] = host.split(':');
    const req = httpRequest({
      host: hostname,
      port: Number(port),
      method: 'PATCH',
      path: location,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(declared), 'content-range': `${start}-${start + declared - 1}` },
    });
    const response = new Promise<number>((resolve) => {
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.on('close', () => resolve(0));
    });
    return { req, response };
  }

  async function status(location: string): Promise<string | null> {
    const res = await fetch(new URL(location, reg.url));
    await res.arrayBuffer();
    assert.equal(res.status, 204);
    return res.headers.get('range');
  }

  test('a PATCH cut mid-body: the bytes that arrived are kept and the upload continues from them', async () => {
    const blob = seededBytes(seedFor('spec-registry/cut'), 3000);
    const res = await fetch(`${reg.url}/v2/cut/app/blobs/uploads/`, { method: 'POST' });
    const location = res.headers.get('location')!;
    const { req, response } = openPatch(reg.host, location, 0, 2000);
    req.write(blob.subarray(0, 700), () => req.destroy());
    assert.equal(await response, 0, 'the client went away');
    await waitFor('the registry to see the cut', () => reg.sessions().some((s) => s.cutRequests === 1), 10_000, 5);
    assert.equal(await status(location), '0-699');
    // The rest from byte 700 (not the chunk boundary 0), then the commit.
    const p = await fetch(new URL(location, reg.url), {
      method: 'PATCH',
      headers: { 'content-range': '700-2099', 'content-length': '1400' },
      body: blob.subarray(700, 2100),
    });
    await p.arrayBuffer();
    assert.equal(p.status, 202);
    const u = new URL(location, reg.url);
    u.searchParams.set('digest', sha256Digest(blob));
    const done = await fetch(u, { method: 'PUT', headers: { 'content-range': '2100-2999', 'content-length': '900' }, body: blob.subarray(2100) });
    await done.arrayBuffer();
    assert.equal(done.status, 201);
    const back = await fetch(`${reg.url}/v2/cut/app/blobs/${sha256Digest(blob)}`);
    assert.deepEqual(Buffer.from(await back.arrayBuffer()), blob);
    const s = reg.sessions().find((x) => x.digest === sha256Digest(blob))!;
    assert.equal(s.received, 3000, 'no byte was received twice');
  });

  test('a PATCH cut by the fault proxy after N bytes: the registry holds exactly N', async () => {
    const blob = seededBytes(seedFor('spec-registry/proxy-cut'), 64 * 1024 + 5);
    const res = await fetch(`${proxy.url}/v2/cut/proxy/blobs/uploads/`, { method: 'POST' });
    const location = res.headers.get('location')!;
    const cut = 40_000 + 123;
    proxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'reset-after-bytes', on: 'request', bytes: cut, times: 1 });
    const { req, response } = openPatch(proxy.host, location, 0, blob.byteLength);
    req.end(blob);
    assert.equal(await response, 0);
    await waitFor('the registry to see the cut', () => reg.sessions().some((s) => s.repository === 'cut/proxy' && s.cutRequests === 1), 10_000, 5);
    assert.equal(await status(location), `0-${cut - 1}`);
    const u = new URL(location, reg.url);
    u.searchParams.set('digest', sha256Digest(blob));
    const done = await fetch(u, { method: 'PUT', headers: { 'content-range': `${cut}-${blob.byteLength - 1}`, 'content-length': String(blob.byteLength - cut) }, body: blob.subarray(cut) });
    await done.arrayBuffer();
    assert.equal(done.status, 201);
    const perBlob = reg.receivedPerBlob().get(sha256Digest(blob))!;
    assert.deepEqual(perBlob, { size: blob.byteLength, received: blob.byteLength, sessions: 1, cutRequests: 1 });
  });

  test('a status GET waits for the PATCH in flight on its session', async () => {
    const blob = seededBytes(seedFor('spec-registry/in-flight'), 4000);
    const res = await fetch(`${reg.url}/v2/cut/wait/blobs/uploads/`, { method: 'POST' });
    const location = res.headers.get('location')!;
    const { req, response } = openPatch(reg.host, location, 0, 4000);
    const before = reg.receivedTotal();
    req.write(blob.subarray(0, 1000));
    await waitFor('the first 1000 bytes to arrive', () => reg.receivedTotal() >= before + 1000, 10_000, 5);
    let answered: string | null | undefined;
    const asked = status(location).then((r) => (answered = r));
    // Let the GET reach the registry; it must not answer with the 1000 bytes of a PATCH still running.
    await waitFor('the GET to reach the registry', () => reg.requests.some((r) => r.method === 'GET' && r.path === location), 10_000, 5);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(answered, undefined, 'the status GET answered while a PATCH was in flight');
    req.end(blob.subarray(1000));
    assert.equal(await response, 202);
    await asked;
    assert.equal(answered, '0-3999');
  });
});
