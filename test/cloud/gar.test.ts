// GarCredentials against the GCP (and AWS) stand-ins, through the real google-auth-library.
// The metadata server stand-in stays the metadata host for this whole file: gcp-metadata
// remembers per process whether a metadata server is available.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GarCredentials } from '../../src/auth/cloud/gar.ts';
import { FerryError } from '../../src/errors.ts';
import { scrubSecrets, silentLogger } from '../../src/log/logger.ts';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY, TEST_USER_ARN, withEnv } from '../harness/aws-standin.ts';
import { GcpStandin } from '../harness/gcp-standin.ts';

const log = silentLogger();
const PROVIDER = 'projects/123456789/locations/global/workloadIdentityPools/ferry-pool/providers/aws';
const AUDIENCE = `//iam.googleapis.com/${PROVIDER}`;
const PUSHER = 'ferry-pusher@customer-project.iam.gserviceaccount.com';
const DENIED = 'locked-down@customer-project.iam.gserviceaccount.com';
const HOST = 'europe-west4-docker.pkg.dev';

let aws: AwsStandin;
let gcp: GcpStandin;
let dir: string;

function baseEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    GCE_METADATA_HOST: gcp.metadataHost,
    // Keep gcloud's well-known ADC file and config out of reach.
    HOME: dir,
    CLOUDSDK_CONFIG: join(dir, 'gcloud'),
    AWS_CONFIG_FILE: join(dir, 'no-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-credentials'),
    ...extra,
  };
}

function password(c: unknown): string {
  const b = c as { kind?: string; username?: string; password?: string };
  assert.equal(b?.kind, 'basic');
  assert.equal(b.username, 'oauth2accesstoken');
  return b.password as string;
}

