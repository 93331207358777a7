// The local ends written through ImageDestination and read back through ImageSource: byte-exact
// digests, tags in index.json, referrers as fallback tags, nothing visible before commit, nothing
// partial under a digest, and archives that other tools (GNU tar, skopeo) read.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArchiveReference } from '../../src/ends/archive-ref.ts';
import { openArchiveDestination, openArchiveSource } from '../../src/ends/local.ts';
import { MediaType } from '../../src/oci/manifest.ts';
import { makeTempDir } from '../harness/process.ts';
import {
  assertImage,
  blob,
  chunked,
  collect,
  logger,
  makeImage,
  makeIndex,
  makeReferrer,
  miniCopy,
  readBlob,
  rejectsFerry,
  sha256,
  writeBlobs,
  writeImage,
  type Image,
} from './helpers.ts';

const tmp = makeTempDir('ends-roundtrip');
after(() => tmp.remove());
let n = 0;
const fresh = (name: string): string => join(tmp.path, `${n++}-${name}`);

const src = (ref: string) => openArchiveSource(parseArchiveReference(ref), logger);
const dst = (ref: string) => openArchiveDestination(parseArchiveReference(ref), logger);

// A two-platform index (sharing a layer), a signature referring to the index, a cosign-style tag.
const amd = makeImage('rt/amd64', [70_000, 1, 0, 300_000]);
// The arm64 image shares the amd64 image's first layer.
const armOwn = makeImage('rt/arm64', [5000], { arch: 'arm64' });
const armFixed: Image = makeImageWithLayers([amd.layers[0]!, armOwn.layers[0]!], 'arm64');
const index = makeIndex([
  { image: amd, arch: 'amd64' },
  { image: armFixed, arch: 'arm64' },
]);
const signature = makeReferrer('rt/sig', index, 'application/vnd.example.signature');
const cosignTag = `sha256-${amd.manifest.digest.slice(7)}.sig`;
const cosign = makeImage('rt/cosign', [123]);

function makeImageWithLayers(layers: Image['layers'], arch: string): Image {
  const config = blob(Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) } })), MediaType.OciConfig);
  const doc = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
  const bytes = Buffer.from(JSON.stringify(doc));
  return { config, layers, manifest: { digest: sha256(bytes), mediaType: MediaType.OciManifest, bytes } };
}

/** Write the whole set the way the engine does: blobs, children by digest, referrers, tags last. */
async function writeSet(ref: string, tag: string | undefined): Promise<void> {
  const d = await dst(ref);
  await writeImage(d, amd);
  await writeImage(d, armFixed);
  await writeBlobs(d, signature.blobs);
  await writeBlobs(d, [cosign.config, ...cosign.layers]);
  await d.putManifest(index.digest, index.bytes, index.mediaType);
  await d.putManifest(signature.manifest.digest, signature.manifest.bytes, signature.manifest.mediaType);
  await d.putManifest(cosignTag, cosign.manifest.bytes, cosign.manifest.mediaType);
  if (tag) await d.putManifest(tag, index.bytes, index.mediaType);
  await d.commit();
}

