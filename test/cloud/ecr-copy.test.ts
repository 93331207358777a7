// `ferry copy` end to end with Amazon ECR as source and as destination: the real CLI, the real
// AWS SDK against the STS / ECR / IMDS stand-ins, real TLS through an HTTPS proxy to the "ECR"
// host, and a real distribution registry (htpasswd: the password the ECR stand-in issues).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY, TEST_USER_ARN } from '../harness/aws-standin.ts';
import { awsApiHosts, makeTestPki, S3_LAYER_HOST, startAwsApis, startConnectProxy, startEcrRegistry, type ConnectProxy, type EcrRegistry, type TestPki } from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { pushImage, pushLargeImage, pushMultiArch } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { assertNoSecrets, freshHome, proxyEnv, runFerryIsolated } from './cloud-e2e.ts';

const REGION = 'us-west-2';
const READER_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-reader`;
const PUSHER_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-pusher`;
const NO_CREATE_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-no-create`;
const UNTRUSTED_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-untrusted`;
/** What GetAuthorizationToken issues, and what the registry's htpasswd holds. */
const ECR_PASSWORD = 'eyJwYXlsb2FkIjoiZmVycnktdGVzdC1lY3ItcGFzc3dvcmQifQ';
const MiB = 1024 * 1024;

let aws: AwsStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let ecr: EcrRegistry;
let local: DistributionRegistry;
let localC: OciClient;

function env(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { ...aws.env(), ...proxyEnv(proxy.url), ...extra };
}
const keys = { AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY };

before(async () => {
  aws = await AwsStandin.start({
    region: REGION,
    ecrPassword: ECR_PASSWORD,
    roles: [
      { arn: READER_ROLE },
      { arn: PUSHER_ROLE },
      { arn: NO_CREATE_ROLE },
      { arn: UNTRUSTED_ROLE, trustedPrincipals: [`arn:aws:iam::${TEST_ACCOUNT}:user/someone-else`] },
    ],
    // The no-create role may push but not create repositories.
    allow: (principal, action) => !(principal.includes(':assumed-role/ferry-no-create/') && action === 'ecr:CreateRepository'),
  });
  const apis = awsApiHosts(REGION);
  pki = makeTestPki([aws.registryHost(), S3_LAYER_HOST, apis.sts, apis.ecr]);
  proxy = await startConnectProxy();
  [ecr, local] = await Promise.all([
    startEcrRegistry({ aws, pki, proxy, password: ECR_PASSWORD, redirectBlobs: true, pullThroughPrefixes: ['docker-hub'] }),
    startDistribution(),
  ]);
  localC = clientFor(local);
});

after(async () => {
  await Promise.all([ecr?.stop(), local?.stop(), proxy?.stop(), aws?.close()]);
});

describe('ECR as the source', () => {
  test('environment credentials: every platform byte-exact; layers come from S3 without the registry credentials; no secret in logs or on disk', async () => {
    aws.addRepository('team/app');
    const idx = await pushMultiArch(ecr.client, 'team/app', 'v1');
    const home = freshHome();
    const tokensBefore = aws.count('GetAuthorizationToken');
    const r = await runFerryIsolated(
      ['copy', '--json', '--log-level', 'trace', '--ca-file', pki.caPath, `${ecr.host}/team/app:v1`, `${local.host}/mirror/app:v1`],
      env(keys),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.image.digest, idx.digest);
    assert.equal((await localC.verifyImage('mirror/app', 'v1')).digest, idx.digest);
    // One GetAuthorizationToken, for the registry's account, by the environment's identity.
    assert.equal(aws.count('GetAuthorizationToken'), tokensBefore + 1);
    assert.equal(aws.issuedEcrTokens.at(-1)?.principal, TEST_USER_ARN);
    // The registry was reached through the proxy, under its own name, with TLS.
    assert.ok(proxy.connects.some((c) => c.target === `${ecr.host}:443` && c.routed));
    assert.deepEqual(proxy.plainRequests, []);
    // Layer downloads were redirected to "S3": none of them carried the registry's Authorization.
    const redirected = ecr.requests.filter((q) => q.note === 'redirect to S3');
    assert.equal(new Set(redirected.map((q) => q.path)).size, idx.blobs.length, 'every blob download was redirected');
    assert.equal(ecr.s3Requests.length, redirected.length);
    for (const q of ecr.s3Requests) {
      assert.equal(q.authorization, undefined, `S3 received an Authorization header for ${q.path}`);
      assert.ok(q.status === 200 || q.status === 206, `S3 answered ${q.status} to ${q.path}`);
    }
    assertNoSecrets(r, [ECR_PASSWORD, Buffer.from(`AWS:${ECR_PASSWORD}`).toString('base64'), TEST_SECRET_ACCESS_KEY], [home.home]);
  });
});

