// The agent: poll the control plane for sync jobs, claim them, run each through the copy
// engine, and keep going through control-plane outages. Executions left open by an earlier
// run of this instance (or by a replica whose lease ran out) are attached and resumed; blobs
// that already reached the local registry are not sent again.
//
// Stopping: stop() (SIGTERM) stops claiming and lets running jobs finish within the grace
// period; jobs still running then are left open for a restart or a replica. stopNow()
// (a second SIGTERM, SIGINT) leaves them at once.
import { join } from 'node:path';
import { StaticCredentials, Keychain, type CredentialProvider } from '../auth/credentials.ts';
import { CloudCredentials } from '../auth/cloud/provider.ts';
import { isEcrHost } from '../auth/cloud/hosts.ts';
import { DockerConfigCredentials } from '../auth/docker-config.ts';
import { ContentCache } from '../copy/content-cache.ts';
import { BlobPlacements } from '../ends/registry/placements.ts';
import { UploadJournal } from '../ends/registry/journal.ts';
import { TransferLimits } from '../copy/limits.ts';
import type { Logger } from '../log/logger.ts';
import { RegistryClient } from '../registry/client.ts';
import { HttpTransport } from '../transport/http.ts';
import { USER_AGENT, VERSION } from '../version.ts';
import { Backoff, sleep } from './backoff.ts';
import { tokenSourceFor, type AgentConfig } from './config.ts';
import { DEFAULT_SETTINGS, type RunnerSettings } from './contract.ts';
import { ControlPlaneClient } from './control-plane-client.ts';
import { Readiness, controlPlaneCheck, startHealthServer, type HealthServer } from './health.ts';
import { runJob, type JobContext, type JobOutcome } from './job.ts';
import type { HeartbeatWindow } from './lease.ts';
import { heapCapWarning, heapLimitMiB } from './memory.ts';
import { createAgentMetrics, type AgentMetrics } from './metrics.ts';
import { flushPendingResults } from './results.ts';
import { openState, type AgentState } from './state.ts';

export interface AgentOptions {
  config: AgentConfig;
  logger: Logger;
  env?: NodeJS.ProcessEnv;
}

export class Agent {
  private readonly config: AgentConfig;
  private readonly log: Logger;
  private readonly env: NodeJS.ProcessEnv;
  /** Aborted by stop(): no more claiming. */
  private readonly draining = new AbortController();
  /** Aborted by stopNow() or when the grace period runs out: running jobs are left open. */
  private readonly hardStop = new AbortController();
  private readonly running = new Map<string, Promise<JobOutcome>>();
  private readonly metrics: AgentMetrics = createAgentMetrics(VERSION);
  private readonly readiness = new Readiness();
  /** The agent's own cloud identity for its local registry (the SDKs load only if it is ECR / Artifact Registry). */
  private readonly localCloud: CloudCredentials;
  private wake: (() => void) | undefined;
  private started = Date.now();
  /** The last heart-beat the control plane accepted (it extends every lease this instance holds). */
  private lastHeartbeat: HeartbeatWindow | undefined;
  /** Outcomes of the jobs this process ran, for tests and the exit summary. */
  readonly outcomes: Array<{ job_id: string; outcome: JobOutcome }> = [];
  health: HealthServer | undefined;

  constructor(opts: AgentOptions) {
    this.config = opts.config;
    this.log = opts.logger;
    this.env = opts.env ?? process.env;
    this.localCloud = new CloudCredentials({ side: 'destination', logger: this.log });
  }

  /** Finish running jobs (within the grace period), claim nothing new, then return. */
  stop(): void {
    if (this.draining.signal.aborted) return;
    this.log.info({ grace_s: this.config.shutdownGraceS, jobs_running: this.running.size }, 'stopping: no new jobs; running jobs get the grace period');
    this.readiness.add('draining', () => 'shutting down');
    this.draining.abort();
    this.wake?.();
    const timer = setTimeout(() => this.stopNow('grace period over'), this.config.shutdownGraceS * 1000);
    timer.unref();
  }

  /** Leave running jobs open now and return as soon as possible. */
  stopNow(reason = 'stop requested'): void {
    if (this.hardStop.signal.aborted) return;
    this.log.warn({ reason, jobs_running: this.running.size }, 'stopping now: running jobs stay open for a restart or a replica');
    this.draining.abort();
    this.hardStop.abort();
    this.wake?.();
  }

