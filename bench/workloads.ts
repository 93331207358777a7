// The benchmark's workloads, seeded into the source registry with the test harness's
// deterministic fixtures (every byte from the suite seed: the same digests on every machine).
import type { OciClient } from '../test/harness/oci-client.ts';
import { MEDIA, pushArtifactFor, pushImage, pushLargeImage, pushMultiArch } from '../test/harness/fixtures.ts';
import { createRng, seededBytes } from '../test/harness/seed.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** One image in the source registry, and what a byte-exact copy of it must have. */
export interface SourceImage {
  repo: string;
  tag: string;
  digest: string;
  /** Every config and layer digest, sorted. */
  blobs: string[];
  /** Sum of the blob sizes, each once. */
  bytes: number;
  /** Referrers of the image (digests) a copy with referrers must leave findable at the destination. */
  referrers?: string[];
}

export type WorkloadKind = 'single' | 'fleet' | 'warm';

export interface Workload {
  name: string;
  kind: WorkloadKind;
  description: string;
  /** Seeds share a key when two workloads copy the same source images (fleet and warm). */
  seedKey: string;
  seed(src: OciClient, quick: boolean): Promise<SourceImage[]>;
  /** Every tool copies the images' referrers too; tools that cannot sit it out (Tool.cannotCopyReferrers). */
  referrers?: boolean;
  /**
   * Rounds of this workload per `--runs` (default 1). The sub-second copies move by ±0.1 s from
   * run to run on this shared machine, as much as the targets' 5 %: three times the rounds keep
   * their medians steady, for a few seconds more.
   */
  roundsPerRun?: number;
  /**
   * The destination behind a throttling proxy (test/harness/throttle-proxy.ts): it grants
   * `perSecond` requests a second and answers 429 with Retry-After beyond. A fresh proxy each run.
   */
  throttle?: { perSecond: number; retryAfter: number };
}

export interface WorkloadSizes {
  bigLayers: number;
  bigLayerSize: number;
  manyLayers: number;
  manyMin: number;
  manyMax: number;
  multiShared: number;
  multiOwn: number;
  hugeSmall: number;
  hugeLarge: number;
  fleetImages: number;
  fleetBases: number;
  fleetBaseLayers: number[];
  fleetOwnMin: number;
  fleetOwnMax: number;
}

export const FULL_SIZES: WorkloadSizes = {
  bigLayers: 8,
  bigLayerSize: 64 * MiB,
  manyLayers: 40,
  manyMin: 100 * KiB,
  manyMax: 700 * KiB,
  multiShared: 24 * MiB,
  multiOwn: 6 * MiB,
  hugeSmall: 512 * MiB,
  hugeLarge: 2 * GiB,
  fleetImages: 50,
  fleetBases: 5,
  fleetBaseLayers: [6 * MiB, 3 * MiB, 1 * MiB],
  fleetOwnMin: 256 * KiB,
  fleetOwnMax: 2 * MiB,
};

/** Tiny versions for the smoke test: every code path, a few MiB in all. */
export const QUICK_SIZES: WorkloadSizes = {
  bigLayers: 2,
  bigLayerSize: 3 * MiB,
  manyLayers: 6,
  manyMin: 10 * KiB,
  manyMax: 40 * KiB,
  multiShared: 256 * KiB,
  multiOwn: 64 * KiB,
  hugeSmall: 2 * MiB,
  hugeLarge: 8 * MiB,
  fleetImages: 2,
  fleetBases: 1,
  fleetBaseLayers: [128 * KiB, 32 * KiB],
  fleetOwnMin: 8 * KiB,
  fleetOwnMax: 32 * KiB,
};

async function describe(src: OciClient, repo: string, tag: string): Promise<SourceImage> {
  const v = await src.verifyImage(repo, tag);
  return { repo, tag, digest: v.digest, blobs: v.blobs.map((b) => b.digest).sort(), bytes: v.blobs.reduce((n, b) => n + b.size, 0) };
}

function sizes(quick: boolean): WorkloadSizes {
  return quick ? QUICK_SIZES : FULL_SIZES;
}

const fmt = (n: number) => (n >= GiB ? `${n / GiB} GiB` : n >= MiB ? `${n / MiB} MiB` : `${n / KiB} KiB`);

/**
 * 50 images on 5 bases: each base's layers are shared by 10 images (in 10 repositories). `count`
 * seeds only the first images (the WAN lab's fleet), the same bytes in the same order.
 */
