// One sync job, from a claimed (or attached) execution to a delivered result: fetch and
// check the plan, get the source credentials (exchanging the one-time token), copy through
// the engine with progress reports, watch the job's status every second so that a cancel
// stops the transfers, and report the outcome. A cancelled or timed-out job reports nothing
// more; a job interrupted by shutdown reports nothing either and stays open to be resumed.
//
// A job whose execution another instance now holds (409 EXECUTION_NOT_HELD to a PATCH, a
// progress report or the result: this process was frozen or cut off past its lease, and a
// replica attached) stops at once and reports nothing: its transfers stop, its upload sessions
// are deleted (the replica that holds the job has no journal of them; blobs already in the
// local registry stay, and it finds them there). When nothing has extended the lease for
// longer than the lease lasts, the job asks with a PATCH before it goes on, and every write to
// the destination waits for that answer (src/agent/lease.ts).
import { AbortedError, FerryError, contractCode, toFerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { Keychain, type CredentialProvider } from '../auth/credentials.ts';
import { CloudCredentials } from '../auth/cloud/provider.ts';
import { copyImage } from '../copy/engine.ts';
import { registryCopyDestination, registryCopySource } from '../ends/registry/endpoints.ts';
import type { ContentCache } from '../copy/content-cache.ts';
import type { BlobPlacements } from '../ends/registry/placements.ts';
import { SUSPEND, type UploadJournal } from '../ends/registry/journal.ts';
import type { TransferLimits } from '../copy/limits.ts';
import type { CopyProgress, CopyReport } from '../copy/types.ts';
import { RegistryClient } from '../registry/client.ts';
import type { HttpTransport } from '../transport/http.ts';
import { Backoff, sleep } from './backoff.ts';
import type { AgentConfig } from './config.ts';
import { shouldStop, type ResultBody } from './contract.ts';
import { ControlPlaneError, isNotHeld, type ControlPlaneClient } from './control-plane-client.ts';
import { ExecutionCredentials } from './credentials.ts';
import { JobLease, type HeartbeatWindow } from './lease.ts';
import type { AgentMetrics } from './metrics.ts';
import type { Plan } from './plan.ts';
import { reportResult } from './results.ts';
import { deliver } from './retry.ts';
import type { AgentState } from './state.ts';

export interface JobContext {
  config: AgentConfig;
  client: ControlPlaneClient;
  state: AgentState;
  transport: HttpTransport;
  limits: TransferLimits;
  cache: ContentCache;
  /** Where the jobs have put blobs in the local registry: each one goes up once, then is mounted. */
  placements: BlobPlacements;
  /** Open chunked uploads in the state directory: a restarted agent continues them. */
  journal?: UploadJournal;
  metrics: AgentMetrics;
  logger: Logger;
  /** The local registry's client, shared by every job (its tokens are reused). */
  destinationClient: (registry: string) => RegistryClient;
  /** Make sure a local repository exists before the copy (ECR refuses pushes to a missing one). */
  ensureLocalRepository: (registry: string, repository: string) => Promise<void>;
  /** Aborts when the agent must stop now (second signal, grace period over): leave the job open. */
  hardStop: AbortSignal;
  /** How long a lease lasts (the runner settings' lease_s). */
  leaseMs: number;
  /** The last heart-beat the control plane accepted (it extends the leases this instance holds). */
  lastHeartbeat: () => HeartbeatWindow | undefined;
}

export type JobOutcome = 'succeeded' | 'failed' | 'cancelled' | 'timed-out' | 'abandoned' | 'not-held';
type StoppedBy = 'cancelled' | 'timed-out' | 'not-held';

const STATUS_WATCH_MS = 1000;
const PROGRESS_EVERY_MS = 2000;

export async function runJob(ctx: JobContext, jobId: string, execId: string, resumed: boolean): Promise<JobOutcome> {
  const log = ctx.logger.child({ job_id: jobId, exec_id: execId });
  const started = Date.now();
  // Aborted on cancel (job status) or on hard stop (shutdown).
  const work = new AbortController();
  // A hard stop suspends the copy: journaled upload sessions stay open for whoever resumes the job.
  const onHardStop = () => work.abort(SUSPEND);
  ctx.hardStop.addEventListener('abort', onHardStop, { once: true });
  let stoppedBy: StoppedBy | undefined;
  const stop = (s: StoppedBy) => {
    if (stoppedBy) return;
    stoppedBy = s;
    work.abort();
  };
  const lease = new JobLease({
    leaseMs: ctx.leaseMs,
    lastHeartbeat: ctx.lastHeartbeat,
    confirm: () => ctx.client.updateStatus(jobId, execId, 'in-progress', { signal: work.signal }).then(() => undefined),
    onLost: (e) => {
      if (!stoppedBy) log.warn({ problem: e.message }, 'another instance holds this execution now (this one was frozen or cut off past its lease): stopping the job');
      stop('not-held');
    },
    isNotHeld,
    logger: log,
  });
  const watcher = watchStatus(ctx, jobId, execId, work, lease, log, stop);
  ctx.metrics.jobsRunning.inc();
  try {
    log.info({ resumed }, resumed ? 'resuming job' : 'starting job');
    void sendStatus(ctx, jobId, execId, 'initializing', lease, log, work.signal);
    const plan = await fetchPlan(ctx, jobId, work.signal, log);
    let report: CopyReport | undefined;
    let failure: FerryError | undefined;
    try {
      report = await copyForPlan(ctx, plan, jobId, execId, work.signal, lease, log);
    } catch (e) {
      failure = toFerryError(e);
    }
    if (stoppedBy) return finishStopped(ctx, stoppedBy, log);
    if (ctx.hardStop.aborted) return abandon(ctx, log);
    if (failure instanceof AbortedError) return abandon(ctx, log);
    if (failure) return fail(ctx, jobId, execId, failure, lease, log);
    const result: ResultBody = { success: true, outputs: { image: report!.image } };
    const delivery = await reportResult(ctx.client, ctx.state.pendingResults, jobId, execId, result, { logger: log, signal: ctx.hardStop });
    if (!delivery.delivered && isNotHeld(delivery.error)) {
      lease.lost(delivery.error);
      return finishStopped(ctx, 'not-held', log);
    }
    ctx.metrics.recordJob('succeeded', { transfer: report!.transfer });
    log.info({ digest: report!.image.digest, transfer: report!.transfer, duration_ms: Date.now() - started }, 'job finished');
    return 'succeeded';
  } catch (e) {
    const err = toFerryError(e);
    if (stoppedBy) return finishStopped(ctx, stoppedBy, log);
    if (ctx.hardStop.aborted || err instanceof AbortedError) return abandon(ctx, log);
    return fail(ctx, jobId, execId, err, lease, log);
  } finally {
    ctx.metrics.jobsRunning.dec();
    ctx.hardStop.removeEventListener('abort', onHardStop);
    work.abort();
    await watcher;
  }
}

async function fail(ctx: JobContext, jobId: string, execId: string, err: FerryError, lease: JobLease, log: Logger): Promise<JobOutcome> {
  const code = contractCode(err);
  log.error({ code, side: err.side, status: err.status }, err.message);
  if (err.side) ctx.metrics.recordRegistryError(err.side, code);
  const result: ResultBody = { success: false, error_code: code, error_message: err.message };
  try {
    const delivery = await reportResult(ctx.client, ctx.state.pendingResults, jobId, execId, result, { logger: log, signal: ctx.hardStop });
    if (!delivery.delivered && isNotHeld(delivery.error)) {
      lease.lost(delivery.error);
      return finishStopped(ctx, 'not-held', log);
    }
  } catch (e) {
    if (!(toFerryError(e) instanceof AbortedError)) throw e;
    // Shutting down: the result stays pending in the state directory for the next start.
  }
  ctx.metrics.recordJob('failed', { errorCode: code });
  return 'failed';
}

function finishStopped(ctx: JobContext, status: StoppedBy, log: Logger): JobOutcome {
  if (status === 'not-held') {
    log.warn({ status }, 'job left to the instance that holds it now; transfers stopped and upload sessions deleted, nothing more is reported');
  } else {
    log.warn({ status }, 'job was stopped by the control plane; transfers stopped and upload sessions deleted, nothing more is reported');
  }
  ctx.metrics.recordJob(status);
  return status;
}

function abandon(ctx: JobContext, log: Logger): JobOutcome {
  log.warn('agent stopping: job left open, to be resumed by this agent or a replica');
  ctx.metrics.recordJob('abandoned');
  return 'abandoned';
}

/**
 * Every second: poll the job's status (cancelled / timed-out stop the work), and, when nothing
 * has extended the lease for longer than it lasts (this process was frozen, or could not reach
 * the control plane), make sure the execution is still this instance's before going on.
 */
async function watchStatus(ctx: JobContext, jobId: string, execId: string, work: AbortController, lease: JobLease, log: Logger, onStop: (s: StoppedBy) => void): Promise<void> {
  while (!work.signal.aborted) {
    try {
      await sleep(STATUS_WATCH_MS, work.signal);
    } catch {
      return;
    }
    if (lease.mayHaveRunOut()) {
      await lease.check();
      if (work.signal.aborted || lease.isLost) return;
    }
    try {
      const s = await ctx.client.jobStatus(jobId, { signal: work.signal });
      if (shouldStop(s.status)) {
        log.warn({ status: s.status }, 'control plane stopped the job');
        onStop(s.status as 'cancelled' | 'timed-out');
        return;
      }
    } catch (e) {
      if (work.signal.aborted) return;
      // An outage must not stop the copy; the next poll tries again.
      log.debug({ problem: (e as Error).message }, 'job status check failed');
    }
  }
}

/** Execution status updates: retried a few times in the background, never blocking the copy. */
async function sendStatus(ctx: JobContext, jobId: string, execId: string, status: 'initializing' | 'in-progress' | 'cleaning-up', lease: JobLease, log: Logger, signal: AbortSignal): Promise<void> {
  try {
    let sent = 0;
    const attempt = (s?: AbortSignal) => {
      sent = Date.now();
      return ctx.client.updateStatus(jobId, execId, status, s ? { signal: s } : {});
    };
    const delivery = await deliver(`status ${status}`, attempt, { logger: log, signal, maxAttempts: 8, context: { job_id: jobId, exec_id: execId } });
    if (delivery.delivered) lease.extended(sent);
    else if (isNotHeld(delivery.error)) lease.lost(delivery.error);
  } catch {
    // aborted: the job ended first
  }
}

/** The plan, retried through outages; a plan that cannot be used fails the job (INVALID_PLAN). */
function fetchPlan(ctx: JobContext, jobId: string, signal: AbortSignal, log: Logger): Promise<Plan> {
  return untilDone(() => ctx.client.plan(jobId, { localRegistry: ctx.config.localRegistry, signal }), 'plan', signal, log);
}

/** Call `fn` until it succeeds or fails for good: control-plane outages are waited out with backoff. */
async function untilDone<T>(fn: () => Promise<T>, what: string, signal: AbortSignal, log: Logger): Promise<T> {
  const backoff = new Backoff();
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      const err = toFerryError(e);
      if (err.retryable && !signal.aborted) {
        const delay = backoff.next(e instanceof ControlPlaneError ? (e.retryAfterMs ?? 0) : 0);
        log.warn({ problem: err.message, retry_in_ms: delay }, `could not get the ${what}; retrying`);
        await sleep(delay, signal);
        continue;
      }
      throw e;
    }
  }
}