  async run(): Promise<void> {
    this.started = Date.now();
    const cfg = this.config;
    for (const w of cfg.warnings) this.log.warn(w);
    const state = await openState(cfg.stateDir, this.log);
    this.metrics.watchPendingResults(() => state.pendingResults.size);
    const heapLimit = heapLimitMiB();
    const heapWarning = heapCapWarning(cfg.maxJobs, cfg.concurrency, heapLimit);
    if (heapWarning) this.log.warn(heapWarning);
    this.log.info({ instance_id: state.instanceId, runner_id: cfg.runnerId, local_registry: cfg.localRegistry, version: VERSION, heap_limit_mib: heapLimit }, 'ferry agent starting');
    const client = new ControlPlaneClient({
      url: cfg.controlPlaneUrl,
      runnerId: cfg.runnerId,
      instanceId: state.instanceId,
      tokens: tokenSourceFor(cfg, this.env, this.log),
      logger: this.log,
      insecure: cfg.insecureControlPlane,
      observer: (e) => this.metrics.observeControlPlane(e),
    });
    this.readiness.add('config', () => undefined).add('control plane', controlPlaneCheck(client.contact, 60));
    if (cfg.healthAddr) {
      this.health = await startHealthServer({ addr: cfg.healthAddr, readiness: this.readiness, metrics: this.metrics.registry, logger: this.log });
    }
    const transport = new HttpTransport({
      plainHttp: cfg.plainHttp,
      userAgent: USER_AGENT,
      ...(cfg.transfer.bodyTimeoutMs !== undefined ? { bodyTimeoutMs: cfg.transfer.bodyTimeoutMs } : {}),
      ...(cfg.transfer.readFloor !== undefined ? { readFloor: cfg.transfer.readFloor } : {}),
      ...(cfg.transfer.http2 !== undefined ? { http2: cfg.transfer.http2 } : {}),
      ...(cfg.transfer.http2Connections !== undefined ? { http2Sessions: cfg.transfer.http2Connections } : {}),
      // One flow controller for every job: a registry's pause, pace and limits are everyone's.
      // Without --concurrency, a registry's ceiling goes by its protocol (8 over HTTP/1.1).
      ...(cfg.registryConcurrency !== undefined ? { concurrency: cfg.registryConcurrency } : {}),
      processConcurrency: cfg.concurrency,
      logger: this.log,
    });
    this.metrics.observeFlow(() => transport.flow.stats());
    const settings = await this.settings(client);
    const ctx = this.jobContext(client, state, transport, settings);
    const heartbeat = this.heartbeatLoop(client, settings.heartbeat_interval_s * 1000);
    try {
      void flushPendingResults(client, state.pendingResults, { logger: this.log, signal: this.hardStop.signal }).catch((e) =>
        this.log.debug({ problem: (e as Error).message }, 'pending results not flushed'),
      );
      await this.loop(client, ctx, settings);
      await this.waitForJobs();
    } finally {
      this.hardStop.abort();
      await heartbeat;
      await transport.close().catch(() => undefined);
      await client.close().catch(() => undefined);
      await this.localCloud.destroy().catch(() => undefined);
      await this.health?.close().catch(() => undefined);
      this.log.info({ jobs: this.outcomes.length }, 'ferry agent stopped');
    }
  }

  private jobContext(client: ControlPlaneClient, state: AgentState, transport: HttpTransport, settings: RunnerSettings): JobContext {
    const cfg = this.config;
    const destinations = new Map<string, RegistryClient>();
    const credentials = this.localCredentials();
    const ensured = new Map<string, Promise<void>>();
    return {
      // ECR local registries: create a missing repository once per repository and process.
      ensureLocalRepository: async (registry, repository) => {
        if (!isEcrHost(registry) || cfg.localRegistryCredential) return;
        const key = `${registry}/${repository}`;
        let p = ensured.get(key);
        if (!p) {
          p = this.localCloud.ensureEcrRepository(registry, repository).then(() => undefined);
          p.catch(() => ensured.delete(key));
          ensured.set(key, p);
        }
        await p;
      },
      config: cfg,
      client,
      state,
      transport,
      limits: new TransferLimits(cfg.concurrency, transport.flow),
      cache: new ContentCache(join(state.dir, 'cache')),
      placements: new BlobPlacements(),
      journal: UploadJournal.inStateDir(state.dir, this.log),
      metrics: this.metrics,
      logger: this.log,
      hardStop: this.hardStop.signal,
      leaseMs: settings.lease_s * 1000,
      lastHeartbeat: () => this.lastHeartbeat,
      destinationClient: (registry) => {
        let c = destinations.get(registry);
        if (!c) {
          c = new RegistryClient({
            registry,
            side: 'destination',
            transport,
            credentials,
            logger: this.log.child({ side: 'destination', registry }),
          });
          destinations.set(registry, c);
        }
        return c;
      },
    };
  }

