// Hostile and broken archives, built by hand: each fails cleanly with SOURCE_INVALID (or
// DIGEST_MISMATCH for bytes that do not hash to their name), and nothing is written anywhere.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pack, type Header } from 'tar-stream';
import { parseArchiveReference } from '../../src/ends/archive-ref.ts';
import { openArchiveSource } from '../../src/ends/local.ts';
import { openOciArchiveSource, TarFiles } from '../../src/ends/oci-archive.ts';
import { MAX_TAR_ENTRIES, TarIndex } from '../../src/ends/tar-index.ts';
import { readVerifiedBlob } from '../../src/blob/verify.ts';
import type { Digest } from '../../src/reference/digest.ts';
import { MediaType } from '../../src/oci/manifest.ts';
import { makeTempDir } from '../harness/process.ts';
import { assertImage, collect, logger, makeImage, readBlob, rejectsFerry, sha256, type Image } from './helpers.ts';

const tmp = makeTempDir('ends-hostile');
// Archives live two levels down, so `../x` and `../../x` would land inside tmp, where we look.
const archives = join(tmp.path, 'a', 'b');
mkdirSync(archives, { recursive: true });
let n = 0;

interface E {
  name: string;
  data?: Buffer | string;
  type?: Header['type'];
  linkname?: string;
}

async function tarBytes(entries: E[]): Promise<Buffer> {
  const p = pack();
  const out = collect(p as unknown as AsyncIterable<Buffer>);
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const header: Partial<Header> & { name: string } = { name: e.name, type: e.type ?? 'file', mtime: new Date(0) };
      if (e.linkname !== undefined) header.linkname = e.linkname;
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (header.type === 'file') p.entry(header, Buffer.from(e.data ?? ''), cb);
      else p.entry(header, cb);
    });
  }
  p.finalize();
  return out;
}

async function archive(entries: E[] | Buffer): Promise<string> {
  const file = join(archives, `${n++}.tar`);
  writeFileSync(file, Buffer.isBuffer(entries) ? entries : await tarBytes(entries));
  return file;
}

/** Everything under tmp except the archives themselves: must stay empty whatever the archive says. */
function strayFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (p !== join(tmp.path, 'layout')) walk(p);
      }
      else if (!(dirname(p) === archives && e.name.endsWith('.tar'))) out.push(p);
    }
  };
  walk(tmp.path);
  return out;
}

after(() => {
  try {
    assert.deepEqual(strayFiles(), [], 'nothing was written outside the archives');
  } finally {
    tmp.remove();
  }
});

const image = makeImage('hostile/img', [3000, 20_000]);
const blobEntry = (b: { digest: string; bytes: Buffer }): E => ({ name: `blobs/sha256/${b.digest.slice(7)}`, data: b.bytes });
const indexFor = (img: Image, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: [{ mediaType: img.manifest.mediaType, digest: img.manifest.digest, size: img.manifest.bytes.byteLength, annotations: { 'org.opencontainers.image.ref.name': 'v1' }, ...extra }],
  });
/** A good OCI archive's entries. */
function ociEntries(img: Image = image): E[] {
  return [
    { name: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'blobs', type: 'directory' },
    { name: 'blobs/sha256', type: 'directory' },
    blobEntry(img.config),
    ...img.layers.map(blobEntry),
    blobEntry(img.manifest),
    { name: 'index.json', data: indexFor(img) },
  ];
}

const openOci = (file: string) => openArchiveSource(parseArchiveReference(`oci-archive:${file}`), logger);
const openDocker = (file: string) => openArchiveSource(parseArchiveReference(`docker-archive:${file}`), logger);