async function assertSet(ref: string, expectTarget: string): Promise<void> {
  const s = await src(ref);
  assert.equal(s.target, expectTarget);
  const root = await s.getManifest(s.target);
  assert.equal(root?.digest, index.digest);
  assert.ok(root?.bytes.equals(index.bytes));
  assert.equal(root?.mediaType, MediaType.OciIndex);
  await assertImage(s, amd.manifest.digest, amd);
  await assertImage(s, armFixed.manifest.digest, armFixed);
  assert.equal(await s.getReferrers(index.digest), undefined, 'a layout has no referrers API');
  const fallback = await s.getManifest(`sha256-${index.digest.slice(7)}`);
  assert.ok(fallback, 'fallback tag lists the referrers');
  const doc = JSON.parse(fallback.bytes.toString()) as { manifests: Array<{ digest: string; artifactType?: string; annotations?: Record<string, string> }> };
  assert.deepEqual(
    doc.manifests.map((m) => [m.digest, m.artifactType, m.annotations?.['org.example.label']]),
    [[signature.manifest.digest, 'application/vnd.example.signature', 'rt/sig']],
  );
  const sig = await s.getManifest(signature.manifest.digest);
  assert.ok(sig?.bytes.equals(signature.manifest.bytes));
  for (const b of signature.blobs) assert.equal(sha256(await readBlob(s, b)), b.digest);
  const c = await s.getManifest(cosignTag);
  assert.equal(c?.digest, cosign.manifest.digest);
  // Ranged reads: from the middle of a layer to its end.
  const big = amd.layers[3]!;
  const tail = await readBlob(s, big, 123_457);
  assert.ok(tail.equals(big.bytes.subarray(123_457)));
  assert.equal((await readBlob(s, big, big.size)).byteLength, 0);
  assert.equal(await s.getManifest('no-such-tag'), undefined);
  assert.equal(await s.getManifest(`sha256:${'0'.repeat(64)}`), undefined);
  await rejectsFerry(s.openBlob(`sha256:${'0'.repeat(64)}`, 1, 0), 'SOURCE_NOT_FOUND');
  await rejectsFerry(s.openBlob(big.digest, big.size + 1, 0), 'SOURCE_INVALID', 'descriptor says');
  await s.close();
}

