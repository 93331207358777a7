// Plans from the control plane: checked completely, unknown fields ignored, unknown type or
// kind refused, transports and local paths refused, the destination kept inside the local registry.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError, UsageError } from '../../src/errors.ts';
import { isInsideLocalRegistry, parseLocalRegistry, parsePlan } from '../../src/agent/plan.ts';
import { parseReference } from '../../src/reference/reference.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;
const LOCAL = { host: '123456789012.dkr.ecr.us-west-2.amazonaws.com', prefix: 'install_789' };

function plan(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'oci-sync',
    source: { reference: `org-registry.example.com/org_123/app_456@${DIGEST}`, auth: { kind: 'one-time-token', one_time_token: 'ott_abcdef' } },
    destination: { reference: '123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789/app_456:deploy_42', auth: { kind: 'local' } },
    platforms: 'all',
    referrers: true,
    ...overrides,
  };
}

function invalid(raw: unknown, pattern: RegExp, opts = {}): void {
  assert.throws(
    () => parsePlan(raw, opts),
    (e: unknown) => {
      assert.ok(e instanceof FerryError, String(e));
      assert.equal(e.code, 'INVALID_PLAN');
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe('plans', () => {
  it('parses the contract example, ignoring unknown fields', () => {
    const p = parsePlan(plan({ future_field: { x: 1 } }), { localRegistry: LOCAL });
    assert.equal(p.source.ref.digest, DIGEST);
    assert.deepEqual(p.source.auth, { kind: 'one-time-token', one_time_token: 'ott_abcdef' });
    assert.equal(p.destination.ref.tag, 'deploy_42');
    assert.equal(p.platforms, 'all');
    assert.equal(p.referrers, true);
    assert.ok(!('future_field' in p));
  });

  it('platforms: "all" or a deduplicated list; defaults when absent', () => {
    const p = parsePlan(plan({ platforms: ['linux/amd64', 'linux/arm64/v8', 'linux/amd64'] }));
    assert.deepEqual(p.platforms, [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
    const { platforms: _p, referrers: _r, ...bare } = plan();
    const d = parsePlan(bare);
    assert.equal(d.platforms, 'all');
    assert.equal(d.referrers, true);
    invalid(plan({ platforms: [] }), /platforms must not be an empty list/);
    invalid(plan({ platforms: ['linux'] }), /platforms\[0\]: invalid platform "linux"/);
    invalid(plan({ platforms: 'some' }), /platforms must be "all" or a list/);
    invalid(plan({ referrers: 'yes' }), /referrers must be a boolean/);
  });

  it('source auth kinds', () => {
    assert.deepEqual(parsePlan(plan({ source: { reference: 'ghcr.io/org/app:1', auth: { kind: 'anonymous' } } })).source.auth, { kind: 'anonymous' });
    const ecr = { kind: 'aws-ecr', iam_role_arn: 'arn:aws:iam::123456789012:role/puller', region: 'us-west-2' };
    assert.deepEqual(parsePlan(plan({ source: { reference: '123456789012.dkr.ecr.us-west-2.amazonaws.com/app:1', auth: ecr } })).source.auth, ecr);
    const gar = { kind: 'gcp-gar', service_account_email: 'puller@proj.iam.gserviceaccount.com' };
    assert.deepEqual(parsePlan(plan({ source: { reference: 'us-docker.pkg.dev/proj/repo/app:1', auth: gar } })).source.auth, gar);
    invalid(plan({ source: { reference: 'ghcr.io/a/b:1', auth: { kind: 'password' } } }), /source\.auth\.kind "password" is not one of/);
    invalid(plan({ source: { reference: 'ghcr.io/a/b:1', auth: { kind: 'aws-ecr', iam_role_arn: 'role', region: 'us-west-2' } } }), /not an IAM role ARN/);
    invalid(plan({ source: { reference: 'ghcr.io/a/b:1', auth: { kind: 'one-time-token' } } }), /source\.auth\.one_time_token is missing/);
    invalid(plan({ destination: { reference: '123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789/a:1', auth: { kind: 'basic' } } }), /destination\.auth\.kind "basic" is not "local"/);
  });

  it('refuses unknown types, wrong shapes, transports, local paths and short names', () => {
    invalid(plan({ type: 'helm-sync' }), /type "helm-sync" is not one of oci-sync/);
    invalid('a string', /plan must be an object, got a string/);
    invalid(plan({ source: null }), /plan\.source is missing/);
    invalid(plan({ source: { reference: 42, auth: { kind: 'anonymous' } } }), /source\.reference must be a string, got a number/);
    for (const ref of ['oci:/var/lib/images/app', 'oci-archive:/tmp/a.tar', 'docker-archive:a.tar', 'docker://ghcr.io/a/b:1', 'dir:/tmp/x', '/etc/passwd', './local', 'alpine:3', 'library/alpine']) {
      invalid(plan({ source: { reference: ref, auth: { kind: 'anonymous' } } }), /source\.reference/);
    }
    invalid(plan({ source: { reference: 'ghcr.io/Org/App:1', auth: { kind: 'anonymous' } } }), /lowercase/);
    // A registry on port with a name like a transport is still a registry.
    assert.equal(parsePlan(plan({ source: { reference: 'docker:5000/app:1', auth: { kind: 'anonymous' } } })).source.ref.registry, 'docker:5000');
  });

  it('the destination must lie inside the local registry (host, and prefix if any)', () => {
    const dst = (reference: string) => plan({ destination: { reference, auth: { kind: 'local' } } });
    invalid(dst('evil.example.com/install_789/app:1'), /outside the local registry 123456789012\.dkr\.ecr\.us-west-2\.amazonaws\.com\/install_789\//, { localRegistry: LOCAL });
    invalid(dst('123456789012.dkr.ecr.us-west-2.amazonaws.com/install_7890/app:1'), /outside/, { localRegistry: LOCAL });
    invalid(dst('123456789012.dkr.ecr.us-west-2.amazonaws.com/other/app:1'), /outside/, { localRegistry: LOCAL });
    invalid(dst('123456789012.dkr.ecr.us-west-2.amazonaws.com:443/install_789/app:1'), /outside/, { localRegistry: LOCAL });
    assert.ok(parsePlan(dst('123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789/deep/app:1'), { localRegistry: LOCAL }));
    assert.ok(isInsideLocalRegistry(parseReference('index.docker.io/acme/app:1'), { host: 'docker.io', prefix: 'acme' }));
    assert.ok(!isInsideLocalRegistry(parseReference('registry.local/acme/app:1'), { host: 'registry.local:5000' }));
  });

  it('local registry setting', () => {
    assert.deepEqual(parseLocalRegistry('registry.local:5000'), { host: 'registry.local:5000' });
    assert.deepEqual(parseLocalRegistry('REGISTRY.local/a/b/'), { host: 'registry.local', prefix: 'a/b' });
    assert.deepEqual(parseLocalRegistry('[::1]:5000/x'), { host: '[::1]:5000', prefix: 'x' });
    assert.throws(() => parseLocalRegistry('registry.local/x@sha256:00', '--local-registry'), (e: unknown) => e instanceof UsageError && /--local-registry: .*digest/.test(e.message));
    assert.throws(() => parseLocalRegistry('registry.local:99999'), /port/);
    assert.throws(() => parseLocalRegistry(''), /empty/);
  });
});
