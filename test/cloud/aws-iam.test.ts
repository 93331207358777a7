// The AWS stand-in says no as AWS does: IAM permissions per principal (a role with exactly the
// README's least-privilege list can pull, or push; a role missing any one of them fails with
// ferry's SOURCE_AUTH / DESTINATION_AUTH naming that permission), ECR authorization tokens scoped
// to their region, and request bodies that must be signed (UNSIGNED-PAYLOAD is S3's alone).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ECRClient, GetAuthorizationTokenCommand } from '@aws-sdk/client-ecr';
import { ProxyAgent, fetch as undiciFetch } from 'undici';
import { readFileSync } from 'node:fs';
import {
  AwsStandin,
  ECR_CREATE_ACTIONS,
  ECR_PULL_ACTIONS,
  ECR_PUSH_ACTIONS,
  TEST_ACCESS_KEY_ID,
  TEST_ACCOUNT,
  TEST_SECRET_ACCESS_KEY,
  type IamPolicy,
} from '../harness/aws-standin.ts';
import { makeTestPki, startConnectProxy, startEcrRegistry, type ConnectProxy, type EcrRegistry, type TestPki } from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { pushImage, type PushedManifest } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { freshHome, proxyEnv, runFerryIsolated } from './cloud-e2e.ts';

const REGION = 'us-west-2';
const OTHER_REGION = 'us-east-1';
const PULLER = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-least-puller`;
const PUSHER = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-least-pusher`;
const keys = { AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY };

let aws: AwsStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let ecr: EcrRegistry;
let local: DistributionRegistry;
let localC: OciClient;
let source: PushedManifest;
let localImage: PushedManifest;

const only = (actions: readonly string[]): IamPolicy => [{ actions: [...actions], resources: ['*'] }];
const env = () => ({ ...aws.env(), ...proxyEnv(proxy.url), ...keys });

before(async () => {
  aws = await AwsStandin.start({ region: REGION, otherEcrRegions: [OTHER_REGION], roles: [{ arn: PULLER }, { arn: PUSHER }] });
  pki = makeTestPki([aws.registryHost()]);
  proxy = await startConnectProxy();
  [ecr, local] = await Promise.all([startEcrRegistry({ aws, pki, proxy }), startDistribution()]);
  localC = clientFor(local);
  aws.addRepository('vendor/app');
  source = await pushImage(ecr.client, 'vendor/app', 'v1', { layerSizes: [3000, 5000] });
  localImage = await pushImage(localC, 'build/app', 'v1', { layerSizes: [3100, 5100] });
});
after(async () => {
  await Promise.all([ecr?.stop(), local?.stop(), proxy?.stop()]);
  await aws?.close();
});

function pull(dst: string) {
  return runFerryIsolated(['copy', '--json', '--ca-file', pki.caPath, '--src-aws-role-arn', PULLER, `${ecr.host}/vendor/app:v1`, `${local.host}/${dst}:v1`], env(), freshHome());
}
function push(repo: string, extra: string[] = []) {
  return runFerryIsolated(['copy', '--json', '--ca-file', pki.caPath, '--dst-aws-role-arn', PUSHER, ...extra, `${local.host}/build/app:v1`, `${ecr.host}/${repo}:v1`], env(), freshHome());
}

