// Run by memory.test.ts in a process of its own: write a large archive through the
// ImageDestination API and read it back through ImageSource, and report the peak RSS before and
// after (process.resourceUsage().maxRSS, a high-water mark) as one JSON line on stdout.
//   node memory-child.ts <dir> <transport> <layer MiB>
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { parseArchiveReference } from '../../src/ends/archive-ref.ts';
import { openArchiveDestination, openArchiveSource } from '../../src/ends/local.ts';
import { MediaType } from '../../src/oci/manifest.ts';
import { seededDigest, seededStream, seedFor } from '../harness/seed.ts';
import { blob, logger, manifestOf } from './helpers.ts';

const [dir, transport, mib] = process.argv.slice(2);
if (!dir || !transport || !mib) throw new Error('usage: memory-child.ts <dir> <transport> <layer MiB>');

async function roundTrip(name: string, layerSize: number): Promise<{ digest: string; read: string }> {
  const seed = seedFor(`memory/${name}`);
  const layer = await seededDigest(seed, layerSize);
  const config = blob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })), MediaType.DockerConfig);
  const mediaType = MediaType.DockerManifest;
  const manifest = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar', digest: layer.digest, size: layer.size }],
    },
    mediaType,
  );
  const file = join(dir!, `${transport}-${name}.tar`);
  const ref = transport === 'docker-archive' ? `${transport}:${file}:big:1` : `${transport}:${file}:1`;
  const dst = await openArchiveDestination(parseArchiveReference(ref), logger);
  await dst.writeBlob(config.digest, config.size, config.mediaType, (async function* () {
    yield config.bytes;
  })());
  await dst.writeBlob(layer.digest, layer.size, 'application/vnd.docker.image.rootfs.diff.tar', seededStream(seed, layerSize));
  await dst.putManifest('1', manifest.bytes, mediaType);
  await dst.commit();

  const src = await openArchiveSource(parseArchiveReference(ref), logger);
  const m = await src.getManifest(src.target);
  if (m?.digest !== manifest.digest) throw new Error(`manifest ${m?.digest} read back, ${manifest.digest} written`);
  const hash = createHash('sha256');
  const { body } = await src.openBlob(layer.digest, layer.size, 0);
  for await (const chunk of body) hash.update(chunk);
  await src.close();
  return { digest: layer.digest, read: `sha256:${hash.digest('hex')}` };
}

// Warm up every code path on a small archive, then measure the large one.
await roundTrip('warmup', 64 * 1024 * 1024);
const before = process.resourceUsage().maxRSS;
const size = Number(mib) * 1024 * 1024;
const result = await roundTrip('large', size);
const afterRss = process.resourceUsage().maxRSS;
process.stdout.write(`${JSON.stringify({ beforeKiB: before, afterKiB: afterRss, size, ...result })}\n`);
