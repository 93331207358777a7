// The reference control plane says no on its own: bodies that the agent's own checkers
// (src/agent/contract.ts) let through but that break the contract are refused with 400 naming
// the field, so a shape mistake in the agent cannot pass on both sides at once.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { checkProgressBody, checkResultRequest, checkStatusRequest } from '../../src/agent/contract.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';

const IMAGE = {
  repository: '127.0.0.1:5000/install/app',
  tag: 'v1',
  digest: `sha256:${'a'.repeat(64)}`,
  media_type: 'application/vnd.oci.image.index.v1+json',
  size: 1234,
  platforms: [{ os: 'linux', architecture: 'arm64', variant: 'v8', digest: `sha256:${'b'.repeat(64)}` }],
  referrers: [{ digest: `sha256:${'c'.repeat(64)}`, artifact_type: 'application/vnd.dev.sigstore.bundle.v0.3+json' }],
};

describe('the reference control plane checks what the agent sends with its own schema', () => {
  let cp: ControlPlane;
  let jobId: string;
  let execId: string;
  const instance = 'instance-a';

  const send = async (method: string, path: string, body: unknown): Promise<{ status: number; code?: string; message?: string }> => {
    const res = await fetch(`${cp.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${cp.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    const answer = text ? (JSON.parse(text) as { code?: unknown; message?: unknown }) : {};
    return { status: res.status, ...(typeof answer.code === 'string' ? { code: answer.code } : {}), ...(typeof answer.message === 'string' ? { message: answer.message } : {}) };
  };
  const exec = () => `/v1/runner-jobs/${jobId}/executions/${execId}`;

  before(async () => {
    cp = await startControlPlane();
    jobId = cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: 'org-registry.example.com/org/app:v1', auth: { kind: 'anonymous' } },
      destination: { reference: '127.0.0.1:5000/install/app:v1', auth: { kind: 'local' } },
    });
    const claim = await send('POST', `/v1/runner-jobs/${jobId}/executions`, { instance_id: instance });
    assert.equal(claim.status, 201);
    execId = cp.job(jobId).executions[0]!.id;
  });
  after(() => cp.stop());

  it('shares no code with the agent\'s checkers', () => {
    for (const f of ['../harness/control-plane.ts', '../harness/contract-schema.ts']) {
      const text = readFileSync(new URL(f, import.meta.url), 'utf8');
      assert.doesNotMatch(text, /from '[^']*src\/agent\//, `${f} imports from src/agent`);
    }
  });

  // Each: what the agent's own checker says about it, and the field the control plane names.
  const resultMistakes: Array<{ what: string; body: Record<string, unknown>; field: RegExp }> = [
    { what: 'a success that carries an error code', body: { instance_id: instance, success: true, error_code: 'INTERNAL', outputs: { image: IMAGE } }, field: /successful result carries no error_code/ },
    { what: 'a failure without an error code', body: { instance_id: instance, success: false, error_message: 'it broke' }, field: /\$\.error_code: a failed result must name its error code/ },
    { what: 'a digest that is not a digest', body: { instance_id: instance, success: true, outputs: { image: { ...IMAGE, digest: 'latest' } } }, field: /\$\.outputs\.image\.digest/ },
    { what: 'a platform digest that is not one', body: { instance_id: instance, success: true, outputs: { image: { ...IMAGE, platforms: [{ os: 'linux', architecture: 'amd64', digest: 'sha256:short' }] } } }, field: /\$\.outputs\.image\.platforms\[0\]\.digest/ },
    { what: 'a repository without its registry host', body: { instance_id: instance, success: true, outputs: { image: { ...IMAGE, repository: 'app' } } }, field: /\$\.outputs\.image\.repository/ },
    { what: 'a media type that is not one', body: { instance_id: instance, success: true, outputs: { image: { ...IMAGE, media_type: 'index' } } }, field: /\$\.outputs\.image\.media_type/ },
    { what: 'a tag no registry would take', body: { instance_id: instance, success: true, outputs: { image: { ...IMAGE, tag: '-v1' } } }, field: /\$\.outputs\.image\.tag/ },
  ];
  for (const m of resultMistakes) {
    it(`result: ${m.what} passes the agent's checker, and the control plane refuses it`, async () => {
      assert.doesNotThrow(() => checkResultRequest(m.body, '$'), 'the agent\'s checker catches this itself now: pick a mistake it lets through');
      const r = await send('POST', `${exec()}/result`, m.body);
      assert.equal(r.status, 400, JSON.stringify(r));
      assert.equal(r.code, 'BAD_REQUEST');
      assert.match(r.message ?? '', m.field);
    });
  }

  it('progress without instance_id (the v1.0 shape, which the agent\'s progress checker still takes) is refused', async () => {
    const body = { bytes_done: 1, bytes_total: 2, blobs_done: 0, blobs_total: 1 };
    assert.doesNotThrow(() => checkProgressBody(body, '$'));
    const r = await send('POST', `${exec()}/progress`, body);
    assert.equal(r.status, 400);
    assert.match(r.message ?? '', /\$\.instance_id: missing/);
  });

  it('a misspelt field is refused, not ignored', async () => {
    const body = { instance_id: instance, bytes_done: 1, bytes_total: 2, blobs_done: 0, blobs_total: 1, blob_done: 0 };
    const r = await send('POST', `${exec()}/progress`, body);
    assert.equal(r.status, 400);
    assert.match(r.message ?? '', /\$\.blob_done: not a field of this body/);
  });

  it('a PATCH with a status the agent may not set is refused', async () => {
    const body = { instance_id: instance, status: 'finished' };
    assert.throws(() => checkStatusRequest(body, '$'));
    const r = await send('PATCH', exec(), body);
    assert.equal(r.status, 400);
    assert.match(r.message ?? '', /\$\.status: "finished" is not one of initializing, in-progress, cleaning-up/);
  });

  it('bodies of the right shape are taken, and one from another instance is not held', async () => {
    assert.equal((await send('PATCH', exec(), { instance_id: instance, status: 'in-progress' })).status, 200);
    assert.equal((await send('POST', `${exec()}/progress`, { instance_id: instance, bytes_done: 1, bytes_total: 2, blobs_done: 0, blobs_total: 1 })).status, 204);
    const other = await send('POST', `${exec()}/progress`, { instance_id: 'instance-b', bytes_done: 1, bytes_total: 2, blobs_done: 0, blobs_total: 1 });
    assert.deepEqual([other.status, other.code], [409, 'EXECUTION_NOT_HELD']);
    const otherResult = await send('POST', `${exec()}/result`, { instance_id: 'instance-b', success: true, outputs: { image: IMAGE } });
    assert.deepEqual([otherResult.status, otherResult.code], [409, 'EXECUTION_NOT_HELD']);
    assert.equal((await send('POST', `${exec()}/result`, { instance_id: instance, success: true, outputs: { image: IMAGE } })).status, 200);
    assert.equal(cp.job(jobId).status, 'finished');
  });
});