describe('IAM: the README\'s least-privilege lists', () => {
  test('exactly the pull list pulls', async () => {
    aws.setPolicy(PULLER, only(ECR_PULL_ACTIONS));
    const r = await pull('least/pull');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('least/pull', 'v1')).digest, source.digest);
  });

  for (const missing of ECR_PULL_ACTIONS) {
    test(`pull without ${missing}: SOURCE_AUTH naming it`, async () => {
      aws.setPolicy(PULLER, only(ECR_PULL_ACTIONS.filter((a) => a !== missing)));
      const r = await pull(`denied/${missing.split(':')[1]!.toLowerCase()}`);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.json.error.code, 'SOURCE_AUTH', r.json.error.message);
      assert.ok(r.json.error.message.includes(missing), r.json.error.message);
      assert.ok(r.json.error.message.includes(PULLER.split('/')[1]!), `the message names the role: ${r.json.error.message}`);
    });
  }

  test('exactly the push list pushes into an existing repository (no permission to describe or create one)', async () => {
    aws.setPolicy(PUSHER, only(ECR_PUSH_ACTIONS));
    aws.addRepository('install/existing');
    const r = await push('install/existing');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/existing', 'v1')).digest, localImage.digest);
  });

  test('the push list and the two creation permissions create a missing repository', async () => {
    aws.setPolicy(PUSHER, only([...ECR_PUSH_ACTIONS, ...ECR_CREATE_ACTIONS]));
    const r = await push('install/created');
    assert.equal(r.code, 0, r.stderr);
    assert.ok(aws.repository('install/created'), 'the repository was not created');
    assert.equal((await ecr.client.verifyImage('install/created', 'v1')).digest, localImage.digest);
  });

  for (const missing of ECR_PUSH_ACTIONS) {
    test(`push without ${missing}: DESTINATION_AUTH naming it`, async () => {
      aws.setPolicy(PUSHER, only(ECR_PUSH_ACTIONS.filter((a) => a !== missing)));
      const repo = `install/no-${missing.split(':')[1]!.toLowerCase()}`;
      aws.addRepository(repo);
      const r = await push(repo);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.json.error.code, 'DESTINATION_AUTH', r.json.error.message);
      assert.ok(r.json.error.message.includes(missing), r.json.error.message);
    });
  }
});

describe('ECR authorization tokens are scoped to their region', () => {
  test('a token from another region is refused by the registry, as ECR refuses it; one from the registry\'s region is taken', async () => {
    aws.setPolicy(PULLER, undefined);
    const token = async (region: string): Promise<string> => {
      const c = new ECRClient({ region, endpoint: aws.ecr.url, credentials: { accessKeyId: TEST_ACCESS_KEY_ID, secretAccessKey: TEST_SECRET_ACCESS_KEY } });
      try {
        const r = await c.send(new GetAuthorizationTokenCommand({}));
        return r.authorizationData![0]!.authorizationToken!;
      } finally {
        c.destroy();
      }
    };
    const dispatcher = new ProxyAgent({ uri: proxy.url, requestTls: { ca: readFileSync(pki.caPath) } });
    try {
      const get = (t: string) =>
        undiciFetch(`https://${ecr.host}/v2/vendor/app/manifests/v1`, { dispatcher, headers: { authorization: `Basic ${t}`, accept: 'application/vnd.oci.image.manifest.v1+json' } });
      const elsewhere = await get(await token(OTHER_REGION));
      assert.equal(elsewhere.status, 403);
      assert.match(await elsewhere.text(), /"code":"DENIED".*authorization token has expired/);
      assert.equal(aws.issuedEcrTokens.at(-1)?.region, OTHER_REGION);
      const here = await get(await token(REGION));
      assert.equal(here.status, 200, await here.text());
    } finally {
      await dispatcher.close();
    }
  });
});

describe('request bodies are signed', () => {
  test('ECR refuses a request signed over UNSIGNED-PAYLOAD; the same request signed over its body is taken', async () => {
    const client = (unsigned: boolean) => {
      const c = new ECRClient({ region: REGION, endpoint: aws.ecr.url, maxAttempts: 1, credentials: { accessKeyId: TEST_ACCESS_KEY_ID, secretAccessKey: TEST_SECRET_ACCESS_KEY } });
      // The SDK's signer takes an x-amz-content-sha256 set before it as the payload's hash (S3's unsigned payload option).
      if (unsigned) {
        c.middlewareStack.add(
          (next) => async (args) => {
            (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
            return next(args);
          },
          { step: 'build', name: 'unsignedPayload' },
        );
      }
      return c;
    };
    const unsigned = client(true);
    const signed = client(false);
    try {
      await assert.rejects(unsigned.send(new GetAuthorizationTokenCommand({})), (e: Error) => e.name === 'InvalidSignatureException' && /signature we calculated does not match/.test(e.message));
      const ok = await signed.send(new GetAuthorizationTokenCommand({}));
      assert.ok(ok.authorizationData?.[0]?.authorizationToken);
    } finally {
      unsigned.destroy();
      signed.destroy();
    }
  });
});
