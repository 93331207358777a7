// A copy aborted with SUSPEND (what the agent does on a hard stop) keeps its journaled upload
// sessions open, where a plain cancel deletes them; the next copy with the same journal
// continues from the acknowledged offset. In process, with the real engine and registries. The
// abort comes while no PATCH bytes are in flight (the source stalls at a chunk boundary): a PATCH
// cut mid-body invalidates the session on distribution 2.8 whatever ferry does.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor } from '../harness/oci-client.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { pushImage } from '../harness/fixtures.ts';
import { tempStateHome } from '../e2e/ferry-cli.ts';
import { copyImage } from '../../src/copy/engine.ts';
import { registryCopyDestination, registryCopySource } from '../../src/ends/registry/endpoints.ts';
import { TransferLimits } from '../../src/copy/limits.ts';
import { DEFAULT_UPLOAD_TUNING } from '../../src/ends/registry/blob-upload.ts';
import { SUSPEND, UploadJournal } from '../../src/ends/registry/journal.ts';
import { RegistryClient } from '../../src/registry/client.ts';
import { Keychain } from '../../src/auth/credentials.ts';
import { HttpTransport } from '../../src/transport/http.ts';
import { createLogger } from '../../src/log/logger.ts';
import { parseReference } from '../../src/reference/reference.ts';
import { MiB, journalFiles } from './helpers.ts';

const LAYER = 72 * MiB;
const tuning = { ...DEFAULT_UPLOAD_TUNING, chunkBytes: 4 * MiB };

describe('suspending a copy keeps its journaled uploads; cancelling deletes them', () => {
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let srcProxy: FaultProxy;
  let layerPath: RegExp;
  const transport = new HttpTransport({ plainHttp: ['127.0.0.1'] });
  const logger = createLogger({ level: 'silent' });

  before(async () => {
    [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
    const pushed = await pushImage(clientFor(src), 's/app', 'v1', { layerSizes: [LAYER, 1024], seed: 'resume/suspend' });
    layerPath = new RegExp(`/blobs/${pushed.blobs.find((b) => b.size === LAYER)!.digest}`);
    srcProxy = await startFaultProxy(src.host);
  });
  after(async () => {
    await srcProxy?.stop();
    await transport.close();
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  function copy(repo: string, journal: UploadJournal, signal: AbortSignal) {
    const client = (registry: string, side: 'source' | 'destination') => new RegistryClient({ registry, side, credentials: new Keychain([]), transport, logger });
    const s = parseReference(`${srcProxy.host}/s/app:v1`);
    const d = parseReference(`${dst.host}/${repo}:v1`);
    return copyImage({
      source: registryCopySource(s, client(s.registry, 'source')),
      destination: registryCopyDestination(d, client(d.registry, 'destination'), { tuning, journal }),
      platforms: 'all',
      referrers: false,
      limits: new TransferLimits(4),
      logger,
      signal,
    });
  }

  /**
   * Start a copy whose layer download breaks after exactly two chunks and then stalls, so the
   * copy waits with two chunks acknowledged and journaled and no PATCH bytes in flight; abort it
   * there with `reason`. Returns the journal entry at that moment.
   */
  async function interrupted(repo: string, state: string, reason: unknown): Promise<any> {
    srcProxy.clearRules();
    srcProxy.addRule({ method: 'GET', path: layerPath, action: 'reset-after-bytes', bytes: 2 * tuning.chunkBytes, times: 1 });
    const stall = srcProxy.addRule({ method: 'GET', path: layerPath, action: 'stall', ms: 60_000 });
    const journal = UploadJournal.inStateDir(state, logger);
    const abort = new AbortController();
    const running = copy(repo, journal, abort.signal);
    let entry: any;
    const deadline = Date.now() + 60_000;
    while (!entry || stall.hits() === 0) {
      assert.ok(Date.now() < deadline, 'the copy never reached the stall with two chunks journaled');
      await new Promise((r) => setTimeout(r, 5));
      entry = [...journalFiles(state).values()].find((d) => d?.entry?.offset === 2 * tuning.chunkBytes)?.entry;
    }
    abort.abort(reason);
    await assert.rejects(running);
    srcProxy.clearRules();
    return entry;
  }

  test('SUSPEND: entry and session kept, then continued', async () => {
    const state = tempStateHome();
    const entry = await interrupted('s/suspended', state, SUSPEND);
    const left = [...journalFiles(state).values()].map((d) => d.entry);
    assert.equal(left.length, 1, 'the journal entry is kept');
    const status = await clientFor(dst).request('GET', left[0].location, { repo: 's/suspended', push: true, ok: [204] });
    assert.equal(status.status, 204, 'the session is still open');
    assert.deepEqual(left[0], entry);
    const report = await copy('s/suspended', UploadJournal.inStateDir(state, logger), new AbortController().signal);
    assert.equal(report.transfer.blobs_resumed, 1);
    assert.equal(report.transfer.bytes_reread_for_hash, 2 * tuning.chunkBytes);
    assert.equal(report.transfer.bytes_resent, 0);
    assert.equal(journalFiles(state).size, 0);
    const got = await clientFor(dst).verifyImage('s/suspended', 'v1');
    assert.equal(got.digest, report.image.digest);
  });

  test('a plain cancel: session DELETEd and entry removed', async () => {
    const state = tempStateHome();
    const entry = await interrupted('s/cancelled', state, undefined);
    assert.equal(journalFiles(state).size, 0, 'the journal entry is removed');
    // The same Location answers 204 when the copy is suspended (above): here it was DELETEd.
    const status = await clientFor(dst).request('GET', entry.location, { repo: 's/cancelled', push: true, ok: [404] });
    assert.equal(status.status, 404, 'the session is gone');

  });
});
