// `ferry sync --plan FILE`: an operator's debug sync. It runs a control-plane plan (the
// contract's `oci-sync` JSON) by hand, through the same copy path as `ferry copy`, without a
// control plane: one-time tokens cannot be exchanged here, so such a plan needs --src-creds.
import { readFile } from 'node:fs/promises';
import type { Options } from 'yargs';
import { FerryError, UsageError, exitCodeFor } from '../errors.ts';
import { parsePlan, type Plan } from '../agent/plan.ts';
import { formatPlatform } from '../reference/platform.ts';
import { copyOptions, runCopy, type CopyArgs } from './copy.ts';

const MAX_PLAN_BYTES = 1024 * 1024;

export const syncOptions = {
  plan: { type: 'string', demandOption: true, describe: 'the plan: a JSON file in the control plane\'s oci-sync format' },
  ...Object.fromEntries(Object.entries(copyOptions).filter(([k]) => !['platform', 'referrers'].includes(k))),
} as const satisfies Record<string, Options>;

export async function runSync(args: Omit<CopyArgs, 'source' | 'destination' | 'platform' | 'referrers'> & { plan: string }): Promise<number> {
  let plan: Plan;
  try {
    plan = await readPlan(args.plan);
  } catch (e) {
    const err = e instanceof FerryError ? e : new UsageError(String(e));
    if (args.json) process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message } })}\n`);
    process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  }
  const copyArgs: CopyArgs = {
    ...args,
    source: plan.source.reference,
    destination: plan.destination.reference,
    referrers: plan.referrers,
  };
  if (plan.platforms !== 'all') copyArgs.platform = plan.platforms.map(formatPlatform);
  const auth = plan.source.auth;
  if (auth.kind === 'one-time-token' && args['src-creds'] === undefined) {
    const err = new UsageError('the plan\'s source uses a one-time token, which only the agent exchanges (with the control plane); for a debug sync give the source credentials with --src-creds');
    process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  }
  if (auth.kind === 'aws-ecr') copyArgs['src-aws-role-arn'] ??= auth.iam_role_arn;
  if (auth.kind === 'gcp-gar') {
    copyArgs['src-gcp-service-account'] ??= auth.service_account_email;
    if (auth.workload_identity_provider) copyArgs['src-gcp-workload-identity-provider'] ??= auth.workload_identity_provider;
  }
  return runCopy(copyArgs);
}

/** Read and check a plan file; a bad file is bad local input (exit 2), naming the problem. */
async function readPlan(path: string): Promise<Plan> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.byteLength > MAX_PLAN_BYTES) throw new UsageError(`plan file ${path} is larger than ${MAX_PLAN_BYTES} bytes`);
    text = bytes.toString('utf8');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`cannot read plan file ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`plan file ${path} is not JSON: ${(e as Error).message.slice(0, 120)}`);
  }
  try {
    return parsePlan(raw);
  } catch (e) {
    throw new UsageError(`plan file ${path}: ${(e as Error).message}`);
  }
}
