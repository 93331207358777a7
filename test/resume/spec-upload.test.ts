// Mid-chunk resume against a registry that reports its real upload offset: the harness's
// spec-following registry (test/harness/spec-registry.ts), which, like distribution 3.x, keeps
// the bytes of a PATCH cut mid-body and reports them on the status GET. No registry that runs
// here does that (distribution 2.8 invalidates such a session: test/resume/sigkill.test.ts).
//   (a) connections cut mid-PATCH (and once mid final PUT) at seeded points by the fault proxy,
//       within one `ferry copy`: each cut blob continues in the same session from the registry's
//       offset, off the chunk boundaries; it re-sends at most the rest of the chunk in flight;
//   (b) SIGKILL of `ferry copy` at ≥ 10 seeded points, the same command run again with the same
//       --state-dir after each: every run continues the journaled sessions from the registry's
//       offset; total re-sent ≤ kills × one chunk.
// Re-sent bytes are measured three ways: ferry's report (`bytes_resent`, and per blob its log
// line 'blob uploaded after interruptions'), the bytes the proxy received from ferry, and the
// bytes the registry received per blob (its sessions, attributed by their first bytes).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startSpecRegistry, type SpecRegistry } from '../harness/spec-registry.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor } from '../harness/oci-client.ts';
import { pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { createRng, seedFor, SUITE_SEED } from '../harness/seed.ts';
import { recordFault } from '../faults/report.ts';
import { tempStateHome } from '../e2e/ferry-cli.ts';
import { MiB, journalFiles, logLines, mib, spawnFerry } from './helpers.ts';

const LAYERS = 4;
/** Not a multiple of the chunk: the final chunk, which rides on the commit PUT, is short. */
const LAYER_SIZE = 72 * MiB + 98_765;
const CHUNK = 4 * MiB;
// The SIGKILL case uses larger chunks: a kill lands mid-chunk only when the chunk is larger than
// what ferry has already handed to the kernel at that moment (loopback buffers hold several MiB,
// delivered after the process is gone), and the registry-to-registry pipe (src/ends/registry/blob-pipe.ts)
// keeps them full.
const KILL_CHUNK = 16 * MiB;
const KILLS = 12;
const RESTARTED = -1;

describe('mid-chunk resume against a spec-following registry', () => {
  let src: DistributionRegistry;
  let reg: SpecRegistry;
  let image: PushedManifest;
  let imageBytes = 0;
  let layers: Array<{ digest: string; size: number }> = [];
  const env = { FERRY_UPLOAD_CHUNK_BYTES: String(CHUNK) };

  before(async () => {
    [src, reg] = await Promise.all([startDistribution(), startSpecRegistry()]);
    image = await pushLargeImage(clientFor(src), 'spec/big', 'v1', { layerCount: LAYERS, layerSize: LAYER_SIZE });
    imageBytes = image.blobs.reduce((n, b) => n + b.size, 0);
    layers = image.blobs.filter((b) => b.size === LAYER_SIZE);
    assert.equal(layers.length, LAYERS);
  });
  after(async () => {
    await reg?.stop();
    await src?.stop();
  });

  /** Per blob of the image: what the registry received for it (over every session) and how many requests to it were cut. */
  function registryPerBlob(repository: string): Map<string, { received: number; cutRequests: number }> {
    const all = reg.receivedPerBlob(repository);
    return new Map(image.blobs.map((b) => [b.digest, all.get(b.digest) ?? { received: 0, cutRequests: 0 }]));
  }

  test('(a) connections cut mid-PATCH at seeded points: each cut blob re-sends at most the rest of one chunk', async (t) => {
    const proxy = await startFaultProxy(reg.host);
    try {
      const rng = createRng(seedFor('resume/spec-upload/cuts'));
      // PATCH k of the copy (in arrival order, over all layers) is cut after a seeded number of
      // its bytes; the rules' skips are seeded too. ~18 PATCHes per layer, 4 layers.
      const patchCuts = 8;
      const skips = new Set<number>();
      while (skips.size < patchCuts) skips.add(rng.int(56));
      const rules = [...skips]
        .sort((a, b) => a - b)
        .map((skip) => proxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'reset-after-bytes', on: 'request', bytes: 1 + rng.int(CHUNK - 1), skip, times: 1 }));
      // And one layer's final PUT (the last chunk and the commit) cut mid-body.
      const putLayer = rng.pick(layers);
      const lastChunk = LAYER_SIZE % CHUNK;
      const putCut = 1 + rng.int(lastChunk - 1);
      rules.push(
        proxy.addRule({ method: 'PUT', path: new RegExp(`digest=sha256(:|%3A)${putLayer.digest.slice(7)}`), action: 'reset-after-bytes', on: 'request', bytes: putCut, times: 1 }),
      );
      console.log(`# seed ${SUITE_SEED}; cuts: ${rules.map((r) => `${r.rule.method} skip ${r.rule.skip ?? 0} after ${mib((r.rule as { bytes: number }).bytes)} MiB`).join(', ')}`);

      const state = tempStateHome();
      const before = reg.receivedTotal();
      const r = await spawnFerry(['copy', '--json', '--state-dir', state, `${src.host}/spec/big:v1`, `${proxy.host}/spec/cut:v1`], env).done;
      assert.equal(r.code, 0, r.stderr.slice(-4000));
      const got = await clientFor(reg).verifyImage('spec/cut', 'v1');
      assert.equal(got.digest, image.digest, 'byte-exact: same manifest digest, every blob hashes right');
      assert.equal(journalFiles(state).size, 0, 'no journal entry left');

      const perBlob = registryPerBlob('spec/cut');
      const cuts = [...perBlob.values()].reduce((n, b) => n + b.cutRequests, 0);
      const logs = logLines(r.stderr);
      const resumes = logs.filter((l) => l.msg?.startsWith('chunk failed; resuming upload'));
      const finished = new Map(logs.filter((l) => l.msg === 'blob uploaded after interruptions').map((l) => [l.digest as string, l]));
      const transfer = r.json.transfer;
      const offChunk = resumes.filter((l) => l.offset % CHUNK !== 0).length;
      // Request bodies through the proxy: blobs, and the manifest PUT.
      const sentByFerry = proxy.uploadedBytes() - got.size;
      console.log(`# cuts that reached the registry mid-body: ${cuts}; resumes: ${resumes.map((l) => `${mib(l.offset)} (chunk at ${mib(l.acknowledged_before)})`).join(', ')} MiB`);
      console.log('| blob | cut requests | registry received − size | ferry re-sent | re-hashed from the source |');
      console.log('|---|---|---|---|---|');
      for (const b of layers) {
        const row = perBlob.get(b.digest)!;
        const f = finished.get(b.digest);
        console.log(`| ${b.digest.slice(7, 19)} | ${row.cutRequests} | ${row.received - b.size} | ${mib(f?.bytes_resent ?? 0)} MiB | ${mib(f?.bytes_reread_for_hash ?? 0)} MiB |`);
      }
      console.log(
        `# report: blobs_resumed ${transfer.blobs_resumed}, blobs_restarted ${transfer.blobs_restarted}, bytes_resent ${mib(transfer.bytes_resent)} MiB, ` +
          `bytes_reread_for_hash ${mib(transfer.bytes_reread_for_hash)} MiB; the proxy received ${mib(sentByFerry - imageBytes)} MiB beyond the image; ` +
          `the registry received ${reg.receivedTotal() - before - imageBytes} bytes beyond it`,
      );

      // A rule that meets a shorter body (the rest of a chunk after an earlier cut) lets it through.
      assert.ok(cuts >= patchCuts / 2, `only ${cuts} requests were cut mid-body`);
      assert.ok(resumes.length >= cuts, 'every cut was continued in its session');
      assert.ok(offChunk >= cuts - 1, `only ${offChunk} of ${cuts} continuations were off a chunk boundary`);
      assert.equal(transfer.blobs_resumed, [...perBlob.values()].filter((b) => b.cutRequests > 0).length, 'every cut blob, and only those, resumed');
      assert.equal(transfer.blobs_restarted, 0, 'no blob started over');
      for (const b of image.blobs) {
        const row = perBlob.get(b.digest)!;
        // The registry kept every byte it received: nothing reached it twice.
        assert.equal(row.received, b.size, `the registry received ${row.received - b.size} bytes of ${b.digest} twice`);
        const resent = finished.get(b.digest)?.bytes_resent ?? 0;
        assert.ok(resent <= row.cutRequests * CHUNK, `${b.digest}: ${resent} bytes re-sent for ${row.cutRequests} cuts`);
        if (row.cutRequests > 0) assert.ok(finished.has(b.digest), `${b.digest} was cut but not reported as resumed`);
      }
      const resentSum = [...finished.values()].reduce((n, l) => n + l.bytes_resent, 0);
      assert.equal(transfer.bytes_resent, resentSum);
      assert.ok(transfer.bytes_resent <= cuts * CHUNK);
      assert.ok(sentByFerry - imageBytes <= transfer.bytes_resent, 'the proxy saw no more re-sent bytes than ferry counted');
      assert.ok(transfer.bytes_reread_for_hash <= cuts * CHUNK, 're-hashing reads at most one chunk per cut');
      recordFault(t, {
        suite: 'resume',
        fault: `spec registry: ${cuts} connections cut mid-PATCH / mid final PUT (proxy, seeded points), chunks of ${mib(CHUNK)} MiB`,
        action: `status GET each time, continued in the same session from the registry's offset (${offChunk} off a chunk boundary); re-hashed ${mib(transfer.bytes_reread_for_hash)} MiB from the source; 0 restarts`,
        bytesResent: transfer.bytes_resent,
        outcome: 'byte-exact',
      });
    } finally {
      await proxy.stop();
    }
  });

  test(`(b) ${KILLS} SIGKILLs of ferry copy, restarted with the same --state-dir: re-sent ≤ kills × one chunk`, async (t) => {
    const rng = createRng(seedFor('resume/spec-upload/sigkill'));
    const points = Array.from({ length: KILLS }, () => Math.floor((0.02 + rng.float() * 0.93) * imageBytes)).sort((a, b) => a - b);
    console.log(`# seed ${SUITE_SEED}; kill points (MiB received by the registry for this copy, cumulative): ${points.map(mib).join(' ')}`);
    const state = tempStateHome();
    const repo = 'spec/killed';
    const args = ['copy', '--json', '--state-dir', state, `${src.host}/spec/big:v1`, `${reg.host}/${repo}:v1`];
    const killEnv = { ...env, FERRY_UPLOAD_CHUNK_BYTES: String(KILL_CHUNK) };
    const dst = clientFor(reg);
    const base = reg.receivedTotal();

    interface Run {
      received: number;
      killed: boolean;
      /** digest → offset the run continued its journaled upload at (RESTARTED: started over). */
      decisions: Map<string, number>;
      /** digest → the journaled offset of that upload. */
      journaled: Map<string, number>;
      complete: Set<string>;
      report?: any;
    }
    const runs: Run[] = [];
    let kills = 0;
    for (let n = 0; ; n++) {
      assert.ok(n < 40, 'the copy never finished');
      const start = reg.receivedTotal();
      const f = spawnFerry(args, killEnv);
      const cancel = kills < points.length ? reg.onReceived(base + points[kills]!, () => f.child.kill('SIGKILL')) : () => undefined;
      const r = await f.done;
      cancel();
      const decisions = new Map<string, number>();
      const journaled = new Map<string, number>();
      for (const l of logLines(r.stderr)) {
        if (l.msg?.startsWith('continuing a journaled upload')) {
          decisions.set(l.digest, l.offset);
          journaled.set(l.digest, l.journaled_offset);
        }
        if (l.msg?.startsWith('journaled upload cannot be continued')) decisions.set(l.digest, RESTARTED);
      }
      const run: Run = { received: reg.receivedTotal() - start, killed: r.signal === 'SIGKILL', decisions, journaled, complete: new Set() };
      runs.push(run);
      if (run.killed) {
        kills++;
        for (const b of image.blobs) if (await dst.blobExists(repo, b.digest)) run.complete.add(b.digest);
        continue;
      }
      assert.equal(r.code, 0, `run ${n} failed:\n${r.stderr.slice(-4000)}`);
      run.report = r.json;
      break;
    }
    const got = await dst.verifyImage(repo, 'v1');
    assert.equal(got.digest, image.digest, 'byte-exact: same manifest digest, every blob hashes right');
    assert.equal(journalFiles(state).size, 0, 'no journal entry left');
    assert.equal(kills, KILLS);

    // Re-sent = bytes the registry received for this copy beyond the image, per blob from its sessions.
    const perBlob = registryPerBlob(repo);
    const resentAtRegistry = image.blobs.reduce((n, b) => n + perBlob.get(b.digest)!.received - b.size, 0);
    const ours = reg.sessions().filter((s) => s.repository === repo);
    const receivedOurs = ours.reduce((n, s) => n + s.received, 0);
    const resentTotal = receivedOurs - imageBytes;
    const continued = runs.flatMap((r) => [...r.decisions.values()]).filter((o) => o !== RESTARTED);
    const restarted = runs.flatMap((r) => [...r.decisions.values()]).filter((o) => o === RESTARTED).length;
    const offChunk = continued.filter((o) => o % KILL_CHUNK !== 0).length;
    const aheadOfJournal = runs.reduce((n, r) => n + [...r.decisions].filter(([d, o]) => o !== RESTARTED && o > (r.journaled.get(d) ?? 0)).length, 0);

    console.log(`\n# ${LAYERS} × ${mib(LAYER_SIZE)} MiB layers (${mib(imageBytes)} MiB), chunk ${mib(KILL_CHUNK)} MiB, ${kills} SIGKILLs, seed ${SUITE_SEED}`);
    console.log('| run | MiB received by the registry | continued journaled uploads at MiB (journaled MiB) | restarted | outcome |');
    console.log('|---|---|---|---|---|');
    runs.forEach((r, i) => {
      const at = [...r.decisions].filter(([, o]) => o !== RESTARTED).map(([d, o]) => `${mib(o)} (${mib(r.journaled.get(d) ?? 0)})`);
      const rs = [...r.decisions.values()].filter((o) => o === RESTARTED).length;
      console.log(`| ${i + 1} | ${mib(r.received)} | ${at.join(', ') || '–'} | ${rs} | ${r.killed ? `killed at ${mib(points[i]!)} MiB` : 'success, byte-exact'} |`);
    });
    const t2 = runs.at(-1)!.report.transfer;
    console.log(
      `# final report: blobs_resumed ${t2.blobs_resumed}, blobs_restarted ${t2.blobs_restarted}, bytes_resent ${mib(t2.bytes_resent)} MiB, bytes_reread_for_hash ${mib(t2.bytes_reread_for_hash)} MiB`,
    );
    console.log(
      `# the registry received ${mib(receivedOurs)} MiB for a ${mib(imageBytes)} MiB image: ${resentTotal} bytes re-sent ` +
        `(${(resentTotal / imageBytes).toFixed(4)}× the image; bound ${kills} × ${mib(KILL_CHUNK)} MiB); ${continued.length} continuations, ${offChunk} off a chunk boundary, ${aheadOfJournal} ahead of the journal; ${restarted} restarts`,
    );

    assert.ok(resentTotal >= 0);
    assert.ok(resentTotal <= kills * KILL_CHUNK, `${resentTotal} bytes re-sent for ${kills} kills`);
    assert.ok(resentAtRegistry <= resentTotal, 'sessions attributed to blobs account for no more than all of them');
    assert.equal(restarted, 0, 'no journaled upload had to start over');
    assert.ok(offChunk >= kills / 2, `only ${offChunk} continuations were off a chunk boundary`);
    assert.ok(aheadOfJournal >= kills / 2, `only ${aheadOfJournal} continuations went past the journaled offset (bytes of a cut PATCH kept)`);
    recordFault(t, {
      suite: 'resume',
      fault: `spec registry: SIGKILL of ferry copy at ${kills} seeded points, ${LAYERS} × ${mib(LAYER_SIZE)} MiB layers, chunks of ${mib(KILL_CHUNK)} MiB`,
      action: `each run continued the journaled sessions from the registry's offset (${continued.length} continuations, ${offChunk} mid-chunk), 0 restarts; re-sent/image ${(resentTotal / imageBytes).toFixed(4)}`,
      bytesResent: resentTotal,
      outcome: 'byte-exact',
    });
  });
});
