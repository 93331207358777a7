// The agent's client for the control-plane contract (docs/control-plane.md, v1.1):
// one typed method per endpoint. Every request carries `User-Agent: ferry/<version>`, a fresh
// `X-Request-Id` and the runner token; every response is read to a bound and checked for
// shape, so a broken or hostile control plane yields a ControlPlaneError, never a crash.
//
// The client never retries by itself: one call is one request. Retrying belongs to the caller — see retry.ts for status/result delivery and Backoff for
// polling — so that retries never multiply and the job loop stays in control of its timing.
import { randomUUID } from 'node:crypto';
import type { Dispatcher } from '../transport/undici.ts';
import { FerryError, UsageError, type ErrorCode } from '../errors.ts';
import { registerSecret, type Logger } from '../log/logger.ts';
import type { Credential } from '../auth/credentials.ts';
import {
  DEFAULT_SETTINGS,
  EXECUTION_UPDATE_STATUSES,
  ID_PATTERN,
  checkCredentialsBody,
  checkExecution,
  checkJobState,
  checkJobSummary,
  checkOpenExecution,
  checkHeartbeatBody,
  checkProgressRequest,
  checkResultBody,
  checkResultRequest,
  checkStatusRequest,
  SERVER_ERROR_CODES,
  type Execution,
  type ExecutionUpdateStatus,
  type JobState,
  type JobSummary,
  type OpenExecution,
  type ProgressBody,
  type ResultBody,
  type RunnerSettings,
} from './contract.ts';
import { parsePlan, type LocalRegistry, type Plan } from './plan.ts';
import type { TokenSource } from './token-source.ts';
import { arrayOf, checkShape, describeJson, isPlainObject, record, ShapeError, sanitizeText, type Check } from './validate.ts';
import { VERSION } from '../version.ts';
import { abortReason } from './backoff.ts';

export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** Retry-After values beyond this are treated as this. */
const MAX_RETRY_AFTER_MS = 10 * 60_000;

export type ControlPlaneErrorKind =
  /** Connection refused/reset, DNS, TLS: the control plane was not reached. */
  | 'network'
  /** No complete response within the request timeout. */
  | 'timeout'
  /** 5xx. */
  | 'unavailable'
  /** 429 or 408. */
  | 'throttled'
  /** 401: the runner token was rejected (the token source has been told and re-read). */
  | 'unauthorized'
  | 'forbidden'
  | 'not-found'
  | 'conflict'
  /** 410: TOKEN_ALREADY_USED / TOKEN_EXPIRED on registry-credentials. */
  | 'gone'
  | 'bad-request'
  /** Any other unexpected status (3xx included: redirects are not followed). */
  | 'http'
  /** The response body was larger than the client's bound. */
  | 'too-large'
  /** A success response that was not JSON or not of the contract's shape. */
  | 'malformed';

export interface ControlPlaneErrorOptions {
  /** The code, where the request says what it is (a plan the control plane will not serve: INVALID_PLAN). */
  code?: ErrorCode;
  status?: number;
  serverCode?: string;
  retryAfterMs?: number;
  requestId: string;
  cause?: unknown;
}

/**
 * Anything that went wrong talking to the control plane. `code` is TOKEN_ALREADY_USED or
 * TOKEN_EXPIRED for the contract's 410s (so the loop can report them as they are) and INTERNAL
 * otherwise; `kind` says what happened; `retryable` whether the same request may succeed later.
 */
export class ControlPlaneError extends FerryError {
  readonly kind: ControlPlaneErrorKind;
  /** `METHOD /path` of the request. */
  readonly endpoint: string;
  /** The `code` of the server's JSON error body, if it sent one (sanitized). */
  readonly serverCode: string | undefined;
  readonly retryAfterMs: number | undefined;
  readonly requestId: string;

  constructor(kind: ControlPlaneErrorKind, endpoint: string, message: string, opts: ControlPlaneErrorOptions) {
    const code: ErrorCode = opts.code ?? (kind === 'gone' && (opts.serverCode === 'TOKEN_ALREADY_USED' || opts.serverCode === 'TOKEN_EXPIRED') ? opts.serverCode : 'INTERNAL');
    const retryable = ['network', 'timeout', 'unavailable', 'throttled', 'unauthorized', 'too-large', 'malformed'].includes(kind);
    super(code, message, { retryable, ...(opts.status !== undefined ? { status: opts.status } : {}), ...(opts.cause !== undefined ? { cause: opts.cause } : {}) });
    this.name = 'ControlPlaneError';
    this.kind = kind;
    this.endpoint = endpoint;
    this.serverCode = opts.serverCode;
    this.retryAfterMs = opts.retryAfterMs;
    this.requestId = opts.requestId;
  }
}

