// SIGKILL of `ferry copy` at ≥ 20 seeded random points during a 4 × 136 MiB copy (each layer
// chunked), the same command run again with the same --state-dir after each kill, until it
// succeeds; then the destination must be byte-exact. A kill point is a position in the bytes the
// destination side has received so far (over all runs), so every point is reached before the
// copy can finish. Two destinations, both distribution 2.8:
//   - behind a request-buffering proxy (nginx's default): a PATCH cut by the kill never reaches
//     the registry, so the journaled session stays valid and ferry continues it;
//   - direct: the cut PATCH leaves partial bytes, distribution 2.8 invalidates the session
//     (404 on the status GET), and ferry deletes it and restarts that blob.
// Prints, per kill, what ferry did next and the bytes the kill cost (re-sent), plus totals.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { createRng, seedFor, SUITE_SEED } from '../harness/seed.ts';
import { tempStateHome } from '../e2e/ferry-cli.ts';
import { MiB, journalFiles, logLines, mib, spawnFerry } from './helpers.ts';
import { recordFault } from '../faults/report.ts';

const LAYERS = 4;
const LAYER_SIZE = 136 * MiB;
const CHUNK = 8 * MiB;
/** Kill points per destination: ≥ 20 for the main run; fewer for distribution 2.8 reached directly, where nearly every kill restarts every blob in flight (and time is bounded). */
const RESTARTED = -1;
const KILLS = { 'buffering proxy': 20, direct: 8 } as const;

