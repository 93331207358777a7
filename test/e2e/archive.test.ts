// Air-gapped transfer through `ferry copy`: registry → archive → registry round trips are
// byte-exact (multi-arch and referrers included), archive → archive works, and a
// docker-archive refuses an index with a clear error.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushArtifactFor, pushCosignTags, pushImage, pushMultiArch, referrersTag } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;

describe('ferry copy with oci:, oci-archive: and docker-archive:', () => {
  let reg: DistributionRegistry;
  let c: OciClient;
  const dir = mkdtempSync(join(tmpdir(), 'ferry-archives-'));
  const env = { XDG_STATE_HOME: tempStateHome() };

  before(async () => {
    reg = await startDistribution();
    c = clientFor(reg);
  });
  after(async () => {
    await reg?.stop();
  });

  test('registry → oci-archive → registry: same digest, every platform, referrers and cosign tags', async () => {
    const idx = await pushMultiArch(c, 'air/app', 'v1');
    const sbom = await pushArtifactFor(c, 'air/app', idx.descriptor);
    const [sig] = await pushCosignTags(c, 'air/app', idx.digest);
    const file = join(dir, 'app.tar');
    const out = await runFerry(['copy', '--json', '--referrers', `${reg.host}/air/app:v1`, `oci-archive:${file}:v1`], { env });
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.json.image.digest, idx.digest);
    assert.ok(existsSync(file));
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp') || f.startsWith('.')), [], 'temporary files left behind');

    const back = await runFerry(['copy', '--json', '--referrers', `oci-archive:${file}:v1`, `${reg.host}/air/back:v1`], { env });
    assert.equal(back.code, 0, back.stderr);
    assert.equal(back.json.image.digest, idx.digest);
    const got = await c.verifyImage('air/back', 'v1');
    assert.equal(got.digest, idx.digest);
    // distribution 2.8 has no referrers API: the fallback tag must list exactly the index's
    // referrers (the SBOM; the cosign signature has no subject), each as the referrers tag schema
    // asks: media type, digest, size, artifactType and the artifact's annotations.
    const fallback = await c.getManifest('air/back', referrersTag(idx.digest));
    assert.equal(fallback.mediaType, 'application/vnd.oci.image.index.v1+json');
    const listed = JSON.parse(fallback.bytes.toString('utf8')) as { schemaVersion: number; mediaType: string; manifests: unknown[] };
    assert.equal(listed.schemaVersion, 2);
    assert.equal(listed.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.deepEqual(listed.manifests, [sbom.descriptor]);
    assert.equal((sbom.descriptor as { artifactType?: string }).artifactType, 'application/vnd.ferry.test.sbom.v1+json');
    assert.equal((await c.verifyImage('air/back', sbom.digest)).digest, sbom.digest);
    assert.equal((await c.getManifest('air/back', `${referrersTag(idx.digest)}.sig`)).digest, sig!.digest);
  });

  test('registry → oci layout directory → oci-archive → registry (archive to archive)', async () => {
    const img = await pushImage(c, 'air/single', 'v2', { layerSizes: [70_000, 1234] });
    const layout = join(dir, 'layout');
    const r1 = await runFerry(['copy', '--json', `${reg.host}/air/single:v2`, `oci:${layout}:v2`], { env });
    assert.equal(r1.code, 0, r1.stderr);
    assert.ok(existsSync(join(layout, 'index.json')) && existsSync(join(layout, 'oci-layout')));
    const file = join(dir, 'single.tar');
    const r2 = await runFerry(['copy', '--json', `oci:${layout}:v2`, `oci-archive:${file}:v2`], { env });
    assert.equal(r2.code, 0, r2.stderr);
    const r3 = await runFerry(['copy', '--json', `oci-archive:${file}:v2`, `${reg.host}/air/single-back:v2`], { env });
    assert.equal(r3.code, 0, r3.stderr);
    assert.equal((await c.verifyImage('air/single-back', 'v2')).digest, img.digest);
  });

  test('docker-archive: one platform round-trips byte-exact; an index is refused with a clear error', async () => {
    const idx = await pushMultiArch(c, 'air/multi', 'v3');
    const file = join(dir, 'docker.tar');
    const refused = await runFerry(['copy', '--json', `${reg.host}/air/multi:v3`, `docker-archive:${file}:air/multi:v3`], { env });
    assert.equal(refused.code, 2, refused.stderr);
    assert.equal(refused.json.error.code, 'USAGE');
    assert.match(refused.json.error.message, /--platform/);
    assert.ok(!existsSync(file), 'a refused copy left an archive behind');

    const amd64 = idx.children!.find((ch) => ch.descriptor.platform?.architecture === 'amd64')!;
    const ok = await runFerry(['copy', '--json', '--platform', 'linux/amd64', `${reg.host}/air/multi:v3`, `docker-archive:${file}:air/multi:v3`], { env });
    assert.equal(ok.code, 0, ok.stderr);
    const back = await runFerry(['copy', '--json', `docker-archive:${file}:air/multi:v3`, `${reg.host}/air/from-docker:v3`], { env });
    assert.equal(back.code, 0, back.stderr);
    assert.equal((await c.verifyImage('air/from-docker', 'v3')).digest, amd64.digest);
  });

  test('a full disk while writing an oci: layout or an archive: DESTINATION_REJECTED, a layout it created is removed, an existing one keeps its index.json, no archive file is left', async () => {
    await pushImage(c, 'air/big', 'v1', { layerSizes: [300_000, 1234] });
    // Every file ferry writes stops at 100 kB (EFBIG, "file too large"), as on a full disk.
    const full = (args: string[]) => {
      const child = spawn('prlimit', ['--fsize=100000', process.execPath, MAIN, ...args], { env: { ...process.env, ...env, DOCKER_CONFIG: '/nonexistent' } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
    };
    const parent = join(dir, 'full');
    const fresh = await full(['copy', '--json', `${reg.host}/air/big:v1`, `oci:${join(parent, 'new-layout')}:v1`]);
    assert.equal(fresh.code, 1, fresh.stderr);
    const err = JSON.parse(fresh.stdout).error;
    assert.equal(err.code, 'DESTINATION_REJECTED');
    assert.match(err.message, /file too large/);
    assert.ok(!existsSync(parent), `the directories the failed copy created are removed: ${existsSync(parent) ? readdirSync(parent, { recursive: true }).join(', ') : ''}`);

    const layout = join(dir, 'kept-layout');
    const small = await runFerry(['copy', '--json', `${reg.host}/air/big:v1`, `oci:${layout}:v0`], { env });
    assert.equal(small.code, 0, small.stderr);
    const index = readFileSync(join(layout, 'index.json'));
    await pushImage(c, 'air/big2', 'v1', { layerSizes: [250_000] });
    const into = await full(['copy', '--json', `${reg.host}/air/big2:v1`, `oci:${layout}:v1`]);
    assert.equal(JSON.parse(into.stdout).error.code, 'DESTINATION_REJECTED');
    assert.ok(readFileSync(join(layout, 'index.json')).equals(index), 'index.json is as it was');
    assert.deepEqual(readdirSync(layout, { recursive: true }).map(String).filter((f) => f.includes('.tmp')), [], 'no temporary file left');

    // The archives: the same code, and no file, temporary or not, left behind.
    const tars = join(dir, 'full-tars');
    mkdirSync(tars);
    for (const target of [`oci-archive:${join(tars, 'a.tar')}:v1`, `docker-archive:${join(tars, 'd.tar')}:air/big:v1`]) {
      const r = await full(['copy', '--json', `${reg.host}/air/big:v1`, target]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(JSON.parse(r.stdout).error.code, 'DESTINATION_REJECTED', `${target}: ${r.stdout}`);
      assert.deepEqual(readdirSync(tars), [], `${target}: nothing left`);
    }
  });

  test('a missing archive is SOURCE_NOT_FOUND; cloud flags on an archive side are usage errors', async () => {
    const missing = await runFerry(['copy', '--json', `oci-archive:${join(dir, 'nope.tar')}`, `${reg.host}/air/x:v1`], { env });
    assert.equal(missing.code, 1);
    assert.equal(missing.json.error.code, 'SOURCE_NOT_FOUND');
    const flags = await runFerry(['copy', '--json', '--src-creds', 'a:b', `oci-archive:${join(dir, 'app.tar')}:v1`, `${reg.host}/air/x:v1`], { env });
    assert.equal(flags.code, 2);
  });
});
