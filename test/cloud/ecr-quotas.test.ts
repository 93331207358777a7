// ECR's API quotas as shared token buckets (src/transport/ecr-quotas.ts), through the real AWS
// SDK against the AWS stand-in, which enforces quotas the way AWS does (400 ThrottlingException
// "Rate exceeded" beyond the rate). Several clients stand for several jobs of one agent: they
// share the process's buckets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { DescribeRepositoriesCommand, InitiateLayerUploadCommand, type ECRClient } from '@aws-sdk/client-ecr';
import { createEcrClient } from '../../src/auth/cloud/ecr.ts';
import { EcrQuotas, ECR_API_RATES, QUOTA_HEADROOM } from '../../src/transport/ecr-quotas.ts';
import { createLogger } from '../../src/log/logger.ts';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY, withEnv } from '../harness/aws-standin.ts';

const REGION = 'us-west-2';
const credentials = async () => ({ accessKeyId: TEST_ACCESS_KEY_ID, secretAccessKey: TEST_SECRET_ACCESS_KEY });

/** The most calls that arrived within any `windowMs` (arrival times in ms). */
function busiest(times: number[], windowMs: number): number {
  const t = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; j < t.length; j++) {
    while (t[j]! - t[i]! >= windowMs) i++;
    best = Math.max(best, j - i + 1);
  }
  return best;
}

describe('ECR API quotas: shared token buckets', () => {
  let aws: AwsStandin;
  let env: Record<string, string>;

  before(async () => {
    // AWS's own figures for the actions used here, enforced as AWS enforces them.
    aws = await AwsStandin.start({ region: REGION, ecrRates: { InitiateLayerUpload: ECR_API_RATES.InitiateLayerUpload!, DescribeRepositories: 10 } });
    env = { ...aws.env(), AWS_REGION: REGION };
  });
  after(async () => {
    await aws.close();
  });

  const clients = (n: number, quotas: EcrQuotas, opts: { maxAttempts?: number; logger?: ReturnType<typeof createLogger> } = {}): ECRClient[] =>
    Array.from({ length: n }, () => createEcrClient({ region: REGION, credentials, quotas, maxAttempts: opts.maxAttempts ?? 3, ...(opts.logger ? { logger: opts.logger } : {}) }));

  test('three jobs\' clients together hold InitiateLayerUpload under its documented 100/s: AWS throttles none of 300 calls', () =>
    withEnv(env, async () => {
      const quotas = new EcrQuotas();
      const jobs = clients(3, quotas);
      const started = Date.now();
      // Every call fails for the missing repository, which is fine: each one counts against the quota all the same.
      const calls = jobs.flatMap((c) => Array.from({ length: 100 }, () => c.send(new InitiateLayerUploadCommand({ registryId: TEST_ACCOUNT, repositoryName: 'quota/app' })).then(() => 'ok', (e: Error) => e.name)));
      const outcomes = await Promise.all(calls);
      const elapsed = Date.now() - started;
      for (const c of jobs) c.destroy();
      const seen = aws.ecrCallTimes.get('InitiateLayerUpload') ?? [];
      assert.equal(seen.filter((x) => x.throttled).length, 0, `throttled: ${seen.filter((x) => x.throttled).length} of ${seen.length} calls`);
      // (An SDK retry after a dropped keep-alive connection would be a call more: not a refusal.)
      assert.ok(seen.length >= 300);
      assert.ok(outcomes.every((o) => o === 'RepositoryNotFoundException'), [...new Set(outcomes)].join(', '));
      // A second's worth saved up, then 90 a second (the headroom under 100): 300 calls need over two
      // seconds, and no second held more than the quota allows (100 saved up + 100).
      assert.ok(busiest(seen.map((x) => x.at), 1000) <= 200, `busiest second: ${busiest(seen.map((x) => x.at), 1000)}`);
      assert.ok(elapsed >= ((300 - 90) / 90) * 1000 - 100, `300 calls in ${elapsed} ms: faster than the pace after the saved second`);
    }));

  test('ThrottlingException: the action\'s pace halves and pauses for every client, and every call still succeeds', () =>
    withEnv(env, async () => {
      const out: string[] = [];
      const logger = createLogger({ level: 'info', destination: new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) }) as never });
      // ferry believes 40/s; this account is granted 10/s.
      const quotas = new EcrQuotas({ rates: { DescribeRepositories: 40 } });
      const jobs = clients(3, quotas, { maxAttempts: 6, logger });
      const before = aws.ecrCallTimes.get('DescribeRepositories')?.length ?? 0;
      const calls = jobs.flatMap((c) => Array.from({ length: 20 }, () => c.send(new DescribeRepositoriesCommand({ registryId: TEST_ACCOUNT }))));
      const results = await Promise.allSettled(calls);
      for (const c of jobs) c.destroy();
      const failed = results.filter((r) => r.status === 'rejected');
      assert.equal(failed.length, 0, String((failed[0] as PromiseRejectedResult | undefined)?.reason));
      const seen = (aws.ecrCallTimes.get('DescribeRepositories') ?? []).slice(before);
      const throttled = seen.filter((x) => x.throttled).length;
      const bucket = quotas.bucket({ account: TEST_ACCOUNT, region: REGION }, 'DescribeRepositories')!;
      assert.ok(throttled > 0, 'AWS never throttled: nothing was tested');
      assert.ok(bucket.rate <= 20 * QUOTA_HEADROOM, `pace still ${bucket.rate}/s after ThrottlingException`);
      // The first second's burst is refused (every call was sent before the first answer); once
      // the pace is cut and shared, the calls that come after it are let through.
      const last = seen.slice(-30);
      assert.ok(last.filter((x) => x.throttled).length <= 3, `of the last 30 calls, ${last.filter((x) => x.throttled).length} throttled (${throttled} of ${seen.length} in all)`);
      const lines = out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; registry?: string });
      const started = lines.filter((l) => /throttling/.test(l.msg));
      assert.equal(started.length, 1, out.join(''));
      assert.equal(started[0]!.registry, `${TEST_ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com`);
      assert.equal(quotas.stats()[0]!.throttled, throttled);
    }));
});