export async function seedFleet(src: OciClient, quick: boolean, count?: number): Promise<SourceImage[]> {
  const s = sizes(quick);
  const rng = createRng('bench/fleet');
  const baseBlobs: Array<Array<{ bytes?: Buffer; digest: string; size: number; home?: string }>> = [];
  for (let b = 0; b < s.fleetBases; b++) {
    baseBlobs.push(s.fleetBaseLayers.map((size, i) => ({ bytes: seededBytes(`bench/fleet/base${b}/${i}`, size), digest: '', size })));
  }
  const images: SourceImage[] = [];
  for (let i = 0; i < (count ?? s.fleetImages); i++) {
    const repo = `bench/fleet/app-${String(i).padStart(2, '0')}`;
    const base = baseBlobs[i % s.fleetBases]!;
    const layers: Array<{ digest: string; size: number }> = [];
    for (const blob of base) {
      if (blob.home) {
        // Already in the source registry: mount it (seeding speed only; the copy does not see this).
        const res = await src.request('POST', `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(blob.digest)}&from=${encodeURIComponent(blob.home)}`, {
          repo,
          push: true,
          headers: { 'content-length': '0' },
          ok: [201, 202],
        });
        await res.arrayBuffer();
        if (res.status !== 201) throw new Error(`seeding: mount of ${blob.digest} into ${repo} answered ${res.status}`);
      } else {
        const ref = await src.pushBlob(repo, blob.bytes!);
        blob.digest = ref.digest;
        blob.home = repo;
        delete blob.bytes;
      }
      layers.push({ digest: blob.digest, size: blob.size });
    }
    for (let k = 0; k < 2; k++) {
      const size = s.fleetOwnMin + rng.int(s.fleetOwnMax - s.fleetOwnMin);
      layers.push(await src.pushBlob(repo, seededBytes(`bench/fleet/app${i}/${k}`, size)));
    }
    const config = Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        created: '2024-01-01T00:00:00Z',
        config: { Labels: { 'org.ferry.bench': `fleet/${i}` } },
        rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      }),
    );
    const cfg = await src.pushBlob(repo, config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: cfg.digest, size: cfg.size },
        layers: layers.map((l) => ({ mediaType: MEDIA.ociLayer, digest: l.digest, size: l.size })),
      }),
    );
    await src.pushManifest(repo, 'v1', manifest, MEDIA.ociManifest);
    images.push(await describe(src, repo, 'v1'));
  }
  return images;
}

/**
 * warm-signed: `fleetImages` small images (two layers of 64–256 KiB), each signed as a vendor does
 * it today: an SBOM and a signature (cosign's OCI 1.1 artifact type), both with `subject`, listed in
 * the source's `sha256-<hex>` fallback tag (the source, distribution 2.8, has no referrers API).
 * No cosign `.sig` tags: oras cp -r, the one peer that copies referrers, copies only these.
 */
