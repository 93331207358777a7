// The stand-ins refuse what the real services refuse (so the provider tests mean something).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { AwsStandin, TEST_ACCESS_KEY_ID } from '../harness/aws-standin.ts';
import { GcpStandin } from '../harness/gcp-standin.ts';

let aws: AwsStandin;
let gcp: GcpStandin;

before(async () => {
  aws = await AwsStandin.start();
  gcp = await GcpStandin.start();
});
after(async () => {
  await aws.close();
  await gcp.close();
});

test('metadata server: Metadata-Flavor: Google required, X-Forwarded-For refused, header echoed', async () => {
  const url = `${gcp.http.url}/computeMetadata/v1/instance/service-accounts/default/token`;
  assert.equal((await fetch(url)).status, 403);
  assert.equal((await fetch(url, { headers: { 'Metadata-Flavor': 'Google', 'X-Forwarded-For': '10.0.0.1' } })).status, 403);
  const ok = await fetch(url, { headers: { 'Metadata-Flavor': 'Google' } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('metadata-flavor'), 'Google');
  const body = (await ok.json()) as { access_token: string; expires_in: number };
  assert.ok(gcp.accepts(body.access_token));
  const id = await fetch(`${gcp.http.url}/computeMetadata/v1/instance/service-accounts/default/identity?audience=x`, { headers: { 'Metadata-Flavor': 'Google' } });
  assert.equal((await id.text()).split('.').length, 3);
  const noAud = await fetch(`${gcp.http.url}/computeMetadata/v1/instance/service-accounts/default/identity`, { headers: { 'Metadata-Flavor': 'Google' } });
  assert.equal(noAud.status, 400);
});

test('IAM Credentials: an unknown bearer token is UNAUTHENTICATED', async () => {
  const r = await fetch(gcp.impersonationUrl('x@y.iam.gserviceaccount.com'), { method: 'POST', headers: { authorization: 'Bearer ya29.forged', 'content-type': 'application/json' }, body: '{"scope":["s"]}' });
  assert.equal(r.status, 401);
  assert.equal(((await r.json()) as { error: { status: string } }).error.status, 'UNAUTHENTICATED');
});

test('IMDS: v2 only — reads without a session token get 401; token PUT validates its TTL', async () => {
  const creds = `${aws.imds.url}/latest/meta-data/iam/security-credentials/`;
  assert.equal((await fetch(creds)).status, 401);
  assert.equal((await fetch(creds, { headers: { 'x-aws-ec2-metadata-token': 'made-up' } })).status, 401);
  assert.equal((await fetch(`${aws.imds.url}/latest/api/token`, { method: 'PUT' })).status, 400);
  assert.equal((await fetch(`${aws.imds.url}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60', 'x-forwarded-for': '1.2.3.4' } })).status, 403);
  const token = await (await fetch(`${aws.imds.url}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } })).text();
  const role = await (await fetch(creds, { headers: { 'x-aws-ec2-metadata-token': token } })).text();
  assert.equal(role, 'ferry-instance');
});

test('ECR and STS: unsigned and badly signed requests are refused as AWS refuses them', async () => {
  const ecr = await fetch(aws.ecr.url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken' },
    body: '{}',
  });
  assert.equal(ecr.status, 403);
  assert.equal(((await ecr.json()) as { __type: string }).__type, 'MissingAuthenticationTokenException');

  const date = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const forged = await fetch(aws.sts.url, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      'x-amz-date': date,
      authorization: `AWS4-HMAC-SHA256 Credential=${TEST_ACCESS_KEY_ID}/${date.slice(0, 8)}/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=${'0'.repeat(64)}`,
    },
    body: 'Action=GetCallerIdentity&Version=2011-06-15',
  });
  assert.equal(forged.status, 403);
  assert.match(await forged.text(), /<Code>SignatureDoesNotMatch<\/Code>/);

  const wrongService = await fetch(aws.sts.url, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      'x-amz-date': date,
      authorization: `AWS4-HMAC-SHA256 Credential=${TEST_ACCESS_KEY_ID}/${date.slice(0, 8)}/us-east-1/ecr/aws4_request, SignedHeaders=host;x-amz-date, Signature=${'0'.repeat(64)}`,
    },
    body: 'Action=GetCallerIdentity&Version=2011-06-15',
  });
  assert.match(await wrongService.text(), /scoped to correct service: &apos;sts&apos;/);
});