export function isControlPlaneError(e: unknown, kind?: ControlPlaneErrorKind): e is ControlPlaneError {
  return e instanceof ControlPlaneError && (kind === undefined || e.kind === kind);
}

/**
 * 409 EXECUTION_NOT_HELD: another instance attached the execution (this one's lease ran out while
 * it was frozen or cut off). Stop the job at once and report nothing more.
 */
export function isNotHeld(e: unknown): e is ControlPlaneError {
  return e instanceof ControlPlaneError && e.status === 409 && e.serverCode === SERVER_ERROR_CODES.executionNotHeld;
}

/** One request's outcome, for metrics. */
export interface RequestEvent {
  /** Short endpoint name: settings, jobs, claim, executions, attach, plan, registry-credentials, status, progress, result, job, heartbeat. */
  endpoint: string;
  method: string;
  status: number | undefined;
  outcome: 'ok' | ControlPlaneErrorKind | 'aborted';
  durationMs: number;
  requestId: string;
}

/** What the client knows about reaching the control plane, for readiness. Times are ms since epoch. */
export interface ContactState {
  /** Last response showing the control plane up and accepting our token. */
  lastSuccessAt: number | undefined;
  lastFailureAt: number | undefined;
  lastFailure: string | undefined;
  /** Last 401. Not ready while this is later than lastSuccessAt. */
  lastUnauthorizedAt: number | undefined;
}

export interface ControlPlaneClientOptions {
  /** Base URL, e.g. https://cp.example.com (a path prefix is kept). */
  url: string;
  runnerId: string;
  instanceId: string;
  tokens: TokenSource;
  logger: Logger;
  /** Allow plain http to a non-loopback host (`--insecure-control-plane`). TLS is never unverified. */
  insecure?: boolean;
  version?: string;
  maxResponseBytes?: number;
  requestTimeoutMs?: number;
  /** An undici dispatcher to use instead of the client's own Agent (not closed by close()). */
  dispatcher?: Dispatcher;
  observer?: (e: RequestEvent) => void;
  now?: () => number;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export type ClaimResult =
  /** 201: this call created the execution. */
  | { outcome: 'claimed'; execution: Execution }
  /** 200: this instance already held it (a retried claim). */
  | { outcome: 'already-held'; execution: Execution }
  /** 409: another instance holds it (or it is no longer available): skip the job. */
  | { outcome: 'conflict'; serverCode: string | undefined };

export type AttachResult =
  | { outcome: 'attached'; execution: Execution | undefined }
  /** 409: another instance's lease is live. */
  | { outcome: 'conflict'; serverCode: string | undefined };

/** Source credentials for one execution, ready for the registry client's keychain. */
export interface RegistryCredentials {
  /** Registry host[:port] the credentials are for (lowercase). */
  registry: string;
  expires_at: string;
  expiresAtMs: number;
  /** When the answer arrived (the client's clock). */
  receivedAt: number;
  /**
   * How long they are valid from receivedAt: expires_at less the control plane's `Date` when it
   * sent one (so a clock of the agent's that runs behind does not stretch them), or less the
   * agent's clock, whichever is shorter; the control plane's alone when the agent's clock is
   * so far ahead that they look expired already. Negative only if they came expired.
   */
  lifetimeMs: number;
  credential: Extract<Credential, { kind: 'basic' } | { kind: 'bearer' }>;
}

const LOOPBACK_HOSTS = new Set(['localhost', '[::1]']);

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  if (LOOPBACK_HOSTS.has(h)) return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return m !== null && m.slice(1).every((x) => Number(x) <= 255);
}

/**
 * Check a control-plane base URL: http(s) only, https unless the host is loopback or
 * `insecure` is set, no credentials, query or fragment. Throws UsageError naming `what`.
 */
