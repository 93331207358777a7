// `ferry copy` end to end with Google Artifact Registry as source and as destination: the real
// CLI, the real google-auth-library against the metadata server / STS / IAM Credentials
// stand-ins (the last two under their real googleapis.com names, through the HTTPS proxy), real
// TLS to the "Artifact Registry" hosts, and real distribution registries whose htpasswd holds the
// access token the stand-in issues: us-west1 accepts the VM's own token, europe-west4 only the
// token of an impersonated service account.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, TEST_USER_ARN } from '../harness/aws-standin.ts';
import { GcpStandin } from '../harness/gcp-standin.ts';
import {
  GOOGLE_API_HOSTS,
  makeTestPki,
  startConnectProxy,
  startGarRegistry,
  startGoogleApis,
  type ConnectProxy,
  type FrontRequest,
  type GarRegistry,
  type TestPki,
} from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { pushImage, pushMultiArch } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { assertNoSecrets, freshHome, proxyEnv, runFerryIsolated } from './cloud-e2e.ts';

const PROVIDER = 'projects/123456789/locations/global/workloadIdentityPools/ferry-pool/providers/aws';
const AUDIENCE = `//iam.googleapis.com/${PROVIDER}`;
const READER_SA = 'ferry-reader@customer-project.iam.gserviceaccount.com';
const PUSHER_SA = 'ferry-pusher@customer-project.iam.gserviceaccount.com';
const DENIED_SA = 'locked-down@customer-project.iam.gserviceaccount.com';
/** The VM's own access token (metadata server), which the us-west1 registry accepts. */
const VM_TOKEN = 'ya29.ferry-test-vm-service-account-token-0123456789';
/** Every impersonated service account's token, which the europe-west4 registry accepts. */
const IMPERSONATED_TOKEN = 'ya29.ferry-test-impersonated-token-9876543210';

let aws: AwsStandin;
let gcp: GcpStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let vmRegistry: GarRegistry;
let saRegistry: GarRegistry;
let googleApis: { requests: FrontRequest[]; stop(): Promise<void> };
let local: DistributionRegistry;
let localC: OciClient;

function env(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { GCE_METADATA_HOST: gcp.metadataHost, ...proxyEnv(proxy.url), ...extra };
}
const awsKeys = { AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY, AWS_REGION: 'us-west-2' };

before(async () => {
  aws = await AwsStandin.start({ region: 'us-west-2' });
  gcp = await GcpStandin.start({
    projectId: 'ferry-test-project',
    deniedServiceAccounts: [DENIED_SA],
    allowedAudiences: [AUDIENCE],
    aws: { lookup: (k) => aws.lookupIdentity(k), regions: ['us-west-2'] },
    accessToken: (via) => (via === 'metadata' ? VM_TOKEN : via === 'impersonated' ? IMPERSONATED_TOKEN : undefined),
  });
  pki = makeTestPki(['us-west1-docker.pkg.dev', 'europe-west4-docker.pkg.dev', ...GOOGLE_API_HOSTS]);
  proxy = await startConnectProxy();
  [vmRegistry, saRegistry, local, googleApis] = await Promise.all([
    startGarRegistry({ gcp, pki, proxy, location: 'us-west1', password: VM_TOKEN, repositories: ['ferry-test-project/images'] }),
    startGarRegistry({ gcp, pki, proxy, location: 'europe-west4', password: IMPERSONATED_TOKEN, repositories: ['customer-project/install'] }),
    startDistribution(),
    startGoogleApis({ gcp, pki, proxy }),
  ]);
  localC = clientFor(local);
});

after(async () => {
  await Promise.all([vmRegistry?.stop(), saRegistry?.stop(), local?.stop(), googleApis?.stop(), proxy?.stop()]);
  await Promise.all([gcp?.close(), aws?.close()]);
});

