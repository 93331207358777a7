import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isEcrHost, isGarHost, parseEcrHost, parseGarHost } from '../../src/auth/cloud/hosts.ts';
import { sanitizeSessionName } from '../../src/auth/cloud/ecr.ts';

test('ECR hosts: account, region, FIPS, China, dual-stack', () => {
  assert.deepEqual(parseEcrHost('123456789012.dkr.ecr.us-west-2.amazonaws.com'), {
    host: '123456789012.dkr.ecr.us-west-2.amazonaws.com',
    account: '123456789012',
    region: 'us-west-2',
    fips: false,
    dualStack: false,
    partition: 'aws',
  });
  const fips = parseEcrHost('123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com');
  assert.equal(fips?.fips, true);
  assert.equal(fips?.region, 'us-gov-west-1');
  assert.equal(fips?.partition, 'aws-us-gov');
  const cn = parseEcrHost('210987654321.dkr.ecr.cn-northwest-1.amazonaws.com.cn');
  assert.equal(cn?.partition, 'aws-cn');
  assert.equal(cn?.account, '210987654321');
  assert.equal(cn?.region, 'cn-northwest-1');
  const dual = parseEcrHost('123456789012.dkr-ecr.eu-central-2.on.aws');
  assert.equal(dual?.dualStack, true);
  assert.equal(dual?.region, 'eu-central-2');
  // Case, a trailing dot and an explicit :443 do not matter.
  assert.equal(parseEcrHost('123456789012.DKR.ECR.ap-southeast-5.amazonaws.com:443')?.region, 'ap-southeast-5');
  assert.equal(parseEcrHost('123456789012.dkr.ecr.us-east-1.amazonaws.com.')?.host, '123456789012.dkr.ecr.us-east-1.amazonaws.com');
});

test('not ECR: wrong account length, ports, China mix-ups, public ECR, look-alikes', () => {
  for (const h of [
    '12345678901.dkr.ecr.us-east-1.amazonaws.com',
    '1234567890123.dkr.ecr.us-east-1.amazonaws.com',
    '123456789012.dkr.ecr.us-east-1.amazonaws.com:5000',
    '123456789012.dkr.ecr.cn-north-1.amazonaws.com',
    '123456789012.dkr.ecr.us-east-1.amazonaws.com.cn',
    '123456789012.dkr.ecr.notaregion.amazonaws.com',
    'public.ecr.aws',
    '123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example',
    'evil.example/123456789012.dkr.ecr.us-east-1.amazonaws.com',
    'x123456789012.dkr.ecr.us-east-1.amazonaws.com',
    'docker.io',
    'localhost:5000',
  ]) {
    assert.equal(parseEcrHost(h), undefined, h);
    assert.equal(isEcrHost(h), false, h);
  }
});

test('Artifact Registry and Container Registry hosts', () => {
  assert.deepEqual(parseGarHost('europe-west4-docker.pkg.dev'), { host: 'europe-west4-docker.pkg.dev', kind: 'artifact-registry', location: 'europe-west4' });
  assert.deepEqual(parseGarHost('us-docker.pkg.dev'), { host: 'us-docker.pkg.dev', kind: 'artifact-registry', location: 'us' });
  assert.deepEqual(parseGarHost('gcr.io'), { host: 'gcr.io', kind: 'gcr', location: 'global' });
  assert.deepEqual(parseGarHost('EU.gcr.io'), { host: 'eu.gcr.io', kind: 'gcr', location: 'eu' });
  assert.equal(parseGarHost('asia.gcr.io:443')?.location, 'asia');
  assert.equal(isGarHost('marketplace.gcr.io'), true);
  for (const h of ['docker.pkg.dev', 'us-docker.pkg.dev.evil.example', 'us-npm.pkg.dev', 'evilgcr.io', 'gcr.io.evil.example', 'a.b.gcr.io', 'gcr.io:5000', 'ghcr.io']) {
    assert.equal(parseGarHost(h), undefined, h);
  }
  assert.equal(isGarHost('123456789012.dkr.ecr.us-east-1.amazonaws.com'), false);
  assert.equal(isEcrHost('us-docker.pkg.dev'), false);
});

test('STS role session names are sanitised to [\\w+=,.@-]{2,64}', () => {
  assert.equal(sanitizeSessionName('ferry-job_42'), 'ferry-job_42');
  assert.equal(sanitizeSessionName('ferry-job/42 ü:x'), 'ferry-job-42---x');
  assert.equal(sanitizeSessionName('x'), 'x-ferry');
  assert.equal(sanitizeSessionName(''), '-ferry');
  const long = sanitizeSessionName('ferry-' + 'a'.repeat(100));
  assert.equal(long.length, 64);
  assert.match(long, /^[\w+=,.@-]{2,64}$/);
});