describe('oci: layout directory', () => {
  it('round trip: index, platforms, referrers as a fallback tag, cosign tag; nothing visible before commit', async () => {
    const dir = fresh('layout');
    const d = await dst(`oci:${dir}:v1`);
    assert.equal(d.maxConcurrentBlobs > 1, true);
    await Promise.all([writeImage(d, amd), writeImage(d, armFixed)]); // concurrent blob writes are fine here
    await writeBlobs(d, signature.blobs);
    await d.putManifest(index.digest, index.bytes, index.mediaType);
    await d.putManifest(signature.manifest.digest, signature.manifest.bytes, signature.manifest.mediaType);
    await writeImage(d, cosign, cosignTag);
    await d.putManifest('v1', index.bytes, index.mediaType);
    assert.equal(existsSync(join(dir, 'index.json')), false, 'index.json only at commit');
    assert.deepEqual(await d.headManifest('v1'), { digest: index.digest, mediaType: MediaType.OciIndex, size: index.bytes.byteLength });
    await d.commit();
    await rejectsFerry(d.putManifest('v2', index.bytes, index.mediaType), 'INTERNAL', 'committed');

    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
    const indexJson = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
    const names = indexJson.manifests.map((m) => m.annotations?.['org.opencontainers.image.ref.name']).sort();
    assert.deepEqual(names, [cosignTag, `sha256-${index.digest.slice(7)}`, 'v1'].sort());
    // Every blob is under its digest, with the right bytes, and no temporary file is left.
    for (const b of [...amd.layers, ...armFixed.layers, amd.config]) assert.equal(sha256(readFileSync(join(dir, 'blobs/sha256', b.digest.slice(7)))), b.digest);
    assert.deepEqual(readdirSync(join(dir, 'blobs/sha256')).filter((f) => f.endsWith('.tmp')), []);

    await assertSet(`oci:${dir}:v1`, 'v1');
    // No tag given: the layout's one image (fallback and cosign tags do not count).
    await assertSet(`oci:${dir}`, 'v1');
  });

  it('adds to an existing layout, replaces a tag in place, answers headManifest and hasBlob', async () => {
    const dir = fresh('layout-add');
    let d = await dst(`oci:${dir}:v1`);
    await writeImage(d, amd, 'v1');
    await d.commit();
    d = await dst(`oci:${dir}:v2`);
    assert.deepEqual(await d.headManifest('v1'), { digest: amd.manifest.digest, mediaType: MediaType.OciManifest, size: amd.manifest.bytes.byteLength });
    assert.deepEqual(await d.headManifest(amd.manifest.digest), { digest: amd.manifest.digest, mediaType: MediaType.OciManifest, size: amd.manifest.bytes.byteLength });
    assert.equal(await d.headManifest('v2'), undefined);
    assert.equal(await d.hasBlob(amd.layers[0]!.digest, amd.layers[0]!.size), true);
    assert.equal(await d.hasBlob(amd.layers[0]!.digest, amd.layers[0]!.size + 1), false, 'size must match too');
    await writeImage(d, armFixed, 'v2');
    await writeImage(d, cosign, 'v1'); // v1 now points elsewhere
    await d.commit();
    const doc = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
    assert.deepEqual(
      doc.manifests.map((m) => [m.annotations?.['org.opencontainers.image.ref.name'], m.digest]),
      [
        ['v1', cosign.manifest.digest],
        ['v2', armFixed.manifest.digest],
      ],
    );
    const s = await src(`oci:${dir}:v1`);
    await assertImage(s, 'v1', cosign);
    await assertImage(s, amd.manifest.digest, amd); // still there by digest
    await rejectsFerry(src(`oci:${dir}`), 'USAGE', 'holds 2 images', 'v1', 'v2');
    await rejectsFerry(src(`oci:${dir}:v3`), 'SOURCE_NOT_FOUND', 'no tag "v3"', 'v1, v2');
  });

  it('an image written without a tag is listed in index.json without a name', async () => {
    const dir = fresh('layout-untagged');
    const d = await dst(`oci:${dir}`);
    assert.equal(d.target, undefined);
    await writeImage(d, amd);
    await d.commit();
    const doc = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: unknown }> };
    assert.deepEqual(doc.manifests, [{ mediaType: MediaType.OciManifest, digest: amd.manifest.digest, size: amd.manifest.bytes.byteLength }]);
    const s = await src(`oci:${dir}`);
    assert.equal(s.target, amd.manifest.digest);
    await assertImage(s, s.target, amd);
  });

  it('a blob whose bytes stop coming is never left under its digest; abort leaves index.json alone', async () => {
    const dir = fresh('layout-fail');
    let d = await dst(`oci:${dir}:v1`);
    await writeImage(d, amd, 'v1');
    await d.commit();
    const before = readFileSync(join(dir, 'index.json'));
    d = await dst(`oci:${dir}:v1`);
    const victim = armFixed.layers[1]!;
    async function* failing(): AsyncGenerator<Buffer> {
      yield victim.bytes.subarray(0, 1000);
      throw new Error('source broke');
    }
    await assert.rejects(d.writeBlob(victim.digest, victim.size, victim.mediaType, failing()), /source broke/);
    assert.equal(existsSync(join(dir, 'blobs/sha256', victim.digest.slice(7))), false);
    assert.equal(await d.hasBlob(victim.digest, victim.size), false);
    // Fewer bytes than declared: refused the same way.
    await rejectsFerry(d.writeBlob(victim.digest, victim.size, victim.mediaType, chunked(victim.bytes.subarray(0, 10))), 'DIGEST_MISMATCH', '10 of its declared');
    assert.equal(existsSync(join(dir, 'blobs/sha256', victim.digest.slice(7))), false);
    await writeImage(d, armFixed, 'v1');
    await d.abort();
    assert.ok(readFileSync(join(dir, 'index.json')).equals(before), 'index.json untouched by an aborted session');
    assert.deepEqual(readdirSync(join(dir, 'blobs/sha256')).filter((f) => f.endsWith('.tmp')), []);
    const s = await src(`oci:${dir}:v1`);
    await assertImage(s, 'v1', amd);
  });

  it('refuses a manifest put under the wrong digest, and one over 4 MiB', async () => {
    const d = await dst(`oci:${fresh('layout-bad-put')}`);
    await rejectsFerry(d.putManifest(armFixed.manifest.digest, amd.manifest.bytes, amd.manifest.mediaType), 'DIGEST_MISMATCH');
    const huge = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [], pad: 'x'.repeat(4 * 1024 * 1024) }));
    await rejectsFerry(d.putManifest('big', huge, MediaType.OciIndex), 'DESTINATION_REJECTED', 'limit');
    await d.abort();
  });
});

