// The agent's jobs share what they put in the local registry: a base layer common to many
// images goes up once and is mounted into every other repository (src/ends/registry/placements.ts).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MEDIA, pushImage } from '../harness/fixtures.ts';
import { seededBytes } from '../harness/seed.ts';
import { BlobPlacements } from '../../src/ends/registry/placements.ts';
import { plan, startAgent, tempState, worldForSuite } from './agent-harness.ts';

const KiB = 1024;

describe('blob placements (unit)', () => {
  const D = `sha256:${'a'.repeat(64)}` as const;
  test('one lead per registry and digest; followers learn where it landed; a failed lead hands over', async () => {
    const p = new BlobPlacements();
    const lead = p.begin('r1', D);
    assert.equal(lead.lead, true);
    const follower = p.begin('r1', D);
    assert.equal(follower.lead, false);
    assert.equal(p.begin('r2', D).lead, true, 'another registry has its own lead');
    if (!lead.lead || follower.lead) return;
    lead.settle('team/a');
    assert.equal(await follower.landed, 'team/a');
    assert.deepEqual(p.holders('r1', D), ['team/a']);
    assert.deepEqual(p.holders('r2', D), []);
    const second = p.begin('r1', D);
    assert.equal(second.lead, true, 'a settled upload leaves no claim behind');
    const waiting = p.begin('r1', D);
    if (!second.lead || waiting.lead) return assert.fail('expected a lead and a follower');
    second.settle(undefined);
    second.settle('ignored/after-settle');
    assert.equal(await waiting.landed, undefined);
    p.record('r1', D, 'team/b');
    p.forget('r1', D, 'team/a');
    assert.deepEqual(p.holders('r1', D), ['team/b']);
  });
});

describe('ferry agent: shared base layers go up once per registry', () => {
  const w = worldForSuite();

  test('8 images on 2 shared base layers, 4 jobs at once: each base layer uploaded once, mounted 7 times; all byte-exact', async () => {
    const IMAGES = 8;
    const bases = [seededBytes('placements/base/0', 900 * KiB), seededBytes('placements/base/1', 700 * KiB)];
    const images: Array<{ repo: string; digest: string }> = [];
    let baseDigests: string[] = [];
    for (let i = 0; i < IMAGES; i++) {
      const repo = `fleet-shared/app${i}`;
      const baseRefs = [];
      for (const b of bases) baseRefs.push(await w.vendor.pushBlob(repo, b));
      baseDigests = baseRefs.map((r) => r.digest);
      // The image's own layer and config come from pushImage; the manifest is rebuilt on the bases.
      const own = await pushImage(w.vendor, repo, 'own', { layerSizes: [3 * KiB + i] });
      const ownManifest = JSON.parse(Buffer.from((await w.vendor.getManifest(repo, 'own')).bytes).toString('utf8')) as {
        config: object;
        layers: object[];
      };
      const layers = [...baseRefs.map((r) => ({ mediaType: MEDIA.ociLayer, digest: r.digest, size: r.size })), ...ownManifest.layers];
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociManifest, config: ownManifest.config, layers }));
      const digest = await w.vendor.pushManifest(repo, 'v1', bytes, MEDIA.ociManifest);
      assert.notEqual(digest, own.digest);
      images.push({ repo, digest });
    }
    const jobIds = images.map((img, i) => w.world.cp.enqueueJob(plan(w.world, img.repo, 'v1', `install_1/shared${i}`, { referrers: false })));
    const logStart = w.world.local.logs().length;
    const agent = startAgent(w.world, tempState(), ['--exit-when-idle', '--max-jobs', '4', '--log-level', 'info']);
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    for (const id of jobIds) assert.equal(w.world.cp.job(id).status, 'finished', `job ${id}`);
    for (const [i, img] of images.entries()) assert.equal((await w.local.verifyImage(`install_1/shared${i}`, 'v1')).digest, img.digest);

    // The local registry's access log: uploads (POST without mount, then PUT) and mounts, per base layer.
    const log = w.world.local.logs().slice(logStart);
    for (const d of baseDigests) {
      const puts = countMatches(log, new RegExp(`"PUT /v2/install_1/shared\\d+/blobs/uploads/[^"]*digest=${escapeRe(encodeURIComponent(d))}`, 'g'));
      const puts2 = countMatches(log, new RegExp(`"PUT /v2/install_1/shared\\d+/blobs/uploads/[^"]*digest=${escapeRe(d)}`, 'g'));
      const mounts = countMatches(log, new RegExp(`"POST /v2/install_1/shared\\d+/blobs/uploads/\\?mount=${escapeRe(encodeURIComponent(d))}`, 'g'));
      assert.equal(puts + puts2, 1, `base layer ${d} was uploaded ${puts + puts2} times`);
      assert.equal(mounts, IMAGES - 1, `base layer ${d} was mounted ${mounts} times`);
    }
  });
});

function countMatches(text: string, re: RegExp): number {
  return [...text.matchAll(re)].length;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
