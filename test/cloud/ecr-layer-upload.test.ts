// ECR destinations: large layers through ECR's own layer-upload API (InitiateLayerUpload,
// UploadLayerPart, CompleteLayerUpload), existence checks through BatchCheckLayerAvailability,
// and resume after SIGKILL from the journaled uploadId and offset. The real ferry CLI, the real
// AWS SDK against the ECR API stand-in (SigV4 checked, ECR's part rules and exceptions), whose
// completed layers land in the distribution registry behind the "ECR" host's TLS front, so the
// manifest PUT through the Docker API that follows finds them.
//
// The threshold and part size are lowered for the test (FERRY_ECR_LAYER_API_MIN_BYTES 16 MiB,
// FERRY_ECR_PART_BYTES 5 MiB, ECR's smallest part), so a 40–48 MiB layer has 8–10 parts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/aws-standin.ts';
import { makeTestPki, startConnectProxy, startEcrRegistry, type ConnectProxy, type EcrRegistry, type TestPki } from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { pushImage, pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { createRng, seedFor, SUITE_SEED } from '../harness/seed.ts';
import { recordFault } from '../faults/report.ts';
import { encodeEntry } from '../../src/ends/registry/journal.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { journalFiles, logLines, spawnFerry } from '../resume/helpers.ts';
import { assertNoSecrets, freshHome, isolatedEnv, proxyEnv, runFerryIsolated } from './cloud-e2e.ts';

const REGION = 'us-west-2';
const ECR_PASSWORD = 'eyJwYXlsb2FkIjoiZmVycnktbGF5ZXItYXBpLXRlc3QifQ';
const MiB = 1024 * 1024;
const PART = 5 * MiB;
const THRESHOLD = 16 * MiB;
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

let aws: AwsStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let ecr: EcrRegistry;
let local: DistributionRegistry;
let localC: OciClient;

function env(extra: Record<string, string> = {}): Record<string, string | undefined> {
  return {
    ...aws.env(),
    ...proxyEnv(proxy.url),
    AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
    FERRY_ECR_LAYER_API_MIN_BYTES: String(THRESHOLD),
    FERRY_ECR_PART_BYTES: String(PART),
    ...extra,
  };
}

before(async () => {
  aws = await AwsStandin.start({ region: REGION, ecrPassword: ECR_PASSWORD });
  pki = makeTestPki([aws.registryHost()]);
  proxy = await startConnectProxy();
  [ecr, local] = await Promise.all([startEcrRegistry({ aws, pki, proxy, password: ECR_PASSWORD }), startDistribution()]);
  localC = clientFor(local);
});

after(async () => {
  await Promise.all([ecr?.stop(), local?.stop(), proxy?.stop(), aws?.close()]);
});

/** The parts the stand-in received for one upload, in order. */
function partsOf(uploadId: string) {
  return aws.layerParts.filter((p) => p.uploadId === uploadId);
}

/** Docker-API blob upload commits (PUT …/blobs/uploads/…?digest=) that reached the ECR host, by digest. */
function dockerCommits(fromRequest: number): string[] {
  return ecr.requests
    .slice(fromRequest)
    .filter((q) => q.method === 'PUT' && q.path.includes('/blobs/uploads/') && q.status === 201)
    .map((q) => decodeURIComponent(/[?&]digest=([^&]+)/.exec(q.path)?.[1] ?? ''));
}

describe('ECR destination: large layers through the layer-upload API', () => {
  test('a layer above the threshold goes up in parts through the layer API; the rest through the Docker API; the image is byte-exact', async (t) => {
    const img = await pushLargeImage(localC, 'big/app', 'v1', { layerCount: 1, layerSize: 40 * MiB });
    const big = img.blobs.find((b) => b.size === 40 * MiB)!;
    const home = freshHome();
    const requestsBefore = ecr.requests.length;
    const completedBefore = aws.completedLayers.length;
    const batchBefore = aws.batchCheckSizes.length;
    const partBytesBefore = aws.ecrBytes('UploadLayerPart');
    const r = await runFerryIsolated(
      ['copy', '--json', '--log-level', 'debug', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/big/app:v1`, `${ecr.host}/install/big:v1`],
      env(),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.image.digest, img.digest);
    assert.equal((await ecr.client.verifyImage('install/big', 'v1')).digest, img.digest, 'the backing registry holds the image byte-exact');

    const completed = aws.completedLayers.slice(completedBefore);
    assert.deepEqual(completed.map((c) => c.digest), [big.digest], 'exactly the big layer went through CompleteLayerUpload');
    const commits = dockerCommits(requestsBefore);
    assert.ok(!commits.includes(big.digest), 'the big layer did not go through the Docker API');
    assert.equal(commits.length, img.blobs.length - 1, 'the config went through the Docker API');
    // Parts: 8 × 5 MiB, contiguous from byte 0, all accepted, and nothing else sent.
    const upload = aws.layerParts.at(-1)!.uploadId;
    const parts = partsOf(upload);
    assert.equal(parts.length, 8);
    parts.forEach((p, i) => {
      assert.equal(p.outcome, 'accepted');
      assert.equal(p.partFirstByte, i * PART);
      assert.equal(p.partLastByte, (i + 1) * PART - 1);
    });
    // Existence: one BatchCheckLayerAvailability for the 2 blobs, no blob HEAD through the Docker API.
    assert.deepEqual(aws.batchCheckSizes.slice(batchBefore), [img.blobs.length]);
    assert.equal(ecr.requests.slice(requestsBefore).filter((q) => q.method === 'HEAD' && q.path.includes('/blobs/')).length, 0);
    const wire = aws.ecrBytes('UploadLayerPart') - partBytesBefore;
    // base64 is 4/3 of the bytes; the JSON around each part is small.
    assert.ok(wire >= (big.size * 4) / 3 && wire < (big.size * 4) / 3 + parts.length * 1024, `UploadLayerPart bodies: ${wire} bytes for ${big.size}`);
    assert.equal(r.json.transfer.bytes_resent, 0);
    assertNoSecrets(r, [ECR_PASSWORD, TEST_SECRET_ACCESS_KEY], [home.home]);
    recordFault(t, {
      suite: 'ecr',
      fault: 'none: a 40 MiB layer (threshold 16 MiB) to ECR',
      action: `layer API: InitiateLayerUpload, 8 UploadLayerPart of 5 MiB (${wire} body bytes, ${((wire / big.size - 1) * 100).toFixed(1)}% over the layer), CompleteLayerUpload; config by Docker-API PUT; 1 BatchCheckLayerAvailability`,
      bytesResent: 0,
      outcome: 'byte-exact',
    });
  });

  test('BatchCheckLayerAvailability with more than 100 digests is split into calls of at most 100; layers ECR has are skipped', async (t) => {
    const sizes = Array.from({ length: 110 }, (_, i) => 200 + i);
    const a = await pushImage(localC, 'many/app', 'a', { layerSizes: sizes, seed: 'many-layers' });
    // The same 110 layers and one more: a different config and manifest.
    const b = await pushImage(localC, 'many/app', 'b', { layerSizes: [...sizes, 999], seed: 'many-layers' });
    const shared = a.blobs.filter((x) => b.blobs.some((y) => y.digest === x.digest)).length;
    assert.equal(shared, 110);
    const calls = aws.batchCheckSizes.length;
    const first = await runFerryIsolated(['copy', '--json', '--ca-file', pki.caPath, `${local.host}/many/app:a`, `${ecr.host}/install/many:a`], env(), freshHome());
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(aws.batchCheckSizes.slice(calls), [100, 11], '111 blobs: two calls');
    assert.equal(first.json.transfer.blobs_copied, 111);

    const calls2 = aws.batchCheckSizes.length;
    const requestsBefore = ecr.requests.length;
    const second = await runFerryIsolated(['copy', '--json', '--ca-file', pki.caPath, `${local.host}/many/app:b`, `${ecr.host}/install/many:b`], env(), freshHome());
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(aws.batchCheckSizes.slice(calls2), [100, 12], '112 blobs: two calls');
    assert.equal(second.json.transfer.blobs_skipped, 110, 'the shared layers were found by BatchCheckLayerAvailability');
    assert.equal(second.json.transfer.blobs_copied, 2);
    assert.equal(ecr.requests.slice(requestsBefore).filter((q) => q.method === 'HEAD' && q.path.includes('/blobs/')).length, 0, 'no blob HEADs');
    assert.equal((await ecr.client.verifyImage('install/many', 'b')).digest, b.digest);
    recordFault(t, {
      suite: 'ecr',
      fault: '112 blobs to check at an ECR destination (BatchCheckLayerAvailability takes at most 100)',
      action: 'two BatchCheckLayerAvailability calls (100 + 12 digests); the 110 layers ECR had were skipped; no blob HEADs',
      bytesResent: 0,
      outcome: 'byte-exact',
    });
  });
});

/** Run `ferry copy`, SIGKILLing it (or sending `signal`) once the stand-in has received `killAt` UploadLayerPart body bytes. */
async function killedRun(args: string[], home: { home: string; state: string }, killAt: number, signal: NodeJS.Signals = 'SIGKILL') {
  const start = aws.ecrBytes('UploadLayerPart');
  const f = spawnFerry(args, isolatedEnv(env(), home));
  const poll = setInterval(() => {
    if (aws.ecrBytes('UploadLayerPart') - start >= killAt) {
      clearInterval(poll);
      f.child.kill(signal);
    }
  }, 1);
  const r = await f.done;
  clearInterval(poll);
  return r;
}

describe('ECR layer uploads after a crash', () => {
  let img: PushedManifest;
  let layer: { digest: string; size: number };
  const SIZE = 48 * MiB;

  before(async () => {
    img = await pushLargeImage(localC, 'crash/app', 'v1', { layerCount: 1, layerSize: SIZE });
    layer = img.blobs.find((b) => b.size === SIZE)!;
  });

  test('SIGKILL mid-upload, the same command again: it continues the journaled upload at ECR\'s offset and re-sends at most one part', async (t) => {
    const rng = createRng(seedFor('ecr/layer-api/sigkill'));
    // A point in the UploadLayerPart bytes (base64, 4/3 of the layer), between 25% and 75% of the layer.
    const killAt = Math.floor(((0.25 + rng.float() * 0.5) * SIZE * 4) / 3);
    console.log(`# seed ${SUITE_SEED}: SIGKILL after ${mib(killAt)} of UploadLayerPart bodies`);
    const home = freshHome();
    const args = ['copy', '--json', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/crash/app:v1`, `${ecr.host}/install/crash:v1`];
    const killed = await killedRun(args, home, killAt);
    assert.equal(killed.signal, 'SIGKILL', `the first run was not killed: ${killed.stderr.slice(-2000)}`);

    // The journal names the ECR upload and the offset ECR acknowledged; the stand-in holds at least that.
    const entries = [...journalFiles(home.state).values()].map((d) => d?.entry).filter((e) => e?.digest === layer.digest);
    assert.equal(entries.length, 1, 'one journal entry for the layer');
    const entry = entries[0];
    assert.equal(entry.location, '');
    assert.equal(typeof entry.upload_id, 'string');
    const held = aws.layerUploads.get(entry.upload_id)?.received;
    assert.ok(held !== undefined, 'the stand-in still has the upload');
    assert.ok(entry.offset > 0 && entry.offset % PART === 0, `journaled offset ${entry.offset}`);
    assert.ok(held === entry.offset || held === entry.offset + PART, `ECR holds ${held}, the journal says ${entry.offset}`);
    const partsBefore = partsOf(entry.upload_id).length;

    const r = await runFerryIsolated(args, env(), home);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/crash', 'v1')).digest, img.digest);
    // The resumed run sent its first part at the journaled offset, and its first accepted part where ECR stood.
    const resumed = partsOf(entry.upload_id).slice(partsBefore);
    assert.equal(resumed[0]?.partFirstByte, entry.offset, 'the first part of the second run starts at the journaled offset');
    const accepted = resumed.filter((p) => p.outcome === 'accepted');
    assert.equal(accepted[0]?.partFirstByte, held, 'the first accepted part starts at the offset ECR held');
    // Every byte of the layer was accepted exactly once over both runs, in order.
    const all = partsOf(entry.upload_id).filter((p) => p.outcome === 'accepted');
    all.forEach((p, i) => assert.equal(p.partFirstByte, i === 0 ? 0 : all[i - 1]!.partLastByte + 1));
    assert.equal(all.reduce((n, p) => n + p.bytes, 0), SIZE);
    const refused = resumed.filter((p) => p.outcome !== 'accepted');
    assert.ok(refused.length <= 1 && refused.every((p) => p.bytes <= PART), 'at most one part refused (ECR held it already)');
    const tr = r.json.transfer;
    assert.equal(tr.blobs_resumed, 1);
    assert.equal(tr.blobs_restarted, 0);
    assert.ok(tr.bytes_resent <= PART, `bytes re-sent ${tr.bytes_resent} > one part`);
    assert.equal(tr.bytes_resent, held - entry.offset, 'what was re-sent is what ECR held beyond the journal');
    assert.equal(tr.bytes_reread_for_hash, entry.offset, 'the journaled prefix was re-read from the source to rebuild the hash');
    const continued = logLines(r.stderr).find((l) => l.msg?.startsWith('continuing a journaled upload'));
    assert.equal(continued?.offset, entry.offset);
    assert.equal(journalFiles(home.state).size, 0, 'the entry is removed once the layer is complete');
    assert.equal(aws.layerUploads.has(entry.upload_id), false);
    recordFault(t, {
      suite: 'ecr',
      fault: `SIGKILL of ferry copy after ${mib(killAt)} of UploadLayerPart bodies (48 MiB layer, 5 MiB parts)`,
      action: `same command again: continued uploadId from the journaled ${mib(entry.offset)} (ECR held ${mib(held)}), re-read ${mib(tr.bytes_reread_for_hash)} to hash`,
      bytesResent: tr.bytes_resent,
      outcome: 'byte-exact',
    });
  });

  test('Ctrl-C mid-upload: the part in flight finishes and is journaled, exit 130; the same command continues with nothing sent twice', async () => {
    const home = freshHome();
    const args = ['copy', '--json', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/crash/app:v1`, `${ecr.host}/install/ctrlc:v1`];
    // Halfway through the layer's part bodies (base64: 4/3 of the layer).
    const stopped = await killedRun(args, home, Math.floor((0.5 * SIZE * 4) / 3), 'SIGINT');
    assert.equal(stopped.code, 130, stopped.stderr.slice(-2000));
    assert.match(stopped.stderr, /interrupted: run the same command to resume/);
    const entry = [...journalFiles(home.state).values()].map((d) => d?.entry).find((e) => e?.digest === layer.digest);
    assert.ok(entry, 'the upload is journaled');
    assert.ok(entry.offset > 0 && entry.offset % PART === 0, `journaled offset ${entry.offset}`);
    assert.equal(aws.layerUploads.get(entry.upload_id)?.received, entry.offset, 'ECR holds exactly what the journal says: the part in flight was finished, not cut');
    const r = await runFerryIsolated(args, env(), home);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/ctrlc', 'v1')).digest, img.digest);
    assert.equal(r.json.transfer.blobs_resumed, 1);
    assert.equal(r.json.transfer.bytes_resent, 0);
    assert.equal(partsOf(entry.upload_id).filter((p) => p.outcome !== 'accepted').length, 0, 'no part refused or sent twice');
  });

  test('the kill fell between ECR\'s acknowledgement and the journal write: ECR\'s lastValidByteReceived (InvalidLayerPartException) says where to go on', async (t) => {
    const home = freshHome();
    const args = ['copy', '--json', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/crash/app:v1`, `${ecr.host}/install/behind:v1`];
    const killed = await killedRun(args, home, Math.floor((SIZE * 4) / 3 / 2));
    assert.equal(killed.signal, 'SIGKILL');
    const found = [...journalFiles(home.state).entries()].find(([, d]) => d?.entry?.digest === layer.digest);
    assert.ok(found, 'a journal entry for the layer');
    const [file, doc] = found;
    const held = aws.layerUploads.get(doc.entry.upload_id)?.received;
    assert.ok(held !== undefined && held >= 2 * PART, `ECR holds ${held} bytes`);
    // What a process killed right after ECR acknowledged the part ending at `held` leaves behind.
    const entry = { ...doc.entry, offset: held - PART };
    writeFileSync(join(home.state, 'journal', file), encodeEntry(entry));
    const partsBefore = partsOf(entry.upload_id).length;

    const r = await runFerryIsolated(args, env(), home);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/behind', 'v1')).digest, img.digest);
    const resumed = partsOf(entry.upload_id).slice(partsBefore);
    assert.deepEqual(
      resumed.slice(0, 2).map((p) => [p.partFirstByte, p.outcome]),
      [
        [held - PART, 'InvalidLayerPartException'],
        [held, 'accepted'],
      ],
      'the part at the journaled offset was refused, the next went where ECR stood',
    );
    const tr = r.json.transfer;
    assert.equal(tr.blobs_resumed, 1);
    assert.equal(tr.blobs_restarted, 0);
    assert.equal(tr.bytes_resent, PART, 'exactly the one part ECR had already');
    const all = partsOf(entry.upload_id).filter((p) => p.outcome === 'accepted');
    assert.equal(all.reduce((n, p) => n + p.bytes, 0), SIZE, 'every byte accepted once');
    recordFault(t, {
      suite: 'ecr',
      fault: 'SIGKILL between ECR\'s acknowledgement of a part and the journal write (journal one 5 MiB part behind ECR)',
      action: `sent the part at the journaled ${mib(entry.offset)}; ECR refused it (InvalidLayerPartException, lastValidByteReceived ${held - 1}); continued at ${mib(held)}`,
      bytesResent: tr.bytes_resent,
      outcome: 'byte-exact',
    });
  });

  test('ECR lost the upload while ferry was down (UploadNotFoundException): the blob starts over and the copy succeeds', async (t) => {
    const home = freshHome();
    const args = ['copy', '--json', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/crash/app:v1`, `${ecr.host}/install/lost:v1`];
    const killed = await killedRun(args, home, Math.floor((SIZE * 4) / 3 / 2));
    assert.equal(killed.signal, 'SIGKILL');
    const entry = [...journalFiles(home.state).values()].map((d) => d?.entry).find((e) => e?.digest === layer.digest);
    assert.ok(entry?.upload_id && entry.offset > 0, 'a journaled ECR upload');
    assert.ok(aws.forgetLayerUploads() >= 1, 'the stand-in dropped the open upload');

    const r = await runFerryIsolated(args, env(), home);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/lost', 'v1')).digest, img.digest);
    const tr = r.json.transfer;
    assert.equal(tr.blobs_restarted, 1);
    assert.ok(tr.bytes_resent >= entry.offset, `bytes re-sent ${tr.bytes_resent} < the journaled ${entry.offset}`);
    const stored = aws.completedLayers.filter((c) => c.repositoryName === 'install/lost');
    assert.deepEqual(stored.map((c) => c.digest), [layer.digest], 'the layer was stored through a new upload');
    assert.ok(logLines(r.stderr).some((l) => l.msg?.startsWith('ECR no longer knows the layer upload')), 'the restart is logged');
    assert.equal(journalFiles(home.state).size, 0);
    recordFault(t, {
      suite: 'ecr',
      fault: 'the ECR layer upload journaled by a killed ferry expired (UploadNotFoundException)',
      action: `logged "ECR no longer knows the layer upload", entry dropped, blob restarted with a new InitiateLayerUpload (blobs_restarted 1)`,
      bytesResent: tr.bytes_resent,
      outcome: 'byte-exact',
    });
  });

  test('ECR computes another digest at CompleteLayerUpload (InvalidLayerException): DIGEST_MISMATCH, no tag, no layer', async (t) => {
    const home = freshHome();
    aws.corruptNextLayerPart = true;
    const completed = aws.completedLayers.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--state-dir', home.state, '--ca-file', pki.caPath, `${local.host}/crash/app:v1`, `${ecr.host}/install/corrupt:v1`],
      env(),
      home,
    );
    assert.equal(aws.corruptNextLayerPart, false, 'a part was corrupted on arrival');
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'DIGEST_MISMATCH');
    assert.match(r.json.error.message, /ECR computed another digest/);
    assert.equal(aws.completedLayers.length, completed, 'no layer was stored');
    assert.equal(await ecr.client.blobExists('install/corrupt', layer.digest), false);
    assert.equal(await ecr.client.headManifest('install/corrupt', 'v1'), undefined, 'no tag');
    assert.equal(journalFiles(home.state).size, 0, 'the journal entry is dropped');
    recordFault(t, {
      suite: 'ecr',
      fault: 'a layer part corrupted on its way into ECR (CompleteLayerUpload: InvalidLayerException)',
      action: 'failed the copy with DIGEST_MISMATCH, no retry of a digest failure, journal entry dropped',
      bytesResent: 0,
      outcome: 'DIGEST_MISMATCH, no tag written',
    });
  });
});
