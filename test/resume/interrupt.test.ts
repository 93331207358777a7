// Ctrl-C and SIGTERM during `ferry copy`: a real ferry child process, a real signal sent when a
// condition is met (bytes that reached the destination side), then the same command again.
//   - exit 130 (SIGINT) / 143 (SIGTERM), `interrupted: run the same command to resume`, and the
//     --json document says so; the journal is kept;
//   - the chunks in flight finish (within the grace), so even distribution 2.8's sessions stay
//     resumable; the re-run continues them;
//   - into the spec-following registry, the two runs upload ≤ 1.15 × the image; into
//     distribution 2.8, no upload session is left in its storage after the re-run;
//   - a second signal quits at once, without waiting for the chunk in flight; and when the grace
//     runs out instead, the re-run continues the cut chunk where the registry kept its bytes, and
//     restarts that blob on distribution 2.8 (which refuses to delete its session: ferry says so);
//   - on a terminal, the progress display stops drawing and the last line is readable.
// Default tuning (chunks by time: 16 MiB, then 64 MiB on loopback; blobs up to 32 MiB in one
// request): the image mixes chunked and one-request layers, as a real 512 MiB image does.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startSpecRegistry, type SpecRegistry } from '../harness/spec-registry.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { tempStateHome } from '../e2e/ferry-cli.ts';
import { MiB, journalFiles, mib, spawnFerry, type FerryChild } from './helpers.ts';
import { waitFor } from '../harness/wait.ts';

const LAYERS = [160, 128, 96, 48, 40, 24, 16].map((m) => m * MiB);
/** The smaller image of the tests that hold a chunk: two chunked layers and one that goes up in one request, with 8 MiB chunks. */
const SMALL_LAYERS = [40, 24, 6].map((m) => m * MiB);
const SMALL_CHUNKS = { FERRY_UPLOAD_CHUNK_BYTES: String(8 * MiB) };
const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;
const INTERRUPTED = 'interrupted: run the same command to resume';

/** Upload sessions distribution 2.8 still holds for a repository (directories under its `_uploads`). */
function distributionSessions(reg: DistributionRegistry, repo: string): string[] {
  const dir = join(reg.storageDir, 'docker/registry/v2/repositories', repo, '_uploads');
  return existsSync(dir) ? readdirSync(dir) : [];
}

/** Resolves with the child's stderr once `text` appears in it. */
function stderrShows(f: FerryChild, text: string): Promise<void> {
  return new Promise((resolve) => {
    let seen = '';
    const on = (d: Buffer) => {
      seen += d.toString();
      if (seen.includes(text)) {
        f.child.stderr!.off('data', on);
        resolve();
      }
    };
    f.child.stderr!.on('data', on);
  });
}