/** Rewrite the size field of the header at `offset` (and its checksum). */
function patchSize(buf: Buffer, offset: number, size: number): void {
  buf.write(`${size.toString(8).padStart(11, '0')}\0`, offset + 124, 'latin1');
  buf.fill(0x20, offset + 148, offset + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += buf[offset + i]!;
  buf.write(`${sum.toString(8).padStart(6, '0')}\0 `, offset + 148, 'latin1');
}

/** Rewrite the size field as GNU base-256 (first byte 0x80, or 0xff: negative), and its checksum. */
function patchSize256(buf: Buffer, offset: number, size: number, negative = false): void {
  buf.fill(0, offset + 124, offset + 136);
  buf[offset + 124] = negative ? 0xff : 0x80;
  let v = size;
  for (let i = 135; i > 124; i--) {
    buf[offset + i] = v % 256;
    v = Math.floor(v / 256);
  }
  buf.fill(0x20, offset + 148, offset + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += buf[offset + i]!;
  buf.write(`${sum.toString(8).padStart(6, '0')}\0 `, offset + 148, 'latin1');
}

/** Byte offset of the header of entry `name` in a tar built by tarBytes (no pax headers). */
function headerOffset(buf: Buffer, name: string): number {
  for (let off = 0; off + 512 <= buf.byteLength; ) {
    const entryName = buf.toString('utf8', off, off + 100).replace(/\0.*$/s, '');
    const size = parseInt(buf.toString('latin1', off + 124, off + 136).replace(/\0.*$/s, '').trim() || '0', 8);
    if (entryName === name) return off;
    off += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`no entry ${name}`);
}

describe('hostile archives: names and links', () => {
  it('the well-formed baseline reads fine', async () => {
    const s = await openOci(await archive(ociEntries()));
    await assertImage(s, 'v1', image);
  });

  it('path traversal with ".."', async () => {
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: '../../escaped', data: 'x' }])), 'SOURCE_INVALID', 'climbs out');
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'blobs/../../escaped', data: 'x' }])), 'SOURCE_INVALID', 'climbs out');
  });

  it('absolute names', async () => {
    await rejectsFerry(openOci(await archive([{ name: `${tmp.path}/escaped`, data: 'x' }, ...ociEntries()])), 'SOURCE_INVALID', 'is absolute');
  });

  it('symlinks and hard links that leave the archive', async () => {
    const target = `blobs/sha256/${image.layers[0]!.digest.slice(7)}`;
    const without = ociEntries().filter((e) => e.name !== target);
    await rejectsFerry(openOci(await archive([...without, { name: target, type: 'symlink', linkname: '../../../escaped' }])), 'SOURCE_INVALID', 'points outside the archive');
    await rejectsFerry(openOci(await archive([...without, { name: target, type: 'symlink', linkname: '/etc/passwd' }])), 'SOURCE_INVALID', 'absolute target');
    await rejectsFerry(openOci(await archive([...without, { name: target, type: 'link', linkname: '../escaped' }])), 'SOURCE_INVALID', 'points outside the archive');
    // Even a link nothing refers to.
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'stray', type: 'symlink', linkname: '../../..' }])), 'SOURCE_INVALID', 'points outside');
  });

  it('dangling and looping links', async () => {
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'dangling', type: 'symlink', linkname: 'blobs/none' }])), 'SOURCE_INVALID', 'not in the archive');
    await rejectsFerry(
      openOci(await archive([...ociEntries(), { name: 'x', type: 'symlink', linkname: 'y' }, { name: 'y', type: 'symlink', linkname: 'x' }])),
      'SOURCE_INVALID',
      'loop',
    );
  });

  it('links that stay inside are resolved (relative symlink, hard link)', async () => {
    const l0 = `blobs/sha256/${image.layers[0]!.digest.slice(7)}`;
    const l1 = `blobs/sha256/${image.layers[1]!.digest.slice(7)}`;
    const entries = ociEntries().map((e): E => {
      if (e.name === l0) return { name: l0, type: 'symlink', linkname: '../../real/one' };
      if (e.name === l1) return { name: l1, type: 'link', linkname: 'real/two' };
      return e;
    });
    const s = await openOci(await archive([{ name: 'real/one', data: image.layers[0]!.bytes }, { name: 'real/two', data: image.layers[1]!.bytes }, ...entries]));
    await assertImage(s, 'v1', image);
  });

  it('duplicate entries, also after normalization', async () => {
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'index.json', data: indexFor(image) }])), 'SOURCE_INVALID', 'duplicate entry "index.json"');
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: './index.json', data: '{}' }])), 'SOURCE_INVALID', 'duplicate entry "index.json"');
    const blob = blobEntry(image.layers[0]!);
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: `./${blob.name}`, data: 'other bytes' }])), 'SOURCE_INVALID', 'duplicate entry');
  });

  it('device, fifo and other special entries', async () => {
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'dev', type: 'character-device' }])), 'SOURCE_INVALID', 'unsupported type');
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: 'pipe', type: 'fifo' }])), 'SOURCE_INVALID', 'unsupported type');
  });

  it('over-long names and too many entries', async () => {
    await rejectsFerry(openOci(await archive([...ociEntries(), { name: `${'d/'.repeat(2100)}f`, data: 'x' }])), 'SOURCE_INVALID', 'longer than 4096');
    const many: E[] = Array.from({ length: 40 }, (_, i) => ({ name: `pad/${i}`, data: '' }));
    const file = await archive([...ociEntries(), ...many]);
    const total = ociEntries().length + many.length;
    await openOciArchiveSource(file, undefined, logger, { maxEntries: total }); // at the limit
    await rejectsFerry(openOciArchiveSource(file, undefined, logger, { maxEntries: total - 1 }), 'SOURCE_INVALID', `more than ${total - 1} entries`);
  });

  it(`more than ${MAX_TAR_ENTRIES} entries by default`, async () => {
    // Raw headers (empty files) written directly: faster than packing them one by one.
    const count = MAX_TAR_ENTRIES + 1;
    const buf = Buffer.alloc((count + 2) * 512);
    const template = (await tarBytes([{ name: 'x', data: '' }])).subarray(0, 512);
    for (let i = 0; i < count; i++) {
      const off = i * 512;
      template.copy(buf, off);
      buf.fill(0, off, off + 100);
      buf.write(`e${i}`, off, 'latin1');
      patchSize(buf, off, 0);
    }
    await rejectsFerry(openOci(await archive(buf)), 'SOURCE_INVALID', `more than ${MAX_TAR_ENTRIES} entries`);
  });
});

