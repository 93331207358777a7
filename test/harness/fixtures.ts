// Deterministic test images pushed into a real registry through the harness client. Every byte
// comes from the suite seed plus a label (by default repo:tag), so the same seed gives the same
// digests and a failure can be replayed.
import { MANIFEST_TYPES, RegistryHttpError, sha256Digest, type BlobRef, type OciClient } from './oci-client.ts';
import { seededBytes, seededStream, seedFor } from './seed.ts';

export type ImageFormat = 'oci' | 'docker';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface PushedManifest {
  repo: string;
  /** The tag it was pushed under; undefined when pushed by digest only (index children, artifacts). */
  tag: string | undefined;
  digest: string;
  mediaType: string;
  /** The exact bytes pushed. */
  manifestBytes: Buffer;
  /** A descriptor of this manifest, for an index entry or an artifact's `subject`. */
  descriptor: Descriptor;
  /** Config and layer blobs (for an index: of all children, each once). */
  blobs: BlobRef[];
  /** An index's child manifests, in index order. */
  children?: PushedManifest[];
}

export const MEDIA = {
  ...MANIFEST_TYPES,
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  // Layers are opaque random bytes, so they are typed as uncompressed tar rather than gzip.
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

function typesFor(format: ImageFormat) {
  return format === 'oci'
    ? { manifest: MEDIA.ociManifest, index: MEDIA.ociIndex, config: MEDIA.ociConfig, layer: MEDIA.ociLayer }
    : { manifest: MEDIA.dockerManifest, index: MEDIA.dockerList, config: MEDIA.dockerConfig, layer: MEDIA.dockerLayer };
}

/** 'linux/arm/v7' → { os: 'linux', architecture: 'arm', variant: 'v7' }. */
export function parsePlatform(text: string): Platform {
  const [os, architecture, variant] = text.split('/');
  if (!os || !architecture) throw new Error(`bad platform "${text}" (want os/arch[/variant])`);
  return variant ? { os, architecture, variant } : { os, architecture };
}

const json = (doc: unknown): Buffer => Buffer.from(JSON.stringify(doc, null, 2));

function uniqueBlobs(lists: BlobRef[][]): BlobRef[] {
  const seen = new Map<string, BlobRef>();
  for (const list of lists) for (const b of list) if (!seen.has(b.digest)) seen.set(b.digest, b);
  return [...seen.values()];
}

/** Push the manifest bytes under `tag` (or by digest) and describe the result. */
async function pushManifestBytes(
  client: OciClient,
  repo: string,
  tag: string | undefined,
  mediaType: string,
  bytes: Buffer,
  blobs: BlobRef[],
  extra: Partial<Descriptor> = {},
): Promise<PushedManifest> {
  const digest = await client.pushManifest(repo, tag ?? sha256Digest(bytes), bytes, mediaType);
  return { repo, tag, digest, mediaType, manifestBytes: bytes, descriptor: { mediaType, digest, size: bytes.byteLength, ...extra }, blobs };
}

/** Config blob + image manifest for already-pushed layers. */
async function pushImageManifest(
  client: OciClient,
  repo: string,
  tag: string | undefined,
  format: ImageFormat,
  platform: Platform,
  layers: Descriptor[],
  seed: string,
): Promise<PushedManifest> {
  const types = typesFor(format);
  // No timestamps from the clock: the config (and so every digest) depends on the seed alone.
  const config = json({
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    created: '2024-01-01T00:00:00Z',
    config: { Labels: { 'org.ferry.test.seed': seed } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
  });
  const configRef = await client.pushBlob(repo, config);
  const configDesc: Descriptor = { mediaType: types.config, digest: configRef.digest, size: configRef.size };
  const manifest = json({ schemaVersion: 2, mediaType: types.manifest, config: configDesc, layers });
  const blobs = [configDesc, ...layers].map(({ digest, size, mediaType }) => ({ digest, size, mediaType }));
  return pushManifestBytes(client, repo, tag, types.manifest, manifest, blobs, { platform });
}

export interface ImageOptions {
  /** Size of each layer in bytes. Default [1024, 4096]. */
  layerSizes?: number[];
  os?: string;
  arch?: string;
  variant?: string;
  /** Default 'oci'. */
  format?: ImageFormat;
  /** Label mixed into the suite seed for all content. Default `${repo}:${tag}`. */
  seed?: string;
}

/**
 * The seed of layer `index` of an image built by pushImage or pushLargeImage with seed label
 * `label` (default `${repo}:${tag}`): `seededDigest(layerSeed(label, i), size)` predicts its digest.
 */
export function layerSeed(label: string, index: number): string {
  return `${seedFor(label)}/layer/${index}`;
}

/** A single-platform image with random layers, pushed under `tag` (or by digest if tag is undefined). */
export async function pushImage(client: OciClient, repo: string, tag: string | undefined, opts: ImageOptions = {}): Promise<PushedManifest> {
  const format = opts.format ?? 'oci';
  const label = opts.seed ?? `${repo}:${tag ?? 'untagged'}`;
  const seed = seedFor(label);
  const layerType = typesFor(format).layer;
  const layers: Descriptor[] = [];
  for (const [i, size] of (opts.layerSizes ?? [1024, 4096]).entries()) {
    const ref = await client.pushBlob(repo, seededBytes(layerSeed(label, i), size));
    layers.push({ mediaType: layerType, digest: ref.digest, size: ref.size });
  }
  const platform: Platform = { os: opts.os ?? 'linux', architecture: opts.arch ?? 'amd64', ...(opts.variant ? { variant: opts.variant } : {}) };
  return pushImageManifest(client, repo, tag, format, platform, layers, seed);
}

export interface MultiArchOptions {
  /** Default ['linux/amd64', 'linux/arm64', 'linux/arm/v7']. */
  platforms?: string[];
  /** The base layer every platform shares. Default 2048 bytes. */
  sharedLayerSize?: number;
  /** Each platform's own layer. Default 1024 bytes. */
  ownLayerSize?: number;
  /** 'oci' (OCI index) or 'docker' (Docker manifest list). Default 'oci'. */
  format?: ImageFormat;
  seed?: string;
}

/** A multi-platform index: children pushed by digest, sharing one base layer, the index under `tag`. */
export async function pushMultiArch(client: OciClient, repo: string, tag: string | undefined, opts: MultiArchOptions = {}): Promise<PushedManifest> {
  const format = opts.format ?? 'oci';
  const types = typesFor(format);
  const seed = seedFor(opts.seed ?? `${repo}:${tag ?? 'untagged'}`);
  const shared = await client.pushBlob(repo, seededBytes(`${seed}/shared`, opts.sharedLayerSize ?? 2048));
  const children: PushedManifest[] = [];
  for (const p of opts.platforms ?? ['linux/amd64', 'linux/arm64', 'linux/arm/v7']) {
    const own = await client.pushBlob(repo, seededBytes(`${seed}/${p}`, opts.ownLayerSize ?? 1024));
    const layers = [shared, own].map((b) => ({ mediaType: types.layer, digest: b.digest, size: b.size }));
    children.push(await pushImageManifest(client, repo, undefined, format, parsePlatform(p), layers, `${seed}/${p}`));
  }
  const index = json({ schemaVersion: 2, mediaType: types.index, manifests: children.map((c) => c.descriptor) });
  const pushed = await pushManifestBytes(client, repo, tag, types.index, index, uniqueBlobs(children.map((c) => c.blobs)));
  return { ...pushed, children };
}

/**
 * An OCI image manifest whose bytes are not what any JSON library would write: odd whitespace,
 * CRLF, unusual key order, escaped `/` and `\u` escapes for non-ASCII text. Re-serializing it
 * changes its digest, so a copy that is not byte-exact shows.
 */
export async function pushNonCanonical(client: OciClient, repo: string, tag: string | undefined, opts: { seed?: string } = {}): Promise<PushedManifest> {
  const seed = seedFor(opts.seed ?? `${repo}:${tag ?? 'untagged'}:noncanonical`);
  const layer = await client.pushBlob(repo, seededBytes(`${seed}/layer`, 1500));
  const config = Buffer.from(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["${layer.digest}"]},"config":{}}`);
  const cfg = await client.pushBlob(repo, config);
  const text =
    '{\r\n' +
    `\t"layers" : [ {"size":${layer.size},   "digest" :"${layer.digest}",\n     "mediaType":"${MEDIA.ociLayer}"} ],\n` +
    `  "schemaVersion":2 ,"config":{"digest":"${cfg.digest}","size":${cfg.size},"mediaType":"application\\/vnd.oci.image.config.v1+json"},\n` +
    `  "annotations": {"org.ferry.test.note":"caf\\u00e9 \\u2603 \\/ \\u003ctag\\u003e", "org.ferry.test.seed":"${seed}"},\n` +
    `    "mediaType" :  "${MEDIA.ociManifest}"   \n}\n\n`;
  const bytes = Buffer.from(text);
  const blobs = [
    { digest: cfg.digest, size: cfg.size, mediaType: MEDIA.ociConfig },
    { digest: layer.digest, size: layer.size, mediaType: MEDIA.ociLayer },
  ];
  return pushManifestBytes(client, repo, tag, MEDIA.ociManifest, bytes, blobs);
}

/** The fallback referrers tag for a subject: `sha256-<hex>` (OCI distribution spec, no referrers API). */
export function referrersTag(subjectDigest: string): string {
  return subjectDigest.replace(':', '-');
}

const EMPTY_CONFIG = Buffer.from('{}');

export interface ArtifactOptions {
  /** Default 'application/vnd.ferry.test.sbom.v1+json'. */
  artifactType?: string;
  /** Bytes of the single payload layer. Default 512. */
  payloadSize?: number;
  /** Also maintain the `sha256-<hex>` tag index (for registries without a referrers API). Default true. */
  fallbackTag?: boolean;
  seed?: string;
}

export interface PushedArtifact extends PushedManifest {
  /** The fallback tag and the index it now holds (every artifact pushed for this subject so far). */
  referrersTag?: string;
  referrersIndex?: PushedManifest;
}

/**
 * An OCI artifact manifest (`artifactType`, empty config, one payload layer) with `subject`
 * pointing at an existing manifest, pushed by digest; plus the fallback referrers tag.
 */
export async function pushArtifactFor(client: OciClient, repo: string, subject: Descriptor, opts: ArtifactOptions = {}): Promise<PushedArtifact> {
  const artifactType = opts.artifactType ?? 'application/vnd.ferry.test.sbom.v1+json';
  const seed = seedFor(opts.seed ?? `${repo}@${subject.digest}/${artifactType}`);
  const config = await client.pushBlob(repo, EMPTY_CONFIG);
  const payload = await client.pushBlob(repo, seededBytes(`${seed}/payload`, opts.payloadSize ?? 512));
  const annotations = { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z', 'org.ferry.test.seed': seed };
  const manifest = json({
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    artifactType,
    config: { mediaType: MEDIA.ociEmpty, digest: config.digest, size: config.size },
    layers: [{ mediaType: 'application/vnd.ferry.test.payload.v1', digest: payload.digest, size: payload.size }],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    annotations,
  });
  const blobs = [
    { digest: config.digest, size: config.size, mediaType: MEDIA.ociEmpty },
    { digest: payload.digest, size: payload.size, mediaType: 'application/vnd.ferry.test.payload.v1' },
  ];
  const artifact: PushedArtifact = await pushManifestBytes(client, repo, undefined, MEDIA.ociManifest, manifest, blobs, { artifactType, annotations });
  if (opts.fallbackTag === false) return artifact;

  // Read-modify-write the tag's index, as clients of registries without the referrers API do.
  const tag = referrersTag(subject.digest);
  let entries: Descriptor[] = [];
  try {
    const existing = await client.getManifest(repo, tag);
    entries = (JSON.parse(existing.bytes.toString('utf8')) as { manifests?: Descriptor[] }).manifests ?? [];
  } catch (e) {
    if (!(e instanceof RegistryHttpError && e.status === 404)) throw e;
  }
  if (!entries.some((d) => d.digest === artifact.digest)) entries.push(artifact.descriptor);
  const index = json({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: entries });
  artifact.referrersTag = tag;
  artifact.referrersIndex = await pushManifestBytes(client, repo, tag, MEDIA.ociIndex, index, []);
  return artifact;
}

export type CosignKind = 'sig' | 'att' | 'sbom';

const COSIGN_LAYER: Record<CosignKind, string> = {
  sig: 'application/vnd.dev.cosign.simplesigning.v1+json',
  att: 'application/vnd.dsse.envelope.v1+json',
  sbom: 'text/spdx+json',
};

/**
 * cosign-style tags next to an image: `sha256-<hex>.sig` (and `.att`, `.sbom` if asked), each a
 * small OCI manifest with one payload layer. The signatures are random bytes, not verifiable.
 */
export async function pushCosignTags(
  client: OciClient,
  repo: string,
  subjectDigest: string,
  opts: { kinds?: CosignKind[]; seed?: string } = {},
): Promise<PushedManifest[]> {
  const out: PushedManifest[] = [];
  for (const kind of opts.kinds ?? ['sig']) {
    const seed = seedFor(opts.seed ?? `${repo}@${subjectDigest}.${kind}`);
    const payload = Buffer.from(
      JSON.stringify({
        critical: { identity: { 'docker-reference': repo }, image: { 'docker-manifest-digest': subjectDigest }, type: `cosign container image ${kind}` },
        optional: { seed },
      }),
    );
    const layer = await client.pushBlob(repo, payload);
    const layerDesc: Descriptor = {
      mediaType: COSIGN_LAYER[kind],
      digest: layer.digest,
      size: layer.size,
      annotations: { 'dev.cosignproject.cosign/signature': seededBytes(`${seed}/sig`, 64).toString('base64') },
    };
    const config = json({ architecture: '', os: '', created: '0001-01-01T00:00:00Z', config: {}, rootfs: { type: 'layers', diff_ids: [layer.digest] } });
    const cfg = await client.pushBlob(repo, config);
    const manifest = json({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: cfg.digest, size: cfg.size },
      layers: [layerDesc],
    });
    const blobs = [
      { digest: cfg.digest, size: cfg.size, mediaType: MEDIA.ociConfig },
      { digest: layer.digest, size: layer.size, mediaType: COSIGN_LAYER[kind] },
    ];
    out.push(await pushManifestBytes(client, repo, `${referrersTag(subjectDigest)}.${kind}`, MEDIA.ociManifest, manifest, blobs));
  }
  return out;
}

export interface LargeImageOptions {
  /** Default 8. */
  layerCount?: number;
  /** Default 64 MiB. */
  layerSize?: number;
  /** One layer of each size, instead of layerCount × layerSize. */
  layerSizes?: number[];
  /** PATCH size of the chunked upload. Default 8 MiB. */
  chunkSize?: number;
  format?: ImageFormat;
  seed?: string;
}

/**
 * A big image (default 8 × 64 MiB) streamed from the seed with chunked uploads, so no layer is
 * ever held in memory. `seededDigest(layerSeed(label, i), layerSize)` predicts a layer's digest.
 */
export async function pushLargeImage(client: OciClient, repo: string, tag: string | undefined, opts: LargeImageOptions = {}): Promise<PushedManifest> {
  const format = opts.format ?? 'oci';
  const label = opts.seed ?? `${repo}:${tag ?? 'untagged'}`;
  const seed = seedFor(label);
  const layers: Descriptor[] = [];
  const sizes = opts.layerSizes ?? Array.from({ length: opts.layerCount ?? 8 }, () => opts.layerSize ?? 64 * 1024 * 1024);
  for (const [i, size] of sizes.entries()) {
    const stream = seededStream(layerSeed(label, i), size);
    const ref = await client.pushBlobStream(repo, stream, { ...(opts.chunkSize ? { chunkSize: opts.chunkSize } : {}) });
    layers.push({ mediaType: typesFor(format).layer, digest: ref.digest, size: ref.size });
  }
  return pushImageManifest(client, repo, tag, format, { os: 'linux', architecture: 'amd64' }, layers, seed);
}