describe('behind an HTTPS proxy, without endpoint overrides', () => {
  test('STS and the ECR API are reached through the proxy too, not only the registry', async () => {
    // No AWS_ENDPOINT_URL_*: the SDK goes to sts.REGION / api.ecr.REGION.amazonaws.com, which
    // only the proxy can reach (the stand-ins behind TLS fronts under those names). Before
    // src/auth/cloud/aws-http.ts the SDK ignored HTTPS_PROXY and this copy failed to resolve them.
    const apis = await startAwsApis({ aws, pki, proxy });
    try {
      aws.addRepository('team/proxied');
      const img = await pushImage(ecr.client, 'team/proxied', 'v1');
      const from = proxy.connects.length;
      const [assumed, tokens] = [aws.issuedSessions.length, aws.count('GetAuthorizationToken')];
      const r = await runFerryIsolated(
        ['copy', '--json', '--ca-file', pki.caPath, '--src-aws-role-arn', READER_ROLE, `${ecr.host}/team/proxied:v1`, `${local.host}/proxied:v1`],
        env({ ...keys, AWS_ENDPOINT_URL_STS: undefined, AWS_ENDPOINT_URL_ECR: undefined }),
        freshHome(),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await localC.verifyImage('proxied', 'v1')).digest, img.digest);
      const names = awsApiHosts(REGION);
      const tunnels = proxy.connects.slice(from).filter((c) => c.routed).map((c) => c.target);
      assert.ok(tunnels.includes(`${names.sts}:443`), `no tunnel to STS: ${tunnels.join(', ')}`);
      assert.ok(tunnels.includes(`${names.ecr}:443`), `no tunnel to the ECR API: ${tunnels.join(', ')}`);
      assert.ok(tunnels.includes(`${ecr.host}:443`));
      // The calls arrived, signed for those names, and were answered.
      assert.equal(aws.issuedSessions.length, assumed + 1);
      assert.equal(aws.count('GetAuthorizationToken'), tokens + 1);
      assert.ok(apis.requests.length >= 2 && apis.requests.every((q) => q.status === 200), JSON.stringify(apis.requests.map((q) => [q.path, q.status])));
      assert.deepEqual(proxy.plainRequests, []);
    } finally {
      await apis.stop();
    }
  });
});