describe('hostile archives: truncation and sizes that lie', () => {
  it('truncated inside a blob, at a header boundary, inside a header', async () => {
    const good = await tarBytes(ociEntries());
    const idx = headerOffset(good, 'index.json');
    const layer = headerOffset(good, `blobs/sha256/${image.layers[1]!.digest.slice(7)}`);
    await rejectsFerry(openOci(await archive(good.subarray(0, layer + 512 + 1000))), 'SOURCE_INVALID', 'past the end of the file');
    await rejectsFerry(openOci(await archive(good.subarray(0, idx))), 'SOURCE_INVALID', 'no end-of-archive block');
    await rejectsFerry(openOci(await archive(good.subarray(0, idx + 100))), 'SOURCE_INVALID', 'runs past the end');
    const file = await archive(good);
    truncateSync(file, good.byteLength - 1024 - 1); // into the last entry's padding
    await rejectsFerry(openOci(file), 'SOURCE_INVALID', 'past the end');
  });

  it('a header declaring more bytes than the file has', async () => {
    const buf = await tarBytes(ociEntries());
    patchSize(buf, headerOffset(buf, 'index.json'), 8 * 1024 * 1024 * 1024 - 1);
    await rejectsFerry(openOci(await archive(buf)), 'SOURCE_INVALID', 'declares 8589934591 bytes');
  });

  it('GNU base-256 sizes are read; a negative one is refused', async () => {
    const l = image.layers[1]!;
    const buf = await tarBytes(ociEntries());
    patchSize256(buf, headerOffset(buf, blobEntry(l).name), l.size);
    const s = await openOci(await archive(buf));
    assert.equal(sha256(await readBlob(s, l)), l.digest);
    patchSize256(buf, headerOffset(buf, blobEntry(l).name), l.size, true);
    await rejectsFerry(openOci(await archive(buf)), 'SOURCE_INVALID', 'negative size');
  });

  it('a bad header checksum, random bytes', async () => {
    const buf = await tarBytes(ociEntries());
    const at = headerOffset(buf, 'index.json') + 1;
    buf[at] = buf[at]! ^ 0x20;
    await rejectsFerry(openOci(await archive(buf)), 'SOURCE_INVALID', 'bad header checksum');
    await rejectsFerry(openOci(await archive(Buffer.from('definitely not a tar file, just some text'.repeat(30)))), 'SOURCE_INVALID');
  });

  it('a blob whose size differs from its descriptor', async () => {
    const l = image.layers[1]!;
    const entries = ociEntries().map((e) => (e.name === blobEntry(l).name ? { ...e, data: Buffer.concat([l.bytes, Buffer.from('!')]) } : e));
    const s = await openOci(await archive(entries));
    await rejectsFerry(s.openBlob(l.digest, l.size, 0), 'SOURCE_INVALID', `is ${l.size + 1} bytes but its descriptor says ${l.size}`);
  });

  it('an archive changed on disk while a copy reads it is SOURCE_INVALID, not an outage retried; a size the archive does not have is not INTERNAL', async () => {
    const l = image.layers[1]!;
    const good = await tarBytes(ociEntries());
    const file = await archive(good);
    const s = await openOci(file);
    // Rewritten meanwhile (another `docker save` into the same file): it now ends inside the layer.
    truncateSync(file, headerOffset(good, blobEntry(l).name) + 512 + 1000);
    const read = readVerifiedBlob({ source: s, digest: l.digest as Digest, size: l.size });
    await rejectsFerry(collect(read), 'SOURCE_INVALID', 'ended after 1000 of its 20000 bytes: the file changed while ferry read it');
    const files = new TarFiles(await TarIndex.open(await archive(good), { description: 'oci-archive:x.tar' }));
    await rejectsFerry(async () => files.stream(blobEntry(l).name, 0, l.size + 1), 'SOURCE_INVALID', `is ${l.size} bytes in the archive, not ${l.size + 1}`);
  });

  it('a manifest whose size differs from index.json, or whose bytes are not its digest', async () => {
    const s = await openOci(await archive([...ociEntries().filter((e) => e.name !== 'index.json'), { name: 'index.json', data: indexFor(image, { size: 10 }) }]));
    await rejectsFerry(s.getManifest('v1'), 'SOURCE_INVALID', 'index.json says 10');
    const tampered = Buffer.from(image.manifest.bytes.toString().replace('"schemaVersion": 2', '"schemaVersion":  2'));
    const t = await openOci(await archive(ociEntries().map((e) => (e.name === blobEntry(image.manifest).name ? { ...e, data: tampered } : e))));
    await rejectsFerry(t.getManifest(image.manifest.digest), 'DIGEST_MISMATCH', 'hashes to');
    // A layer's bytes are served as they are; the engine's reader checks them against the digest.
    const l = image.layers[0]!;
    const bad = Buffer.from(l.bytes);
    bad[7] = bad[7]! ^ 1;
    const u = await openOci(await archive(ociEntries().map((e) => (e.name === blobEntry(l).name ? { ...e, data: bad } : e))));
    assert.notEqual(sha256(await readBlob(u, l)), l.digest);
  });
});

