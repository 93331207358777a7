// `npm run demo`: ferry's job, end to end, on this machine. Starts a vendor registry and an
// install's local registry on loopback, seeds a multi-arch image with an SBOM and a signature,
// copies it with the real `ferry copy` CLI, verifies the local registry holds it byte-exact,
// then cleans up.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDistribution } from '../test/harness/distribution.ts';
import { clientFor } from '../test/harness/oci-client.ts';
import { pushArtifactFor, pushCosignTags, pushMultiArch } from '../test/harness/fixtures.ts';

const MiB = 1024 * 1024;
const main = new URL('../src/main.ts', import.meta.url).pathname;
const state = mkdtempSync(join(tmpdir(), 'ferry-demo-'));

console.log('1. starting the vendor registry and the local registry (distribution 2.8, loopback)…');
const [vendor, local] = await Promise.all([startDistribution(), startDistribution()]);
try {
  const vendorC = clientFor(vendor);
  console.log(`   vendor: ${vendor.host}   local: ${local.host}`);

  console.log('2. seeding a 3-platform image with an SBOM and a cosign signature…');
  const image = await pushMultiArch(vendorC, 'org_123/app_456', 'v1.4.2', { sharedLayerSize: 24 * MiB, ownLayerSize: 6 * MiB });
  await pushArtifactFor(vendorC, 'org_123/app_456', image.descriptor);
  await pushCosignTags(vendorC, 'org_123/app_456', image.digest);
  console.log(`   ${vendor.host}/org_123/app_456:v1.4.2 → ${image.digest}`);

  console.log('3. ferry copy --referrers …');
  const src = `${vendor.host}/org_123/app_456:v1.4.2`;
  const dst = `${local.host}/install_789/app_456:v1.4.2`;
  const run = spawnSync(process.execPath, [main, 'copy', '--referrers', src, dst], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, XDG_STATE_HOME: state },
  });
  if (run.status !== 0) throw new Error(`ferry copy exited ${run.status}`);

  console.log('4. verifying the local registry byte for byte (independent client)…');
  const got = await clientFor(local).verifyImage('install_789/app_456', 'v1.4.2');
  if (got.digest !== image.digest) throw new Error(`digest differs: ${got.digest} != ${image.digest}`);
  console.log(`   OK: ${got.manifests.length} manifests and ${got.blobs.length} blobs present, digest ${got.digest}`);
} finally {
  console.log('5. cleaning up.');
  await Promise.all([vendor.stop(), local.stop()]);
  rmSync(state, { recursive: true, force: true });
}
