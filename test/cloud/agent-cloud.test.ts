// `ferry agent` with cloud registries, end to end: the real agent process against the reference
// control plane, with plans whose source auth is `aws-ecr` (sts:AssumeRole into the plan's role)
// or `gcp-gar` (impersonation through IAM Credentials), and with an ECR host as the agent's own
// local registry (a missing repository is created). The real AWS SDK and google-auth-library
// reach the stand-ins through the standard endpoint overrides; the "ECR" and "Artifact Registry"
// hosts, and iamcredentials.googleapis.com, are reached under their real names, in TLS, through
// a CONNECT proxy (HTTPS_PROXY). The agent has no --ca-file: it trusts the test CA through
// NODE_EXTRA_CA_CERTS, which Node reads at start-up.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY } from '../harness/aws-standin.ts';
import { DEFAULT_SA_UNIQUE_ID, GcpStandin, GOOGLE_ISSUER } from '../harness/gcp-standin.ts';
import {
  GOOGLE_API_HOSTS,
  S3_LAYER_HOST,
  makeTestPki,
  startConnectProxy,
  startEcrRegistry,
  startGarRegistry,
  startGoogleApis,
  type ConnectProxy,
  type EcrRegistry,
  type FrontRequest,
  type GarRegistry,
  type TestPki,
} from '../harness/cloud-registry.ts';
import { pushImage, pushMultiArch, type PushedManifest } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { killAgents, startAgent, startWorld, VENDOR_USER, type AgentWorld, type RunningAgent } from '../agent/agent-harness.ts';
import { assertNoSecrets, basicPassword, freshHome, isolatedEnv, proxyEnv } from './cloud-e2e.ts';