export function checkControlPlaneUrl(raw: string, opts: { insecure?: boolean; what?: string } = {}): URL {
  const what = opts.what ?? '--control-plane-url';
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`${what}: "${sanitizeText(raw, 200)}" is not a URL`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new UsageError(`${what}: scheme "${u.protocol}" is not supported; use https://`);
  if (u.username || u.password) throw new UsageError(`${what}: must not contain credentials; the runner token comes from --token-file or FERRY_RUNNER_TOKEN`);
  if (u.search || u.hash) throw new UsageError(`${what}: must not have a query or fragment`);
  if (u.protocol === 'http:' && !isLoopbackHost(u.hostname) && !opts.insecure) {
    throw new UsageError(`${what}: plain http is allowed only for loopback hosts; use https:// or set --insecure-control-plane`);
  }
  return u;
}

function parseRetryAfter(v: string | string[] | undefined, now: number): number | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  if (!s) return undefined;
  let ms: number;
  if (/^\d+$/.test(s.trim())) ms = Number(s.trim()) * 1000;
  else {
    const t = Date.parse(s);
    if (!Number.isFinite(t)) return undefined;
    ms = t - now;
  }
  return Math.max(0, Math.min(MAX_RETRY_AFTER_MS, ms));
}

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Undefined when the body exceeded the bound (and was discarded). */
  body: Buffer | undefined;
  requestId: string;
  endpoint: string;
}

interface Op {
  name: string;
  method: 'GET' | 'POST' | 'PATCH';
  path: string;
  query?: Record<string, string>;
  body?: unknown;
  signal?: AbortSignal | undefined;
}

export class ControlPlaneClient {
  readonly baseUrl: URL;
  readonly runnerId: string;
  readonly instanceId: string;
  readonly version: string;
  readonly contact: ContactState = { lastSuccessAt: undefined, lastFailureAt: undefined, lastFailure: undefined, lastUnauthorizedAt: undefined };
  private readonly tokens: TokenSource;
  private readonly logger: Logger;
  private readonly maxResponseBytes: number;
  private readonly requestTimeoutMs: number;
  /** The caller's dispatcher, or the client's own (made on first use: undici loads then, not at every command's start). */
  private dispatcher: Promise<Dispatcher> | undefined;
  private ownDispatcher: Promise<Dispatcher> | undefined;
  private readonly observer: ((e: RequestEvent) => void) | undefined;
  private readonly now: () => number;
  private readonly basePath: string;

  constructor(opts: ControlPlaneClientOptions) {
    this.baseUrl = checkControlPlaneUrl(opts.url, { insecure: opts.insecure ?? false });
    this.basePath = this.baseUrl.pathname.replace(/\/+$/, '');
    this.runnerId = assertId(opts.runnerId, 'runner id');
    this.instanceId = assertId(opts.instanceId, 'instance id');
    this.tokens = opts.tokens;
    this.logger = opts.logger;
    this.version = opts.version ?? VERSION;
    this.maxResponseBytes = opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.observer = opts.observer;
    this.now = opts.now ?? Date.now;
    if (opts.dispatcher) this.dispatcher = Promise.resolve(opts.dispatcher);
  }

  private dispatcherForRequests(): Promise<Dispatcher> {
    return (this.dispatcher ??= this.ownDispatcher =
      import('../transport/undici.ts').then(
        ({ Agent }) =>
          new Agent({
            connect: { timeout: Math.min(10_000, this.requestTimeoutMs) },
            headersTimeout: this.requestTimeoutMs,
            bodyTimeout: this.requestTimeoutMs,
            keepAliveTimeout: 10_000,
            connections: 16,
          }),
      ));
  }

  /** Close the client's own connection pool. */
  async close(): Promise<void> {
    if (this.ownDispatcher) await (await this.ownDispatcher).close();
  }

  // ---- endpoints ----

