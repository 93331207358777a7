// `ferry copy` end to end against real registries: distribution 2.8 (no auth, htpasswd,
// token auth) and crane's registry, with fixtures from the harness and a fault proxy.
// After every copy the destination is checked with the harness's own independent client.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startCraneRegistry, type CraneRegistry } from '../harness/crane-registry.ts';
import type { FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import {
  pushArtifactFor,
  pushCosignTags,
  pushImage,
  pushLargeImage,
  pushMultiArch,
  pushNonCanonical,
  referrersTag,
  type PushedManifest,
} from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';
import { startProxiedRegistries, type ProxiedRegistries } from './proxied-registries.ts';
import { DEFAULT_UPLOAD_TUNING } from '../../src/ends/registry/blob-upload.ts';

const MiB = 1024 * 1024;
/** Layer sizes relative to ferry's upload tuning: one past the monolithic limit (a PATCH, then the PUT), and one of three chunks. */
const CHUNKED_LAYER = DEFAULT_UPLOAD_TUNING.monolithicMaxBytes + 8 * MiB;
const THREE_CHUNK_LAYER = 2 * DEFAULT_UPLOAD_TUNING.chunkBytes + 8 * MiB;

/** The destination holds exactly the source's bytes: same root digest, every blob present and hashing right. */
async function assertSameImage(src: OciClient, srcRepo: string, srcRef: string, dst: OciClient, dstRepo: string, dstRef: string): Promise<void> {
  const want = await src.verifyImage(srcRepo, srcRef);
  const got = await dst.verifyImage(dstRepo, dstRef);
  assert.equal(got.digest, want.digest, 'destination digest differs from the source');
  assert.deepEqual(
    got.blobs.map((b) => b.digest).sort(),
    want.blobs.map((b) => b.digest).sort(),
  );
}

describe('ferry copy between distribution registries (no auth)', () => {
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let srcC: OciClient;
  let dstC: OciClient;
  const state = tempStateHome();
  const env = { XDG_STATE_HOME: state };

  before(async () => {
    [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
    srcC = clientFor(src);
    dstC = clientFor(dst);
  });
  after(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  test('large layers, some chunked, arrive byte-exact', async () => {
    await pushLargeImage(srcC, 'big/app', 'v1', { layerCount: 2, layerSize: CHUNKED_LAYER });
    const r = await runFerry(['copy', '--json', `${src.host}/big/app:v1`, `${dst.host}/big/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.transfer.blobs_copied, 3);
    assert.equal(r.json.transfer.bytes_transferred, r.json.transfer.bytes_total);
    assert.equal(r.json.digest_changed, false);
    await assertSameImage(srcC, 'big/app', 'v1', dstC, 'big/app', 'v1');
  });

  test('many small layers', async () => {
    const sizes = Array.from({ length: 40 }, (_, i) => 1000 + i * 997);
    const img = await pushImage(srcC, 'many/app', 'v1', { layerSizes: sizes });
    const r = await runFerry(['copy', '--json', '--concurrency', '6', `${src.host}/many/app:v1`, `${dst.host}/many/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.image.digest, img.digest);
    assert.equal(r.json.transfer.blobs_copied, 41);
    await assertSameImage(srcC, 'many/app', 'v1', dstC, 'many/app', 'v1');
  });

  for (const format of ['oci', 'docker'] as const) {
    test(`multi-arch ${format === 'oci' ? 'OCI index' : 'Docker manifest list'}: every platform byte-exact, shared layer once`, async () => {
      const idx = await pushMultiArch(srcC, `multi/${format}`, 'v1', { format });
      const r = await runFerry(['copy', '--json', `${src.host}/multi/${format}:v1`, `${dst.host}/multi/${format}:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json.image.digest, idx.digest);
      assert.equal(r.json.image.platforms.length, 3);
      assert.deepEqual(
        r.json.image.platforms.map((p: { architecture: string }) => p.architecture).sort(),
        ['amd64', 'arm', 'arm64'],
      );
      // 1 shared + 3 own layers + 3 configs, each transferred once.
      assert.equal(r.json.transfer.blobs_copied, idx.blobs.length);
      await assertSameImage(srcC, `multi/${format}`, 'v1', dstC, `multi/${format}`, 'v1');
    });
  }

  test('non-canonical manifest bytes keep their digest', async () => {
    const img = await pushNonCanonical(srcC, 'odd/app', 'v1');
    const r = await runFerry(['copy', '--json', `${src.host}/odd/app:v1`, `${dst.host}/odd/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const got = await dstC.getManifest('odd/app', 'v1');
    assert.equal(got.digest, img.digest);
    assert.ok(got.bytes.equals(img.manifestBytes), 'manifest bytes changed in transit');
  });

  test('--platform writes a valid sub-index, or the single manifest for one platform', async () => {
    const idx = await pushMultiArch(srcC, 'plat/app', 'v1');
    const two = await runFerry(
      ['copy', '--json', '--platform', 'linux/amd64', '--platform', 'linux/arm64', `${src.host}/plat/app:v1`, `${dst.host}/plat/two:v1`],
      { env },
    );
    assert.equal(two.code, 0, two.stderr);
    assert.equal(two.json.digest_changed, true);
    assert.notEqual(two.json.image.digest, idx.digest);
    const sub = await dstC.verifyImage('plat/two', 'v1');
    assert.equal(sub.digest, two.json.image.digest);
    const subIndex = JSON.parse((await dstC.getManifest('plat/two', 'v1')).bytes.toString());
    assert.deepEqual(
      subIndex.manifests.map((m: { platform: { architecture: string } }) => m.platform.architecture).sort(),
      ['amd64', 'arm64'],
    );

    const one = await runFerry(['copy', '--json', '--platform', 'linux/arm/v7', `${src.host}/plat/app:v1`, `${dst.host}/plat/one:v1`], { env });
    assert.equal(one.code, 0, one.stderr);
    const armChild = idx.children!.find((c) => c.descriptor.platform?.architecture === 'arm')!;
    assert.equal(one.json.image.digest, armChild.digest);
    assert.equal(one.json.digest_changed, true);
    assert.equal((await dstC.verifyImage('plat/one', 'v1')).digest, armChild.digest);

    const missing = await runFerry(['copy', '--json', '--platform', 'linux/s390x', `${src.host}/plat/app:v1`, `${dst.host}/plat/none:v1`], { env });
    assert.equal(missing.code, 1);
    assert.equal(missing.json.error.code, 'SOURCE_NOT_FOUND');
    assert.match(missing.json.error.message, /linux\/s390x/);
  });

  test('--referrers copies artifacts (fallback tag) and cosign tags', async () => {
    const img = await pushImage(srcC, 'signed/app', 'v1');
    const sbom = await pushArtifactFor(srcC, 'signed/app', img.descriptor);
    const [sig] = await pushCosignTags(srcC, 'signed/app', img.digest);
    const r = await runFerry(['copy', '--json', '--referrers', `${src.host}/signed/app:v1`, `${dst.host}/signed/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const refDigests = r.json.image.referrers.map((x: { digest: string }) => x.digest);
    assert.ok(refDigests.includes(sbom.digest), 'SBOM artifact missing from the report');
    assert.ok(refDigests.includes(sig!.digest), 'cosign signature missing from the report');
    assert.equal((await dstC.verifyImage('signed/app', sbom.digest)).digest, sbom.digest);
    const tagIndex = await dstC.getManifest('signed/app', referrersTag(img.digest));
    assert.equal(tagIndex.digest, sbom.referrersIndex!.digest, 'fallback referrers tag not copied byte-exact');
    const sigTag = await dstC.getManifest('signed/app', `${referrersTag(img.digest)}.sig`);
    assert.equal(sigTag.digest, sig!.digest);
    await assertSameImage(srcC, 'signed/app', 'v1', dstC, 'signed/app', 'v1');
  });

  test('same registry, other repository: blobs are mounted, not copied', async () => {
    await pushImage(srcC, 'mount/a', 'v1', { layerSizes: [50_000, 60_000] });
    const r = await runFerry(['copy', '--json', `${src.host}/mount/a:v1`, `${src.host}/mount/b:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.transfer.blobs_mounted, 3);
    assert.equal(r.json.transfer.bytes_transferred, 0);
    await assertSameImage(srcC, 'mount/a', 'v1', srcC, 'mount/b', 'v1');
  });

  test('an existing tag pointing elsewhere is overwritten and the old digest reported', async () => {
    const old = await pushImage(dstC, 'over/app', 'v1', { seed: 'old-content' });
    const img = await pushImage(srcC, 'over/app', 'v1', { seed: 'new-content' });
    const r = await runFerry(['copy', '--json', `${src.host}/over/app:v1`, `${dst.host}/over/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.previous_digest, old.digest);
    assert.equal((await dstC.headManifest('over/app', 'v1'))?.digest, img.digest);
  });

  test('--dry-run prints the plan and writes nothing', async () => {
    await pushImage(srcC, 'dry/app', 'v1', { layerSizes: [3000, 5000] });
    const r = await runFerry(['copy', '--json', '--dry-run', `${src.host}/dry/app:v1`, `${dst.host}/dry/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.dry_run.blobs.length, 3);
    assert.ok(r.json.dry_run.blobs.every((b: { action: string }) => b.action === 'copy'));
    assert.equal(r.json.dry_run.bytes_to_copy, r.json.transfer.bytes_total);
    assert.equal(await dstC.headManifest('dry/app', 'v1'), undefined, 'dry run wrote a tag');
  });

  test('--dry-run within one registry plans mounts, and mounts nothing', async () => {
    await pushImage(srcC, 'dry/mount-a', 'v1', { layerSizes: [3000, 5000] });
    const r = await runFerry(['copy', '--json', '--dry-run', `${src.host}/dry/mount-a:v1`, `${src.host}/dry/mount-b:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json.dry_run.blobs.map((b: { action: string }) => b.action), ['mount', 'mount', 'mount']);
    assert.equal(r.json.dry_run.bytes_to_copy, 0);
    assert.equal(await srcC.headManifest('dry/mount-b', 'v1'), undefined, 'dry run wrote a tag');
    const layer = (await srcC.verifyImage('dry/mount-a', 'v1')).blobs[0]!.digest;
    assert.equal(await srcC.blobExists('dry/mount-b', layer), false, 'dry run mounted a blob');
  });
});

describe('ferry copy through a fault-injecting proxy', () => {
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let srcProxy: FaultProxy;
  let dstProxy: FaultProxy;
  let srcC: OciClient;
  let dstC: OciClient;
  const env = { XDG_STATE_HOME: tempStateHome() };
  let pair: ProxiedRegistries;

  before(async () => {
    pair = await startProxiedRegistries();
    ({ src, dst, srcProxy, dstProxy, srcC, dstC } = pair);
  });
  after(() => pair?.stop());

  async function copyVia(repo: string, extra: string[] = []) {
    return runFerry(['copy', '--json', ...extra, `${srcProxy.host}/${repo}:v1`, `${dstProxy.host}/${repo}:v1`], { env });
  }

  test('a download cut mid-stream resumes with Range', async () => {
    const img = await pushImage(srcC, 'cut/down', 'v1', { layerSizes: [3 * MiB] });
    const layer = img.blobs.find((b) => b.size === 3 * MiB)!;
    srcProxy.resetLog();
    const rule = srcProxy.addRule({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}`), action: 'reset-after-bytes', bytes: MiB, times: 1 });
    const r = await copyVia('cut/down');
    rule.remove();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(rule.hits(), 1);
    assert.equal(srcProxy.count({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}`) }), 2, 'expected one resumed GET');
    await assertSameImage(srcC, 'cut/down', 'v1', dstC, 'cut/down', 'v1');
  });

  test('an upload cut mid-PUT is retried and lands byte-exact', async () => {
    const img = await pushImage(srcC, 'cut/up', 'v1', { layerSizes: [2 * MiB] });
    const hex = img.blobs.find((b) => b.size === 2 * MiB)!.digest.split(':')[1];
    const path = new RegExp(`/blobs/uploads/.*digest=sha256(%3A|:)${hex}`);
    const rule = dstProxy.addRule({ method: 'PUT', path, action: 'reset-after-bytes', on: 'request', bytes: MiB, times: 1 });
    const r = await copyVia('cut/up');
    rule.remove();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(rule.hits(), 1);
    assert.ok(r.json.transfer.blobs_restarted >= 1);
    await assertSameImage(srcC, 'cut/up', 'v1', dstC, 'cut/up', 'v1');
  });

  test('an upload cut mid-PATCH restarts the blob (distribution cancels the session)', async () => {
    await pushLargeImage(srcC, 'cut/patch', 'v1', { layerCount: 1, layerSize: CHUNKED_LAYER });
    const rule = dstProxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'reset-after-bytes', on: 'request', bytes: 4 * MiB, times: 1 });
    const r = await copyVia('cut/patch');
    rule.remove();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(rule.hits(), 1);
    assert.equal(r.json.transfer.blobs_restarted, 1);
    assert.match(r.stderr, /restarting it from the beginning/);
    await assertSameImage(srcC, 'cut/patch', 'v1', dstC, 'cut/patch', 'v1');
  });

  test('a chunk refused between chunks resumes from the acknowledged offset (no restart)', async () => {
    await pushLargeImage(srcC, 'cut/resume', 'v1', { layerCount: 1, layerSize: THREE_CHUNK_LAYER });
    dstProxy.resetLog();
    // The second PATCH of the upload is answered 503 before reaching the registry.
    const rule = dstProxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'status', status: 503, skip: 1, times: 1 });
    const r = await copyVia('cut/resume');
    rule.remove();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.transfer.blobs_restarted, 0, 'the blob started over instead of resuming');
    assert.match(r.stderr, /resuming upload from the registry's acknowledged offset/);
    // Re-sent bytes are at most one chunk.
    assert.ok(r.json.transfer.bytes_transferred - r.json.transfer.bytes_total <= DEFAULT_UPLOAD_TUNING.chunkBytes);
    assert.ok(dstProxy.count({ method: 'GET', path: /\/blobs\/uploads\// }) >= 1, 'no upload status request was made');
    await assertSameImage(srcC, 'cut/resume', 'v1', dstC, 'cut/resume', 'v1');
  });

  test('503 storms and 429 with Retry-After are retried', async () => {
    await pushImage(srcC, 'busy/app', 'v1', { layerSizes: [10_000, 20_000] });
    const r503 = srcProxy.addRule({ method: 'GET', path: /\/blobs\//, action: 'status', status: 503, times: 3 });
    // Retry-After: 1 is longer than ferry's own backoff before a first or second retry (at most 200 and 400 ms).
    const r429 = dstProxy.addRule({ method: 'HEAD', path: /\/blobs\//, action: 'status', status: 429, retryAfter: 1, times: 2 });
    dstProxy.resetLog();
    const r = await copyVia('busy/app');
    r503.remove();
    r429.remove();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r503.hits(), 3);
    assert.equal(r429.hits(), 2);
    // Measured where it happens: at the proxy, from each 429 to the next request for the same blob.
    const log = dstProxy.requests;
    const refused = log.filter((q) => q.status === 429);
    assert.equal(refused.length, 2);
    for (const q of refused) {
      const again = log.slice(log.indexOf(q) + 1).find((n) => n.method === q.method && n.path === q.path);
      assert.ok(again, `${q.method} ${q.path} was not sent again after its 429`);
      assert.ok(again.at - q.at >= 1000, `${q.method} ${q.path} was sent again ${again.at - q.at} ms after its 429 (Retry-After: 1)`);
    }
    await assertSameImage(srcC, 'busy/app', 'v1', dstC, 'busy/app', 'v1');
  });

  test('a registry that keeps failing gives REGISTRY_UNAVAILABLE, exit 1', async () => {
    await pushImage(srcC, 'down/app', 'v1');
    const rule = srcProxy.addRule({ method: 'GET', path: /\/manifests\//, action: 'status', status: 503 });
    const r = await copyVia('down/app');
    rule.remove();
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'REGISTRY_UNAVAILABLE');
  });

  test('one corrupted byte: DIGEST_MISMATCH, exit 1, and no tag written', async () => {
    const img = await pushImage(srcC, 'bad/app', 'v1', { layerSizes: [200_000] });
    const layer = img.blobs.find((b) => b.size === 200_000)!;
    const rule = srcProxy.addRule({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}`), action: 'corrupt-byte', offset: 12345 });
    const r = await copyVia('bad/app');
    rule.remove();
    assert.equal(r.code, 1, r.stdout);
    assert.equal(r.json.error.code, 'DIGEST_MISMATCH');
    assert.equal(await dstC.headManifest('bad/app', 'v1'), undefined, 'a tag was written for an unverified image');
    assert.equal(await dstC.blobExists('bad/app', layer.digest), false, 'corrupt blob committed');
  });

  test('a cold copy reads every blob from the source exactly once (the config too)', async () => {
    const img = await pushImage(srcC, 'once/app', 'v1', { layerSizes: [30_000, 40_000] });
    srcProxy.resetLog();
    const r = await copyVia('once/app');
    assert.equal(r.code, 0, r.stderr);
    for (const b of img.blobs) {
      assert.equal(srcProxy.count({ method: 'GET', path: new RegExp(`/blobs/${b.digest}`) }), 1, `blob ${b.digest} (${b.mediaType}) fetched more than once`);
    }
    await assertSameImage(srcC, 'once/app', 'v1', dstC, 'once/app', 'v1');
  });

  test('copying the same image twice: the second run is one manifest request per registry', async () => {
    await pushMultiArch(srcC, 'warm/app', 'v1');
    const first = await copyVia('warm/app');
    assert.equal(first.code, 0, first.stderr);
    srcProxy.resetLog();
    dstProxy.resetLog();
    const second = await copyVia('warm/app');
    assert.equal(second.code, 0, second.stderr);
    assert.equal(second.json.transfer.blobs_copied, 0);
    assert.deepEqual(srcProxy.requests.map((q) => `${q.method} ${q.path}`), [`GET /v2/warm/app/manifests/v1`]);
    assert.deepEqual(dstProxy.requests.map((q) => `${q.method} ${q.path}`), [`HEAD /v2/warm/app/manifests/v1`]);
    assert.equal(second.json.image.platforms.length, 3);
  });
});

describe('ferry copy with authentication', () => {
  let basic: DistributionRegistry;
  let token: DistributionRegistry;
  let plain: DistributionRegistry;
  const env = { XDG_STATE_HOME: tempStateHome(), SRC_CREDS: 'alice:s3cret-Alice!', BAD_CREDS: 'alice:wrong-password' };

  before(async () => {
    [basic, token, plain] = await Promise.all([
      startDistribution({ auth: 'htpasswd', users: { alice: 's3cret-Alice!' } }),
      startDistribution({
        auth: 'token',
        token: { users: { bob: { password: 'b0b-token-pass', repos: { 'team/*': ['pull', 'push'] } } }, expiresIn: 300 } as never,
      }),
      startDistribution(),
    ]);
  });
  after(async () => {
    await Promise.all([basic?.stop(), token?.stop(), plain?.stop()]);
  });

  test('htpasswd Basic source (env: credentials) to a token-auth destination', async () => {
    const srcC = clientFor(basic, { username: 'alice', password: 's3cret-Alice!' });
    const dstC = clientFor(token, { username: 'bob', password: 'b0b-token-pass' });
    await pushMultiArch(srcC, 'team/app', 'v1');
    const r = await runFerry(
      ['copy', '--json', '--src-creds', 'env:SRC_CREDS', '--dst-creds', 'bob:b0b-token-pass', `${basic.host}/team/app:v1`, `${token.host}/team/app:v1`],
      { env },
    );
    assert.equal(r.code, 0, r.stderr);
    await assertSameImage(srcC, 'team/app', 'v1', dstC, 'team/app', 'v1');
    // Secrets never appear in what ferry printed.
    for (const secret of ['s3cret-Alice!', 'b0b-token-pass']) {
      assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `secret ${secret} leaked into output`);
    }
    // Token requests: cached per scope, not one per blob.
    assert.ok(token.tokenServer!.count() <= 4, `too many token requests: ${token.tokenServer!.count()}`);
  });

  test('a token that does not cover the repository: DESTINATION_AUTH, exit 1', async () => {
    const srcC = clientFor(plain);
    await pushImage(srcC, 'other/app', 'v1');
    const r = await runFerry(['copy', '--json', '--dst-creds', 'bob:b0b-token-pass', `${plain.host}/other/app:v1`, `${token.host}/other/app:v1`], { env });
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'DESTINATION_AUTH');
  });

  test('wrong password: SOURCE_AUTH, exit 1, message names the problem', async () => {
    const r = await runFerry(['copy', '--json', '--src-creds', 'env:BAD_CREDS', `${basic.host}/team/app:v1`, `${plain.host}/team/app:v1`], { env });
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'SOURCE_AUTH');
    assert.match(r.stderr, /SOURCE_AUTH/);
    assert.ok(!r.stderr.includes('wrong-password'));
  });

  test('no credentials for a registry that needs them: SOURCE_AUTH', async () => {
    const r = await runFerry(['copy', '--json', `${basic.host}/team/app:v1`, `${plain.host}/team/app2:v1`], { env });
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'SOURCE_AUTH');
  });
});

describe('ferry copy to crane\'s registry (other upload quirks)', () => {
  let src: DistributionRegistry;
  let crane: CraneRegistry;
  before(async () => {
    [src, crane] = await Promise.all([startDistribution(), startCraneRegistry()]);
  });
  after(async () => {
    await Promise.all([src?.stop(), crane?.stop()]);
  });

  test('chunked and monolithic uploads both land byte-exact', async () => {
    const srcC = clientFor(src);
    await pushImage(srcC, 'cr/app', 'v1', { layerSizes: [CHUNKED_LAYER, 4 * MiB] });
    const r = await runFerry(['copy', '--json', `${src.host}/cr/app:v1`, `${crane.host}/cr/app:v1`], { env: { XDG_STATE_HOME: tempStateHome() } });
    assert.equal(r.code, 0, r.stderr);
    await assertSameImage(srcC, 'cr/app', 'v1', clientFor(crane), 'cr/app', 'v1');
    // and back again, from crane's registry as the source
    const back = await runFerry(['copy', '--json', `${crane.host}/cr/app:v1`, `${src.host}/cr/back:v1`], { env: { XDG_STATE_HOME: tempStateHome() } });
    assert.equal(back.code, 0, back.stderr);
    await assertSameImage(srcC, 'cr/app', 'v1', srcC, 'cr/back', 'v1');
  });
});

describe('ferry copy: usage errors', () => {
  test('bad references exit 2 and quote the bad part', async () => {
    const r = await runFerry(['copy', 'localhost:5000/Bad/Name:v1', 'localhost:5000/x:v1']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /USAGE.*"Bad"/);
    const tag = await runFerry(['copy', '--json', 'localhost:5000/a:-bad', 'localhost:5000/x:v1']);
    assert.equal(tag.code, 2);
    assert.equal(tag.json.error.code, 'USAGE');
  });

  test('unknown flags and missing arguments exit 2', async () => {
    assert.equal((await runFerry(['copy', '--nope', 'a', 'b'])).code, 2);
    assert.equal((await runFerry(['copy', 'a'])).code, 2);
    assert.equal((await runFerry([])).code, 2);
  });

  test('an unreachable registry exits 1 with REGISTRY_UNAVAILABLE', async () => {
    const r = await runFerry(['copy', '--json', '127.0.0.1:9/a/b:v1', '127.0.0.1:9/a/c:v1']);
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'REGISTRY_UNAVAILABLE');
    assert.match(r.json.error.message, /connect/);
  });

  test('plain HTTP is refused for a non-loopback host not named with --plain-http', async (t) => {
    // A registry that speaks only plain HTTP, on an address of this machine that is not loopback
    // (ferry may speak plain HTTP to loopback by itself). It records the first byte of every
    // connection, and every request it could read.
    const address = nonLoopbackAddress();
    assert.ok(address, 'this test needs an IPv4 address of the machine that is not loopback; none was found');
    const firstBytes: number[] = [];
    const requests: string[] = [];
    const server = createHttpServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      res.writeHead(404, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
      res.end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] }));
    });
    server.on('connection', (socket: Socket) => socket.once('data', (d: Buffer) => firstBytes.push(d[0]!)));
    await new Promise<void>((resolve) => server.listen(0, address, resolve));
    t.after(() => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    const host = `${address}:${(server.address() as AddressInfo).port}`;

    const r = await runFerry(['copy', '--json', `${host}/a:v1`, '127.0.0.1:9/a:v1'], { timeoutMs: 60_000 });
    server.closeAllConnections();
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'REGISTRY_UNAVAILABLE');
    // ferry spoke TLS, and says where the handshake failed (a plain-HTTP server's answer is no TLS record).
    assert.match(r.json.error.message, new RegExp(`^${host.replaceAll('.', '\\.')}: .*(SSL|TLS)`));
    assert.ok(firstBytes.length >= 1, 'ferry never connected to the server');
    assert.deepEqual(firstBytes.filter((b) => b !== 0x16), [], 'a connection began with something other than a TLS handshake record (0x16)');
    assert.deepEqual([...requests], [], 'a plain HTTP request reached the server');

    // Named with --plain-http, the same server gets plain requests, and sees them: the checks above could see one.
    const plain = await runFerry(['copy', '--json', '--plain-http', host, `${host}/a:v1`, '127.0.0.1:9/a:v1'], { timeoutMs: 60_000 });
    server.closeAllConnections();
    assert.equal(plain.json.error.code, 'SOURCE_NOT_FOUND', plain.stderr);
    assert.ok(requests.includes('GET /v2/a/manifests/v1'), `requests seen: ${requests.join(', ')}`);
  });
});

/** An IPv4 address of this machine that is not loopback. */
function nonLoopbackAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

export type { PushedManifest };