const REGION = 'us-west-2';
const READER_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-vendor-reader`;
const UNTRUSTED_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-untrusted`;
const GCP_TRUSTING_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-from-gcp`;
const READER_SA = 'ferry-reader@vendor-project.iam.gserviceaccount.com';
/** The VM's own access token (metadata server): the Artifact Registry below does NOT accept it. */
const VM_TOKEN = 'ya29.ferry-agent-test-vm-token-0123456789abcdef';
/** An impersonated service account's token: the only one the Artifact Registry accepts. */
const IMPERSONATED_TOKEN = 'ya29.ferry-agent-test-impersonated-token-fedcba9876543210';
const LOCAL_PREFIX = 'install_1';

type Image = { repository: string; tag: string; digest: string; platforms: unknown[] };

let aws: AwsStandin;
let gcp: GcpStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let ecr: EcrRegistry;
let gar: GarRegistry;
let googleApis: { requests: FrontRequest[]; stop(): Promise<void> };
let world: AgentWorld;
let localC: OciClient;
let vendorC: OciClient;
/** Every agent run, for the secrets check; with the directories it may have written to. */
const runs: Array<{ agent: RunningAgent; dirs: string[] }> = [];

/** Run `ferry agent --exit-when-idle` in an isolated environment (no ambient cloud identity, the stand-ins, the proxy, the test CA). */
async function runAgent(args: string[], envChanges: Record<string, string | undefined> = {}): Promise<RunningAgent> {
  const home = freshHome();
  const state = join(home.home, 'agent-state');
  mkdirSync(state, { recursive: true });
  const env = isolatedEnv(
    {
      ...aws.env(),
      AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
      AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
      GCE_METADATA_HOST: gcp.metadataHost,
      ...proxyEnv(proxy.url),
      NODE_EXTRA_CA_CERTS: pki.caPath,
      ...envChanges,
    },
    home,
  );
  const agent = startAgent(world, state, ['--exit-when-idle', '--log-level', 'trace', ...args], env);
  runs.push({ agent, dirs: [home.home] });
  const code = await Promise.race([agent.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000).unref())]);
  assert.equal(code, 0, `agent exit ${code}:\n${agent.logs().slice(-4000)}`);
  return agent;
}

function imageOf(jobId: string): Image {
  return (world.cp.job(jobId).result?.outputs as { image: Image } | undefined)?.image as Image;
}

before(async () => {
  aws = await AwsStandin.start({
    region: REGION,
    roles: [
      { arn: READER_ROLE },
      { arn: UNTRUSTED_ROLE, trustedPrincipals: [`arn:aws:iam::${TEST_ACCOUNT}:user/someone-else`] },
      // Trusts the GCP VM's service account (default audience sts.amazonaws.com), as the README says.
      { arn: GCP_TRUSTING_ROLE, webIdentity: { issuer: GOOGLE_ISSUER, audience: 'sts.amazonaws.com', subject: DEFAULT_SA_UNIQUE_ID } },
    ],
    oidcIssuers: [{ issuer: GOOGLE_ISSUER, publicKey: () => gcp.publicKey }],
  });
  gcp = await GcpStandin.start({
    projectId: 'customer-project',
    accessToken: (via) => (via === 'metadata' ? VM_TOKEN : via === 'impersonated' ? IMPERSONATED_TOKEN : undefined),
  });
  pki = makeTestPki([aws.registryHost(), S3_LAYER_HOST, 'europe-west4-docker.pkg.dev', ...GOOGLE_API_HOSTS]);
  proxy = await startConnectProxy();
  // ECR without a fixed password: the stand-in issues a fresh random one per GetAuthorizationToken,
  // and the front accepts exactly what was issued for its account.
  [ecr, gar, googleApis, world] = await Promise.all([
    startEcrRegistry({ aws, pki, proxy, redirectBlobs: true }),
    startGarRegistry({ gcp, pki, proxy, location: 'europe-west4', password: IMPERSONATED_TOKEN, repositories: ['vendor-project/images'] }),
    startGoogleApis({ gcp, pki, proxy }),
    startWorld(),
  ]);
  localC = clientFor(world.local);
  vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
});

after(async () => {
  killAgents();
  await Promise.all([ecr?.stop(), gar?.stop(), googleApis?.stop(), proxy?.stop(), world?.stop()]);
  await Promise.all([gcp?.close(), aws?.close()]);
});

describe('plans with aws-ecr / gcp-gar source auth, into a plain local registry', () => {
  let ecrImage: PushedManifest;
  let garImage: PushedManifest;
  let ecrJob: string;
  let garJob: string;
  let deniedJob: string;
  let agent: RunningAgent;
  let sessionsBefore: number;
  let googleBefore: number;

  before(async () => {
    aws.addRepository('vendor/app');
    ecrImage = await pushMultiArch(ecr.client, 'vendor/app', 'v1');
    garImage = await pushImage(gar.client, 'vendor-project/images/tool', 'v3');
    sessionsBefore = aws.issuedSessions.length;
    googleBefore = googleApis.requests.length;
    const local = (repo: string, tag: string) => ({ reference: `${world.local.host}/${repo}:${tag}`, auth: { kind: 'local' } });
    ecrJob = world.cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: `${ecr.host}/vendor/app:v1`, auth: { kind: 'aws-ecr', iam_role_arn: READER_ROLE, region: REGION } },
      destination: local('mirror/ecr-app', 'v1'),
      platforms: 'all',
      referrers: true,
    });
    garJob = world.cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: `${gar.host}/vendor-project/images/tool:v3`, auth: { kind: 'gcp-gar', service_account_email: READER_SA } },
      destination: local('mirror/gar-tool', 'v3'),
      platforms: 'all',
      referrers: true,
    });
    deniedJob = world.cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: `${ecr.host}/vendor/app:v1`, auth: { kind: 'aws-ecr', iam_role_arn: UNTRUSTED_ROLE, region: REGION } },
      destination: local('mirror/denied', 'v1'),
      platforms: 'all',
      referrers: false,
    });
    agent = await runAgent(['--max-jobs', '3']);
  });

  test('ECR source: the plan\'s role is assumed with a session naming the job; the image arrives byte-exact', async () => {
    const job = world.cp.job(ecrJob);
    assert.equal(job.status, 'finished', JSON.stringify(job.result));
    assert.equal(job.results.length, 1);
    const image = imageOf(ecrJob);
    assert.equal(image.digest, ecrImage.digest);
    assert.equal(image.platforms.length, 3);
    assert.equal((await localC.verifyImage('mirror/ecr-app', 'v1')).digest, ecrImage.digest);
    // sts:AssumeRole into the plan's role, the session named after the job (CloudTrail).
    const sessions = aws.issuedSessions.slice(sessionsBefore).filter((s) => s.roleArn === READER_ROLE);
    assert.equal(sessions.length, 1, JSON.stringify(aws.issuedSessions));
    const session = sessions[0]!;
    assert.equal(session.action, 'AssumeRole');
    assert.ok(session.sessionName.includes(ecrJob), `session name ${session.sessionName} does not name job ${ecrJob}`);
    // The registry was read with a token issued to that role session, over TLS through the proxy.
    const roleTokens = new Set(aws.issuedEcrTokens.filter((t) => t.principal === session.arn).map((t) => t.password));
    assert.ok(roleTokens.size >= 1, 'no ECR token was issued to the assumed role');
    const served = ecr.requests.filter((q) => q.by === 'registry' && q.path.startsWith('/v2/vendor/app/') && q.status === 200);
    assert.ok(served.length > 0);
    for (const q of served) assert.ok(roleTokens.has(basicPassword(q.authorization) ?? ''), `${q.method} ${q.path} was not made with the role's token`);
    assert.ok(proxy.connects.some((c) => c.target === `${ecr.host}:443` && c.routed));
    assert.deepEqual(proxy.plainRequests, []);
    // Layer downloads went to "S3" (307) without the registry's Authorization.
    assert.ok(ecr.s3Requests.length > 0);
    for (const q of ecr.s3Requests) assert.equal(q.authorization, undefined);
  });

  test('Artifact Registry source: the plan\'s service account is impersonated through IAM Credentials', async () => {
    const job = world.cp.job(garJob);
    assert.equal(job.status, 'finished', JSON.stringify(job.result));
    assert.equal(imageOf(garJob).digest, garImage.digest);
    assert.equal((await localC.verifyImage('mirror/gar-tool', 'v3')).digest, garImage.digest);
    const gen = googleApis.requests.slice(googleBefore).filter((q) => q.path.includes(':generateAccessToken'));
    assert.ok(gen.length >= 1, 'generateAccessToken was not called');
    assert.ok(gen.every((q) => q.status === 200));
    assert.ok(gen.every((q) => decodeURIComponent(q.path).includes(READER_SA)), gen.map((q) => q.path).join(', '));
    // The caller was the VM's service account (metadata server); the registry saw only the impersonated token.
    assert.equal(gen[0]?.authorization, `Bearer ${VM_TOKEN}`);
    assert.ok(gcp.issued.some((t) => t.via === 'impersonated' && t.subject === READER_SA));
    // Every request carried the impersonated token, but for the first, anonymous one the registry challenges.
    const reads = gar.requests.filter((q) => q.path.startsWith('/v2/vendor-project/images/tool/'));
    assert.ok(reads.some((q) => q.by === 'registry' && q.status === 200));
    for (const q of reads) {
      if (q.authorization === undefined) assert.equal(q.status, 401, `${q.method} ${q.path} without credentials`);
      else assert.equal(basicPassword(q.authorization), IMPERSONATED_TOKEN, `${q.method} ${q.path}`);
    }
  });

  test('a role that does not trust the agent: the job fails with SOURCE_AUTH, nothing is written', async () => {
    const job = world.cp.job(deniedJob);
    assert.equal(job.status, 'failed');
    assert.equal(job.result?.success, false);
    assert.equal(job.result?.error_code, 'SOURCE_AUTH');
    assert.match(job.result?.error_message ?? '', /sts:AssumeRole/);
    assert.ok((job.result?.error_message ?? '').includes(UNTRUSTED_ROLE), job.result?.error_message);
    assert.equal(aws.issuedSessions.filter((s) => s.roleArn === UNTRUSTED_ROLE).length, 0);
    assert.equal(await localC.headManifest('mirror/denied', 'v1'), undefined);
    assert.match(agent.logs(), new RegExp(`"job_id":"${deniedJob}"[^\\n]*SOURCE_AUTH|SOURCE_AUTH[^\\n]*"job_id":"${deniedJob}"`));
  });
});