describe('Ctrl-C and SIGTERM during ferry copy', () => {
  let src: DistributionRegistry;
  let srcC: OciClient;
  let image: PushedManifest;
  let imageBytes = 0;
  let small: PushedManifest;
  let smallBytes = 0;
  const stops: Array<() => Promise<void>> = [];

  before(async () => {
    src = await startDistribution();
    srcC = clientFor(src);
    image = await pushLargeImage(srcC, 'int/big', 'v1', { layerSizes: LAYERS });
    imageBytes = image.blobs.reduce((n, b) => n + b.size, 0);
    small = await pushLargeImage(srcC, 'int/small', 'v1', { layerSizes: SMALL_LAYERS });
    smallBytes = small.blobs.reduce((n, b) => n + b.size, 0);
  });
  after(async () => {
    await Promise.all(stops.map((s) => s()));
    await src?.stop();
  });

  /** Run the copy, signal it once `arrived()` reaches 40 % of the image, then run it again. */
  async function interruptAndResume(opts: { dstHost: string; repo: string; signal: 'SIGINT' | 'SIGTERM'; arrived: () => number; dst: OciClient }) {
    const state = tempStateHome();
    const args = ['copy', '--json', '--state-dir', state, `${src.host}/int/big:v1`, `${opts.dstHost}/${opts.repo}:v1`];
    const point = Math.floor(0.4 * imageBytes);
    const first = spawnFerry(args);
    const poll = setInterval(() => {
      if (opts.arrived() >= point) {
        clearInterval(poll);
        first.child.kill(opts.signal);
      }
    }, 1);
    const r1 = await first.done;
    clearInterval(poll);
    const afterFirst = opts.arrived();
    const journaled = [...journalFiles(state).values()].map((d) => d?.entry).filter(Boolean);
    const r2 = await spawnFerry(args).done;
    const total = opts.arrived();
    console.log(
      `# ${opts.signal} at ${mib(point)} MiB of ${mib(imageBytes)} MiB: first run exit ${r1.code} (signal ${r1.signal}), ${mib(afterFirst)} MiB arrived, ` +
        `${journaled.length} journaled (at ${journaled.map((e: any) => mib(e.offset)).join(', ')} MiB); re-run exit ${r2.code}, ` +
        `resumed ${r2.json?.transfer?.blobs_resumed}, restarted ${r2.json?.transfer?.blobs_restarted}; both runs ${mib(total)} MiB = ${(total / imageBytes).toFixed(3)} × the image`,
    );
    const check = async () => {
      assert.equal(r1.code, opts.signal === 'SIGINT' ? 130 : 143, `first run:\n${r1.stderr.slice(-3000)}`);
      assert.ok(r1.stderr.includes(INTERRUPTED), r1.stderr.slice(-2000));
      assert.equal(r1.json?.interrupted, opts.signal, `--json says it was interrupted: ${r1.stdout}`);
      assert.equal(r1.json?.error?.code, 'INTERRUPTED');
      assert.ok(!/INTERNAL/.test(r1.stderr), 'an interruption is not a bug');
      assert.ok(journaled.length >= 1, 'the journal keeps the parked uploads');
      assert.equal(r2.code, 0, `re-run:\n${r2.stderr.slice(-3000)}`);
      assert.ok(r2.json.transfer.blobs_resumed >= 1, 'the re-run continues the parked uploads');
      assert.equal(r2.json.transfer.blobs_restarted, 0, 'no parked session was lost');
      assert.equal(journalFiles(state).size, 0, 'nothing left in the journal');
      const got = await opts.dst.verifyImage(opts.repo, 'v1');
      assert.equal(got.digest, image.digest);
    };
    return { ratio: total / imageBytes, check };
  }

  test('SIGINT at 40 % into a spec-following registry: exit 130, the re-run resumes; both runs upload ≤ 1.15 × the image', async () => {
    const spec: SpecRegistry = await startSpecRegistry();
    stops.push(() => spec.stop());
    const { ratio, check } = await interruptAndResume({ dstHost: spec.host, repo: 'int/spec', signal: 'SIGINT', arrived: () => spec.receivedTotal(), dst: clientFor(spec) });
    await check();
    assert.ok(ratio <= 1.15, `uploaded ${ratio.toFixed(3)} × the image`);
    const open = spec.sessions().filter((s) => s.state === 'open');
    assert.deepEqual(open.map((s) => s.id), [], 'no upload session left open');
  });

  test('SIGTERM at 40 % into distribution 2.8: exit 143, the re-run resumes, no upload session is left', async () => {
    const dst = await startDistribution();
    const proxy: FaultProxy = await startFaultProxy(dst.host);
    stops.push(() => proxy.stop(), () => dst.stop());
    const { ratio, check } = await interruptAndResume({ dstHost: proxy.host, repo: 'int/dist', signal: 'SIGTERM', arrived: () => proxy.uploadedBytes(), dst: clientFor(dst) });
    const left = distributionSessions(dst, 'int/dist');
    console.log(`# distribution 2.8: ${left.length} upload session(s) left; ${ratio.toFixed(3)} × the image uploaded`);
    await check();
    assert.deepEqual(left, [], 'no upload session left in the registry');
    assert.ok(ratio <= 1.15, `uploaded ${ratio.toFixed(3)} × the image`);
  });

  // On a slow link a blob's one request, or a 64 MiB chunk, outlasts the grace, and distribution
  // 2.8 cannot continue a cut request. Chunks sized by time (16 MiB first) finish within it.
  test('a slow uplink (4 MiB/s): Ctrl-C waits only for the first chunks; distribution 2.8 continues every session, none is left', async () => {
    const slow = await pushLargeImage(srcC, 'int/slow', 'v1', { layerSizes: [48 * MiB, 40 * MiB] });
    const slowBytes = slow.blobs.reduce((n, b) => n + b.size, 0);
    const dst = await startDistribution();
    const proxy = await startFaultProxy(dst.host, { uploadBytesPerSecond: 4 * MiB });
    stops.push(() => proxy.stop(), () => dst.stop());
    const state = tempStateHome();
    const args = ['copy', '--json', '--state-dir', state, `${src.host}/int/slow:v1`, `${proxy.host}/int/slow:v1`];
    const grace = 20;
    const f = spawnFerry(args, { FERRY_INTERRUPT_GRACE_SECONDS: String(grace) });
    await waitFor('the first MiB uploaded', () => proxy.uploadedBytes() >= 1 * MiB, 30_000, 20);
    const signalled = Date.now();
    f.child.kill('SIGINT');
    const r = await f.done;
    const waited = (Date.now() - signalled) / 1000;
    const journaled = [...journalFiles(state).values()].map((d) => d?.entry).filter(Boolean);
    const again = await spawnFerry(args).done;
    const left = distributionSessions(dst, 'int/slow');
    const t = again.json?.transfer;
    console.log(
      `# slow uplink: the first run stopped ${waited.toFixed(1)} s after SIGINT (grace ${grace} s), ${journaled.length} journaled (at ${journaled.map((e: any) => mib(e.offset)).join(', ')} MiB); ` +
        `re-run resumed ${t?.blobs_resumed}, restarted ${t?.blobs_restarted}; ${left.length} session(s) left; both runs ${mib(proxy.uploadedBytes())} MiB = ${(proxy.uploadedBytes() / slowBytes).toFixed(3)} × the image`,
    );
    assert.equal(r.code, 130, r.stderr.slice(-3000));
    assert.ok(waited < grace, `stopped ${waited.toFixed(1)} s after the signal`);
    assert.equal(again.code, 0, again.stderr.slice(-3000));
    const logs = `first run:\n${r.stderr.slice(-3000)}\nre-run:\n${again.stderr.slice(-3000)}`;
    assert.equal(t.blobs_restarted, 0, `no upload was cut: every parked session is continued\n${logs}`);
    assert.equal(t.blobs_resumed, 2, `both layers continue from their first chunk\n${logs}`);
    assert.deepEqual(left, [], 'no upload session left in distribution 2.8');
    assert.equal((await clientFor(dst).verifyImage('int/slow', 'v1')).digest, slow.digest);
  });

  /**
   * A fault proxy in front of `target` that holds the registry's answer to the first chunk PATCH
   * (the chunk has reached the registry; ferry waits for its answer) until `release()`.
   */
  async function holdFirstChunk(target: string) {
    const proxy = await startFaultProxy(target);
    stops.push(() => proxy.stop());
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let onHeld!: () => void;
    const held = new Promise<void>((r) => (onHeld = r));
    let releasedYet = false;
    proxy.addRule({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      times: 1,
      action: 'hook',
      whileHeld: () => {
        onHeld();
        return released;
      },
    });
    return {
      proxy,
      held,
      isReleased: () => releasedYet,
      release: () => {
        releasedYet = true;
        release();
      },
    };
  }

  test('a second Ctrl-C stops at once, without waiting for the chunk in flight; the re-run resumes', async () => {
    const spec = await startSpecRegistry();
    stops.push(() => spec.stop());
    const hold = await holdFirstChunk(spec.host);
    const state = tempStateHome();
    const args = ['copy', '--json', '--state-dir', state, `${src.host}/int/small:v1`, `${hold.proxy.host}/int/twice:v1`];
    // A grace far longer than any test: only the second signal can end the wait.
    const f = spawnFerry(args, { ...SMALL_CHUNKS, FERRY_INTERRUPT_GRACE_SECONDS: '3600' });
    await hold.held;
    const notice = stderrShows(f, 'stopping;');
    f.child.kill('SIGINT');
    await notice;
    assert.equal(f.child.exitCode, null, 'after the first Ctrl-C ferry waits for the chunk in flight');
    f.child.kill('SIGINT');
    const r = await f.done;
    const stillHeld = !hold.isReleased();
    hold.release();
    assert.equal(r.code, 130, r.stderr.slice(-3000));
    assert.ok(stillHeld, 'ferry ended while the chunk\'s answer was still held');
    assert.match(r.stderr, /SIGINT again: stopping now/);
    assert.doesNotMatch(r.stderr, /while stopping/, 'the stop ended the wait, not a timeout');
    assert.ok(r.stderr.includes(INTERRUPTED));
    assert.equal(r.json?.interrupted, 'SIGINT');
    const journaled = [...journalFiles(state).values()].map((d) => d?.entry);
    assert.ok(journaled.length >= 1, 'the journal is kept');
    const again = await spawnFerry(args, SMALL_CHUNKS).done;
    assert.equal(again.code, 0, again.stderr.slice(-3000));
    const got = await clientFor(spec).verifyImage('int/twice', 'v1');
    assert.equal(got.digest, small.digest);
    console.log(`# second Ctrl-C: ${journaled.length} journaled; both runs ${mib(spec.receivedTotal())} MiB = ${(spec.receivedTotal() / smallBytes).toFixed(3)} × the image, re-run resumed ${again.json.transfer.blobs_resumed}`);
    assert.ok(again.json.transfer.blobs_resumed >= 1);
    assert.deepEqual(spec.sessions().filter((x) => x.state === 'open').map((x) => x.id), [], 'no upload session left open');
  });

  // When the grace runs out (or a second signal comes) the chunk in flight is cut. A registry that
  // keeps what it received continues the session; distribution 2.8 cannot: it refuses even to
  // delete a session whose chunk was cut (BLOB_UPLOAD_INVALID), so that one session stays until
  // its upload purging, and ferry says so. The chunks that were not cut are continued either way.
  for (const kind of ['spec', 'distribution'] as const) {
    test(`the grace runs out: the held chunk is cut and the copy stops; the re-run (${kind === 'spec' ? 'spec-following registry' : 'distribution 2.8'})`, async () => {
      let holder: { host: string };
      let sessionsLeft: () => string[];
      if (kind === 'spec') {
        const spec = await startSpecRegistry();
        stops.push(() => spec.stop());
        holder = spec;
        sessionsLeft = () => spec.sessions().filter((x) => x.state === 'open').map((x) => x.id);
      } else {
        const dst = await startDistribution();
        stops.push(() => dst.stop());
        holder = dst;
        sessionsLeft = () => distributionSessions(dst, `int/grace-${kind}`);
      }
      const hold = await holdFirstChunk(holder.host);
      const state = tempStateHome();
      const args = ['copy', '--json', '--state-dir', state, `${src.host}/int/small:v1`, `${hold.proxy.host}/int/grace-${kind}:v1`];
      const f = spawnFerry(args, { ...SMALL_CHUNKS, FERRY_INTERRUPT_GRACE_SECONDS: '0.5' });
      await hold.held;
      f.child.kill('SIGTERM');
      const r = await f.done;
      const stillHeld = !hold.isReleased();
      hold.release();
      assert.equal(r.code, 143, r.stderr.slice(-3000));
      assert.ok(stillHeld, 'the grace, not the chunk\'s answer, ended the wait');
      assert.doesNotMatch(r.stderr, /while stopping/, 'the stop ended the wait, not a timeout');
      assert.ok(r.stderr.includes(INTERRUPTED));
      assert.ok(journalFiles(state).size >= 1, 'the journal is kept');
      const again = await spawnFerry(args, SMALL_CHUNKS).done;
      assert.equal(again.code, 0, again.stderr.slice(-3000));
      const got = await clientFor(holder).verifyImage(`int/grace-${kind}`, 'v1');
      assert.equal(got.digest, small.digest);
      const left = sessionsLeft();
      const t = again.json.transfer;
      console.log(`# grace over (${kind}): re-run resumed ${t.blobs_resumed}, restarted ${t.blobs_restarted}; ${left.length} upload session(s) left; both runs ${mib(hold.proxy.uploadedBytes())} MiB = ${(hold.proxy.uploadedBytes() / smallBytes).toFixed(3)} × the image`);
      assert.equal(journalFiles(state).size, 0);
      if (kind === 'spec') {
        assert.equal(t.blobs_restarted, 0, 'the cut chunk\'s session is continued');
        assert.ok(t.blobs_resumed >= 1);
        assert.deepEqual(left, [], 'no upload session left open');
      } else {
        assert.equal(t.blobs_restarted, 1, 'the blob whose chunk was cut starts over');
        assert.equal(left.length, 1, 'the one session whose chunk was cut stays: distribution 2.8 refuses to delete it');
        assert.match(again.stderr, /refused to delete an upload session whose chunk was cut \(BLOB_UPLOAD_INVALID\)/);
      }
    });
  }

  test('Ctrl-C in a terminal: the progress display stops drawing, the notice and the last line are readable', async () => {
    const spec = await startSpecRegistry();
    stops.push(() => spec.stop());
    const state = tempStateHome();
    const cmd = ['exec', JSON.stringify(process.execPath), JSON.stringify(MAIN), 'copy', '--state-dir', JSON.stringify(state), `${src.host}/int/small:v1`, `${spec.host}/int/tty:v1`].join(' ');
    // script(1) runs ferry on a pseudo-terminal; a ^C written to it is the terminal's own Ctrl-C (SIGINT to the foreground process).
    const child = spawn('script', ['-qefc', cmd, '/dev/null'], { env: { ...process.env, ...SMALL_CHUNKS, DOCKER_CONFIG: '/nonexistent', COLUMNS: '100' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const done = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
    await new Promise<void>((resolve) => spec.onReceived(Math.floor(0.3 * smallBytes), resolve));
    child.stdin.write('\x03');
    const code = await done;
    child.stdin.end();
    assert.equal(code, 130, out.slice(-3000));
    const at = out.indexOf('stopping;');
    assert.ok(at > 0, `the notice is shown:\n${out.slice(-3000)}`);
    assert.ok(/\x1b\[\d+F/.test(out.slice(0, at)), 'the progress display was drawn before');
    const tail = out.slice(at);
    assert.ok(!/\x1b\[/.test(tail), `nothing is drawn over or after the notice: ${JSON.stringify(tail)}`);
    const lines = tail.split(/\r?\n/).filter((l) => l.trim() !== '');
    assert.equal(lines.at(-1), `ferry: ${INTERRUPTED}`);
  });
});