async function seedSignedFleet(src: OciClient, quick: boolean): Promise<SourceImage[]> {
  const s = sizes(quick);
  const rng = createRng('bench/signed');
  const images: SourceImage[] = [];
  for (let i = 0; i < s.fleetImages; i++) {
    const repo = `bench/signed/app-${String(i).padStart(2, '0')}`;
    const layerSizes = [0, 1].map(() => 64 * KiB + rng.int(192 * KiB));
    const img = await pushImage(src, repo, 'v1', { layerSizes, seed: `bench/signed/${i}` });
    const sbom = await pushArtifactFor(src, repo, img.descriptor, { seed: `bench/signed/${i}/sbom` });
    const sig = await pushArtifactFor(src, repo, img.descriptor, { artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json', payloadSize: 256, seed: `bench/signed/${i}/sig` });
    images.push({ ...(await describe(src, repo, 'v1')), referrers: [sbom.digest, sig.digest] });
  }
  return images;
}

export function workloads(quick: boolean): Workload[] {
  const s = sizes(quick);
  return [
    {
      name: 'big',
      kind: 'single',
      description: `1 image, ${s.bigLayers} layers × ${fmt(s.bigLayerSize)}`,
      seedKey: 'big',
      async seed(src) {
        await pushLargeImage(src, 'bench/big', 'v1', { layerCount: s.bigLayers, layerSize: s.bigLayerSize, seed: 'bench/big' });
        return [await describe(src, 'bench/big', 'v1')];
      },
    },
    {
      name: 'many',
      kind: 'single',
      roundsPerRun: 3,
      description: `1 image, ${s.manyLayers} layers of ${fmt(s.manyMin)}–${fmt(s.manyMax)}`,
      seedKey: 'many',
      async seed(src) {
        const rng = createRng('bench/many');
        const layerSizes = Array.from({ length: s.manyLayers }, () => s.manyMin + rng.int(s.manyMax - s.manyMin));
        await pushImage(src, 'bench/many', 'v1', { layerSizes, seed: 'bench/many' });
        return [await describe(src, 'bench/many', 'v1')];
      },
    },
    {
      name: 'multiarch',
      kind: 'single',
      roundsPerRun: 3,
      description: `3-platform OCI index; a shared ${fmt(s.multiShared)} base layer + one ${fmt(s.multiOwn)} layer per platform`,
      seedKey: 'multiarch',
      async seed(src) {
        await pushMultiArch(src, 'bench/multiarch', 'v1', { sharedLayerSize: s.multiShared, ownLayerSize: s.multiOwn, seed: 'bench/multiarch' });
        return [await describe(src, 'bench/multiarch', 'v1')];
      },
    },
    {
      name: 'huge-512m',
      kind: 'single',
      description: `1 image, one ${fmt(s.hugeSmall)} layer (memory: compare with huge-2g)`,
      seedKey: 'huge-512m',
      async seed(src) {
        await pushLargeImage(src, 'bench/huge-small', 'v1', { layerCount: 1, layerSize: s.hugeSmall, chunkSize: 32 * MiB, seed: 'bench/huge-small' });
        return [await describe(src, 'bench/huge-small', 'v1')];
      },
    },
    {
      name: 'huge-2g',
      kind: 'single',
      description: `1 image, one ${fmt(s.hugeLarge)} layer (memory)`,
      seedKey: 'huge-2g',
      async seed(src) {
        await pushLargeImage(src, 'bench/huge', 'v1', { layerCount: 1, layerSize: s.hugeLarge, chunkSize: 32 * MiB, seed: 'bench/huge' });
        return [await describe(src, 'bench/huge', 'v1')];
      },
    },
    {
      name: 'throttled',
      kind: 'single',
      description: `many (1 image, ${s.manyLayers} layers of ${fmt(s.manyMin)}–${fmt(s.manyMax)}) into a destination that grants 20 requests/s (429 + Retry-After: 1 beyond)`,
      seedKey: 'many',
      throttle: { perSecond: 20, retryAfter: 1 },
      async seed(src) {
        const rng = createRng('bench/many');
        const layerSizes = Array.from({ length: s.manyLayers }, () => s.manyMin + rng.int(s.manyMax - s.manyMin));
        await pushImage(src, 'bench/many', 'v1', { layerSizes, seed: 'bench/many' });
        return [await describe(src, 'bench/many', 'v1')];
      },
    },
    {
      name: 'throttled-fleet',
      kind: 'fleet',
      description: `fleet (${s.fleetImages} images, cold) into a destination that grants 20 requests/s (429 + Retry-After: 1 beyond)`,
      seedKey: 'fleet',
      throttle: { perSecond: 20, retryAfter: 1 },
      seed: seedFleet,
    },
    {
      name: 'fleet',
      kind: 'fleet',
      description: `${s.fleetImages} images in ${s.fleetImages} repositories on ${s.fleetBases} bases (${s.fleetBaseLayers.map(fmt).join(' + ')} shared) + 2 own layers of ${fmt(s.fleetOwnMin)}–${fmt(s.fleetOwnMax)}; cold`,
      seedKey: 'fleet',
      seed: seedFleet,
    },
    {
      name: 'warm',
      kind: 'warm',
      description: `re-sync of fleet when the destination already has everything`,
      seedKey: 'fleet',
      seed: seedFleet,
    },
    {
      name: 'warm-signed',
      kind: 'warm',
      referrers: true,
      description: `re-sync of ${s.fleetImages} signed images (an SBOM and a signature each, OCI 1.1 referrers in the source's fallback tag) with their referrers, when the destination already has everything`,
      seedKey: 'warm-signed',
      seed: seedSignedFleet,
    },
  ];
}

/** `huge` selects both huge sizes. */
export function selectWorkloads(all: Workload[], wanted: string[] | undefined): Workload[] {
  if (!wanted || wanted.length === 0) return all;
  const names = new Set(wanted.flatMap((w) => (w === 'huge' ? ['huge-512m', 'huge-2g'] : [w])));
  const unknown = [...names].filter((n) => !all.some((w) => w.name === n));
  if (unknown.length) throw new Error(`unknown workload(s): ${unknown.join(', ')} (have: ${all.map((w) => w.name).join(', ')}, huge)`);
  return all.filter((w) => names.has(w.name));
}