  /** `GET /v1/runners/{id}/settings`; the contract's defaults when the endpoint is missing (404). */
  async settings(opts: CallOptions = {}): Promise<RunnerSettings> {
    const res = await this.send({ name: 'settings', method: 'GET', path: `/v1/runners/${seg(this.runnerId)}/settings`, signal: opts.signal });
    if (res.status === 404) return { ...DEFAULT_SETTINGS };
    this.expect(res, [200]);
    const body = this.json(res);
    const o = checkShape(record, body, (e) => this.malformed(res, e));
    const out: RunnerSettings = { ...DEFAULT_SETTINGS };
    // A lease is never taken as longer than the control plane gives it (the agent would write on
    // after another replica may have attached); only an absurd one under a second is raised.
    const limits: Record<keyof RunnerSettings, [number, number]> = { heartbeat_interval_s: [1, 300], poll_interval_s: [1, 300], lease_s: [1, 3600] };
    for (const key of Object.keys(limits) as Array<keyof RunnerSettings>) {
      const v = o[key];
      if (v === undefined || v === null) continue;
      if (typeof v !== 'number' || !Number.isFinite(v)) throw this.malformed(res, new ShapeError(`$.${key}`, `expected a number, got ${describeJson(v)}`));
      const [min, max] = limits[key];
      const clamped = Math.min(max, Math.max(min, v));
      if (clamped !== v) this.logger.warn({ setting: key, value: v, used: clamped }, 'control plane setting out of range; clamped');
      out[key] = clamped;
    }
    if (out.heartbeat_interval_s * 2 > out.lease_s) {
      const hb = Math.max(1, Math.floor(out.lease_s / 3));
      this.logger.warn({ heartbeat_interval_s: out.heartbeat_interval_s, lease_s: out.lease_s, used: hb }, 'heartbeat interval too long for the lease; shortened');
      out.heartbeat_interval_s = hb;
    }
    return out;
  }

  /**
   * `GET /v1/runners/{id}/jobs?group=sync&status=available&limit=N`, oldest first. Items of
   * the wrong shape are dropped with a warning (one broken row must not block every job); a
   * body that is not a list is an error. At most `limit` jobs are returned.
   */
  async availableJobs(limit: number, opts: CallOptions = {}): Promise<JobSummary[]> {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new FerryError('INTERNAL', `availableJobs: limit must be a positive integer, got ${limit}`);
    const res = await this.send({
      name: 'jobs',
      method: 'GET',
      path: `/v1/runners/${seg(this.runnerId)}/jobs`,
      query: { group: 'sync', status: 'available', limit: String(limit) },
      signal: opts.signal,
    });
    this.expect(res, [200]);
    const items = checkShape(arrayOf((x) => x, { max: 10_000 }), this.json(res), (e) => this.malformed(res, e));
    const jobs: JobSummary[] = [];
    items.forEach((item, i) => {
      try {
        jobs.push(checkJobSummary(item, `$[${i}]`));
      } catch (e) {
        if (!(e instanceof ShapeError)) throw e;
        this.logger.warn({ request_id: res.requestId, problem: e.message }, 'control plane listed a job of the wrong shape; skipping it');
      }
    });
    if (jobs.length > limit) {
      this.logger.warn({ request_id: res.requestId, asked: limit, got: jobs.length }, 'control plane listed more jobs than asked for; using the first ones');
      jobs.length = limit;
    }
    return jobs;
  }

  /** `POST /v1/runner-jobs/{job}/executions`: claim. Safe to retry (200 for the same instance). */
  async claim(jobId: string, opts: CallOptions = {}): Promise<ClaimResult> {
    const res = await this.send({
      name: 'claim',
      method: 'POST',
      path: `/v1/runner-jobs/${seg(jobId)}/executions`,
      body: { instance_id: this.instanceId },
      signal: opts.signal,
    });
    if (res.status === 409) return { outcome: 'conflict', serverCode: errorBody(res.body).code };
    this.expect(res, [200, 201]);
    const execution = this.check(res, checkExecution);
    return { outcome: res.status === 201 ? 'claimed' : 'already-held', execution };
  }

  /** `GET /v1/runners/{id}/executions?status=in-progress`: this runner's open executions (all instances). */
  async openExecutions(opts: CallOptions = {}): Promise<OpenExecution[]> {
    const res = await this.send({
      name: 'executions',
      method: 'GET',
      path: `/v1/runners/${seg(this.runnerId)}/executions`,
      query: { status: 'in-progress' },
      signal: opts.signal,
    });
    this.expect(res, [200]);
    return this.check(res, arrayOf(checkOpenExecution, { max: 10_000 }));
  }

  /** `POST …/executions/{exec}/attach`: take over an execution whose lease expired (or that this instance holds). */
  async attach(jobId: string, execId: string, opts: CallOptions = {}): Promise<AttachResult> {
    const res = await this.send({
      name: 'attach',
      method: 'POST',
      path: `/v1/runner-jobs/${seg(jobId)}/executions/${seg(execId)}/attach`,
      body: { instance_id: this.instanceId },
      signal: opts.signal,
    });
    if (res.status === 409) return { outcome: 'conflict', serverCode: errorBody(res.body).code };
    this.expect(res, [200]);
    // The contract does not define attach's body: take an execution if one is there, accept anything else.
    let execution: Execution | undefined;
    if (res.body && res.body.length > 0) {
      try {
        execution = checkExecution(JSON.parse(res.body.toString('utf8')), '$');
      } catch {
        execution = undefined;
      }
    }
    return { outcome: 'attached', execution };
  }