describe('hostile archives: oversize and malformed documents', () => {
  const big = 'x'.repeat(4 * 1024 * 1024);

  it('index.json over 4 MiB, a manifest over 4 MiB', async () => {
    const fat = JSON.stringify({ schemaVersion: 2, manifests: [], pad: big });
    await rejectsFerry(openOci(await archive([...ociEntries().filter((e) => e.name !== 'index.json'), { name: 'index.json', data: fat }])), 'SOURCE_INVALID', 'index.json is', 'limit');
    const hugeManifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: {}, pad: big }));
    const digest = sha256(hugeManifest);
    const entries = [
      ...ociEntries().filter((e) => e.name !== 'index.json'),
      { name: `blobs/sha256/${digest.slice(7)}`, data: hugeManifest },
      {
        name: 'index.json',
        data: JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MediaType.OciManifest, digest, size: hugeManifest.byteLength, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }),
      },
    ];
    const s = await openOci(await archive(entries));
    await rejectsFerry(s.getManifest('v1'), 'SOURCE_INVALID', 'limit');
    await rejectsFerry(s.getManifest(digest), 'SOURCE_INVALID', 'limit');
  });

  it('index.json that is not JSON or not an index', async () => {
    const withIndex = async (data: string) => archive([...ociEntries().filter((e) => e.name !== 'index.json'), { name: 'index.json', data }]);
    await rejectsFerry(openOci(await withIndex('{not json')), 'SOURCE_INVALID', 'index.json', 'not valid JSON');
    await rejectsFerry(openOci(await withIndex('[]')), 'SOURCE_INVALID', 'index.json');
    await rejectsFerry(openOci(await withIndex('{"schemaVersion":2,"manifests":{}}')), 'SOURCE_INVALID', 'index.json');
    await rejectsFerry(openOci(await withIndex('{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]}')), 'SOURCE_INVALID', 'invalid digest');
    await rejectsFerry(openOci(await withIndex(indexFor(image, { annotations: { 'org.opencontainers.image.ref.name': 7 } }))), 'SOURCE_INVALID', 'non-string');
    await rejectsFerry(openOci(await archive(ociEntries().filter((e) => e.name !== 'index.json'))), 'SOURCE_INVALID', 'no index.json');
    await rejectsFerry(openOci(await archive([{ name: 'oci-layout', data: '{"imageLayoutVersion":"9.0"}' }, ...ociEntries().slice(1)])), 'SOURCE_INVALID', 'layout version');
  });

  it('a tag named twice for different manifests', async () => {
    const other = makeImage('hostile/other', [10]);
    const doc = JSON.parse(indexFor(image)) as { manifests: unknown[] };
    doc.manifests.push(...(JSON.parse(indexFor(other)) as { manifests: unknown[] }).manifests);
    await rejectsFerry(openOci(await archive([...ociEntries().filter((e) => e.name !== 'index.json'), { name: 'index.json', data: JSON.stringify(doc) }])), 'SOURCE_INVALID', 'names "v1" for two manifests');
  });

  it('docker-archive: manifest.json that is missing, not JSON, the wrong shape, too big, or naming paths outside', async () => {
    const files: E[] = [blobEntry(image.config), ...image.layers.map(blobEntry)];
    const mj = (doc: unknown): E => ({ name: 'manifest.json', data: typeof doc === 'string' ? doc : JSON.stringify(doc) });
    const good = { Config: blobEntry(image.config).name, RepoTags: ['app:1'], Layers: image.layers.map((l) => blobEntry(l).name) };
    const ok = await openDocker(await archive([...files, mj([good])]));
    assert.equal((await ok.getManifest(ok.target))?.mediaType, MediaType.DockerManifest);
    await rejectsFerry(openDocker(await archive(files)), 'SOURCE_INVALID', 'no manifest.json');
    await rejectsFerry(openDocker(await archive([...files, mj('[{')])), 'SOURCE_INVALID', 'manifest.json is not JSON');
    await rejectsFerry(openDocker(await archive([...files, mj({ Config: 'x' })])), 'SOURCE_INVALID', 'not a JSON array');
    await rejectsFerry(openDocker(await archive([...files, mj([])])), 'SOURCE_INVALID', 'no images');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, Config: 7 }])])), 'SOURCE_INVALID', 'no Config');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, Layers: 'x' }])])), 'SOURCE_INVALID', 'malformed Layers');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, RepoTags: [1] }])])), 'SOURCE_INVALID', 'malformed RepoTags');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, Layers: ['../../../etc/passwd'] }])])), 'SOURCE_INVALID', 'climbs out');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, Config: '/etc/passwd' }])])), 'SOURCE_INVALID', 'is absolute');
    await rejectsFerry(openDocker(await archive([...files, mj([{ ...good, Layers: ['missing/layer.tar'] }])])), 'SOURCE_INVALID', 'not a file in the archive');
    await rejectsFerry(openDocker(await archive([...files, mj([good, { ...good, RepoTags: ['app:2'] }])])), 'USAGE', 'holds 2 images', 'app:1, app:2');
    await rejectsFerry(openDocker(await archive([...files, mj(`[${JSON.stringify(good)}]${' '.repeat(4 * 1024 * 1024)}`)])), 'SOURCE_INVALID', 'manifest.json is', 'limit');
  });

  it('docker-archive: legacy layout with a relative symlink for a repeated layer is fine', async () => {
    const l0 = image.layers[0]!;
    const l1 = image.layers[1]!;
    const entries: E[] = [
      { name: `${'a'.repeat(64)}/layer.tar`, data: l0.bytes },
      { name: `${'b'.repeat(64)}/layer.tar`, data: l1.bytes },
      { name: `${'c'.repeat(64)}/layer.tar`, type: 'symlink', linkname: `../${'a'.repeat(64)}/layer.tar` },
      { name: `${image.config.digest.slice(7)}.json`, data: image.config.bytes },
      {
        name: 'manifest.json',
        data: JSON.stringify([
          { Config: `${image.config.digest.slice(7)}.json`, RepoTags: null, Layers: [`${'a'.repeat(64)}/layer.tar`, `${'b'.repeat(64)}/layer.tar`, `${'c'.repeat(64)}/layer.tar`] },
        ]),
      },
    ];
    const s = await openDocker(await archive(entries));
    const m = await s.getManifest(s.target);
    const doc = JSON.parse(m!.bytes.toString()) as { config: { digest: string }; layers: Array<{ digest: string; size: number }> };
    assert.equal(doc.config.digest, image.config.digest);
    assert.deepEqual(
      doc.layers.map((l) => l.digest),
      [l0.digest, l1.digest, l0.digest],
    );
    for (const b of [image.config, l0, l1]) assert.equal(sha256(await readBlob(s, b)), b.digest);
  });
});