describe('an agent on GCP with no AWS identity, and an aws-ecr plan', () => {
  test('assumes the plan\'s role with the GCP service account\'s identity token by itself (no FERRY_AWS_WEB_IDENTITY); =off turns it off', async () => {
    aws.addRepository('vendor/gcp-app');
    const img = await pushImage(ecr.client, 'vendor/gcp-app', 'v1');
    const plan = (dst: string) => ({
      type: 'oci-sync',
      source: { reference: `${ecr.host}/vendor/gcp-app:v1`, auth: { kind: 'aws-ecr', iam_role_arn: GCP_TRUSTING_ROLE, region: REGION } },
      destination: { reference: `${world.local.host}/${dst}:v1`, auth: { kind: 'local' } },
      platforms: 'all',
      referrers: false,
    });
    // No AWS keys, no instance metadata: the only identity is the GCP one the metadata server stand-in gives.
    const onGcp = { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_EC2_METADATA_DISABLED: 'true' };
    const sessionsBefore = aws.issuedSessions.length;
    const idTokensBefore = gcp.idTokens.length;
    const jobId = world.cp.enqueueJob(plan('mirror/gcp-app'));
    const agent = await runAgent([], onGcp);
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'finished', JSON.stringify(job.result));
    assert.equal((await localC.verifyImage('mirror/gcp-app', 'v1')).digest, img.digest);
    const sessions = aws.issuedSessions.slice(sessionsBefore);
    assert.deepEqual(
      sessions.map((s) => [s.action, s.roleArn]),
      [['AssumeRoleWithWebIdentity', GCP_TRUSTING_ROLE]],
    );
    assert.deepEqual(gcp.idTokens.slice(idTokensBefore).map((t) => t.audience), ['sts.amazonaws.com']);
    assert.match(agent.logs(), /no AWS identity here, and a GCP metadata server answers/);

    // FERRY_AWS_WEB_IDENTITY=off: the role is assumed with the AWS identity, and there is none.
    const offJob = world.cp.enqueueJob(plan('mirror/gcp-off'));
    await runAgent([], { ...onGcp, FERRY_AWS_WEB_IDENTITY: 'off' });
    const off = world.cp.job(offJob);
    assert.equal(off.status, 'failed');
    assert.equal(off.result?.error_code, 'SOURCE_AUTH');
    assert.equal(aws.issuedSessions.length, sessionsBefore + 1, 'a role session was issued with web identity off');
  });
});