  /**
   * `GET /v1/runner-jobs/{job}/plan`, checked by parsePlan. A plan response that cannot be
   * used (too large, not JSON, wrong shape, unknown type or kind, destination outside the
   * local registry) throws FerryError INVALID_PLAN, which the loop reports as the job's result.
   */
  async plan(jobId: string, opts: CallOptions & { localRegistry?: LocalRegistry } = {}): Promise<Plan> {
    const res = await this.send({ name: 'plan', method: 'GET', path: `/v1/runner-jobs/${seg(jobId)}/plan`, signal: opts.signal }, { tooLargeIsError: false });
    try {
      this.expect(res, [200]);
    } catch (e) {
      // Outages are waited out by the caller; any other refusal means this job has no plan to run.
      if (!(e instanceof ControlPlaneError) || e.retryable) throw e;
      throw this.planRefused(e, jobId);
    }
    if (res.body === undefined) throw new FerryError('INVALID_PLAN', `invalid plan: the plan is larger than ${this.maxResponseBytes} bytes`);
    let raw: unknown;
    try {
      raw = JSON.parse(res.body.toString('utf8'));
    } catch (e) {
      throw new FerryError('INVALID_PLAN', `invalid plan: not JSON (${sanitizeText((e as Error).message, 120)})`, { cause: e });
    }
    const plan = parsePlan(raw, opts.localRegistry ? { localRegistry: opts.localRegistry } : {});
    if (plan.source.auth.kind === 'one-time-token') registerSecret(plan.source.auth.one_time_token);
    return plan;
  }

  /**
   * The control plane would not serve a job's plan (a 4xx, not an outage): INVALID_PLAN, saying
   * which side and what to check. A 404: it has no plan for the job; a 403: it refuses this runner.
   */
  private planRefused(e: ControlPlaneError, jobId: string): ControlPlaneError {
    const why =
      e.kind === 'not-found'
        ? `the control plane has no plan for job ${jobId}: check the job in the control plane (it may have been deleted, or its plan not stored)`
        : e.kind === 'forbidden'
          ? `the control plane refused runner ${this.runnerId} the plan of job ${jobId}: check that the runner token (${this.tokens.description}) is this runner's and that the control plane assigns the job to it`
          : `the control plane would not serve the plan of job ${jobId}: check the job in the control plane`;
    return new ControlPlaneError(e.kind, e.endpoint, `invalid plan: ${why} (${e.message})`, {
      code: 'INVALID_PLAN',
      requestId: e.requestId,
      ...(e.status !== undefined ? { status: e.status } : {}),
      ...(e.serverCode !== undefined ? { serverCode: e.serverCode } : {}),
      cause: e,
    });
  }

  /**
   * `POST …/executions/{exec}/registry-credentials`. With `oneTimeToken`, the first exchange
   * (binding the plan's token to this execution); without, a renewal for the same execution.
   * A 410 throws ControlPlaneError with code TOKEN_ALREADY_USED or TOKEN_EXPIRED.
   */
  async registryCredentials(jobId: string, execId: string, opts: CallOptions & { oneTimeToken?: string } = {}): Promise<RegistryCredentials> {
    if (opts.oneTimeToken !== undefined) registerSecret(opts.oneTimeToken);
    const res = await this.send({
      name: 'registry-credentials',
      method: 'POST',
      path: `/v1/runner-jobs/${seg(jobId)}/executions/${seg(execId)}/registry-credentials`,
      ...(opts.oneTimeToken !== undefined ? { body: { one_time_token: opts.oneTimeToken } } : {}),
      signal: opts.signal,
    });
    this.expect(res, [200, 201]);
    const body = this.check(res, checkCredentialsBody);
    const expiresAtMs = Date.parse(body.expires_at);
    const receivedAt = this.now();
    const registry = body.registry.toLowerCase();
    const timing = { expires_at: body.expires_at, expiresAtMs, receivedAt, lifetimeMs: credentialLifetime(expiresAtMs, receivedAt, res.headers.date) };
    if ('token' in body) {
      registerSecret(body.token);
      return { registry, ...timing, credential: { kind: 'bearer', token: body.token } };
    }
    registerSecret(body.password);
    return { registry, ...timing, credential: { kind: 'basic', username: body.username, password: body.password } };
  }

