// ECR's API quotas as shared token buckets (src/transport/ecr-quotas.ts), through the real AWS
// SDK against the AWS stand-in, which enforces quotas the way AWS does (400 ThrottlingException
// "Rate exceeded" beyond the rate). Several clients stand for several jobs of one agent: they
// share the process's buckets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { DescribeRepositoriesCommand, PutImageCommand, type ECRClient } from '@aws-sdk/client-ecr';
import { createEcrClient } from '../../src/auth/cloud/ecr.ts';
import { BURST_SECONDS, EcrQuotas, ECR_API_RATES, QUOTA_HEADROOM, type EcrRegistry } from '../../src/transport/ecr-quotas.ts';
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

/** The process's buckets, noting when each call was let go. */
class RecordingQuotas extends EcrQuotas {
  readonly released: number[] = [];
  override async take(registry: EcrRegistry, action: string, signal?: AbortSignal): Promise<void> {
    await super.take(registry, action, signal);
    this.released.push(Date.now());
  }
}

describe('ECR API quotas: shared token buckets', () => {
  let aws: AwsStandin;
  let env: Record<string, string>;

  before(async () => {
    // AWS's own figures for the actions used here, enforced as AWS enforces them.
    aws = await AwsStandin.start({ region: REGION, ecrRates: { PutImage: ECR_API_RATES.PutImage!, DescribeRepositories: 10 } });
    env = { ...aws.env(), AWS_REGION: REGION };
  });
  after(async () => {
    await aws.close();
  });

  const clients = (n: number, quotas: EcrQuotas, opts: { maxAttempts?: number; logger?: ReturnType<typeof createLogger> } = {}): ECRClient[] =>
    Array.from({ length: n }, () => createEcrClient({ region: REGION, credentials, quotas, maxAttempts: opts.maxAttempts ?? 3, ...(opts.logger ? { logger: opts.logger } : {}) }));

  test('three jobs\' clients together hold PutImage, the lowest quota, under its documented 10/s: AWS throttles none', () =>
    withEnv(env, async () => {
      const quotas = new RecordingQuotas();
      const jobs = clients(3, quotas);
      const started = Date.now();
      // The stand-in counts (and would refuse) each call before it finds the action unsupported: fine, each one counts.
      const calls = jobs.flatMap((c) => Array.from({ length: 15 }, () => c.send(new PutImageCommand({ registryId: TEST_ACCOUNT, repositoryName: 'quota/app', imageManifest: '{}' })).then(() => 'ok', (e: Error) => e.name)));
      const outcomes = await Promise.all(calls);
      const elapsed = Date.now() - started;
      for (const c of jobs) c.destroy();
      const seen = aws.ecrCallTimes.get('PutImage') ?? [];
      assert.ok(!outcomes.includes('ThrottlingException'), [...new Set(outcomes)].join(', '));
      assert.equal(seen.filter((x) => x.throttled).length, 0, `throttled: ${seen.filter((x) => x.throttled).length} of ${seen.length} calls`);
      // ferry's side: half a second's worth saved up, then 9 a second across the three clients;
      // 45 calls need over 4.5 seconds.
      const rate = ECR_API_RATES.PutImage! * QUOTA_HEADROOM;
      assert.ok(busiest(quotas.released, 1000) <= rate * (1 + BURST_SECONDS) + 1, `busiest second let ${busiest(quotas.released, 1000)} calls go`);
      assert.ok(elapsed >= ((45 - rate * BURST_SECONDS) / rate) * 1000 - 100, `45 calls in ${elapsed} ms: faster than the pace after the saved burst`);
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
      // the pace is cut and shared, the calls that come after it are mostly let through.
      const firstRefused = seen.slice(0, 30).filter((x) => x.throttled).length;
      const lastRefused = seen.slice(-30).filter((x) => x.throttled).length;
      assert.ok(lastRefused * 4 <= firstRefused, `of the first 30 calls ${firstRefused} throttled, of the last 30 ${lastRefused} (${throttled} of ${seen.length} in all)`);
      const lines = out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; registry?: string });
      const started = lines.filter((l) => /throttling/.test(l.msg));
      assert.equal(started.length, 1, out.join(''));
      assert.equal(started[0]!.registry, `${TEST_ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com`);
      assert.equal(quotas.stats()[0]!.throttled, throttled);
    }));
});
