// `ferry copy SRC DST`.
import { isatty } from 'node:tty';
import type { Options } from 'yargs';
import { randomBytes } from 'node:crypto';
import { AbortedError, FerryError, UsageError, exitCodeFor, toFerryError, type Side } from '../errors.ts';
import { CloudCredentials, type EcrRepositorySettings } from '../auth/cloud/provider.ts';
import { isEcrHost, isGarHost } from '../auth/cloud/hosts.ts';
import type { Logger } from '../log/logger.ts';
import { parseReference, type Reference } from '../reference/reference.ts';
import { parsePlatform } from '../reference/platform.ts';
import { copyImage, type CopyDestination, type CopySource } from '../copy/engine.ts';
import { formatArchiveReference, isArchiveReference, parseArchiveReference } from '../ends/archive-ref.ts';
import { openArchiveDestination, openArchiveSource } from '../ends/local.ts';
import { registryCopyDestination, registryCopySource } from '../ends/registry/endpoints.ts';
import { ContentCache } from '../copy/content-cache.ts';
import { UploadJournal } from '../ends/registry/journal.ts';
import { transferTuning } from '../ends/registry/tuning.ts';
import { TransferLimits } from '../copy/limits.ts';
import type { CopyProgress, CopyReport } from '../copy/types.ts';
import { defaultStateDir, makeClient, makeKeychain, makeLogger, makeTransport, type GlobalFlags } from './context.ts';
import { ProgressDisplay, formatBytes } from './progress.ts';
import { terminalLogDestination } from './terminal-log.ts';
import { parseDuration, repeated, wholeNumber } from './options.ts';
import { Interruption, interruptGraceMs } from './interrupt.ts';
import { join } from 'node:path';

export const copyOptions = {
  platform: { type: 'string', describe: 'copy only os/arch[/variant] (repeatable); writes a new index, or the one manifest' },
  referrers: { type: 'boolean', default: false, describe: 'also copy referrers: signatures, SBOMs, attestations (API, fallback tag, cosign tags)' },
  // No yargs type: a `number` would turn "abc" into NaN before ferry sees it (wholeNumber checks it).
  concurrency: {
    requiresArg: true,
    default: 'auto',
    describe: 'blob transfers at once towards any one registry, fewer while it throttles: auto (8 over HTTP/1.1, 64 over HTTP/2) or 1-256',
  },
  timeout: { type: 'string', describe: 'give up when the copy is not done within DURATION (90s, 15m, 1h30m): REGISTRY_UNAVAILABLE; default: no deadline' },
  'src-creds': { type: 'string', describe: 'source credentials: USER:PASS, or env:NAME to read USER:PASS from $NAME' },
  'dst-creds': { type: 'string', describe: 'destination credentials: USER:PASS, or env:NAME' },
  'src-aws-role-arn': { type: 'string', describe: 'ECR source: assume this IAM role (sts:AssumeRole from the AWS default chain)' },
  'dst-aws-role-arn': { type: 'string', describe: 'ECR destination: assume this IAM role' },
  'src-gcp-service-account': { type: 'string', describe: 'Artifact Registry source: impersonate this service account (email)' },
  'dst-gcp-service-account': { type: 'string', describe: 'Artifact Registry destination: impersonate this service account (email)' },
  'src-gcp-workload-identity-provider': {
    type: 'string',
    describe: 'Artifact Registry source: federate the AWS identity through this workload identity pool provider (projects/N/locations/global/workloadIdentityPools/P/providers/X)',
  },
  'dst-gcp-workload-identity-provider': { type: 'string', describe: 'Artifact Registry destination: federate the AWS identity through this provider' },
  'create-repository': { type: 'boolean', default: true, describe: 'ECR destination: create the repository when it does not exist (--no-create-repository: never)' },
  'ecr-tag-immutability': { type: 'boolean', default: false, describe: 'ECR destination: a repository ferry creates gets immutable tags' },
  'ecr-scan-on-push': { type: 'boolean', default: false, describe: 'ECR destination: a repository ferry creates scans images on push' },
  'ecr-kms-key': { type: 'string', describe: 'ECR destination: a repository ferry creates is encrypted with this KMS key (ARN, id or alias)' },
  'dry-run': { type: 'boolean', default: false, describe: 'print the plan (blobs to copy, skip and mount, and bytes) and change nothing' },
  'state-dir': { type: 'string', describe: 'where ferry keeps its cache and resume state (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)' },
} as const satisfies Record<string, Options>;