  /**
   * `PATCH …/executions/{exec}` with a status and this instance; also extends the lease. 409
   * EXECUTION_NOT_HELD (isNotHeld) when another instance holds the execution now.
   */
  async updateStatus(jobId: string, execId: string, status: ExecutionUpdateStatus, opts: CallOptions = {}): Promise<void> {
    if (!EXECUTION_UPDATE_STATUSES.includes(status)) throw new FerryError('INTERNAL', `updateStatus: "${String(status)}" is not a settable execution status`);
    const body = ownBody(checkStatusRequest, { status, instance_id: this.instanceId }, 'status');
    const res = await this.send({ name: 'status', method: 'PATCH', path: `/v1/runner-jobs/${seg(jobId)}/executions/${seg(execId)}`, body, signal: opts.signal });
    this.expect(res, [200, 201, 202, 204]);
  }

  /** `POST …/executions/{exec}/progress` from this instance; also extends the lease. Throttling is the caller's. */
  async reportProgress(jobId: string, execId: string, progress: ProgressBody, opts: CallOptions = {}): Promise<void> {
    const body = ownBody(
      checkProgressRequest,
      { instance_id: this.instanceId, bytes_done: progress.bytes_done, bytes_total: progress.bytes_total, blobs_done: progress.blobs_done, blobs_total: progress.blobs_total },
      'progress',
    );
    const res = await this.send({ name: 'progress', method: 'POST', path: `/v1/runner-jobs/${seg(jobId)}/executions/${seg(execId)}/progress`, body, signal: opts.signal });
    this.expect(res, [200, 201, 202, 204]);
  }

  /**
   * `POST …/executions/{exec}/result` from this instance. Final; repeating an identical result
   * is accepted. A failure needs an error_code; error_message is cut to 8 KiB.
   */
  async reportResult(jobId: string, execId: string, result: ResultBody, opts: CallOptions = {}): Promise<void> {
    const body = ownBody(checkResultRequest, { instance_id: this.instanceId, ...normalizeResult(result) }, 'result');
    const res = await this.send({ name: 'result', method: 'POST', path: `/v1/runner-jobs/${seg(jobId)}/executions/${seg(execId)}/result`, body, signal: opts.signal });
    this.expect(res, [200, 201, 202, 204]);
  }

  /** `GET /v1/runner-jobs/{job}`: `cancelled` / `timed-out` mean stop now (see shouldStop). */
  async jobStatus(jobId: string, opts: CallOptions = {}): Promise<JobState> {
    const res = await this.send({ name: 'job', method: 'GET', path: `/v1/runner-jobs/${seg(jobId)}`, signal: opts.signal });
    this.expect(res, [200]);
    return this.check(res, checkJobState);
  }

  /** `POST /v1/runners/{id}/heart-beats`; extends the leases of this instance's executions. */
  async heartbeat(h: { alive_time_s: number; jobs_running: number }, opts: CallOptions = {}): Promise<void> {
    const res = await this.send({
      name: 'heartbeat',
      method: 'POST',
      path: `/v1/runners/${seg(this.runnerId)}/heart-beats`,
      body: ownBody(
        checkHeartbeatBody,
        { instance_id: this.instanceId, alive_time_s: Math.max(0, Math.floor(h.alive_time_s)), version: this.version, jobs_running: Math.max(0, Math.floor(h.jobs_running)) },
        'heart-beat',
      ),
      signal: opts.signal,
    });
    this.expect(res, [200, 201, 202, 204]);
  }

  // ---- plumbing ----