describe('ECR as the source, other identities', () => {
  test('EC2 instance metadata (IMDSv2), through a pull-through cache prefix', async () => {
    // The upstream image is in the cache already; the repository appears on the first pull through the rule.
    const img = await pushImage(ecr.client, 'docker-hub/library/alpine', '3.20');
    assert.equal(aws.repository('docker-hub/library/alpine'), undefined);
    const imdsTokens = aws.count('imds:token');
    const imdsCreds = aws.count('imds:credentials');
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, `${ecr.host}/docker-hub/library/alpine:3.20`, `${local.host}/library/alpine:3.20`],
      env(),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('library/alpine', '3.20')).digest, img.digest);
    assert.ok(aws.count('imds:token') > imdsTokens, 'an IMDSv2 session token was requested');
    assert.ok(aws.count('imds:credentials') > imdsCreds, 'the instance role credentials were read');
    assert.match(aws.issuedEcrTokens.at(-1)?.principal ?? '', /:assumed-role\/ferry-instance\//);
    assert.ok(aws.repository('docker-hub/library/alpine'), 'the pull went through the cache rule');
  });

  test('--src-aws-role-arn: sts:AssumeRole with a session named after the job; the registry token is the role\'s', async () => {
    aws.addRepository('team/private');
    const img = await pushImage(ecr.client, 'team/private', 'v2');
    const sessions = aws.issuedSessions.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--src-aws-role-arn', READER_ROLE, `${ecr.host}/team/private:v2`, `${local.host}/private:v2`],
      env(keys),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('private', 'v2')).digest, img.digest);
    const issued = aws.issuedSessions.slice(sessions);
    assert.equal(issued.length, 1);
    assert.equal(issued[0]?.action, 'AssumeRole');
    assert.equal(issued[0]?.roleArn, READER_ROLE);
    assert.match(issued[0]?.sessionName ?? '', /^ferry-copy-[0-9a-f]{8}$/);
    assert.equal(aws.issuedEcrTokens.at(-1)?.principal, issued[0]?.arn);
    // The same session name is in ferry's log, so CloudTrail entries can be matched to the run.
    assert.ok(r.stderr.includes(issued[0]?.sessionName ?? '(none)'), 'the session name is logged');
  });

  test('a role that does not trust the caller: SOURCE_AUTH naming sts:AssumeRole and the role, exit 1', async () => {
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--src-aws-role-arn', UNTRUSTED_ROLE, `${ecr.host}/team/private:v2`, `${local.host}/denied:v2`],
      env(keys),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'SOURCE_AUTH');
    assert.match(r.json.error.message, /sts:AssumeRole was denied/);
    assert.ok(r.json.error.message.includes(UNTRUSTED_ROLE));
    assert.match(r.json.error.message, /trust policy/);
    assert.match(r.stderr, /ferry: SOURCE_AUTH: /);
  });

  test('cloud flags that do not fit the registry are usage errors (exit 2)', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--src-aws-role-arn', READER_ROLE, `${local.host}/a:1`, `${local.host}/b:1`], /--src-aws-role-arn needs an Amazon ECR source/],
      [['--src-aws-role-arn', 'ferry-reader', `${ecr.host}/a:1`, `${local.host}/b:1`], /must be an IAM role ARN/],
      [['--dst-gcp-service-account', 'sa@p.iam.gserviceaccount.com', `${local.host}/a:1`, `${ecr.host}/b:1`], /needs an Artifact Registry or Container Registry destination/],
      [['--ecr-tag-immutability', `${local.host}/a:1`, `${local.host}/b:1`], /only apply to an Amazon ECR destination/],
    ];
    const runs = await Promise.all(cases.map(([args]) => runFerryIsolated(['copy', ...args], env(keys), freshHome())));
    for (const [i, [args, re]] of cases.entries()) {
      assert.equal(runs[i]?.code, 2, `${args.join(' ')}: ${runs[i]?.stderr}`);
      assert.match(runs[i]?.stderr ?? '', re);
    }
  });
});

