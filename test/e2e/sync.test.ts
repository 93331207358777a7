// `ferry sync --plan FILE`: a control-plane plan run by hand.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor } from '../harness/oci-client.ts';
import { pushMultiArch } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';

let src: DistributionRegistry;
let dst: DistributionRegistry;
const dir = mkdtempSync(join(tmpdir(), 'ferry-plans-'));
const env = { XDG_STATE_HOME: tempStateHome(), VENDOR_CREDS: 'vendor:vendor-pass-1234' };

before(async () => {
  [src, dst] = await Promise.all([startDistribution({ auth: 'htpasswd', users: { vendor: 'vendor-pass-1234' } }), startDistribution()]);
});
after(async () => {
  await Promise.all([src?.stop(), dst?.stop()]);
});

function writePlan(name: string, plan: object): string {
  const p = join(dir, name);
  writeFileSync(p, JSON.stringify(plan));
  return p;
}

test('a plan runs like the agent would run it: platforms and referrers from the plan', async () => {
  const idx = await pushMultiArch(clientFor(src, { username: 'vendor', password: 'vendor-pass-1234' }), 'org/app', 'v1');
  const plan = writePlan('ok.json', {
    type: 'oci-sync',
    source: { reference: `${src.host}/org/app:v1`, auth: { kind: 'one-time-token', one_time_token: 'ott_not_used_here' } },
    destination: { reference: `${dst.host}/install/app:v1`, auth: { kind: 'local' } },
    platforms: ['linux/amd64', 'linux/arm64'],
    referrers: false,
  });
  const noCreds = await runFerry(['sync', '--json', '--plan', plan], { env });
  assert.equal(noCreds.code, 2);
  assert.match(noCreds.stderr, /--src-creds/);

  const r = await runFerry(['sync', '--json', '--plan', plan, '--src-creds', 'env:VENDOR_CREDS'], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json.digest_changed, true);
  assert.equal(r.json.image.platforms.length, 2);
  assert.equal((await clientFor(dst).verifyImage('install/app', 'v1')).digest, r.json.image.digest);
  assert.notEqual(r.json.image.digest, idx.digest);
});

test('a bad plan file exits 2 naming the problem', async () => {
  const notJson = join(dir, 'bad.json');
  writeFileSync(notJson, '{"type": "oci-sync",');
  const r1 = await runFerry(['sync', '--plan', notJson], { env });
  assert.equal(r1.code, 2);
  assert.match(r1.stderr, /not JSON/);
  const badType = writePlan('type.json', { type: 'helm-sync', source: {}, destination: {} });
  const r2 = await runFerry(['sync', '--json', '--plan', badType], { env });
  assert.equal(r2.code, 2);
  assert.match(r2.json.error.message, /helm-sync/);
  const local = writePlan('local.json', {
    type: 'oci-sync',
    source: { reference: `oci-archive:${join(dir, 'x.tar')}`, auth: { kind: 'anonymous' } },
    destination: { reference: `${dst.host}/install/app:v1`, auth: { kind: 'local' } },
  });
  const r3 = await runFerry(['sync', '--plan', local], { env });
  assert.equal(r3.code, 2, 'a plan must not name local paths');
  const missing = await runFerry(['sync', '--plan', join(dir, 'nope.json')], { env });
  assert.equal(missing.code, 2);
});