  private async send(op: Op, read: { tooLargeIsError?: boolean } = {}): Promise<RawResponse> {
    const requestId = randomUUID();
    const endpoint = `${op.method} ${op.path}`;
    const started = this.now();
    let url = `${this.baseUrl.origin}${this.basePath}${op.path}`;
    if (op.query) url += `?${new URLSearchParams(op.query).toString()}`;
    const token = await this.tokens.token();
    const headers: Record<string, string> = {
      'user-agent': `ferry/${this.version}`,
      'x-request-id': requestId,
      authorization: `Bearer ${token}`,
      accept: 'application/json',
    };
    let payload: string | undefined;
    if (op.body !== undefined) {
      payload = JSON.stringify(op.body);
      headers['content-type'] = 'application/json';
    }
    const timeout = AbortSignal.timeout(this.requestTimeoutMs);
    const signal = op.signal ? AbortSignal.any([op.signal, timeout]) : timeout;
    const event = (outcome: RequestEvent['outcome'], status?: number) => {
      const durationMs = this.now() - started;
      this.logger.debug({ cp_endpoint: op.name, method: op.method, path: op.path, status, outcome, ms: durationMs, request_id: requestId }, 'control plane request');
      this.observer?.({ endpoint: op.name, method: op.method, status, outcome, durationMs, requestId });
    };
    const failed = (kind: ControlPlaneErrorKind, message: string, cause: unknown): ControlPlaneError => {
      this.contact.lastFailureAt = this.now();
      this.contact.lastFailure = message;
      event(kind);
      return new ControlPlaneError(kind, endpoint, message, { requestId, cause });
    };

    let res: Dispatcher.ResponseData;
    try {
      const target = new URL(url);
      res = await (await this.dispatcherForRequests()).request({
        origin: target.origin,
        path: `${target.pathname}${target.search}`,
        method: op.method,
        headers,
        ...(payload !== undefined ? { body: payload } : {}),
        signal,
      });
    } catch (e) {
      if (op.signal?.aborted) {
        event('aborted');
        throw abortReason(op.signal);
      }
      if (timeout.aborted) throw failed('timeout', `control plane did not answer ${endpoint} within ${this.requestTimeoutMs} ms (request id ${requestId})`, e);
      throw failed('network', `cannot reach the control plane for ${endpoint}: ${networkMessage(e)} (request id ${requestId})`, e);
    }

    let body: Buffer | undefined;
    try {
      body = await readBounded(res, this.maxResponseBytes);
    } catch (e) {
      if (op.signal?.aborted) {
        event('aborted');
        throw abortReason(op.signal);
      }
      if (timeout.aborted) throw failed('timeout', `control plane response to ${endpoint} did not arrive within ${this.requestTimeoutMs} ms (request id ${requestId})`, e);
      throw failed('network', `control plane response to ${endpoint} was cut off: ${networkMessage(e)} (request id ${requestId})`, e);
    }
    const status = res.statusCode;
    const now = this.now();
    if (status === 401) {
      this.contact.lastUnauthorizedAt = now;
      this.contact.lastFailureAt = now;
      this.contact.lastFailure = `${endpoint}: 401 unauthorized`;
      const changed = await this.tokens.rejected(token);
      this.logger.warn({ request_id: requestId, endpoint, token_source: this.tokens.description, token_changed: changed }, 'control plane rejected the runner token');
    } else if (status < 500 && ![403, 407, 408, 429].includes(status)) {
      this.contact.lastSuccessAt = now;
    } else {
      this.contact.lastFailureAt = now;
      this.contact.lastFailure = `${endpoint}: HTTP ${status}`;
    }
    const raw: RawResponse = { status, headers: res.headers, body, requestId, endpoint };
    if (body === undefined && status >= 200 && status < 300 && read.tooLargeIsError !== false) {
      event('too-large', status);
      throw new ControlPlaneError('too-large', endpoint, `control plane response to ${endpoint} is larger than ${this.maxResponseBytes} bytes; refusing it (request id ${requestId})`, {
        requestId,
        status,
      });
    }
    event(status >= 200 && status < 300 ? 'ok' : kindForStatus(status), status);
    return raw;
  }

  /** Throw the ControlPlaneError for any status not in `ok`. */
  private expect(res: RawResponse, ok: number[]): void {
    if (ok.includes(res.status)) return;
    const { code, message } = errorBody(res.body);
    const kind = kindForStatus(res.status);
    let text = `control plane answered ${res.endpoint} with HTTP ${res.status}`;
    if (code) text += ` ${code}`;
    if (message) text += `: ${message}`;
    if (kind === 'unauthorized') text += ` (runner token from ${this.tokens.description} rejected)`;
    if (res.status >= 300 && res.status < 400) text += ' (redirects are not followed)';
    text += ` (request id ${res.requestId})`;
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'], this.now());
    throw new ControlPlaneError(kind, res.endpoint, text, {
      requestId: res.requestId,
      status: res.status,
      ...(code !== undefined ? { serverCode: code } : {}),
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    });
  }

  private json(res: RawResponse): unknown {
    if (!res.body || res.body.length === 0) throw this.malformed(res, new Error('the body is empty'));
    try {
      return JSON.parse(res.body.toString('utf8'));
    } catch (e) {
      throw this.malformed(res, new Error(`the body is not JSON (${sanitizeText((e as Error).message, 120)})`));
    }
  }