describe('oci-archive: one tar', () => {
  it('round trip, read by GNU tar and skopeo; the temporary file becomes FILE only at commit', async () => {
    const file = fresh('img.tar');
    await writeSet(`oci-archive:${file}:v1`, 'v1');
    assert.deepEqual(readdirSync(tmp.path).filter((f) => f.includes('.ferry-')), []);
    await assertSet(`oci-archive:${file}:v1`, 'v1');
    await assertSet(`oci-archive:${file}`, 'v1');
    const listing = execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trim().split('\n');
    assert.equal(listing[0], 'oci-layout');
    assert.ok(listing.includes('index.json'));
    assert.ok(listing.includes(`blobs/sha256/${amd.layers[3]!.digest.slice(7)}`));
    assert.equal(new Set(listing).size, listing.length, 'no duplicate entries');
    // skopeo reads it as an OCI archive and finds the same index.
    const raw = execFileSync('skopeo', ['inspect', '--raw', `oci-archive:${file}:v1`]);
    assert.equal(sha256(raw), index.digest);
  });

  it('reads layouts packed by GNU tar: gnu, posix (pax) and ustar formats, "./" names, a root entry, long names', async () => {
    const dir = fresh('to-pack');
    const d = await dst(`oci:${dir}:v1`);
    await writeImage(d, amd, 'v1');
    await d.commit();
    // A long name: GNU tar needs its own extension (gnu: 'L' entries, posix: a pax path) for it.
    const longName = `${'n'.repeat(150)}/${'m'.repeat(120)}`;
    execFileSync('mkdir', ['-p', join(dir, 'extra', 'n'.repeat(150))]);
    execFileSync('cp', [join(dir, 'oci-layout'), join(dir, 'extra', longName)]);
    for (const format of ['gnu', 'posix', 'ustar']) {
      const file = fresh(`${format}.tar`);
      // ustar cannot hold the long name at all: leave it out there.
      execFileSync('tar', ['--format', format, ...(format === 'ustar' ? ['--exclude', './extra'] : []), '-cf', file, '-C', dir, '.']);
      const s = await src(`oci-archive:${file}`);
      assert.equal(s.target, 'v1', format);
      await assertImage(s, 'v1', amd);
    }
  });

  it('same content, same bytes: archives are reproducible', async () => {
    const a = fresh('a.tar');
    const b = fresh('b.tar');
    await writeSet(`oci-archive:${a}:v1`, 'v1');
    await writeSet(`oci-archive:${b}:v1`, 'v1');
    assert.equal(sha256(readFileSync(a)), sha256(readFileSync(b)));
  });

  it('a failed blob is cut out of the archive and can be written again; abort deletes the temporary file', async () => {
    const file = fresh('retry.tar');
    const d = await dst(`oci-archive:${file}:v1`);
    assert.equal(d.maxConcurrentBlobs, 1);
    const victim = amd.layers[3]!;
    async function* failing(): AsyncGenerator<Buffer> {
      yield victim.bytes.subarray(0, 100_000);
      throw new Error('digest check failed');
    }
    await writeBlobs(d, [amd.config]);
    await assert.rejects(d.writeBlob(victim.digest, victim.size, victim.mediaType, failing()), /digest check failed/);
    assert.equal(await d.hasBlob(victim.digest, victim.size), false);
    await rejectsFerry(d.writeBlob(victim.digest, victim.size, victim.mediaType, chunked(Buffer.concat([victim.bytes, Buffer.from('x')]))), 'DIGEST_MISMATCH', 'more than');
    await writeImage(d, amd, 'v1'); // writes the victim again, whole
    await d.commit();
    const s = await src(`oci-archive:${file}:v1`); // a duplicate or a torn entry would be refused here
    await assertImage(s, 'v1', amd);
    const listing = execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trim().split('\n');
    assert.equal(listing.filter((l) => l.endsWith(victim.digest.slice(7))).length, 1);

    const aborted = fresh('aborted.tar');
    const d2 = await dst(`oci-archive:${aborted}`);
    await writeImage(d2, amd);
    const temps = readdirSync(tmp.path).filter((f) => f.includes('aborted.tar.ferry-'));
    assert.equal(temps.length, 1, 'the archive is written to a temporary file');
    await d2.abort();
    assert.equal(existsSync(aborted), false);
    assert.deepEqual(readdirSync(tmp.path).filter((f) => f.includes('aborted.tar.ferry-')), []);
  });

  it('an image written without a tag is the archive\'s one image', async () => {
    const file = fresh('untagged.tar');
    const d = await dst(`oci-archive:${file}`);
    await writeImage(d, armFixed);
    await d.commit();
    const s = await src(`oci-archive:${file}`);
    assert.equal(s.target, armFixed.manifest.digest);
    await assertImage(s, s.target, armFixed);
  });

  it('archive to archive: oci-archive → oci layout → oci-archive keeps every digest and the referrers', async () => {
    const first = fresh('first.tar');
    await writeSet(`oci-archive:${first}:v1`, 'v1');
    const dir = fresh('middle');
    const root1 = await miniCopy(await src(`oci-archive:${first}:v1`), await dst(`oci:${dir}:v1`));
    const second = fresh('second.tar');
    const root2 = await miniCopy(await src(`oci:${dir}:v1`), await dst(`oci-archive:${second}:v1`));
    assert.equal(root1, index.digest);
    assert.equal(root2, index.digest);
    await assertSet(`oci-archive:${second}:v1`, 'v1');
  });
});

