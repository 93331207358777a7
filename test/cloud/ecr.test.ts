// EcrCredentials against the AWS (and GCP) stand-ins, through the real AWS SDK.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { awsWebIdentityMode, CloudCredentials } from '../../src/auth/cloud/provider.ts';
import { EcrCredentials, ensureEcrRepository } from '../../src/auth/cloud/ecr.ts';
import { FerryError } from '../../src/errors.ts';
import { scrubSecrets, silentLogger } from '../../src/log/logger.ts';
import { AwsStandin, signJwt, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY, TEST_USER_ARN, withEnv } from '../harness/aws-standin.ts';
import { DEFAULT_SA_UNIQUE_ID, GcpStandin, GOOGLE_ISSUER } from '../harness/gcp-standin.ts';

const log = silentLogger();
const ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-source-reader`;
const GCP_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-from-gcp`;
const IRSA_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-irsa`;
const EKS_ISSUER = 'https://oidc.eks.us-west-2.amazonaws.com/id/FERRYTEST';
const eksKeys = generateKeyPairSync('rsa', { modulusLength: 2048 });

let aws: AwsStandin;
let gcp: GcpStandin;
let dir: string;
let host: string;

/** Environment with no ambient identity: shared config files that do not exist, stand-in endpoints. */
function baseEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    ...aws.env(),
    AWS_CONFIG_FILE: join(dir, 'no-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-credentials'),
    ...extra,
  };
}
const envCreds = { AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY };

function basicOf(c: unknown): { username: string; password: string } {
  assert.ok(c && typeof c === 'object' && (c as { kind?: string }).kind === 'basic', `expected basic credentials, got ${JSON.stringify(c)}`);
  return c as { username: string; password: string };
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
  dir = mkdtempSync(join(tmpdir(), 'ferry-ecr-test-'));
  gcp = await GcpStandin.start();
  aws = await AwsStandin.start({
    region: 'us-west-2',
    roles: [
      { arn: ROLE, trustedPrincipals: [TEST_USER_ARN, `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-instance`] },
      { arn: GCP_ROLE, webIdentity: { issuer: GOOGLE_ISSUER, audience: 'ferry-aws-federation', subject: DEFAULT_SA_UNIQUE_ID } },
      { arn: IRSA_ROLE, webIdentity: { issuer: EKS_ISSUER, audience: 'sts.amazonaws.com', subject: 'system:serviceaccount:ferry:agent' } },
    ],
    oidcIssuers: [
      { issuer: GOOGLE_ISSUER, publicKey: () => gcp.publicKey },
      { issuer: EKS_ISSUER, publicKey: eksKeys.publicKey },
    ],
    allow: (principal, action) => !(principal.includes('/ecr-denied') && action === 'ecr:GetAuthorizationToken') && !(principal.includes('/ferry-source-reader/') && action === 'ecr:CreateRepository'),
  });
  host = aws.registryHost();
});

after(async () => {
  await aws.close();
  await gcp.close();
});

describe('default credential chain', () => {
  test('environment credentials → GetAuthorizationToken → AWS:<password>, cached', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      const before = aws.count('GetAuthorizationToken');
      const c = basicOf(await p.resolve({ registry: host }));
      assert.equal(c.username, 'AWS');
      assert.equal(c.password, aws.lastEcrPassword);
      assert.ok(aws.acceptsEcrPassword(c.password));
      const issued = aws.issuedEcrTokens.at(-1)!;
      assert.equal(issued.registryId, TEST_ACCOUNT);
      assert.equal(issued.principal, TEST_USER_ARN);
      // Cached: a second resolve makes no call.
      assert.deepEqual(await p.resolve({ registry: host }), c);
      assert.equal(aws.count('GetAuthorizationToken'), before + 1);
      // Concurrent first resolves share one call.
      const q = new EcrCredentials({ side: 'destination', logger: log });
      const [a, b] = await Promise.all([q.resolve({ registry: host }), q.resolve({ registry: host })]);
      assert.deepEqual(a, b);
      assert.equal(aws.count('GetAuthorizationToken'), before + 2);
      // The password and the base64 token never reach a log line.
      assert.equal(scrubSecrets(`x ${c.password} y`), 'x [REDACTED] y');
      assert.equal(scrubSecrets(issued.authorizationToken), '[REDACTED]');
      p.destroy();
      q.destroy();
    }));

  test('other hosts: undefined for non-ECR hosts and for ECR hosts outside `registry`', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'source', logger: log, registry: host });
      assert.equal(await p.resolve({ registry: 'docker.io' }), undefined);
      assert.equal(await p.resolve({ registry: 'us-docker.pkg.dev' }), undefined);
      assert.equal(await p.resolve({ registry: `999999999999.dkr.ecr.us-west-2.amazonaws.com` }), undefined);
      assert.ok(await p.resolve({ registry: host.toUpperCase() }));
      assert.throws(() => new EcrCredentials({ side: 'source', logger: log, registry: 'docker.io' }), /not an Amazon ECR registry host/);
      p.destroy();
    }));

  test('a wrong secret key fails the signature check: DESTINATION_AUTH naming the cause', () =>
    withEnv(baseEnv({ AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: 'not-the-secret' }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      const e = await rejectsWith(p.resolve({ registry: host }), 'DESTINATION_AUTH', /InvalidSignatureException/, /ecr:GetAuthorizationToken/, /secret/);
      assert.equal(e.side, 'destination');
      assert.equal(e.retryable, false);
      p.destroy();
    }));

  test('an unknown access key: UnrecognizedClientException → SOURCE_AUTH', () =>
    withEnv(baseEnv({ AWS_ACCESS_KEY_ID: 'AKIAUNKNOWN000000000', AWS_SECRET_ACCESS_KEY: 'whatever' }), async () => {
      const p = new EcrCredentials({ side: 'source', logger: log });
      await rejectsWith(p.resolve({ registry: host }), 'SOURCE_AUTH', /UnrecognizedClientException/);
      p.destroy();
    }));

  test('requests are signed for the registry host\'s region: a host in another region fails the scope check', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      await rejectsWith(p.resolve({ registry: `${TEST_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com` }), 'DESTINATION_AUTH', /InvalidSignatureException/, /scoped to a valid region/);
      p.destroy();
    }));

  test('no AWS identity at all: a clear error listing where it looked', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true' }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      await rejectsWith(p.resolve({ registry: host }), 'DESTINATION_AUTH', /no AWS credentials found/, /IMDSv2/, /IRSA/);
      p.destroy();
    }));

  test('EC2 instance metadata with IMDSv2 session tokens', () =>
    withEnv(baseEnv(), async () => {
      const tokensBefore = aws.count('imds:token');
      const credsBefore = aws.count('imds:credentials');
      const p = new EcrCredentials({ side: 'destination', logger: log });
      const c = basicOf(await p.resolve({ registry: host }));
      assert.equal(c.password, aws.lastEcrPassword);
      assert.match(aws.issuedEcrTokens.at(-1)!.principal, /:assumed-role\/ferry-instance\//);
      assert.ok(aws.count('imds:token') > tokensBefore, 'an IMDSv2 session token was requested');
      assert.equal(aws.count('imds:credentials'), credsBefore + 1);
      assert.equal(aws.count('imds:unauthorized'), 0, 'no IMDSv1 (token-less) request was made');
      p.destroy();
    }));

  test('web identity token file (IRSA) through the chain', () => {
    const tokenFile = join(dir, 'irsa-token');
    const now = Math.floor(Date.now() / 1000);
    writeFileSync(tokenFile, signJwt({ iss: EKS_ISSUER, aud: 'sts.amazonaws.com', sub: 'system:serviceaccount:ferry:agent', iat: now, exp: now + 3600 }, eksKeys.privateKey));
    return withEnv(baseEnv({ AWS_WEB_IDENTITY_TOKEN_FILE: tokenFile, AWS_ROLE_ARN: IRSA_ROLE, AWS_ROLE_SESSION_NAME: 'ferry-irsa-test' }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      basicOf(await p.resolve({ registry: host }));
      assert.equal(aws.issuedEcrTokens.at(-1)!.principal, `arn:aws:sts::${TEST_ACCOUNT}:assumed-role/ferry-irsa/ferry-irsa-test`);
      p.destroy();
    });
  });
});

describe('assumed role', () => {
  test('AssumeRole with a session name naming the job (sanitised)', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'source', logger: log, roleArn: ROLE, jobId: 'job/42 ü:x' });
      const c = basicOf(await p.resolve({ registry: host }));
      const session = aws.issuedSessions.at(-1)!;
      assert.equal(session.action, 'AssumeRole');
      assert.equal(session.roleArn, ROLE);
      assert.equal(session.sessionName, 'ferry-job-42---x');
      assert.equal(aws.issuedEcrTokens.at(-1)!.principal, session.arn);
      assert.equal(c.password, aws.lastEcrPassword);
      // The role session's secret is registered too.
      p.destroy();
    }));

  test('a role the caller may not assume: SOURCE_AUTH naming the role and sts:AssumeRole', () =>
    withEnv(baseEnv(envCreds), async () => {
      const other = `arn:aws:iam::${TEST_ACCOUNT}:role/someone-elses-role`;
      const p = new EcrCredentials({ side: 'source', logger: log, roleArn: other, jobId: '7' });
      const before = aws.count('GetAuthorizationToken');
      const e = await rejectsWith(p.resolve({ registry: host }), 'SOURCE_AUTH', /sts:AssumeRole was denied/, new RegExp(other), /trust policy/);
      assert.equal(e.side, 'source');
      assert.deepEqual(e.registryCodes, ['AccessDenied']);
      assert.equal(aws.count('GetAuthorizationToken'), before, 'ECR is never asked');
      p.destroy();
    }));

  test('the role may not call ecr:GetAuthorizationToken: the error names the action and the role', async () => {
    const denied = `arn:aws:iam::${TEST_ACCOUNT}:role/ecr-denied`;
    const local = await AwsStandin.start({ region: 'us-west-2', roles: [{ arn: denied }], allow: (pr) => !pr.includes('/ecr-denied/') });
    try {
      await withEnv({ ...baseEnv(envCreds), ...local.env() }, async () => {
        const p = new EcrCredentials({ side: 'source', logger: log, roleArn: denied });
        await rejectsWith(p.resolve({ registry: local.registryHost() }), 'SOURCE_AUTH', /ecr:GetAuthorizationToken was denied/, new RegExp(denied), /Allow ecr:GetAuthorizationToken/);
        p.destroy();
      });
    } finally {
      await local.close();
    }
  });

  test('AssumeRoleWithWebIdentity with the GCP metadata identity token (agent on GCP)', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: gcp.metadataHost }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log, roleArn: GCP_ROLE, jobId: 'j-1', webIdentity: { provider: 'gcp-metadata', audience: 'ferry-aws-federation' } });
      const c = basicOf(await p.resolve({ registry: host }));
      const session = aws.issuedSessions.at(-1)!;
      assert.equal(session.action, 'AssumeRoleWithWebIdentity');
      assert.equal(session.sessionName, 'ferry-j-1');
      assert.equal(aws.issuedEcrTokens.at(-1)!.principal, session.arn);
      assert.equal(c.password, aws.lastEcrPassword);
      // The token came from the metadata server with our audience, format=full, and is a secret.
      const id = gcp.idTokens.at(-1)!;
      assert.equal(id.audience, 'ferry-aws-federation');
      assert.equal(aws.webIdentityTokens.at(-1), id.token);
      assert.equal(scrubSecrets(id.token), '[REDACTED]');
      assert.equal(gcp.missingFlavor, 0);
      p.destroy();
    }));

  test('FERRY_AWS_WEB_IDENTITY=gcp makes the cloud provider (CLI and agent) assume roles with the GCP identity token', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: gcp.metadataHost }), async () => {
      const env = { ...process.env, FERRY_AWS_WEB_IDENTITY: 'gcp', FERRY_AWS_WEB_IDENTITY_AUDIENCE: 'ferry-aws-federation' };
      const cloud = new CloudCredentials({ side: 'source', logger: log, roleArn: GCP_ROLE, jobId: 'job-7', env });
      const c = basicOf(await cloud.resolve({ registry: host }));
      const session = aws.issuedSessions.at(-1)!;
      assert.equal(session.action, 'AssumeRoleWithWebIdentity');
      assert.equal(session.sessionName, 'ferry-job-7');
      assert.equal(c.password, aws.lastEcrPassword);
      assert.equal(gcp.idTokens.at(-1)!.audience, 'ferry-aws-federation');
      await cloud.destroy();
      // FERRY_AWS_WEB_IDENTITY=off: the same role is assumed with AssumeRole (and here fails: no AWS identity).
      const sessions = aws.issuedSessions.length;
      const off = new CloudCredentials({ side: 'source', logger: log, roleArn: GCP_ROLE, env: { ...process.env, FERRY_AWS_WEB_IDENTITY: 'off' } });
      await rejectsWith(off.resolve({ registry: host }), 'SOURCE_AUTH', /no AWS credentials found for sts:AssumeRole/);
      assert.equal(aws.issuedSessions.length, sessions);
      await off.destroy();
    }));

  test('no switch, no AWS identity, and a GCP metadata server answers: the role is assumed with the GCP identity token by itself', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: gcp.metadataHost }), async () => {
      const idTokens = gcp.idTokens.length;
      const cloud = new CloudCredentials({ side: 'source', logger: log, roleArn: GCP_ROLE, jobId: 'job-8', env: { ...process.env, FERRY_AWS_WEB_IDENTITY_AUDIENCE: 'ferry-aws-federation' } });
      const c = basicOf(await cloud.resolve({ registry: host }));
      const session = aws.issuedSessions.at(-1)!;
      assert.equal(session.action, 'AssumeRoleWithWebIdentity');
      assert.equal(session.sessionName, 'ferry-job-8');
      assert.equal(c.password, aws.lastEcrPassword);
      assert.deepEqual(gcp.idTokens.slice(idTokens).map((t) => t.audience), ['ferry-aws-federation']);
      await cloud.destroy();
    }));

  test('no switch, with an AWS identity, on GCP: the AWS identity comes first (AssumeRole, no identity token asked for)', () =>
    withEnv(baseEnv({ ...envCreds, GCE_METADATA_HOST: gcp.metadataHost }), async () => {
      const idTokens = gcp.idTokens.length;
      const cloud = new CloudCredentials({ side: 'source', logger: log, roleArn: ROLE, env: { ...process.env } });
      basicOf(await cloud.resolve({ registry: host }));
      assert.equal(aws.issuedSessions.at(-1)!.action, 'AssumeRole');
      assert.equal(gcp.idTokens.length, idTokens);
      await cloud.destroy();
    }));

  test('no switch, no AWS identity, off GCP: the missing AWS identity is the error', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: 'metadata.invalid' }), async () => {
      const cloud = new CloudCredentials({ side: 'destination', logger: log, roleArn: GCP_ROLE, env: { ...process.env } });
      await rejectsWith(cloud.resolve({ registry: host }), 'DESTINATION_AUTH', /no AWS credentials found for sts:AssumeRole/);
      await cloud.destroy();
    }));

  test('FERRY_AWS_WEB_IDENTITY takes auto, gcp or off', async () => {
    assert.equal(awsWebIdentityMode({}), 'auto');
    assert.equal(awsWebIdentityMode({ FERRY_AWS_WEB_IDENTITY: 'GCP' }), 'gcp');
    assert.equal(awsWebIdentityMode({ FERRY_AWS_WEB_IDENTITY: 'off' }), 'off');
    assert.throws(() => awsWebIdentityMode({ FERRY_AWS_WEB_IDENTITY: 'yes' }), (e: unknown) => e instanceof FerryError && e.code === 'USAGE' && /auto, gcp, off/.test(e.message));
  });

  test('web identity with the wrong audience: the error says which audience the trust policy must name', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: gcp.metadataHost }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log, roleArn: GCP_ROLE, webIdentity: { provider: 'gcp-metadata', audience: 'wrong-aud' } });
      await rejectsWith(p.resolve({ registry: host }), 'DESTINATION_AUTH', /InvalidIdentityToken/, /accounts\.google\.com:aud = "wrong-aud"/);
      p.destroy();
    }));

  test('web identity off GCP: the metadata host does not resolve', () =>
    withEnv(baseEnv({ AWS_EC2_METADATA_DISABLED: 'true', GCE_METADATA_HOST: 'metadata.invalid' }), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log, roleArn: GCP_ROLE, webIdentity: { provider: 'gcp-metadata' } });
      await rejectsWith(p.resolve({ registry: host }), 'DESTINATION_AUTH', /not a GCP VM/);
      p.destroy();
    }));
});

describe('caching and expiry', () => {
  test('a short-lived token is renewed before it expires; refresh forces a new one', async () => {
    const local = await AwsStandin.start({ region: 'eu-west-1', ecrTokenLifetimeSeconds: 2 });
    try {
      await withEnv({ ...baseEnv(envCreds), ...local.env() }, async () => {
        const h = local.registryHost();
        const p = new EcrCredentials({ side: 'destination', logger: log });
        const first = basicOf(await p.resolve({ registry: h }));
        assert.equal(basicOf(await p.resolve({ registry: h })).password, first.password);
        assert.equal(local.count('GetAuthorizationToken'), 1);
        // Past half of its 2 s (src/auth/renewal.ts: short lifetimes renew at half) it is renewed.
        await new Promise((r) => setTimeout(r, 1900));
        const second = basicOf(await p.resolve({ registry: h }));
        assert.notEqual(second.password, first.password);
        assert.equal(local.count('GetAuthorizationToken'), 2);
        assert.ok(local.acceptsEcrPassword(second.password));
        // refresh: true (the registry refused it) bypasses the cache.
        const third = basicOf(await p.resolve({ registry: h, refresh: true }));
        assert.notEqual(third.password, second.password);
        assert.equal(local.count('GetAuthorizationToken'), 3);
        p.destroy();
      });
    } finally {
      await local.close();
    }
  });

  test('a fixed password from the stand-in (what a test registry would accept)', async () => {
    const local = await AwsStandin.start({ region: 'us-east-2', ecrPassword: 'registry-password-for-test' });
    try {
      const seen: string[] = [];
      local.onEcrToken.push((t) => {
        seen.push(t.password);
      });
      await withEnv({ ...baseEnv(envCreds), ...local.env() }, async () => {
        const p = new EcrCredentials({ side: 'destination', logger: log });
        const { expiresAt, ...c } = (await p.resolve({ registry: local.registryHost() })) as { expiresAt?: number };
        assert.deepEqual(c, { kind: 'basic', username: 'AWS', password: 'registry-password-for-test' });
        // When to ask again: at 80 % of the token's 12 hours (src/auth/renewal.ts), counted from
        // when ferry asked for it (a moment before the stand-in issued it: 20 % of that moment earlier).
        const expires = local.issuedEcrTokens.at(-1)!.expiresAt.getTime();
        const due = expires - 0.2 * 12 * 3600_000;
        assert.ok(expiresAt !== undefined && expiresAt <= due && expiresAt > due - 1000, `renewal due at ${expiresAt}, token expires ${expires}`);
        assert.deepEqual(seen, ['registry-password-for-test']);
        p.destroy();
      });
    } finally {
      await local.close();
    }
  });

  test('role credentials are reused across token renewals', async () => {
    const local = await AwsStandin.start({ region: 'us-east-1', ecrTokenLifetimeSeconds: 1, roles: [{ arn: ROLE }] });
    try {
      await withEnv({ ...baseEnv(envCreds), ...local.env() }, async () => {
        const p = new EcrCredentials({ side: 'source', logger: log, roleArn: ROLE });
        await p.resolve({ registry: local.registryHost() });
        await new Promise((r) => setTimeout(r, 1000));
        await p.resolve({ registry: local.registryHost() });
        assert.equal(local.count('GetAuthorizationToken'), 2);
        assert.equal(local.count('AssumeRole'), 1);
        p.destroy();
      });
    } finally {
      await local.close();
    }
  });
});

describe('FIPS hosts', () => {
  test('a FIPS registry host works with an endpoint override', async () => {
    const local = await AwsStandin.start({ region: 'us-gov-west-1' });
    try {
      await withEnv({ ...baseEnv(envCreds), ...local.env() }, async () => {
        const p = new EcrCredentials({ side: 'destination', logger: log });
        const c = basicOf(await p.resolve({ registry: `${TEST_ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com` }));
        assert.equal(c.password, local.lastEcrPassword);
        p.destroy();
      });
    } finally {
      await local.close();
    }
  });
});

describe('ensureEcrRepository', () => {
  test('creates a missing repository with the requested settings, then finds it', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      const client = p.client(host);
      const r = await ensureEcrRepository({
        client,
        registryId: TEST_ACCOUNT,
        repositoryName: 'install_789/app_456',
        logger: log,
        tagImmutability: true,
        scanOnPush: true,
        encryption: { type: 'KMS', kmsKey: 'arn:aws:kms:us-west-2:111122223333:key/abcd' },
        tags: { 'managed-by': 'ferry' },
      });
      assert.equal(r.created, true);
      assert.equal(r.repositoryUri, `${host}/install_789/app_456`);
      const stored = aws.repositories.get(`${TEST_ACCOUNT}/install_789/app_456`)!;
      assert.equal(stored.imageTagMutability, 'IMMUTABLE');
      assert.equal(stored.imageScanningConfiguration.scanOnPush, true);
      assert.deepEqual(stored.encryptionConfiguration, { encryptionType: 'KMS', kmsKey: 'arn:aws:kms:us-west-2:111122223333:key/abcd' });
      const again = await ensureEcrRepository({ client, registryId: TEST_ACCOUNT, repositoryName: 'install_789/app_456', logger: log });
      assert.equal(again.created, false);
      assert.equal(again.imageTagMutability, 'IMMUTABLE');
      p.destroy();
    }));

  test('no ecr:CreateRepository: DESTINATION_REJECTED naming the permission', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log, roleArn: ROLE });
      await rejectsWith(
        ensureEcrRepository({ client: p.client(host), registryId: TEST_ACCOUNT, repositoryName: 'not/there', logger: log }),
        'DESTINATION_REJECTED',
        /ecr:CreateRepository/,
        /arn:aws:ecr:us-west-2:111122223333:repository\/not\/there/,
        /create the repository beforehand/,
      );
      p.destroy();
    }));

  test('an invalid repository name is rejected', () =>
    withEnv(baseEnv(envCreds), async () => {
      const p = new EcrCredentials({ side: 'destination', logger: log });
      await rejectsWith(ensureEcrRepository({ client: p.client(host), registryId: TEST_ACCOUNT, repositoryName: 'Bad_Name!', logger: log }), 'DESTINATION_REJECTED', /InvalidParameterException/);
      p.destroy();
    }));
});