  private check<T>(res: RawResponse, check: Check<T>): T {
    return checkShape(check, this.json(res), (e) => this.malformed(res, e));
  }

  private malformed(res: RawResponse, e: Error): ControlPlaneError {
    this.contact.lastFailureAt = this.now();
    this.contact.lastFailure = `${res.endpoint}: malformed response`;
    this.logger.warn({ request_id: res.requestId, endpoint: res.endpoint, problem: e.message }, 'control plane sent a malformed response');
    return new ControlPlaneError('malformed', res.endpoint, `control plane response to ${res.endpoint} is malformed: ${e.message} (request id ${res.requestId})`, {
      requestId: res.requestId,
      status: res.status,
      cause: e,
    });
  }
}

/** See RegistryCredentials.lifetimeMs. `date`: the response's Date header (1-second resolution). */
export function credentialLifetime(expiresAtMs: number, receivedAt: number, date: string | string[] | undefined): number {
  const local = expiresAtMs - receivedAt;
  const sent = Date.parse((Array.isArray(date) ? date[0] : date) ?? '');
  if (!Number.isFinite(sent)) return local;
  const remote = expiresAtMs - sent;
  return local > 0 ? Math.min(local, remote) : remote;
}

function kindForStatus(status: number): ControlPlaneErrorKind {
  if (status >= 500) return 'unavailable';
  switch (status) {
    case 400:
    case 413:
    case 422:
      return 'bad-request';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not-found';
    case 408:
    case 429:
      return 'throttled';
    case 409:
      return 'conflict';
    case 410:
      return 'gone';
    default:
      return 'http';
  }
}

/** Read a response body up to `max` bytes; undefined (and the connection dropped) when larger. */
async function readBounded(res: Dispatcher.ResponseData, max: number): Promise<Buffer | undefined> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    res.body.destroy();
    return undefined;
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body) {
    const b = chunk as Buffer;
    total += b.length;
    if (total > max) {
      res.body.destroy();
      return undefined;
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks, total);
}

/** The `{code, message}` of an error body, sanitized; empty when there is none. */
function errorBody(body: Buffer | undefined): { code?: string; message?: string } {
  if (!body || body.length === 0 || body.length > 64 * 1024) return {};
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    if (!isPlainObject(v)) return {};
    const out: { code?: string; message?: string } = {};
    if (typeof v.code === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v.code)) out.code = v.code;
    if (typeof v.message === 'string' && v.message !== '') out.message = sanitizeText(v.message, 300);
    return out;
  } catch {
    return {};
  }
}

function networkMessage(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return sanitizeText(code && !e.message.includes(code) ? `${code} ${e.message}` : e.message, 200);
  }
  return 'unknown error';
}

function assertId(v: string, what: string): string {
  if (!ID_PATTERN.test(v)) throw new UsageError(`${what} "${sanitizeText(v, 60)}" is not a valid identifier (letters, digits and ". _ ~ : -", at most 200 characters)`);
  return v;
}

/** A path segment from an id the client checked (ids from the server were checked by the response checks). */
function seg(v: string): string {
  if (!ID_PATTERN.test(v)) throw new FerryError('INTERNAL', `refusing to put "${sanitizeText(v, 60)}" in a control-plane URL: not a valid identifier`);
  return encodeURIComponent(v);
}

function ownBody<T>(check: Check<T>, v: unknown, what: string): T {
  return checkShape(check, v, (e) => new FerryError('INTERNAL', `refusing to send a malformed ${what} body: ${e.message}`));
}

const MAX_ERROR_MESSAGE = 8192;

/** The result body as sent: checked, error_message cut to 8 KiB, no error fields on success. */
export function normalizeResult(result: ResultBody): ResultBody {
  const out: ResultBody = { success: result.success };
  if (!result.success) {
    if (result.error_code === undefined) throw new FerryError('INTERNAL', 'a failed result needs an error_code');
    out.error_code = result.error_code;
    if (result.error_message !== undefined) {
      out.error_message = result.error_message.length > MAX_ERROR_MESSAGE ? `${result.error_message.slice(0, MAX_ERROR_MESSAGE - 1)}…` : result.error_message;
    }
  }
  if (result.outputs !== undefined) out.outputs = result.outputs;
  return ownBody(checkResultBody, out, 'result');
}

