// Images built by hand from seeded random bytes, written through an ImageDestination and read
// back through an ImageSource, for the tests of the local ends.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { FerryError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log/logger.ts';
import { MediaType, parseManifest } from '../../src/oci/manifest.ts';
import type { ImageDestination, ImageSource } from '../../src/ends/types.ts';
import { seededBytes, seedFor } from '../harness/seed.ts';

export const logger = silentLogger();

export interface Blob {
  digest: string;
  size: number;
  mediaType: string;
  bytes: Buffer;
}

export interface Manifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface Image {
  manifest: Manifest;
  config: Blob;
  layers: Blob[];
}

export const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export function blob(bytes: Buffer, mediaType: string): Blob {
  return { digest: sha256(bytes), size: bytes.byteLength, mediaType, bytes };
}

export function manifestOf(doc: unknown, mediaType: string, indent?: number): Manifest {
  const bytes = Buffer.from(JSON.stringify(doc, null, indent));
  return { digest: sha256(bytes), mediaType, bytes };
}

const desc = (b: { mediaType: string; digest: string; bytes: Buffer }) => ({ mediaType: b.mediaType, digest: b.digest, size: b.bytes.byteLength });

/** An image of random layers (seeded by `label`), OCI or Docker schema 2. */
export function makeImage(label: string, layerSizes: number[], opts: { docker?: boolean; arch?: string; gzipFirstLayer?: boolean } = {}): Image {
  const docker = opts.docker ?? false;
  const layers = layerSizes.map((n, i) => {
    const bytes = seededBytes(seedFor(`${label}/layer/${i}`), n);
    if (i === 0 && opts.gzipFirstLayer && n >= 2) {
      bytes[0] = 0x1f;
      bytes[1] = 0x8b;
    }
    const mt = docker ? 'application/vnd.docker.image.rootfs.diff.tar' : 'application/vnd.oci.image.layer.v1.tar';
    return blob(bytes, opts.gzipFirstLayer && i === 0 ? `${mt}${docker ? '.gzip' : '+gzip'}` : mt);
  });
  // Layers count as uncompressed (their digest is their diff_id), as tools that check the config expect.
  const config = blob(
    Buffer.from(JSON.stringify({ architecture: opts.arch ?? 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, label })),
    docker ? MediaType.DockerConfig : MediaType.OciConfig,
  );
  const mediaType = docker ? MediaType.DockerManifest : MediaType.OciManifest;
  const manifest = manifestOf({ schemaVersion: 2, mediaType, config: desc(config), layers: layers.map(desc) }, mediaType, 2);
  return { manifest, config, layers };
}

/** An OCI index over images, with their platforms. */
export function makeIndex(images: Array<{ image: Image; arch: string }>): Manifest {
  return manifestOf(
    {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: images.map(({ image, arch }) => ({ ...desc(image.manifest), platform: { os: 'linux', architecture: arch } })),
    },
    MediaType.OciIndex,
  );
}

/** An artifact manifest (a signature, an SBOM) referring to `subject`. */
export function makeReferrer(label: string, subject: Manifest, artifactType: string): { manifest: Manifest; blobs: Blob[] } {
  const empty = blob(Buffer.from('{}'), MediaType.OciEmpty);
  const payload = blob(seededBytes(seedFor(`${label}/payload`), 777), 'application/octet-stream');
  const manifest = manifestOf(
    {
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      artifactType,
      config: desc(empty),
      layers: [desc(payload)],
      subject: desc(subject),
      annotations: { 'org.example.label': label },
    },
    MediaType.OciManifest,
  );
  return { manifest, blobs: [empty, payload] };
}

/** Chunks of `bytes` in pieces of `piece` bytes. */
export async function* chunked(bytes: Buffer, piece = 64 * 1024): AsyncGenerator<Buffer> {
  for (let i = 0; i < bytes.byteLength; i += piece) yield bytes.subarray(i, Math.min(bytes.byteLength, i + piece));
}

export async function writeBlobs(dst: ImageDestination, blobs: Blob[]): Promise<void> {
  for (const b of blobs) {
    if (await dst.hasBlob(b.digest, b.size)) continue;
    await dst.writeBlob(b.digest, b.size, b.mediaType, chunked(b.bytes));
  }
}