describe('hostile layout directories', () => {
  it('index.json broken or oversize, a blob that is not its digest', async () => {
    const dir = join(tmp.path, 'layout');
    mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
    writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    for (const b of [image.config, ...image.layers, image.manifest]) writeFileSync(join(dir, 'blobs/sha256', b.digest.slice(7)), b.bytes);
    writeFileSync(join(dir, 'index.json'), indexFor(image));
    const ok = await openArchiveSource(parseArchiveReference(`oci:${dir}`), logger);
    await assertImage(ok, 'v1', image);
    writeFileSync(join(dir, 'index.json'), 'nope');
    await rejectsFerry(openArchiveSource(parseArchiveReference(`oci:${dir}`), logger), 'SOURCE_INVALID', 'not valid JSON');
    writeFileSync(join(dir, 'index.json'), `${indexFor(image)}${' '.repeat(4 * 1024 * 1024)}`);
    await rejectsFerry(openArchiveSource(parseArchiveReference(`oci:${dir}`), logger), 'SOURCE_INVALID', 'limit');
    writeFileSync(join(dir, 'index.json'), indexFor(image));
    writeFileSync(join(dir, 'blobs/sha256', image.manifest.digest.slice(7)), Buffer.concat([image.manifest.bytes.subarray(0, -1), Buffer.from(' ')]));
    const bad = await openArchiveSource(parseArchiveReference(`oci:${dir}:v1`), logger);
    await rejectsFerry(bad.getManifest('v1'), 'DIGEST_MISMATCH');
    // A symlinked blob is read through (its bytes are still checked against the digest).
    writeFileSync(join(dir, 'blobs/sha256', image.manifest.digest.slice(7)), image.manifest.bytes);
    const layer = join(dir, 'blobs/sha256', image.layers[0]!.digest.slice(7));
    writeFileSync(join(tmp.path, 'layout', 'real-layer'), readFileSync(layer));
    unlinkSync(layer);
    symlinkSync('../../real-layer', layer);
    await assertImage(await openArchiveSource(parseArchiveReference(`oci:${dir}:v1`), logger), 'v1', image);
    await rejectsFerry(openArchiveSource(parseArchiveReference(`oci:${join(tmp.path, 'nope')}`), logger), 'SOURCE_NOT_FOUND');
    await rejectsFerry(openArchiveSource(parseArchiveReference(`oci-archive:${join(tmp.path, 'nope.tar')}`), logger), 'SOURCE_NOT_FOUND');
    assert.equal(existsSync(join(tmp.path, 'escaped')), false);
  });
});