describe('docker-archive', () => {
  it('round trip of one image: manifest.json for docker load, index.json for a byte-exact digest', async () => {
    const file = fresh('docker.tar');
    const d = await dst(`docker-archive:${file}:myapp:1.0`);
    assert.equal(d.acceptsIndex, false);
    assert.equal(d.target, '1.0');
    await writeImage(d, amd, '1.0');
    await d.commit();
    const manifestJson = JSON.parse(execFileSync('tar', ['-xOf', file, 'manifest.json'], { encoding: 'utf8' })) as unknown;
    assert.deepEqual(manifestJson, [
      {
        Config: `blobs/sha256/${amd.config.digest.slice(7)}`,
        RepoTags: ['myapp:1.0'],
        Layers: amd.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`),
      },
    ]);
    for (const ref of [`docker-archive:${file}:myapp:1.0`, `docker-archive:${file}:docker.io/library/myapp:1.0`, `docker-archive:${file}`]) {
      const s = await src(ref);
      assert.equal(s.target, amd.manifest.digest, ref);
      await assertImage(s, s.target, amd);
      assert.equal((await s.getManifest('myapp:1.0'))?.digest, amd.manifest.digest);
    }
    await rejectsFerry(src(`docker-archive:${file}:other:1.0`), 'SOURCE_NOT_FOUND', 'no image tagged other:1.0', 'myapp:1.0');
    // skopeo (docker load's format reader) accepts it.
    const inspected = JSON.parse(execFileSync('skopeo', ['inspect', `docker-archive:${file}`], { encoding: 'utf8' })) as { Layers: string[] };
    assert.deepEqual(inspected.Layers, amd.layers.map((l) => l.digest));
  });

  it('holds one platform, one image and no referrers: clear errors', async () => {
    const d = await dst(`docker-archive:${fresh('one.tar')}:app:1`);
    await writeBlobs(d, [amd.config, ...amd.layers, armFixed.config, ...armFixed.layers]);
    await rejectsFerry(d.putManifest('1', index.bytes, index.mediaType), 'USAGE', 'docker-archive holds one platform; use --platform os/arch or oci-archive');
    await d.putManifest('1', amd.manifest.bytes, amd.manifest.mediaType);
    await rejectsFerry(d.putManifest(armFixed.manifest.digest, armFixed.manifest.bytes, armFixed.manifest.mediaType), 'USAGE', 'one image');
    const sig = makeReferrer('docker/sig', amd.manifest, 'application/vnd.example.sig');
    await writeBlobs(d, sig.blobs);
    await rejectsFerry(d.putManifest(sig.manifest.digest, sig.manifest.bytes, sig.manifest.mediaType), 'USAGE', 'referrers');
    await d.abort();
    const e = await dst(`docker-archive:${fresh('missing.tar')}`);
    await rejectsFerry(e.putManifest(amd.manifest.digest, amd.manifest.bytes, amd.manifest.mediaType), 'DESTINATION_REJECTED', 'was not written');
    await e.abort();
  });

  it('reads what skopeo writes (legacy layout: <hex>.tar layers, symlinked layer.tar) and synthesizes the manifest', async () => {
    const layout = fresh('for-skopeo');
    const image = makeImage('docker/legacy', [4000, 2, 90_000], { gzipFirstLayer: true });
    const d = await dst(`oci:${layout}:t`);
    await writeImage(d, image, 't');
    await d.commit();
    const file = fresh('skopeo.tar');
    execFileSync('skopeo', ['copy', '--quiet', `oci:${layout}:t`, `docker-archive:${file}:example.com/team/app:2`]);
    const entries = execFileSync('tar', ['-tvf', file], { encoding: 'utf8' });
    assert.match(entries, /layer\.tar -> \.\.\//, 'skopeo links layer.tar to the real file');
    const s = await src(`docker-archive:${file}:example.com/team/app:2`);
    const m = await s.getManifest(s.target);
    assert.ok(m);
    assert.equal(m.mediaType, MediaType.DockerManifest);
    assert.equal(m.bytes.toString(), JSON.stringify(JSON.parse(m.bytes.toString()), null, 3), "docker's 3-space JSON");
    const doc = JSON.parse(m.bytes.toString()) as { config: { mediaType: string; digest: string; size: number }; layers: Array<{ mediaType: string; digest: string; size: number }> };
    assert.deepEqual(doc.config, { mediaType: MediaType.DockerConfig, size: image.config.size, digest: image.config.digest });
    assert.deepEqual(
      doc.layers,
      image.layers.map((l, i) => ({
        mediaType: i === 0 ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : 'application/vnd.docker.image.rootfs.diff.tar',
        size: l.size,
        digest: l.digest,
      })),
    );
    for (const b of [image.config, ...image.layers]) assert.equal(sha256(await readBlob(s, b)), b.digest);
    assert.equal(sha256(await collect((await s.openBlob(image.layers[2]!.digest, image.layers[2]!.size, 50_000)).body)), sha256(image.layers[2]!.bytes.subarray(50_000)));
  });

  it('archive to archive: oci-archive (one platform) → docker-archive → oci-archive keeps the digest', async () => {
    const first = fresh('single.tar');
    const d = await dst(`oci-archive:${first}:v1`);
    await writeImage(d, armFixed, 'v1');
    await d.commit();
    const docker = fresh('via-docker.tar');
    await miniCopy(await src(`oci-archive:${first}:v1`), await dst(`docker-archive:${docker}:app:v1`));
    const last = fresh('back.tar');
    const root = await miniCopy(await src(`docker-archive:${docker}:app:v1`), await dst(`oci-archive:${last}:v1`));
    assert.equal(root, armFixed.manifest.digest);
    await assertImage(await src(`oci-archive:${last}`), 'v1', armFixed);
    assert.ok(statSync(last).size > armFixed.layers.reduce((n, l) => n + l.size, 0));
  });
});