describe('SIGKILL of ferry copy at random points, restarted with the same --state-dir', () => {
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let srcC: OciClient;
  let dstC: OciClient;
  let image: PushedManifest;
  let imageBytes = 0;
  const proxies: FaultProxy[] = [];

  before(async () => {
    [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
    srcC = clientFor(src);
    dstC = clientFor(dst);
    image = await pushLargeImage(srcC, 'kill/big', 'v1', { layerCount: LAYERS, layerSize: LAYER_SIZE });
    imageBytes = image.blobs.reduce((n, b) => n + b.size, 0);
  });
  after(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  for (const mode of ['buffering proxy', 'direct'] as const) {
    test(`${KILLS[mode]} kills, destination ${mode === 'direct' ? 'distribution 2.8 directly' : 'distribution 2.8 behind a request-buffering proxy'}`, async (tc) => {
      const proxy = await startFaultProxy(dst.host, { bufferRequestBodies: mode === 'buffering proxy' });
      proxies.push(proxy);
      const seed = seedFor(`resume/sigkill/${mode}`);
      const rng = createRng(seed);
      const points = Array.from({ length: KILLS[mode] }, () => Math.floor((0.02 + rng.float() * 0.93) * imageBytes)).sort((a, b) => a - b);
      console.log(`# seed ${SUITE_SEED} (${seed}); kill points (MiB received by the destination side, cumulative): ${points.map(mib).join(' ')}`);
      const state = tempStateHome();
      const repo = `kill/${mode === 'direct' ? 'direct' : 'buffered'}`;
      const args = ['copy', '--json', '--state-dir', state, `${src.host}/kill/big:v1`, `${proxy.host}/${repo}:v1`];
      const env = { FERRY_UPLOAD_CHUNK_BYTES: String(CHUNK) };
      const sizes = new Map(image.blobs.map((b) => [b.digest, b.size]));

      interface Run {
        arrived: number;
        killed: boolean;
        point?: number;
        /** digest → offset the run continued its journaled upload at, or RESTARTED (session deleted, blob from 0). */
        decisions: Map<string, number>;
        reasons: string[];
        /** After a kill: blobs complete at the destination, and blobs with a journal entry. */
        complete: Set<string>;
        journaled: Set<string>;
        report?: any;
      }
      const runs: Run[] = [];
      let kills = 0;
      for (let n = 0; ; n++) {
        assert.ok(n < 80, 'the copy never finished');
        const start = proxy.uploadedBytes();
        const point = kills < points.length ? points[kills]! : undefined;
        const f = spawnFerry(args, env);
        const poll = setInterval(() => {
          if (point !== undefined && proxy.uploadedBytes() >= point) {
            clearInterval(poll);
            f.child.kill('SIGKILL');
          }
        }, 1);
        const r = await f.done;
        clearInterval(poll);
        const logs = logLines(r.stderr);
        const decisions = new Map<string, number>();
        const reasons: string[] = [];
        for (const l of logs) {
          if (l.msg?.startsWith('continuing a journaled upload')) decisions.set(l.digest, l.offset);
          if (l.msg?.startsWith('journaled upload cannot be continued')) {
            decisions.set(l.digest, RESTARTED);
            reasons.push(String(l.reason));
          }
        }
        const run: Run = { arrived: proxy.uploadedBytes() - start, killed: r.signal === 'SIGKILL', decisions, reasons, complete: new Set(), journaled: new Set() };
        runs.push(run);
        if (run.killed) {
          kills++;
          run.point = point!;
          for (const d of sizes.keys()) if (await dstC.blobExists(repo, d)) run.complete.add(d);
          for (const doc of journalFiles(state).values()) {
            if (doc?.entry?.digest) run.journaled.add(doc.entry.digest);
            if (doc?.entry) assert.equal(doc.entry.owner, 'copy', 'a ferry copy upload is journaled as owned by `copy`');
          }
          continue;
        }
        assert.equal(r.code, 0, `run ${n} failed:\n${r.stderr.slice(-4000)}`);
        run.report = r.json;
        break;
      }
      // Byte-exact: same manifest digest, every blob present and hashing right (the harness's own client hashes them).
      const got = await dstC.verifyImage(repo, 'v1');
      assert.equal(got.digest, image.digest);
      assert.deepEqual(got.blobs.map((b) => b.digest).sort(), image.blobs.map((b) => b.digest).sort());
      assert.ok(kills >= KILLS[mode], `only ${kills} kills happened`);

      // Accounting: after kill i, the bytes still usable are the complete blobs plus, for each
      // journaled blob, the offset the next run that looked at it continued from (0 if it restarted).
      // Waste so far = bytes sent so far - usable; a kill's cost is how much it added to the waste.
      const usableAfter = (i: number): number => {
        let usable = 0;
        for (const [d, size] of sizes) {
          if (runs[i]!.complete.has(d)) usable += size;
          else if (runs[i]!.journaled.has(d)) usable += Math.max(0, runs.slice(i + 1).find((r) => r.decisions.has(d))?.decisions.get(d) ?? 0);
        }
        return usable;
      };
      const rows: Array<{ kill: number; point: number; arrived: number; next: string; resent: number }> = [];
      let sentSoFar = 0;
      let wasteBefore = 0;
      runs.forEach((run, i) => {
        sentSoFar += run.arrived;
        if (!run.killed) return;
        const waste = sentSoFar - usableAfter(i);
        const next = runs[i + 1]!;
        const resumed = [...next.decisions.values()].filter((o) => o !== RESTARTED);
        const restarted = [...next.decisions.values()].filter((o) => o === RESTARTED).length;
        const did =
          next.decisions.size === 0
            ? run.journaled.size === 0
              ? 'nothing journaled: blobs start over'
              : 'killed again before reaching the journal'
            : `${resumed.length} continued${resumed.length ? ` (at ${resumed.map(mib).join(', ')} MiB)` : ''}, ${restarted} restarted${restarted ? ` (${[...new Set(next.reasons)].join('; ')})` : ''}`;
        rows.push({ kill: rows.length + 1, point: run.point!, arrived: run.arrived, next: did, resent: waste - wasteBefore });
        wasteBefore = waste;
      });
      const total = proxy.uploadedBytes();
      const resentTotal = total - imageBytes;
      const last = runs.at(-1)!;
      const lastResent = resentTotal - wasteBefore;
      console.log(`\n# ${mode}: ${LAYERS} × ${mib(LAYER_SIZE)} MiB layers (${mib(imageBytes)} MiB), chunk ${mib(CHUNK)} MiB, ${kills} SIGKILLs, seed ${SUITE_SEED}`);
      console.log('| kill | at MiB (cumulative) | MiB sent in that run | what ferry did on the next run | MiB re-sent (cost of the kill) | outcome |');
      console.log('|---|---|---|---|---|---|');
      for (const row of rows) console.log(`| ${row.kill} | ${mib(row.point)} | ${mib(row.arrived)} | ${row.next} | ${mib(row.resent)} | run again |`);
      const t = last.report.transfer;
      console.log(`| final | – | ${mib(last.arrived)} | report: blobs_resumed ${t.blobs_resumed}, blobs_restarted ${t.blobs_restarted}, bytes_resent ${mib(t.bytes_resent)} MiB, bytes_reread_for_hash ${mib(t.bytes_reread_for_hash)} MiB | ${mib(lastResent)} | success, byte-exact |`);
      console.log(`# total sent to the destination ${mib(total)} MiB for a ${mib(imageBytes)} MiB image: ${mib(resentTotal)} MiB re-sent (${(resentTotal / imageBytes).toFixed(2)}× the image, ${mib(resentTotal / kills)} MiB per kill)`);
      // Nothing is lost: the whole image went up, and the rest is re-sent bytes.
      assert.ok(resentTotal >= 0);
      assert.ok(rows.every((r) => r.resent >= 0), 'a kill never makes earlier progress reappear');
      const continued = runs.filter((r) => [...r.decisions.values()].some((o) => o > 0)).length;
      assert.ok(rows.every((r) => r.resent <= imageBytes));
      if (mode === 'buffering proxy') {
        // Sessions survive a kill mid-body: runs continue journaled uploads from their offsets.
        // Not every kill leaves one to continue: a kill after the registry took a chunk and before
        // its answer reached ferry leaves a stale `_state` in the journal, and distribution 2.8
        // cancels such a session when asked for its status (docs/resume.md). How many kills fall
        // there is timing: in recent runs, 2 to 12 of the 20 kills left a session to continue past
        // byte 0. So the test asks for what holds whatever the timing: some run continued past byte 0.
        assert.ok(continued >= 1, `no run continued a journaled upload past its first byte`);
      } else {
        // distribution 2.8 invalidates a session cut mid-PATCH: ferry deletes it and restarts the blob.
        assert.ok(runs.some((r) => r.reasons.some((x) => x.includes('404'))), 'a cut session was found invalid (404) and restarted');
      }
      // The row of docs/faults.md for this case.
      const restartedBlobs = runs.reduce((n, r) => n + [...r.decisions.values()].filter((o) => o === RESTARTED).length, 0);
      recordFault(tc, {
        suite: 'resume',
        fault: `SIGKILL of ferry copy at ${kills} seeded random points (seed ${SUITE_SEED}) during a ${mib(imageBytes)} MiB copy (${LAYERS} × ${mib(LAYER_SIZE)} MiB layers, ${mib(CHUNK)} MiB chunks), destination ${mode === 'direct' ? 'distribution 2.8 directly' : 'distribution 2.8 behind a request-buffering proxy'}; the same command run again after each kill`,
        action: `continued journaled uploads from the registry's offset in ${continued} run(s), restarted ${restartedBlobs} blob(s) whose session the registry had dropped; re-sent ${(resentTotal / imageBytes).toFixed(2)}× the image size in all (${mib(resentTotal / kills)} MiB per kill)`,
        bytesResent: resentTotal,
        outcome: `byte-exact after ${runs.length} runs`,
      });
    });
  }
});
