// Proves the end-to-end test harness itself: real registries start, fixtures push and verify,
// auth is enforced by the registries, and the fault proxy does what its rules say.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { test, type TestContext } from 'node:test';
import { startCraneRegistry } from './harness/crane-registry.ts';
import { startDistribution } from './harness/distribution.ts';
import { startFaultProxy } from './harness/fault-proxy.ts';
import { freePort, leasedPorts } from './harness/ports.ts';
import { portListener } from './harness/process.ts';
import {
  layerSeed,
  MEDIA,
  pushArtifactFor,
  pushCosignTags,
  pushImage,
  pushLargeImage,
  pushMultiArch,
  pushNonCanonical,
  referrersTag,
} from './harness/fixtures.ts';
import { OciClient, RegistryHttpError, sha256Digest } from './harness/oci-client.ts';
import { createRng, seededBytes, seededDigest, seededStream } from './harness/seed.ts';

const is401 = (e: unknown): boolean => e instanceof RegistryHttpError && e.status === 401;

/** Read a response body to the end, counting bytes; resolves with the count and any error. */
async function drain(res: Response): Promise<{ bytes: number; error?: Error }> {
  let bytes = 0;
  try {
    for await (const piece of res.body!) bytes += piece.byteLength;
    return { bytes };
  } catch (e) {
    return { bytes, error: e as Error };
  }
}

test('seed: bytes and streams are deterministic and agree', async () => {
  const a = seededBytes('x', 3 * 1024 * 1024 + 17);
  assert.deepEqual(seededBytes('x', 1000), a.subarray(0, 1000));
  assert.notDeepEqual(seededBytes('y', 1000), a.subarray(0, 1000));
  const pieces: Buffer[] = [];
  for await (const p of seededStream('x', a.byteLength)) pieces.push(p as Buffer);
  assert.deepEqual(Buffer.concat(pieces), a);
  assert.deepEqual(await seededDigest('x', a.byteLength), { digest: sha256Digest(a), size: a.byteLength });
  assert.equal(seededBytes('x', 0).byteLength, 0);

  const r1 = createRng('s');
  const r2 = createRng('s');
  const seq = Array.from({ length: 20 }, () => r1.int(1000));
  assert.deepEqual(Array.from({ length: 20 }, () => r2.int(1000)), seq);
  assert.ok(new Set(seq).size > 10, 'rng output varies');
  assert.ok(seq.every((n) => Number.isInteger(n) && n >= 0 && n < 1000));
});