  /** The local registry's credentials: the configured ones, else cloud identity, else the docker config. */
  private localCredentials(): CredentialProvider {
    const cfg = this.config;
    if (cfg.localRegistryCredential) {
      return new StaticCredentials(cfg.localRegistryCredential.credential, cfg.localRegistry.host, cfg.localRegistryCredential.source);
    }
    return new Keychain([this.localCloud, new DockerConfigCredentials({ side: 'destination', logger: this.log, env: this.env })]);
  }

  /** The runner settings; the contract's defaults while the control plane cannot be reached. */
  private async settings(client: ControlPlaneClient): Promise<RunnerSettings> {
    try {
      return await client.settings({ signal: this.hardStop.signal });
    } catch (e) {
      this.log.warn({ problem: (e as Error).message }, 'could not read runner settings; using the defaults');
      return { ...DEFAULT_SETTINGS };
    }
  }

  private async loop(client: ControlPlaneClient, ctx: JobContext, settings: RunnerSettings): Promise<void> {
    const backoff = new Backoff();
    let first = true;
    while (!this.draining.signal.aborted) {
      let delay: number;
      try {
        const found = await this.pollOnce(client, ctx, first);
        first = false;
        backoff.reset();
        if (this.config.exitWhenIdle && found === 0 && this.running.size === 0) {
          this.log.info('no job running and none available: exiting (--exit-when-idle)');
          return;
        }
        // Poll again soon when there was work: a full queue drains without waiting.
        const base = found > 0 ? 200 : settings.poll_interval_s * 1000;
        delay = Math.round(base * (0.8 + Math.random() * 0.4));
      } catch (e) {
        delay = backoff.next();
        this.log.warn({ problem: (e as Error).message, retry_in_ms: delay }, 'control plane unavailable; backing off');
      }
      await this.pause(delay);
    }
  }

  /** One poll: attach open executions we should run, then claim available jobs. Returns jobs started or seen. */
  private async pollOnce(client: ControlPlaneClient, ctx: JobContext, first: boolean): Promise<number> {
    let started = 0;
    const signal = this.draining.signal;
    if (this.freeSlots() > 0) {
      const open = await client.openExecutions({ signal });
      const now = Date.now();
      for (const ex of open) {
        if (this.freeSlots() <= 0 || this.running.has(ex.job_id)) continue;
        const ours = ex.instance_id === client.instanceId;
        const expired = Date.parse(ex.lease_expires_at) <= now;
        if (!ours && !expired) continue;
        if (await ctx.state.pendingResults.get(ex.job_id, ex.id)) continue; // only its result is left to deliver
        const r = await client.attach(ex.job_id, ex.id, { signal });
        if (r.outcome !== 'attached') continue;
        this.log.info({ job_id: ex.job_id, exec_id: ex.id, from_instance: ours ? 'self' : ex.instance_id, first_poll: first }, 'attached an open execution');
        this.start(ctx, ex.job_id, ex.id, true);
        started++;
      }
    }
    const free = this.freeSlots();
    if (free <= 0) return started + 1;
    const jobs = await client.availableJobs(free, { signal });
    for (const job of jobs) {
      if (this.draining.signal.aborted || this.freeSlots() <= 0) break;
      if (this.running.has(job.id)) continue;
      const claim = await client.claim(job.id, { signal });
      if (claim.outcome === 'conflict') {
        this.log.debug({ job_id: job.id }, 'job claimed by another instance; skipping');
        continue;
      }
      this.start(ctx, job.id, claim.execution.id, claim.outcome === 'already-held');
      started++;
    }
    return started + jobs.length;
  }

  private start(ctx: JobContext, jobId: string, execId: string, resumed: boolean): void {
    const p = runJob(ctx, jobId, execId, resumed)
      .catch((e) => {
        this.log.error({ job_id: jobId, err: e }, 'job ended with an unexpected error');
        return 'abandoned' as const;
      })
      .then((outcome) => {
        this.outcomes.push({ job_id: jobId, outcome });
        this.running.delete(jobId);
        this.wake?.();
        return outcome;
      });
    this.running.set(jobId, p);
  }

  private freeSlots(): number {
    return this.config.maxJobs - this.running.size;
  }

  /** Sleep until the delay passes, a job finishes, or a stop is requested. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private async waitForJobs(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running.values());
  }

  private async heartbeatLoop(client: ControlPlaneClient, interval: number): Promise<void> {
    while (!this.hardStop.signal.aborted) {
      try {
        const sent = Date.now();
        await client.heartbeat({ alive_time_s: (sent - this.started) / 1000, jobs_running: this.running.size }, { signal: this.hardStop.signal });
        this.lastHeartbeat = { sent, answered: Date.now() };
      } catch (e) {
        if (this.hardStop.signal.aborted) return;
        this.log.debug({ problem: (e as Error).message }, 'heartbeat failed');
      }
      try {
        await sleep(interval, this.hardStop.signal);
      } catch {
        return;
      }
    }
  }
}