export interface CopyArgs extends GlobalFlags {
  source: string;
  destination: string;
  platform?: string | string[];
  referrers: boolean;
  /** A number, or the text given when it is not one (checked by wholeNumber). */
  concurrency: number | string;
  timeout?: string;
  'src-creds'?: string;
  'dst-creds'?: string;
  'src-aws-role-arn'?: string;
  'dst-aws-role-arn'?: string;
  'src-gcp-service-account'?: string;
  'dst-gcp-service-account'?: string;
  'src-gcp-workload-identity-provider'?: string;
  'dst-gcp-workload-identity-provider'?: string;
  'create-repository': boolean;
  'ecr-tag-immutability': boolean;
  'ecr-scan-on-push': boolean;
  'ecr-kms-key'?: string;
  'dry-run': boolean;
  'state-dir'?: string;
}

/** Per-side flags that only mean something for a registry. */
const CLOUD_FLAGS = ['creds', 'aws-role-arn', 'gcp-service-account', 'gcp-workload-identity-provider'] as const;

export async function runCopy(args: CopyArgs): Promise<number> {
  // isatty, not process.stderr.isTTY: that would build the stderr stream (~9 ms) for a check.
  const interactive = !args.json && isatty(2);
  // On a terminal: the progress display, with log lines (warnings) printed readably above it.
  const display = interactive ? new ProgressDisplay({ stream: process.stderr }) : undefined;
  const logger = makeLogger(args, interactive, display ? terminalLogDestination((line) => display.printAbove(line)) : undefined);
  const started = Date.now();
  let source: Reference | undefined;
  let destination: Reference | undefined;
  // A --concurrency that is not a number is reported below (wholeNumber); the transport takes the default till then.
  const transport = makeTransport(args, process.env, { concurrency: typeof args.concurrency === 'number' ? args.concurrency : undefined, logger });
  let srcCloud: CloudCredentials | undefined;
  let dstCloud: CloudCredentials | undefined;
  const closers: Array<() => Promise<void>> = [];
  const deadlineAbort = new AbortController();
  let deadline: NodeJS.Timeout | undefined;
  let progress: CopyProgress | undefined;
  // Ctrl-C / SIGTERM: the uploads in flight finish their chunk (the grace), then the copy stops, resumable.
  const interruption = new Interruption({
    graceMs: interruptGraceMs(process.env),
    onPark: (signal, graceMs) => {
      // The display goes; the notice takes its place.
      display?.finish();
      const again = signal === 'SIGINT' ? 'press Ctrl-C again' : 'send SIGTERM again';
      process.stderr.write(`ferry: ${signal}: stopping; letting the uploads in flight finish their chunk so the copy can be resumed (up to ${graceMs / 1000} s; ${again} to stop now)\n`);
    },
    onStopNow: (signal) => process.stderr.write(`ferry: ${signal} again: stopping now\n`),
  }).listen();
  try {
    const concurrency = args.concurrency === 'auto' ? undefined : wholeNumber('concurrency', args.concurrency, 1, 256);
    if (args.timeout !== undefined) {
      const ms = parseDuration(args.timeout, '--timeout');
      deadline = setTimeout(() => deadlineAbort.abort(new DeadlineExceeded(args.timeout!, ms)), ms);
    }
    const wanted = repeated(args.platform);
    const platforms = wanted.length > 0 ? wanted.map(parsePlatform) : 'all';
    const jobId = `copy-${randomBytes(4).toString('hex')}`;
    // Each side is a registry reference or a local archive (oci:, oci-archive:, docker-archive:).
    const srcArchive = isArchiveReference(args.source) ? parseArchiveReference(args.source) : undefined;
    const dstArchive = isArchiveReference(args.destination) ? parseArchiveReference(args.destination) : undefined;
    if (!srcArchive) source = parseReference(args.source);
    if (!dstArchive) {
      destination = parseReference(args.destination, { defaultTag: false });
      // No tag on the destination: keep the source's tag (or push by digest only).
      if (destination.tag === undefined && destination.digest === undefined && source?.tag !== undefined) destination.tag = source.tag;
      checkEcrFlags(args, destination);
    }
    for (const [side, archive] of [['src', srcArchive], ['dst', dstArchive]] as const) {
      if (archive && CLOUD_FLAGS.some((f) => args[`${side}-${f}` as keyof CopyArgs] !== undefined)) {
        throw new UsageError(`--${side}-${CLOUD_FLAGS.join(`, --${side}-`)} apply to registries, not to ${archive.transport}: references`);
      }
    }
    let copySource: CopySource;
    if (srcArchive) {
      const end = await openArchiveSource(srcArchive, logger);
      closers.push(() => end.close());
      copySource = { end, target: end.target, name: formatArchiveReference(srcArchive) };
    } else {
      srcCloud = cloudCredentials('source', source!, args, jobId, logger);
      const srcClient = makeClient(source!.registry, 'source', makeKeychain('source', source!.registry, { flag: '--src-creds', value: args['src-creds'] }, args, logger, srcCloud), transport, logger);
      copySource = registryCopySource(source!, srcClient);
    }
    const stateDir = args['state-dir'] ?? defaultStateDir();
    const tuning = transferTuning(process.env).upload;
    let copyDestination: CopyDestination;
    if (dstArchive) {
      const end = await openArchiveDestination(dstArchive, logger);
      copyDestination = { end, name: formatArchiveReference(dstArchive), repository: `${dstArchive.transport}:${dstArchive.path}` };
      const tag = end.target ?? source?.tag ?? (srcArchive?.tag);
      if (tag !== undefined) copyDestination.tag = tag;
    } else {
      dstCloud = cloudCredentials('destination', destination!, args, jobId, logger);
      const dstClient = makeClient(destination!.registry, 'destination', makeKeychain('destination', destination!.registry, { flag: '--dst-creds', value: args['dst-creds'] }, args, logger, dstCloud), transport, logger);
      if (isEcrHost(destination!.registry) && args['create-repository'] && !args['dry-run'] && args['dst-creds'] === undefined) {
        // ECR refuses pushes to a repository that does not exist: create it first.
        await dstCloud.ensureEcrRepository(destination!.registry, destination!.repository, ecrRepositorySettings(args));
      }
      // Open chunked uploads are journaled, so that running the same command again after a crash continues them.
      copyDestination = registryCopyDestination(destination!, dstClient, { journal: UploadJournal.inStateDir(stateDir, logger), tuning });
    }
    const onProgress = (p: CopyProgress) => {
      progress = p;
      display?.update(p);
    };
    const report = await copyImage({
      source: copySource,
      destination: copyDestination,
      platforms,
      referrers: args.referrers,
      limits: new TransferLimits(concurrency ?? transport.flow.globalCeiling, transport.flow),
      logger,
      cache: new ContentCache(join(stateDir, 'cache')),
      signal: AbortSignal.any([interruption.stop.signal, deadlineAbort.signal]),
      park: interruption.park.signal,
      dryRun: args['dry-run'],
      onProgress,
    });
    display?.finish();
    if (args.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else process.stdout.write(humanSummary(report, args['dry-run']));
    if (!args.json && !interactive) logger.info({ digest: report.image.digest, transfer: report.transfer }, 'copy finished');
    return 0;
  } catch (e) {
    display?.finish();
    if (interruption.signal) return reportInterrupted(args, interruption, toFerryError(e), started, logger);
    const reason: unknown = deadlineAbort.signal.reason;
    // The deadline cut whatever was running: say so, not "cancelled".
    const err = reason instanceof DeadlineExceeded && (e instanceof AbortedError || deadlineAbort.signal.aborted) ? reason.explain(progress) : toFerryError(e);
    // On a terminal the one line below says it; a log line would say it twice.
    if (!interactive) logger.error({ code: err.code, side: err.side, status: err.status, registry_codes: err.registryCodes }, err.message);
    if (args.json) {
      process.stdout.write(
        `${JSON.stringify({
          source: args.source,
          destination: args.destination,
          error: { code: err.code, message: err.message },
          transfer: { duration_ms: Date.now() - started },
        })}\n`,
      );
    }
    process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  } finally {
    display?.finish();
    clearTimeout(deadline);
    interruption.close();
    await transport.close().catch(() => undefined);
    await Promise.all([srcCloud?.destroy(), dstCloud?.destroy(), ...closers.map((c) => c())]).catch(() => undefined);
  }
}

/**
 * `--timeout` ran out. REGISTRY_UNAVAILABLE: the registries did not deliver within the time the
 * operator allows (slow, throttling, dripping) — worth another try, later or with more time; the
 * blobs already copied are not sent again.
 */
class DeadlineExceeded extends Error {
  readonly flag: string;
  readonly ms: number;
  constructor(flag: string, ms: number) {
    super(`--timeout ${flag}`);
    this.flag = flag;
    this.ms = ms;
  }
  explain(p: CopyProgress | undefined): FerryError {
    const done = p && p.blobs_total > 0 ? ` (${p.blobs_done} of ${p.blobs_total} blobs, ${formatBytes(p.bytes_done)} of ${formatBytes(p.bytes_total)} done)` : '';
    return new FerryError(
      'REGISTRY_UNAVAILABLE',
      `the copy did not finish within --timeout ${this.flag}${done}: the registries were too slow or throttled it; run it again (blobs already copied are not sent again) or allow more time`,
      { retryable: true },
    );
  }
}

/**
 * The copy stopped because of a signal: the journal keeps what the next run continues, so the
 * way on is the same command. An error other than the stop itself (one that happened during the
 * grace) is logged; the next run meets it again if it lasts.
 */
function reportInterrupted(args: CopyArgs, interruption: Interruption, err: FerryError, started: number, logger: Logger): number {
  const message = 'interrupted: run the same command to resume';
  if (err.code !== 'INTERRUPTED') logger.warn({ code: err.code, side: err.side, status: err.status }, `while stopping: ${err.message}`);
  logger.info({ signal: interruption.signal }, message);
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({
        source: args.source,
        destination: args.destination,
        interrupted: interruption.signal,
        error: { code: 'INTERRUPTED', message },
        transfer: { duration_ms: Date.now() - started },
      })}\n`,
    );
  }
  process.stderr.write(`ferry: ${message}\n`);
  return interruption.exitCode;
}

const ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]+$/;

/** The cloud identity for one side, from the --src-/--dst- cloud flags (checked against the side's registry). */
function cloudCredentials(side: Side, ref: Reference, args: CopyArgs, jobId: string, logger: Logger): CloudCredentials {
  const p = side === 'source' ? 'src' : 'dst';
  const roleArn = args[`${p}-aws-role-arn`];
  const serviceAccount = args[`${p}-gcp-service-account`];
  const provider = args[`${p}-gcp-workload-identity-provider`];
  if (roleArn !== undefined) {
    if (!isEcrHost(ref.registry)) throw new UsageError(`--${p}-aws-role-arn needs an Amazon ECR ${side} (<account>.dkr.ecr.<region>.amazonaws.com), not ${ref.registry}`);
    if (!ROLE_ARN.test(roleArn)) throw new UsageError(`--${p}-aws-role-arn must be an IAM role ARN (arn:aws:iam::<account>:role/<name>), not "${roleArn}"`);
  }
  for (const [flag, value] of [[`--${p}-gcp-service-account`, serviceAccount], [`--${p}-gcp-workload-identity-provider`, provider]] as const) {
    if (value !== undefined && !isGarHost(ref.registry)) {
      throw new UsageError(`${flag} needs an Artifact Registry or Container Registry ${side} (<location>-docker.pkg.dev, gcr.io), not ${ref.registry}`);
    }
  }
  if (serviceAccount !== undefined && !/^[^@\s]+@[^@\s]+$/.test(serviceAccount)) {
    throw new UsageError(`--${p}-gcp-service-account must be a service account email, not "${serviceAccount}"`);
  }
  if (provider !== undefined && !/^(\/\/iam\.googleapis\.com\/)?projects\/[^/]+\/locations\/[^/]+\/workloadIdentityPools\/[^/]+\/providers\/[^/]+$/.test(provider)) {
    throw new UsageError(`--${p}-gcp-workload-identity-provider must be projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>, not "${provider}"`);
  }
  const opts: ConstructorParameters<typeof CloudCredentials>[0] = { side, logger, jobId };
  if (roleArn !== undefined) {
    opts.roleArn = roleArn;
    logger.info({ side, role_arn: roleArn, role_session: `ferry-${jobId}` }, 'ECR credentials through an assumed role');
  }
  if (serviceAccount !== undefined) opts.serviceAccountEmail = serviceAccount;
  if (provider !== undefined) opts.workloadIdentityProvider = provider;
  return new CloudCredentials(opts);
}

function ecrRepositorySettings(args: CopyArgs): EcrRepositorySettings {
  const kms = args['ecr-kms-key'];
  return {
    tagImmutability: args['ecr-tag-immutability'],
    scanOnPush: args['ecr-scan-on-push'],
    ...(kms !== undefined ? { encryption: { type: 'KMS' as const, kmsKey: kms } } : {}),
  };
}

/** ECR repository flags with a destination that is not ECR are a mistake worth saying so. */
function checkEcrFlags(args: CopyArgs, destination: Reference): void {
  if (isEcrHost(destination.registry)) return;
  const used = (['ecr-tag-immutability', 'ecr-scan-on-push'] as const).filter((f) => args[f]).map((f) => `--${f}`);
  if (args['ecr-kms-key'] !== undefined) used.push('--ecr-kms-key');
  if (used.length) throw new UsageError(`${used.join(', ')} only apply to an Amazon ECR destination, not ${destination.registry}`);
}

/** What `ferry copy` prints on stdout without --json. */
export function humanSummary(r: CopyReport, dryRun: boolean): string {
  const t = r.transfer;
  const lines: string[] = [];
  if (dryRun && r.dry_run) {
    lines.push(`Plan for ${r.source} → ${r.destination} (dry run, nothing written)`);
    for (const b of r.dry_run.blobs) lines.push(`  ${b.action.padEnd(5)} ${b.digest}  ${formatBytes(b.size)}`);
    for (const m of r.dry_run.manifests) lines.push(`  ${m.action.padEnd(5)} ${m.digest}  ${m.media_type}`);
    lines.push(`  bytes to copy: ${formatBytes(r.dry_run.bytes_to_copy)} of ${formatBytes(t.bytes_total)}`);
    return `${lines.join('\n')}\n`;
  }
  // Nothing written at all: no blob copied or mounted, no manifest put.
  const upToDate = t.blobs_copied === 0 && t.blobs_mounted === 0 && t.manifests_written === 0;
  lines.push(upToDate ? `Already up to date: ${r.destination} (from ${r.source}); nothing copied` : `Copied ${r.source} → ${r.destination}`);
  lines.push(`  digest:    ${r.image.digest}${r.digest_changed ? ' (new: platform subset)' : ''}`);
  if (r.image.platforms.length) lines.push(`  platforms: ${r.image.platforms.map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/')).join(', ')}`);
  lines.push(`  size:      ${formatBytes(r.image.size)}`);
  if (!upToDate) {
    lines.push(
      `  blobs:     ${t.blobs_copied} copied (${formatBytes(t.bytes_transferred)}), ${t.blobs_skipped} already there, ${t.blobs_mounted} mounted${t.blobs_restarted ? `, ${t.blobs_restarted} restarted` : ''}${t.blobs_resumed ? `, ${t.blobs_resumed} resumed` : ''}`,
    );
    lines.push(`  manifests: ${t.manifests_written} written`);
  }
  if (r.image.referrers.length) lines.push(`  referrers: ${r.image.referrers.length}`);
  if (r.referrers_left_behind.length) lines.push(`  note: ${r.referrers_left_behind.length} referrer(s) of the original index were left behind (the digest changed)`);
  if (r.previous_digest) lines.push(`  note: the tag pointed at ${r.previous_digest} before; overwritten`);
  lines.push(`  time:      ${(t.duration_ms / 1000).toFixed(2)} s`);
  return `${lines.join('\n')}\n`;
}