async function copyForPlan(ctx: JobContext, plan: Plan, jobId: string, execId: string, signal: AbortSignal, lease: JobLease, log: Logger): Promise<CopyReport> {
  const source = plan.source.ref;
  const destination = plan.destination.ref;
  const sourceCredentials = sourceProvider(ctx, plan, jobId, execId, log);
  if (sourceCredentials instanceof ExecutionCredentials) {
    // Exchange the one-time token now, even for a source that needs no credentials: a token
    // already used or expired must fail the job, whatever the registry would have said.
    await untilDone(() => sourceCredentials.resolve({ registry: source.registry }), 'source credentials', signal, log);
  }
  const sourceClient = new RegistryClient({
    registry: source.registry,
    side: 'source',
    transport: ctx.transport,
    credentials: new Keychain(sourceCredentials ? [sourceCredentials] : []),
    logger: log.child({ side: 'source', registry: source.registry }),
  });
  void sendStatus(ctx, jobId, execId, 'in-progress', lease, log, signal);
  let lastProgress = 0;
  const onProgress = (p: CopyProgress) => {
    const now = Date.now();
    if (now - lastProgress < PROGRESS_EVERY_MS) return;
    lastProgress = now;
    const body = { bytes_done: p.bytes_done, bytes_total: p.bytes_total, blobs_done: p.blobs_done, blobs_total: p.blobs_total };
    ctx.client.reportProgress(jobId, execId, body, { signal }).then(
      () => lease.extended(now),
      (e: Error) => (isNotHeld(e) ? lease.lost(e) : log.debug({ problem: e.message }, 'progress report failed')),
    );
  };
  await ctx.ensureLocalRepository(destination.registry, destination.repository);
  return copyImage({
    source: registryCopySource(source, sourceClient),
    destination: registryCopyDestination(destination, ctx.destinationClient(destination.registry), {
      placements: ctx.placements,
      tuning: ctx.config.transfer.upload,
      ...(ctx.journal ? { journal: ctx.journal, journalOwner: `job ${jobId}` } : {}),
    }),
    platforms: plan.platforms,
    referrers: plan.referrers,
    limits: ctx.limits,
    logger: log,
    cache: ctx.cache,
    signal,
    beforeWrite: () => lease.beforeWrite(),
    onProgress,
  });
}

function sourceProvider(ctx: JobContext, plan: Plan, jobId: string, execId: string, log: Logger): CredentialProvider | undefined {
  const auth = plan.source.auth;
  switch (auth.kind) {
    case 'anonymous':
      return undefined;
    case 'one-time-token':
      return new ExecutionCredentials({ client: ctx.client, jobId, execId, registry: plan.source.ref.registry, oneTimeToken: auth.one_time_token, logger: log });
    case 'aws-ecr':
      return new CloudCredentials({ side: 'source', logger: log, roleArn: auth.iam_role_arn, jobId });
    case 'gcp-gar': {
      const o: ConstructorParameters<typeof CloudCredentials>[0] = { side: 'source', logger: log, serviceAccountEmail: auth.service_account_email, jobId };
      if (auth.workload_identity_provider) o.workloadIdentityProvider = auth.workload_identity_provider;
      return new CloudCredentials(o);
    }
  }
}
