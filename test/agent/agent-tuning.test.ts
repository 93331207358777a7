// The agent takes the same transfer tuning from the environment as `ferry copy`
// (src/ends/registry/tuning.ts): here FERRY_UPLOAD_CHUNK_BYTES, seen in the local registry's access log.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pushImage } from '../harness/fixtures.ts';
import { plan, startAgent, tempState, worldForSuite } from './agent-harness.ts';

const MiB = 1024 * 1024;

describe('ferry agent: transfer tuning from the environment', () => {
  const w = worldForSuite();

  test('FERRY_UPLOAD_CHUNK_BYTES=1 MiB: a 3.5 MiB layer goes up in 1 MiB PATCHes', async () => {
    const img = await pushImage(w.vendor, 'tuning/app', 'v1', { layerSizes: [3.5 * MiB] });
    const jobId = w.world.cp.enqueueJob(plan(w.world, 'tuning/app', 'v1', 'install_1/tuning', { referrers: false }));
    const logStart = w.world.local.logs().length;
    const agent = startAgent(w.world, tempState(), ['--exit-when-idle'], { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) });
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    assert.equal(w.world.cp.job(jobId).status, 'finished');
    assert.equal((await w.local.verifyImage('install_1/tuning', 'v1')).digest, img.digest);
    const patches = [...w.world.local.logs().slice(logStart).matchAll(/"PATCH \/v2\/install_1\/tuning\/blobs\/uploads\//g)].length;
    assert.ok(patches >= 3, `expected the layer in 1 MiB PATCHes, saw ${patches} PATCH requests`);
  });

  test('a bad value stops the agent at start with exit 2, naming the variable', async () => {
    const agent = startAgent(w.world, tempState(), ['--exit-when-idle'], { FERRY_READ_TIMEOUT_SECONDS: 'soon' });
    assert.equal(await agent.exited, 2);
    assert.match(agent.logs(), /FERRY_READ_TIMEOUT_SECONDS/);
  });
});