describe('an ECR host as the agent\'s local registry', () => {
  test('a missing destination repository is created once for two jobs into it; both images arrive', async () => {
    const repo = `${LOCAL_PREFIX}/app`;
    assert.equal(aws.repository(repo), undefined);
    const [one, two] = await Promise.all([pushImage(vendorC, 'org_9/app', 'v1'), pushMultiArch(vendorC, 'org_9/app', 'v2')]);
    const creates = aws.count('CreateRepository');
    const jobFor = (tag: string) =>
      world.cp.enqueueJob({
        type: 'oci-sync',
        source: { reference: `${world.vendor.host}/org_9/app:${tag}`, auth: { kind: 'one-time-token' } },
        destination: { reference: `${ecr.host}/${repo}:${tag}`, auth: { kind: 'local' } },
        platforms: 'all',
        referrers: true,
      });
    const jobs = [jobFor('v1'), jobFor('v2')];
    const pushesBefore = ecr.requests.length;
    // Both jobs run at once (two slots): the repository must still be created once.
    await runAgent(['--local-registry', `${ecr.host}/${LOCAL_PREFIX}`, '--max-jobs', '2']);
    for (const [i, id] of jobs.entries()) {
      const job = world.cp.job(id);
      assert.equal(job.status, 'finished', JSON.stringify(job.result));
      assert.equal(imageOf(id).digest, [one, two][i]!.digest);
      assert.equal(imageOf(id).repository, `${ecr.host}/${repo}`);
    }
    assert.equal(aws.count('CreateRepository') - creates, 1, 'CreateRepository calls');
    const created = aws.repository(repo);
    assert.ok(created, 'the repository was created');
    assert.equal((await ecr.client.verifyImage(repo, 'v1')).digest, one.digest);
    assert.equal((await ecr.client.verifyImage(repo, 'v2')).digest, two.digest);
    // The pushes were made with the agent's own identity (the environment's IAM user), not refused.
    const pushes = ecr.requests.slice(pushesBefore).filter((q) => q.method === 'PUT' && q.path.startsWith(`/v2/${repo}/manifests/`));
    assert.ok(pushes.length >= 2 && pushes.every((q) => q.status === 201), JSON.stringify(pushes.map((q) => [q.path, q.status, q.note])));
    assert.ok(ecr.requests.slice(pushesBefore).every((q) => q.note !== 'no repository'), 'a push reached ECR before its repository existed');
  });
});

test('no secret in any agent log or state: ECR passwords, Google tokens, the runner token, AWS secret keys', () => {
  assert.equal(runs.length, 4);
  const secrets: string[] = [world.cp.token, TEST_SECRET_ACCESS_KEY, VM_TOKEN, IMPERSONATED_TOKEN, VENDOR_USER.password, ...world.issuedTokens];
  for (const t of aws.issuedEcrTokens) secrets.push(t.password, t.authorizationToken);
  for (const s of aws.issuedSessions) {
    const id = aws.lookupIdentity(s.accessKeyId);
    if (id) secrets.push(id.secret, ...(id.sessionToken ? [id.sessionToken] : []));
  }
  for (const t of gcp.issued) secrets.push(t.token);
  for (const t of gcp.idTokens) secrets.push(t.token);
  for (const j of world.cp.jobs()) if (j.oneTimeToken) secrets.push(j.oneTimeToken);
  // What there must have been to look for: ECR tokens for the role and for the agent's identity, a role session, both Google tokens.
  assert.ok(aws.issuedEcrTokens.length >= 2, 'ECR tokens issued');
  assert.ok(aws.issuedSessions.length >= 1, 'role sessions issued');
  assert.ok(gcp.issued.some((t) => t.via === 'metadata') && gcp.issued.some((t) => t.via === 'impersonated'));
  for (const { agent, dirs } of runs) {
    const logs = agent.logs();
    assert.match(logs, /"msg":"(job finished|result delivered)"/, 'the agent logged its jobs');
    assertNoSecrets({ code: 0, stdout: '', stderr: logs, json: undefined }, secrets, dirs);
  }
});