async function rejectsWith(p: Promise<unknown>, code: string, ...patterns: RegExp[]): Promise<FerryError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof FerryError, `expected a FerryError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const re of patterns) assert.match(e.message, re);
    return e;
  }
  assert.fail('expected a rejection');
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-gar-test-'));
  aws = await AwsStandin.start({ region: 'us-west-2' });
  gcp = await GcpStandin.start({
    deniedServiceAccounts: [DENIED],
    allowedAudiences: [AUDIENCE],
    aws: { lookup: (k) => aws.lookupIdentity(k), regions: ['us-west-2'] },
  });
});

after(async () => {
  await gcp.close();
  await aws.close();
});

describe('application default credentials: metadata server', () => {
  test('a metadata access token becomes oauth2accesstoken:<token>; the project id is never looked up', () =>
    withEnv(baseEnv(), async () => {
      const p = new GarCredentials({ side: 'source', logger: log });
      const tok = password(await p.resolve({ registry: HOST }));
      const issued = gcp.accepts(tok);
      assert.ok(issued, 'the stand-in issued this token');
      assert.equal(issued.via, 'metadata');
      assert.deepEqual(issued.scopes, ['https://www.googleapis.com/auth/cloud-platform']);
      assert.equal(gcp.count('metadata:project-id'), 0);
      assert.equal(gcp.missingFlavor, 0);
      assert.equal(scrubSecrets(tok), '[REDACTED]');
      // Cached by the library: one token serves gcr.io too, without another request.
      const n = gcp.count('metadata:token');
      assert.equal(password(await p.resolve({ registry: 'gcr.io' })), tok);
      assert.equal(password(await p.resolve({ registry: HOST })), tok);
      assert.equal(gcp.count('metadata:token'), n);
      // refresh: true fetches anew.
      const fresh = password(await p.resolve({ registry: HOST, refresh: true }));
      assert.equal(gcp.count('metadata:token'), n + 1);
      assert.ok(gcp.accepts(fresh));
    }));

  test('non-Google hosts and hosts outside `registry` get undefined', () =>
    withEnv(baseEnv(), async () => {
      const p = new GarCredentials({ side: 'source', logger: log, registry: HOST });
      assert.equal(await p.resolve({ registry: 'docker.io' }), undefined);
      assert.equal(await p.resolve({ registry: `${TEST_ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com` }), undefined);
      assert.equal(await p.resolve({ registry: 'us-docker.pkg.dev' }), undefined);
      assert.throws(() => new GarCredentials({ side: 'source', logger: log, registry: 'ghcr.io' }), /not a Google Artifact Registry/);
    }));

  test('short-lived tokens are renewed before they expire', async () => {
    const short = await GcpStandin.start({ accessTokenLifetimeSeconds: 60 });
    try {
      // Another metadata server on another port: same process, so availability is already known.
      await withEnv(baseEnv({ GCE_METADATA_HOST: short.metadataHost }), async () => {
        const p = new GarCredentials({ side: 'destination', logger: log });
        const a = password(await p.resolve({ registry: HOST }));
        const b = password(await p.resolve({ registry: HOST }));
        // Within google-auth-library's 5-minute renewal window: each use gets a fresh token.
        assert.notEqual(a, b);
        assert.equal(short.count('metadata:token'), 2);
        assert.ok(short.accepts(b));
      });
    } finally {
      await short.close();
    }
  });

  test('impersonating a service account (IAM Credentials generateAccessToken)', () =>
    withEnv(baseEnv(), async () => {
      const p = new GarCredentials({ side: 'source', logger: log, serviceAccountEmail: PUSHER, iamCredentialsEndpoint: gcp.iamCredentialsEndpoint });
      const tok = password(await p.resolve({ registry: HOST }));
      const issued = gcp.accepts(tok);
      assert.equal(issued?.via, 'impersonated');
      assert.equal(issued?.subject, PUSHER);
      assert.deepEqual(issued?.scopes, ['https://www.googleapis.com/auth/cloud-platform']);
      assert.equal(scrubSecrets(tok), '[REDACTED]');
    }));

  test('a service account the agent may not impersonate: SOURCE_AUTH naming the role to grant', () =>
    withEnv(baseEnv(), async () => {
      const p = new GarCredentials({ side: 'source', logger: log, serviceAccountEmail: DENIED, iamCredentialsEndpoint: gcp.iamCredentialsEndpoint });
      const e = await rejectsWith(p.resolve({ registry: HOST }), 'SOURCE_AUTH', new RegExp(DENIED), /PERMISSION_DENIED/, /roles\/iam\.serviceAccountTokenCreator/);
      assert.equal(e.side, 'source');
      assert.equal(e.retryable, false);
    }));
});

describe('external_account: workload identity federation from AWS', () => {
  function writeConfig(name: string, opts: { impersonate?: string; imds: boolean }): string {
    const file = join(dir, name);
    const imds = aws.imds.url;
    writeFileSync(
      file,
      JSON.stringify({
        type: 'external_account',
        audience: AUDIENCE,
        subject_token_type: 'urn:ietf:params:aws:token-type:aws4_request',
        token_url: gcp.stsTokenUrl,
        ...(opts.impersonate ? { service_account_impersonation_url: gcp.impersonationUrl(opts.impersonate) } : {}),
        credential_source: {
          environment_id: 'aws1',
          ...(opts.imds
            ? {
                region_url: `${imds}/latest/meta-data/placement/availability-zone`,
                url: `${imds}/latest/meta-data/iam/security-credentials`,
                imdsv2_session_token_url: `${imds}/latest/api/token`,
              }
            : {}),
          regional_cred_verification_url: 'https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15',
        },
      }),
    );
    return file;
  }

  test('GOOGLE_APPLICATION_CREDENTIALS config, AWS identity from IMDSv2, signed GetCallerIdentity verified by Google STS', () =>
    withEnv(baseEnv({ GOOGLE_APPLICATION_CREDENTIALS: writeConfig('wif-imds.json', { imds: true }) }), async () => {
      const imdsBefore = aws.count('imds:credentials');
      const p = new GarCredentials({ side: 'destination', logger: log });
      const tok = password(await p.resolve({ registry: HOST }));
      const issued = gcp.accepts(tok);
      assert.equal(issued?.via, 'sts');
      assert.match(issued!.subject, /subject\/arn:aws:sts::111122223333:assumed-role\/ferry-instance\//);
      assert.equal(aws.count('imds:credentials'), imdsBefore + 1);
      assert.equal(aws.count('imds:unauthorized'), 0);
      assert.equal(gcp.count('metadata:project-id'), 0);
    }));

  test('config with impersonation URL, AWS identity from the environment', () =>
    withEnv(
      baseEnv({
        GOOGLE_APPLICATION_CREDENTIALS: writeConfig('wif-env.json', { imds: false, impersonate: PUSHER }),
        AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
        AWS_REGION: 'us-west-2',
      }),
      async () => {
        const stsBefore = gcp.count('sts:token');
        const p = new GarCredentials({ side: 'destination', logger: log });
        const tok = password(await p.resolve({ registry: HOST }));
        const issued = gcp.accepts(tok);
        assert.equal(issued?.via, 'impersonated');
        assert.equal(issued?.subject, PUSHER);
        assert.equal(gcp.count('sts:token'), stsBefore + 1);
        // The federated token that paid for the impersonation came from the AWS user.
        assert.ok(gcp.issued.some((t) => t.via === 'sts' && t.subject.endsWith(`/subject/${TEST_USER_ARN}`)));
      },
    ));

  test('AWS credentials Google STS cannot verify: a clear DESTINATION_AUTH error', () =>
    withEnv(
      baseEnv({
        GOOGLE_APPLICATION_CREDENTIALS: writeConfig('wif-bad.json', { imds: false }),
        AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY: 'wrong-secret',
        AWS_REGION: 'us-west-2',
      }),
      async () => {
        const p = new GarCredentials({ side: 'destination', logger: log });
        await rejectsWith(p.resolve({ registry: HOST }), 'DESTINATION_AUTH', /Google STS refused/, /invalid_grant/, /signature/);
      },
    ));

  test('programmatic federation (a plan\'s workload_identity_provider) with the AWS default chain and impersonation', () =>
    withEnv(baseEnv({ AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY }), async () => {
      const p = new GarCredentials({
        side: 'source',
        logger: log,
        workloadIdentityProvider: PROVIDER,
        serviceAccountEmail: PUSHER,
        awsRegion: 'us-west-2',
        stsTokenUrl: gcp.stsTokenUrl,
        iamCredentialsEndpoint: gcp.iamCredentialsEndpoint,
      });
      const tok = password(await p.resolve({ registry: 'us-docker.pkg.dev' }));
      assert.equal(gcp.accepts(tok)?.subject, PUSHER);
      assert.match(p.description, /workload identity federation/);
    }));

  test('programmatic federation into a denied service account', () =>
    withEnv(baseEnv({ AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY }), async () => {
      const p = new GarCredentials({
        side: 'source',
        logger: log,
        workloadIdentityProvider: PROVIDER,
        serviceAccountEmail: DENIED,
        awsRegion: 'us-west-2',
        stsTokenUrl: gcp.stsTokenUrl,
        iamCredentialsEndpoint: gcp.iamCredentialsEndpoint,
      });
      await rejectsWith(p.resolve({ registry: HOST }), 'SOURCE_AUTH', new RegExp(DENIED), /serviceAccountTokenCreator/);
    }));
});
