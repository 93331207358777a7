// `npm run demo`: ferry's main job, end to end, on this machine.
//  1. starts the vendor's registry (token auth), the install's local registry and the
//     reference control plane, all on loopback;
//  2. seeds a 3-platform image with an SBOM and a cosign signature, enqueues a sync job, and
//     runs the real `ferry agent` until the job is done (--exit-when-idle);
//  3. prints the result the control plane received and verifies the local registry holds
//     the image byte for byte (independent client);
//  4. cleans up.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDistribution } from '../test/harness/distribution.ts';
import { startControlPlane } from '../test/harness/control-plane.ts';
import { clientFor } from '../test/harness/oci-client.ts';
import { pushArtifactFor, pushCosignTags, pushMultiArch } from '../test/harness/fixtures.ts';

const MiB = 1024 * 1024;
const main = new URL('../src/main.ts', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
const vendorUser = { name: 'vendor-ci', password: 'vendor-ci-password-demo' };

console.log('1. starting the vendor registry (token auth), the local registry and the control plane…');
const [vendor, local] = await Promise.all([
  startDistribution({ auth: 'token', token: { users: { [vendorUser.name]: { password: vendorUser.password, repos: { '*': ['pull', 'push'] } } } } as never }),
  startDistribution(),
]);
const ts = vendor.tokenServer!;
const cp = await startControlPlane({
  settings: { heartbeat_interval_s: 2, poll_interval_s: 1, lease_s: 30 },
  // The one-time token buys a short-lived, pull-only registry token for the job's repository.
  issueCredentials: (job, plan) => {
    const ref = String((plan.source as { reference: string }).reference);
    const repo = ref.slice(ref.indexOf('/') + 1).split(/[:@]/)[0]!;
    const token = ts.issue(`job-${job.id}`, ts.service, [{ type: 'repository', name: repo, actions: ['pull'] }]);
    return { registry: vendor.host, token, expires_at: new Date(Date.now() + 15 * 60_000).toISOString() };
  },
});
let exitCode = 0;
try {
  console.log(`   vendor ${vendor.host} · local ${local.host} · control plane ${cp.url}`);

  console.log('2. seeding org_123/app_456:v1.4.2 (3 platforms, SBOM, cosign signature) and enqueueing a sync job…');
  const vendorC = clientFor(vendor, { username: vendorUser.name, password: vendorUser.password });
  const image = await pushMultiArch(vendorC, 'org_123/app_456', 'v1.4.2', { sharedLayerSize: 24 * MiB, ownLayerSize: 6 * MiB });
  await pushArtifactFor(vendorC, 'org_123/app_456', image.descriptor);
  await pushCosignTags(vendorC, 'org_123/app_456', image.digest);
  const jobId = cp.enqueueJob({
    type: 'oci-sync',
    source: { reference: `${vendor.host}/org_123/app_456:v1.4.2`, auth: { kind: 'one-time-token' } },
    destination: { reference: `${local.host}/install_789/app_456:v1.4.2`, auth: { kind: 'local' } },
    platforms: 'all',
    referrers: true,
  });

  console.log(`   running: ferry agent --exit-when-idle (job ${jobId})`);
  const tokenFile = join(work, 'runner-token');
  writeFileSync(tokenFile, cp.token, { mode: 0o600 });
  const started = Date.now();
  const agent = spawn(
    process.execPath,
    [main, 'agent', '--control-plane-url', cp.url, '--runner-id', cp.runnerId, '--token-file', tokenFile, '--state-dir', join(work, 'state'), '--local-registry', `${local.host}/install_789`, '--exit-when-idle', '--log-level', 'info'],
    { stdio: ['ignore', 'inherit', 'pipe'], env: { ...process.env, DOCKER_CONFIG: join(work, 'no-docker-config') } },
  );
  // Show the agent's JSON logs as short lines.
  agent.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    for (const line of chunk.split('\n').filter(Boolean)) {
      try {
        const l = JSON.parse(line) as { msg: string; level: number };
        if (l.level >= 30 && !/control plane request/.test(l.msg)) console.log(`   agent: ${l.msg}`);
      } catch {
        console.log(`   agent: ${line}`);
      }
    }
  });
  const code = await new Promise<number | null>((resolve) => agent.on('close', resolve));
  if (code !== 0) throw new Error(`ferry agent exited ${code}`);

  const job = cp.job(jobId);
  console.log(`3. job ${jobId}: ${job.status} in ${((Date.now() - started) / 1000).toFixed(1)} s (agent start-up included)`);
  if (job.status !== 'finished' || !job.result?.success) throw new Error(`job did not succeed: ${JSON.stringify(job.result)}`);
  const out = (job.result.outputs as { image: { digest: string; size: number; platforms: Array<{ os: string; architecture: string; variant?: string }>; referrers: unknown[] } }).image;
  console.log(`   digest    ${out.digest}`);
  console.log(`   platforms ${out.platforms.map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/')).join(', ')}`);
  console.log(`   size      ${(out.size / MiB).toFixed(1)} MiB, referrers ${out.referrers.length}`);
  const got = await clientFor(local).verifyImage('install_789/app_456', 'v1.4.2');
  if (got.digest !== image.digest) throw new Error(`local digest ${got.digest} differs from the vendor's ${image.digest}`);
  console.log(`   verified: the local registry holds ${got.manifests.length} manifests and ${got.blobs.length} blobs, digest identical to the vendor's`);
} catch (e) {
  console.error(`demo failed: ${(e as Error).message}`);
  exitCode = 1;
} finally {
  console.log('4. cleaning up.');
  await cp.stop();
  await Promise.all([vendor.stop(), local.stop()]);
  rmSync(work, { recursive: true, force: true });
}
process.exit(exitCode);