test('distribution without auth: fixtures push, verify, and survive restart', async (t: TestContext) => {
  const reg = await startDistribution();
  t.after(() => reg.stop());
  assert.match(reg.host, /^127\.0\.0\.1:\d+$/);
  const client = new OciClient({ host: reg.host });
  assert.equal(await client.ping(), 200);

  for (const format of ['oci', 'docker'] as const) {
    const img = await pushImage(client, 'lib/single', `${format}-v1`, { layerSizes: [100, 2000, 30000], format });
    const checked = await client.verifyImage('lib/single', `${format}-v1`);
    assert.equal(checked.digest, img.digest);
    assert.equal(checked.mediaType, format === 'oci' ? MEDIA.ociManifest : MEDIA.dockerManifest);
    assert.deepEqual(checked.blobs.map((b) => [b.digest, b.size]), img.blobs.map((b) => [b.digest, b.size]));
    assert.equal(img.blobs.length, 4); // config + 3 layers
    const got = await client.getManifest('lib/single', img.digest);
    assert.deepEqual(got.bytes, img.manifestBytes);
    assert.equal(got.headerDigest, img.digest);

    const multi = await pushMultiArch(client, 'lib/multi', format, { format, sharedLayerSize: 5000, ownLayerSize: 700 });
    const m = await client.verifyImage('lib/multi', format);
    assert.equal(m.digest, multi.digest);
    assert.equal(m.mediaType, format === 'oci' ? MEDIA.ociIndex : MEDIA.dockerList);
    assert.equal(m.manifests.length, 4); // index + 3 platforms
    assert.equal(multi.children?.length, 3);
    // config + own layer per platform, plus one shared base layer
    assert.equal(m.blobs.length, 3 * 2 + 1);
    const shared = multi.children!.map((c) => (JSON.parse(c.manifestBytes.toString()) as { layers: Array<{ digest: string }> }).layers[0]!.digest);
    assert.equal(new Set(shared).size, 1, 'platforms share their base layer');
  }

  // Deterministic: the same seed label gives the same digest.
  const again = await pushImage(client, 'lib/single', 'again', { layerSizes: [100, 2000, 30000], seed: 'lib/single:oci-v1' });
  assert.equal(again.digest, (await client.getManifest('lib/single', 'oci-v1')).digest);

  // Non-canonical bytes are stored and served as pushed; re-serializing would change the digest.
  const odd = await pushNonCanonical(client, 'lib/odd', 'v1');
  const served = await client.getManifest('lib/odd', 'v1');
  assert.deepEqual(served.bytes, odd.manifestBytes);
  assert.equal(served.digest, odd.digest);
  assert.notEqual(sha256Digest(Buffer.from(JSON.stringify(JSON.parse(odd.manifestBytes.toString())))), odd.digest);
  await client.verifyImage('lib/odd', 'v1');

  // Artifacts: the referrers fallback tag accumulates one index entry per artifact.
  const subject = await pushImage(client, 'lib/signed', 'v1');
  const sbom = await pushArtifactFor(client, 'lib/signed', subject.descriptor, { artifactType: 'application/spdx+json' });
  const prov = await pushArtifactFor(client, 'lib/signed', subject.descriptor, { artifactType: 'application/vnd.in-toto+json' });
  assert.equal(prov.referrersTag, referrersTag(subject.digest));
  const idx = JSON.parse((await client.getManifest('lib/signed', referrersTag(subject.digest))).bytes.toString()) as {
    manifests: Array<{ digest: string; artifactType: string }>;
  };
  assert.deepEqual(
    idx.manifests.map((d) => [d.digest, d.artifactType]),
    [
      [sbom.digest, 'application/spdx+json'],
      [prov.digest, 'application/vnd.in-toto+json'],
    ],
  );
  const art = JSON.parse((await client.getManifest('lib/signed', sbom.digest)).bytes.toString()) as { subject: { digest: string } };
  assert.equal(art.subject.digest, subject.digest);
  await client.verifyImage('lib/signed', referrersTag(subject.digest));
  const sigs = await pushCosignTags(client, 'lib/signed', subject.digest, { kinds: ['sig', 'att'] });
  const hex = subject.digest.slice('sha256:'.length);
  assert.deepEqual((await client.listTags('lib/signed')).sort(), [`sha256-${hex}`, `sha256-${hex}.att`, `sha256-${hex}.sig`, 'v1']);
  assert.equal((await client.verifyImage('lib/signed', `sha256-${hex}.sig`)).digest, sigs[0]!.digest);

  // Streamed chunked upload: several PATCHes per layer, digests predicted from the seed.
  const big = await pushLargeImage(client, 'lib/big', 'v1', { layerCount: 2, layerSize: 300_000, chunkSize: 64 * 1024 });
  assert.deepEqual(big.blobs.slice(1).map((b) => b.digest), [
    (await seededDigest(layerSeed('lib/big:v1', 0), 300_000)).digest,
    (await seededDigest(layerSeed('lib/big:v1', 1), 300_000)).digest,
  ]);
  await client.verifyImage('lib/big', 'v1');

  // An upload opened before a restart can be finished after it (fixed http.secret).
  const post = await client.request('POST', '/v2/lib/resume/blobs/uploads/', { repo: 'lib/resume', push: true });
  const location = new URL(post.headers.get('location')!, reg.url).toString();
  const data = seededBytes('resume', 5000);
  const patch = await client.request('PATCH', location, {
    repo: 'lib/resume',
    push: true,
    body: data.subarray(0, 3000),
    headers: { 'content-type': 'application/octet-stream', 'content-range': '0-2999' },
  });
  const next = new URL(patch.headers.get('location')!, reg.url);
  await reg.restart();
  const patch2 = await client.request('PATCH', next.toString(), {
    repo: 'lib/resume',
    push: true,
    body: data.subarray(3000),
    headers: { 'content-type': 'application/octet-stream', 'content-range': '3000-4999' },
  });
  const done = new URL(patch2.headers.get('location')!, reg.url);
  done.searchParams.set('digest', sha256Digest(data));
  const put = await client.request('PUT', done.toString(), { repo: 'lib/resume', push: true, body: Buffer.alloc(0) });
  assert.equal(put.status, 201);
  assert.deepEqual(await client.getBlobDigest('lib/resume', sha256Digest(data)), { digest: sha256Digest(data), size: 5000 });
  await client.verifyImage('lib/multi', 'oci'); // and earlier content is still there
  assert.match(reg.logs(), /GET \/v2\//, 'registry log is captured');
});

test('verifyImage fails on a missing blob', async (t: TestContext) => {
  const reg = await startDistribution();
  t.after(() => reg.stop());
  const client = new OciClient({ host: reg.host });
  const img = await pushImage(client, 'lib/broken', 'v1', { layerSizes: [10, 20] });
  const victim = img.blobs[2]!.digest;
  const res = await client.request('DELETE', `/v2/lib/broken/blobs/${victim}`, { repo: 'lib/broken', push: true });
  assert.equal(res.status, 202);
  await assert.rejects(client.verifyImage('lib/broken', 'v1'), (e: unknown) => e instanceof RegistryHttpError && e.status === 404);
});

test('distribution with htpasswd: right password works, wrong or none is 401', async (t: TestContext) => {
  const reg = await startDistribution({ auth: 'htpasswd', users: { alice: 's3cret' } });
  t.after(() => reg.stop());
  const alice = new OciClient({ host: reg.host, username: 'alice', password: 's3cret' });
  const img = await pushImage(alice, 'team/app', 'v1');
  assert.equal((await alice.verifyImage('team/app', 'v1')).digest, img.digest);

  await assert.rejects(new OciClient({ host: reg.host, username: 'alice', password: 'wrong' }).ping(), is401);
  await assert.rejects(new OciClient({ host: reg.host, username: 'mallory', password: 's3cret' }).getManifest('team/app', 'v1'), is401);
  await assert.rejects(new OciClient({ host: reg.host }).getManifest('team/app', 'v1'), is401);
});

test('distribution with token auth: grants are enforced by the registry', async (t: TestContext) => {
  const reg = await startDistribution({
    auth: 'token',
    token: {
      users: {
        alice: { password: 'a-pw', repos: { '*': ['pull', 'push'] } },
        bob: { password: 'b-pw', repos: { 'team/*': ['pull'] } },
      },
      anonymous: { 'public/*': ['pull'] },
    },
  });
  t.after(() => reg.stop());
  const ts = reg.tokenServer!;
  const alice = new OciClient({ host: reg.host, username: 'alice', password: 'a-pw' });
  const app = await pushImage(alice, 'team/app', 'v1');
  await pushImage(alice, 'public/base', 'v1');
  await pushImage(alice, 'other/x', 'v1');
  assert.ok(ts.count() > 0);
  assert.ok(ts.requests.every((r) => r.user === 'alice' && r.status === 200));

  // bob: pull on team/* only. Asking for push is a partial grant (200), the registry says 401.
  ts.resetLog();
  const bob = new OciClient({ host: reg.host, username: 'bob', password: 'b-pw' });
  assert.equal((await bob.verifyImage('team/app', 'v1')).digest, app.digest);
  await assert.rejects(pushImage(bob, 'team/app', 'v2'), is401);
  await assert.rejects(bob.getManifest('other/x', 'v1'), is401);
  const pushAsk = ts.requests.find((r) => r.scopes.includes('repository:team/app:pull,push'));
  assert.equal(pushAsk?.status, 200);
  assert.deepEqual(pushAsk?.granted, [{ type: 'repository', name: 'team/app', actions: ['pull'] }]);
  assert.deepEqual(ts.requests.find((r) => r.scopes.includes('repository:other/x:pull'))?.granted, []);

  // Anonymous: pull of public/* only.
  const anon = new OciClient({ host: reg.host });
  await anon.verifyImage('public/base', 'v1');
  await assert.rejects(anon.getManifest('team/app', 'v1'), is401);

  // Wrong password: the token server itself answers 401.
  ts.resetLog();
  await assert.rejects(new OciClient({ host: reg.host, username: 'bob', password: 'nope' }).getManifest('team/app', 'v1'), is401);
  assert.deepEqual(ts.requests.map((r) => r.status), [401]);

  // Expiry: a token the registry accepts for 2 s is refused once that has passed.
  ts.setExpiry({ expiresIn: 2, registryValidFor: 2 });
  const tokenRes = await fetch(`${ts.realm}?service=${ts.service}&scope=repository:team/app:pull`, {
    headers: { authorization: `Basic ${Buffer.from('bob:b-pw').toString('base64')}` },
  });
  const body = (await tokenRes.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
  assert.equal(body.expires_in, 2);
  assert.equal(body.access_token, body.token);
  const get = () => fetch(`${reg.url}/v2/team/app/manifests/v1`, { method: 'HEAD', headers: { authorization: `Bearer ${body.token}`, accept: MEDIA.ociManifest } });
  assert.equal((await get()).status, 200);
  await new Promise((r) => setTimeout(r, 2100));
  assert.equal((await get()).status, 401);
});

test('crane registry: fixtures push and verify', async (t: TestContext) => {
  const reg = await startCraneRegistry();
  t.after(() => reg.stop());
  const client = new OciClient({ host: reg.host });
  const img = await pushImage(client, 'lib/single', 'v1', { format: 'docker' });
  assert.equal((await client.verifyImage('lib/single', 'v1')).digest, img.digest);
  const multi = await pushMultiArch(client, 'lib/multi', 'v1');
  assert.equal((await client.verifyImage('lib/multi', 'v1')).manifests.length, 4);
  assert.equal(multi.children?.length, 3);
  await pushLargeImage(client, 'lib/big', 'v1', { layerCount: 1, layerSize: 200_000, chunkSize: 50_000 });
  await client.verifyImage('lib/big', 'v1');
  const odd = await pushNonCanonical(client, 'lib/odd', 'v1');
  assert.deepEqual((await client.getManifest('lib/odd', 'v1')).bytes, odd.manifestBytes);

  // `crane registry serve` has no referrers API (404), so artifacts need the fallback tag here too.
  const art = await pushArtifactFor(client, 'lib/single', img.descriptor);
  const index = await client.verifyImage('lib/single', referrersTag(img.digest));
  assert.deepEqual(index.manifests.slice(1).map((m) => m.digest), [art.digest]);
});

test('fault proxy: passes traffic through and applies each rule kind', async (t: TestContext) => {
  const reg = await startDistribution();
  t.after(() => reg.stop());
  const proxy = await startFaultProxy(reg.host);
  t.after(() => proxy.stop());
  const client = new OciClient({ host: proxy.host });

  // Pass-through, with the registry's upload Locations pointing back at the proxy.
  const img = await pushImage(client, 'lib/app', 'v1', { layerSizes: [4096] });
  await client.verifyImage('lib/app', 'v1');
  assert.ok(proxy.count({ method: 'PUT', path: /\/blobs\/uploads\// }) >= 2);
  // Only 2xx, and the 404s of the existence checks before each blob upload.
  assert.ok(proxy.requests.every((r) => r.fault === undefined && ((r.status >= 200 && r.status < 300) || (r.method === 'HEAD' && r.status === 404))));
  const post = await client.request('POST', '/v2/lib/app/blobs/uploads/', { repo: 'lib/app', push: true });
  assert.equal(new URL(post.headers.get('location')!, proxy.url).host, proxy.host);

  const layer = img.blobs[1]!; // 4096 bytes
  const blobPath = `/v2/lib/app/blobs/${layer.digest}`;
  const blobUrl = `${proxy.url}${blobPath}`;

  // status: twice 503 with Retry-After, then through.
  proxy.resetLog();
  const rule = proxy.addRule({ method: 'GET', path: /\/blobs\/sha256:/, action: 'status', status: 503, retryAfter: 7, times: 2 });
  const r1 = await fetch(blobUrl);
  assert.equal(r1.status, 503);
  assert.equal(r1.headers.get('retry-after'), '7');
  assert.deepEqual(((await r1.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAVAILABLE');
  assert.equal((await fetch(blobUrl)).status, 503);
  assert.deepEqual(await client.getBlobDigest('lib/app', layer.digest), { digest: layer.digest, size: layer.size });
  assert.equal(rule.hits(), 2);
  assert.deepEqual(proxy.requests.map((r) => [r.method, r.status, r.fault]), [
    ['GET', 503, 'status'],
    ['GET', 503, 'status'],
    ['GET', 200, undefined],
  ]);
  proxy.clearRules();

  // 429 through the client surfaces as an error with that status.
  proxy.addRule({ path: /\/manifests\//, action: 'status', status: 429, times: 1 });
  await assert.rejects(client.getManifest('lib/app', 'v1'), (e: unknown) => e instanceof RegistryHttpError && e.status === 429 && e.codes[0] === 'TOOMANYREQUESTS');
  await client.getManifest('lib/app', 'v1');

  // reset-after-bytes on a download: exactly N bytes arrive, then the connection dies.
  proxy.addRule({ method: 'GET', path: /\/blobs\//, action: 'reset-after-bytes', bytes: 1000, times: 1 });
  const cut = await fetch(blobUrl);
  assert.equal(cut.status, 200);
  const got = await drain(cut);
  assert.equal(got.bytes, 1000);
  assert.ok(got.error, 'the body ends in an error');
  assert.equal((await drain(await fetch(blobUrl))).bytes, 4096, 'times: 1 means the next request is clean');

  // corrupt-byte: same size, different digest.
  proxy.addRule({ method: 'GET', path: /\/blobs\//, action: 'corrupt-byte', offset: 4000, times: 1 });
  const corrupted = await client.getBlobDigest('lib/app', layer.digest);
  assert.equal(corrupted.size, layer.size);
  assert.notEqual(corrupted.digest, layer.digest);
  assert.equal((await client.getBlobDigest('lib/app', layer.digest)).digest, layer.digest);

  // stall: headers at once, body never (then a cut), or late (then: 'continue').
  proxy.addRule({ method: 'GET', path: /\/blobs\//, action: 'stall', ms: 300, times: 1 });
  let start = Date.now();
  const stalled = await fetch(blobUrl);
  assert.equal(stalled.status, 200);
  assert.ok(Date.now() - start < 250, 'headers come before the stall');
  const stalledBody = await drain(stalled);
  assert.ok(Date.now() - start >= 290);
  assert.equal(stalledBody.bytes, 0);
  assert.ok(stalledBody.error);
  proxy.addRule({ method: 'GET', path: /\/blobs\//, action: 'stall', ms: 300, then: 'continue', times: 1 });
  start = Date.now();
  assert.equal((await client.getBlobDigest('lib/app', layer.digest)).digest, layer.digest);
  assert.ok(Date.now() - start >= 290);

  // reset-after-bytes on an upload: the PATCH fails mid-body and the blob never appears.
  proxy.resetLog();
  proxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'reset-after-bytes', on: 'request', bytes: 10_000, times: 1 });
  const data = seededBytes('upload-cut', 64 * 1024);
  const up = await client.request('POST', '/v2/lib/app/blobs/uploads/', { repo: 'lib/app', push: true });
  const loc = new URL(up.headers.get('location')!, proxy.url).toString();
  await assert.rejects(fetch(loc, { method: 'PATCH', body: data, headers: { 'content-type': 'application/octet-stream' } }));
  assert.equal(await client.blobExists('lib/app', sha256Digest(data)), false);
  assert.deepEqual(
    proxy.requests.filter((r) => r.method === 'PATCH').map((r) => [r.status, r.fault]),
    [[0, 'reset-after-bytes']],
  );
  assert.equal(proxy.count({ method: 'POST' }), 1);
  assert.equal(proxy.count(), proxy.requests.length);
});

test('ports: below the ephemeral range, each leased machine-wide for the life of the process', async () => {
  const [ephemeral] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
  assert.equal(new Set(ports).size, ports.length, 'a port handed out twice');
  for (const p of ports) assert.ok(p >= 1024 && p < ephemeral!, `${p} is in the ephemeral range (from ${ephemeral})`);
  assert.ok(ports.every((p) => leasedPorts().includes(p)));
  // Another process (another test file, another worktree) cannot lease any of them, and its own
  // ports are none of ours.
  const child = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { createServer } from 'node:net';
       import { freePort } from ${JSON.stringify(new URL('./harness/ports.ts', import.meta.url).pathname)};
       const taken = [];
       for (const p of ${JSON.stringify(ports)}) {
         await new Promise((resolve) => { const s = createServer(); s.once('error', () => { taken.push(p); resolve(); }); s.listen({ path: '\\0ferry-test-port-' + p }, () => s.close(resolve)); });
       }
       const mine = await Promise.all(Array.from({ length: 20 }, () => freePort()));
       console.log(JSON.stringify({ taken, mine }));`,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(child.status, 0, child.stderr);
  const { taken, mine } = JSON.parse(child.stdout) as { taken: number[]; mine: number[] };
  assert.deepEqual(taken.sort(), [...ports].sort(), 'the other process could take a lease this one holds');
  assert.deepEqual(mine.filter((p) => ports.includes(p)), []);
});

for (const kind of ['distribution', 'crane'] as const) {
  test(`${kind}: a registry whose port another server holds is not taken for ready`, async (t: TestContext) => {
    // The impostor answers GET /v2/ as a registry would; the registry started on its port cannot bind.
    const port = await freePort();
    const impostor = createHttpServer((_req, res) => res.writeHead(200, { 'docker-distribution-api-version': 'registry/2.0' }).end('{}'));
    await new Promise<void>((r) => impostor.listen(port, '127.0.0.1', r));
    t.after(() => new Promise<void>((r) => impostor.close(() => r())));
    assert.equal(portListener(port, process.pid), 'self');
    const start = kind === 'distribution' ? () => startDistribution({ port }) : () => startCraneRegistry({ port });
    await assert.rejects(start(), /not from the registry started|registry process exited/);
  });
}