/** Write one image: blobs, then the manifest under `target` (a tag, or undefined: by digest). */
export async function writeImage(dst: ImageDestination, image: Image, target?: string): Promise<string> {
  await writeBlobs(dst, [image.config, ...image.layers]);
  return dst.putManifest(target ?? image.manifest.digest, image.manifest.bytes, image.manifest.mediaType);
}

export async function collect(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(c);
  return Buffer.concat(parts);
}

export async function readBlob(src: ImageSource, b: { digest: string; size: number }, offset = 0): Promise<Buffer> {
  const { body } = await src.openBlob(b.digest, b.size, offset);
  return collect(body);
}

/** Read an image back and check every byte: manifest by target and by digest, config, each layer. */
export async function assertImage(src: ImageSource, target: string, image: Image): Promise<void> {
  const m = await src.getManifest(target);
  assert.ok(m, `manifest ${target} in ${src.description}`);
  assert.equal(m.digest, image.manifest.digest);
  assert.ok(m.bytes.equals(image.manifest.bytes), 'manifest bytes identical');
  assert.equal(m.mediaType, image.manifest.mediaType);
  const byDigest = await src.getManifest(image.manifest.digest);
  assert.ok(byDigest?.bytes.equals(image.manifest.bytes));
  for (const b of [image.config, ...image.layers]) {
    const got = await readBlob(src, b);
    assert.equal(sha256(got), b.digest, `blob ${b.digest} byte-exact`);
  }
}

/**
 * A minimal copy (what the engine will do, without its limits and retries): the root and every
 * manifest under it, referrers through the fallback tag and cosign tags, blobs first, children before parents,
 * the tag last, then commit. Returns the root digest.
 */
export async function miniCopy(src: ImageSource & { target: string }, dst: ImageDestination & { target: string | undefined; commit(): Promise<void> }): Promise<string> {
  const manifests: Array<{ digest: string; mediaType: string; bytes: Buffer }> = [];
  const tags: Array<{ tag: string; m: { mediaType: string; bytes: Buffer } }> = [];
  const blobs = new Map<string, { digest: string; size: number; mediaType: string }>();
  const seen = new Set<string>();
  const visit = async (target: string): Promise<void> => {
    const m = await src.getManifest(target);
    assert.ok(m, `${target} in ${src.description}`);
    if (seen.has(m.digest)) return;
    seen.add(m.digest);
    const p = parseManifest(m.bytes, m.mediaType);
    if (p.kind === 'index') for (const c of p.index.manifests) await visit(c.digest);
    else for (const d of [p.manifest.config, ...p.manifest.layers]) blobs.set(d.digest, d);
    manifests.push(m);
    const [alg, hex] = m.digest.split(':');
    const fb = await src.getManifest(`${alg}-${hex}`);
    if (fb) {
      const fp = parseManifest(fb.bytes, fb.mediaType);
      assert.equal(fp.kind, 'index');
      if (fp.kind === 'index') for (const r of fp.index.manifests) await visit(r.digest);
      tags.push({ tag: `${alg}-${hex}`, m: fb });
    }
    for (const suffix of ['sig', 'att', 'sbom']) {
      const tag = `${alg}-${hex}.${suffix}`;
      const c = await src.getManifest(tag);
      if (!c) continue;
      await visit(c.digest);
      tags.push({ tag, m: c });
    }
  };
  const root = await src.getManifest(src.target);
  assert.ok(root);
  await visit(root.digest);
  for (const b of blobs.values()) {
    const { body } = await src.openBlob(b.digest, b.size, 0);
    await dst.writeBlob(b.digest, b.size, b.mediaType, body);
  }
  for (const m of manifests) if (m.digest !== root.digest) await dst.putManifest(m.digest, m.bytes, m.mediaType);
  for (const t of tags) await dst.putManifest(t.tag, t.m.bytes, t.m.mediaType);
  await dst.putManifest(dst.target ?? root.digest, root.bytes, root.mediaType);
  await dst.commit();
  return root.digest;
}

/** Await a rejection that is a FerryError with `code`, and message parts. */
export async function rejectsFerry(p: Promise<unknown> | (() => Promise<unknown>), code: string, ...parts: string[]): Promise<FerryError> {
  let caught: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof FerryError, `expected a FerryError ${code}, got ${caught === undefined ? 'success' : String(caught)}`);
  assert.equal(caught.code, code, `code of: ${caught.message}`);
  for (const part of parts) assert.ok(caught.message.includes(part), `message ${JSON.stringify(caught.message)} should include ${JSON.stringify(part)}`);
  return caught;
}