describe('Artifact Registry as the source', () => {
  test('metadata server credentials (ADC): every platform byte-exact; no token in logs or on disk', async () => {
    const idx = await pushMultiArch(vmRegistry.client, 'ferry-test-project/images/app', 'v1');
    const home = freshHome();
    const tokens = gcp.count('metadata:token');
    const r = await runFerryIsolated(
      ['copy', '--json', '--log-level', 'trace', '--ca-file', pki.caPath, `${vmRegistry.host}/ferry-test-project/images/app:v1`, `${local.host}/mirror/gar-app:v1`],
      env(),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('mirror/gar-app', 'v1')).digest, idx.digest);
    assert.ok(gcp.count('metadata:token') > tokens, 'the access token came from the metadata server');
    assert.equal(gcp.count('metadata:project-id'), 0, 'no project id lookup');
    assert.ok(proxy.connects.some((c) => c.target === `${vmRegistry.host}:443` && c.routed));
    assert.ok(vmRegistry.requests.some((q) => q.by === 'registry' && q.status === 200));
    assertNoSecrets(r, [VM_TOKEN], [home.home]);
  });

  test('--src-gcp-service-account: impersonation through IAM Credentials (iamcredentials.googleapis.com)', async () => {
    const img = await pushImage(saRegistry.client, 'customer-project/install/app', 'v1');
    const before = googleApis.requests.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--src-gcp-service-account', READER_SA, `${saRegistry.host}/customer-project/install/app:v1`, `${local.host}/mirror/sa-app:v1`],
      env(),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('mirror/sa-app', 'v1')).digest, img.digest);
    const gen = googleApis.requests.slice(before).filter((q) => q.path.includes(':generateAccessToken'));
    assert.ok(gen.length >= 1 && gen.every((q) => q.status === 200));
    assert.ok(gen[0]?.path.includes(encodeURIComponent(READER_SA)) || gen[0]?.path.includes(READER_SA));
    // The caller of generateAccessToken was the VM's service account.
    assert.equal(gen[0]?.authorization, `Bearer ${VM_TOKEN}`);
  });

  test('a service account the caller may not impersonate: SOURCE_AUTH naming the permission, exit 1', async () => {
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--src-gcp-service-account', DENIED_SA, `${saRegistry.host}/customer-project/install/app:v1`, `${local.host}/mirror/denied:v1`],
      env(),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'SOURCE_AUTH');
    assert.match(r.json.error.message, new RegExp(`cannot impersonate service account ${DENIED_SA.replace(/\./g, '\\.')}`));
    assert.match(r.json.error.message, /roles\/iam\.serviceAccountTokenCreator/);
    assert.match(r.stderr, /ferry: SOURCE_AUTH: /);
  });

  test('GOOGLE_APPLICATION_CREDENTIALS with an external_account config (AWS credential source, impersonation)', async () => {
    const img = await pushImage(saRegistry.client, 'customer-project/install/wif', 'v1');
    const home = freshHome();
    const config = join(home.home, 'wif.json');
    writeFileSync(
      config,
      JSON.stringify({
        type: 'external_account',
        audience: AUDIENCE,
        subject_token_type: 'urn:ietf:params:aws:token-type:aws4_request',
        token_url: gcp.stsTokenUrl,
        service_account_impersonation_url: gcp.impersonationUrl(READER_SA),
        credential_source: { environment_id: 'aws1', regional_cred_verification_url: 'https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15' },
      }),
    );
    const sts = gcp.count('sts:token');
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, `${saRegistry.host}/customer-project/install/wif:v1`, `${local.host}/mirror/wif:v1`],
      env({ ...awsKeys, GOOGLE_APPLICATION_CREDENTIALS: config }),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('mirror/wif', 'v1')).digest, img.digest);
    assert.equal(gcp.count('sts:token'), sts + 1);
    assert.ok(gcp.issued.some((t) => t.via === 'sts' && t.subject.endsWith(`/subject/${TEST_USER_ARN}`)));
  });
});

describe('Artifact Registry as the destination', () => {
  test('--dst-gcp-workload-identity-provider with --dst-gcp-service-account: AWS identity → Google STS → impersonation; monolithic uploads', async () => {
    const img = await pushImage(localC, 'src/for-gar', 'v1', { layerSizes: [300_000, 5000] });
    const start = saRegistry.requests.length;
    const sts = gcp.count('sts:token');
    const r = await runFerryIsolated(
      [
        'copy', '--json', '--ca-file', pki.caPath,
        '--dst-gcp-workload-identity-provider', PROVIDER, '--dst-gcp-service-account', PUSHER_SA,
        `${local.host}/src/for-gar:v1`, `${saRegistry.host}/customer-project/install/app:v2`,
      ],
      env(awsKeys),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await saRegistry.client.verifyImage('customer-project/install/app', 'v2')).digest, img.digest);
    assert.equal(gcp.count('sts:token'), sts + 1, 'one token exchange at sts.googleapis.com');
    assert.ok(gcp.issued.some((t) => t.via === 'impersonated' && t.subject === PUSHER_SA));
    const mine = saRegistry.requests.slice(start);
    assert.equal(mine.filter((q) => q.method === 'PATCH').length, 0, 'no chunked upload to Artifact Registry');
    assert.equal(mine.filter((q) => q.method === 'PUT' && /\/blobs\/uploads\//.test(q.path) && q.status === 201).length, 3);
  });

  test('a repository that does not exist: DESTINATION_REJECTED with the gcloud command that creates it', async () => {
    await pushImage(localC, 'src/nowhere', 'v1');
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, `${local.host}/src/nowhere:v1`, `${vmRegistry.host}/ferry-test-project/missing/app:v1`],
      env(),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'DESTINATION_REJECTED');
    assert.match(r.json.error.message, /Artifact Registry repository missing does not exist in project ferry-test-project/);
    assert.match(r.json.error.message, /gcloud artifacts repositories create missing --repository-format=docker --location=us-west1 --project=ferry-test-project/);
  });
});