describe('ECR as the destination', () => {
  test('the repository is created with the requested settings; uploads are monolithic; an immutable tag is refused clearly', async () => {
    // One layer over the monolithic limit (8 MiB chunks here): any other registry would get it in chunks.
    const big = await pushLargeImage(localC, 'app/big', 'v1', { layerCount: 1, layerSize: 33 * MiB });
    assert.equal(aws.repository('install/app'), undefined);
    const sessions = aws.issuedSessions.length;
    const start = ecr.requests.length;
    const r = await runFerryIsolated(
      [
        'copy', '--json', '--ca-file', pki.caPath,
        '--dst-aws-role-arn', PUSHER_ROLE, '--ecr-tag-immutability', '--ecr-scan-on-push', '--ecr-kms-key', 'alias/ferry-images',
        `${local.host}/app/big:v1`, `${ecr.host}/install/app:v1`,
      ],
      { ...env(keys), FERRY_UPLOAD_CHUNK_BYTES: String(8 * MiB) },
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/app', 'v1')).digest, big.digest);
    const repo = aws.repository('install/app');
    assert.ok(repo, 'ferry created the repository');
    assert.equal(repo.imageTagMutability, 'IMMUTABLE');
    assert.deepEqual(repo.imageScanningConfiguration, { scanOnPush: true });
    assert.deepEqual(repo.encryptionConfiguration, { encryptionType: 'KMS', kmsKey: 'alias/ferry-images' });
    assert.equal(aws.issuedSessions.slice(sessions)[0]?.roleArn, PUSHER_ROLE);
    const mine = ecr.requests.slice(start);
    assert.equal(mine.filter((q) => q.method === 'PATCH').length, 0, 'no chunked upload to ECR');
    assert.equal(mine.filter((q) => q.method === 'PUT' && /\/blobs\/uploads\//.test(q.path) && q.status === 201).length, 2);

    // Another image under the same tag: ECR refuses (TAG_INVALID), ferry says why.
    await pushImage(localC, 'app/other', 'v1');
    const again = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--dst-aws-role-arn', PUSHER_ROLE, `${local.host}/app/other:v1`, `${ecr.host}/install/app:v1`],
      env(keys),
      freshHome(),
    );
    assert.equal(again.code, 1, again.stderr);
    assert.equal(again.json.error.code, 'DESTINATION_REJECTED');
    assert.match(again.json.error.message, /immutable tag/);
    assert.match(again.json.error.message, /tag immutability on/);
    assert.ok(ecr.requests.some((q) => q.note === 'immutable tag'));
    assert.equal((await ecr.client.verifyImage('install/app', 'v1')).digest, big.digest, 'the tag still names the first image');
  });

  test('--dry-run creates nothing; --no-create-repository: a missing repository fails with DESTINATION_REJECTED and how to create it', async () => {
    await pushImage(localC, 'app/small', 'v1');
    const creates = aws.count('CreateRepository');
    const plan = await runFerryIsolated(['copy', '--json', '--dry-run', '--ca-file', pki.caPath, `${local.host}/app/small:v1`, `${ecr.host}/never/created:v1`], env(keys), freshHome());
    assert.equal(plan.code, 0, plan.stderr);
    assert.equal(plan.json.dry_run.blobs.length, 3);
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--no-create-repository', `${local.host}/app/small:v1`, `${ecr.host}/never/created:v1`],
      env(keys),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'DESTINATION_REJECTED');
    assert.match(r.json.error.message, /does not exist/);
    assert.match(r.json.error.message, /aws ecr create-repository --repository-name never\/created --region us-west-2/);
    assert.equal(aws.count('CreateRepository'), creates, 'no CreateRepository call');
    assert.equal(aws.repository('never/created'), undefined);
  });

  test('a repository the identity may not create: DESTINATION_REJECTED naming ecr:CreateRepository', async () => {
    await pushImage(localC, 'app/small2', 'v1');
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--dst-aws-role-arn', NO_CREATE_ROLE, `${local.host}/app/small2:v1`, `${ecr.host}/not/allowed:v1`],
      env(keys),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'DESTINATION_REJECTED');
    assert.match(r.json.error.message, /ecr:CreateRepository was denied/);
    assert.match(r.json.error.message, new RegExp(`Grant ecr:CreateRepository on arn:aws:ecr:us-west-2:${TEST_ACCOUNT}:repository/not/allowed`));
    assert.equal(aws.repository('not/allowed'), undefined);
  });

  test('a destination role that does not trust the caller: DESTINATION_AUTH, exit 1', async () => {
    const r = await runFerryIsolated(
      ['copy', '--json', '--ca-file', pki.caPath, '--dst-aws-role-arn', UNTRUSTED_ROLE, `${local.host}/app/small:v1`, `${ecr.host}/install/app:v9`],
      env(keys),
      freshHome(),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json.error.code, 'DESTINATION_AUTH');
    assert.match(r.json.error.message, /sts:AssumeRole was denied/);
    assert.ok(r.json.error.message.includes(UNTRUSTED_ROLE));
  });
});
