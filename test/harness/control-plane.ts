// The repository's REFERENCE CONTROL PLANE: a real node:http server implementing every
// endpoint of the control-plane contract (docs/control-plane.md, v1.1), strictly, so that the
// agent is tested against the rules rather than against a mock that agrees with it. What the
// agent sends is checked with this server's own schema (contract-schema.ts), written from the
// contract and sharing no code with the agent's checkers. Used by the tests and by the demo
// (`node test/harness/control-plane.ts --help`).
//
// Where the contract is silent, this server decides as follows (and the agent copes with it):
// - Error bodies are JSON `{"code": "...", "message": "..."}`; codes in CODES below.
// - A token for another runner id gets 403; a bad or missing token 401 (`WWW-Authenticate: Bearer`).
// - A request body of the wrong shape, or with a field the contract does not name, gets 400
//   BAD_REQUEST naming every problem (contract-schema.ts).
// - Claim: 201 creates the execution; the same instance again gets 200 with it (whatever its
//   state); any other instance 409 CLAIMED_BY_OTHER_INSTANCE, even once the lease has expired
//   (expired executions are taken over with attach); a job that is not available and has no
//   execution gets 409 JOB_NOT_AVAILABLE.
// - A job has at most one execution; attach hands the same execution to another instance.
// - One-time tokens are global: a token bound to one execution gets 410 TOKEN_ALREADY_USED from
//   any other; the execution it is bound to may send it again (a retried exchange whose answer
//   was lost) and gets a renewal. Expiry applies to the first exchange only. An unknown token
//   gets 403 TOKEN_INVALID; a renewal (no body) for an execution with no bound token gets 400
//   ONE_TIME_TOKEN_REQUIRED.
// - PATCH, progress and result on a cancelled / timed-out job get 409 JOB_CANCELLED /
//   JOB_TIMED_OUT; then, from an instance that does not hold the execution (another attached it),
//   409 EXECUTION_NOT_HELD, an identical repeated result included; then, on a closed execution,
//   409 EXECUTION_CLOSED (a result identical to the accepted one gets 200). Attach and credential
//   calls on a closed execution get 409 EXECUTION_CLOSED.
// - A heartbeat extends the leases of every open execution the instance holds, expired or not,
//   as long as no one else has attached. PATCH and progress extend the execution's lease.
// - `executions?status=in-progress` lists every open execution of the runner (pending,
//   initializing, in-progress, cleaning-up), whoever holds it.
// - Responses: heartbeat and progress 204; PATCH 200 with the execution; result 200 `{job_id, status}`.
// - Every response's Date header is on the server's clock (advanceClock moves it).
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { HEARTBEAT_BODY, INSTANCE_BODY, PROGRESS_BODY, STATUS_BODY, resultViolations, violations, type Schema } from './contract-schema.ts';

export type JobStatus = 'queued' | 'available' | 'in-progress' | 'finished' | 'failed' | 'cancelled' | 'timed-out';

export interface RunnerSettings {
  heartbeat_interval_s: number;
  poll_interval_s: number;
  lease_s: number;
}

/** The contract's defaults. */
const DEFAULT_SETTINGS: RunnerSettings = { heartbeat_interval_s: 5, poll_interval_s: 5, lease_s: 30 };

export type RegistryCredentialsBody =
  | { registry: string; username: string; password: string; expires_at: string }
  | { registry: string; token: string; expires_at: string };

export interface HeartbeatBody {
  instance_id: string;
  alive_time_s: number;
  version: string;
  jobs_running: number;
}

export interface ProgressBody {
  instance_id: string;
  bytes_done: number;
  bytes_total: number;
  blobs_done: number;
  blobs_total: number;
}

export interface ResultBody {
  instance_id: string;
  success: boolean;
  error_code?: string;
  error_message?: string;
  outputs?: { image: Record<string, unknown> };
}

/** Error codes this server answers with. */
export const CODES = {
  unauthorized: 'UNAUTHORIZED',
  forbidden: 'FORBIDDEN',
  notFound: 'NOT_FOUND',
  badRequest: 'BAD_REQUEST',
  claimConflict: 'CLAIMED_BY_OTHER_INSTANCE',
  jobNotAvailable: 'JOB_NOT_AVAILABLE',
  leaseHeld: 'LEASE_HELD',
  executionClosed: 'EXECUTION_CLOSED',
  executionNotHeld: 'EXECUTION_NOT_HELD',
  jobCancelled: 'JOB_CANCELLED',
  jobTimedOut: 'JOB_TIMED_OUT',
  resultConflict: 'RESULT_CONFLICT',
  tokenRequired: 'ONE_TIME_TOKEN_REQUIRED',
  tokenAlreadyUsed: 'TOKEN_ALREADY_USED',
  tokenExpired: 'TOKEN_EXPIRED',
  tooLarge: 'TOO_LARGE',
  unavailable: 'UNAVAILABLE',
} as const;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export const DEFAULT_RUNNER_TOKEN = 'ferry-test-runner-token-0123456789';
export const DEFAULT_RUNNER_ID = 'runner-1';

export interface ExecutionSnapshot {
  id: string;
  job_id: string;
  instance_id: string;
  /** pending, initializing, in-progress, cleaning-up, finished, failed, cancelled, timed-out */
  status: string;
  lease_expires_at: string;
  created_at: string;
  closed: boolean;
  /** PATCHed statuses in order. */
  statusHistory: Array<{ status: string; at: string }>;
  /** Instances that took it over with attach (a self-attach is not listed). */
  attachHistory: Array<{ instance_id: string; at: string }>;
}

export interface JobSnapshot {
  id: string;
  type: string;
  status: JobStatus;
  created_at: string;
  plan: Record<string, unknown>;
  /** The plan's one-time token, if it has one. */
  oneTimeToken: string | undefined;
  executions: ExecutionSnapshot[];
  /** Every result body received, accepted or not, with the status it was answered with. */
  results: Array<{ exec_id: string; body: unknown; status: number; at: string }>;
  /** The accepted result. */
  result: ResultBody | undefined;
  progress: Array<{ exec_id: string; body: ProgressBody; at: string }>;
  /** Job status transitions. */
  statusHistory: Array<{ status: JobStatus; at: string }>;
  credentialsIssued: Array<{ exec_id: string; with_token: boolean; at: string }>;
}

export interface RequestRecord {
  at: string;
  method: string;
  path: string;
  query: Record<string, string>;
  requestId: string | undefined;
  userAgent: string | undefined;
  /** Whether the bearer token was the current runner token. */
  authorized: boolean;
  body: unknown;
  /** The status answered; undefined when no answer was sent (fault). */
  status: number | undefined;
  fault: Fault['kind'] | undefined;
}

export type Fault =
  /** Answer with this status (and optional JSON body / Retry-After) without processing. */
  | { kind: 'status'; status: number; body?: unknown; retryAfterS?: number }
  /** 200 with a JSON body of `bytes` (default 4 MiB); chunked unless declareLength. */
  | { kind: 'huge'; bytes?: number; declareLength?: boolean }
  /** 200 with truncated JSON. */
  | { kind: 'malformed' }
  /** Process the request, then send its body in the wrong shape (array ↔ object). */
  | { kind: 'wrong-shape' }
  /** Answer with exactly these bytes (default status 200, application/json). */
  | { kind: 'raw'; status?: number; body: string | Buffer; contentType?: string }
  /** Never answer (until the server stops or goes down). */
  | { kind: 'hang' }
  /** Drop the connection without processing. */
  | { kind: 'reset' }
  /** Process the request, then drop the connection: the answer is lost. */
  | { kind: 'drop-response' }
  /** Process normally after a delay. */
  | { kind: 'delay'; ms: number };

export interface FaultOptions {
  /** How many matching requests get the fault; default 1. Infinity until clearFaults(). */
  count?: number;
  /** Which requests: a method, and a path (string: contained in the path; RegExp: tested). */
  match?: { method?: string; path?: string | RegExp };
}

export type IssueCredentials = (job: JobSnapshot, plan: Record<string, unknown>, execution: ExecutionSnapshot) => RegistryCredentialsBody | Promise<RegistryCredentialsBody>;

export interface ControlPlaneOptions {
  host?: string;
  port?: number;
  runnerId?: string;
  token?: string;
  /** Lease length given on claim, attach, PATCH, progress and heartbeat; default 30 s. */
  leaseS?: number;
  /** What the settings endpoint serves (lease_s defaults to leaseS); 'missing' answers 404. */
  settings?: Partial<RunnerSettings> | 'missing';
  /** Source credentials for registry-credentials. Default: fixed basic credentials for the plan's source host. */
  issueCredentials?: IssueCredentials;
  /** Lifetime of generated one-time tokens; default 3600 s. */
  oneTimeTokenTtlS?: number;
  /**
   * The server's clock stands still but for advanceClock (default: it runs with the machine's,
   * advanceClock adding to it). For tests that compare instants on it: a running clock moves
   * between a test reading it and the code under test reading it.
   */
  frozenClock?: boolean;
  /** Request bodies above this get 413; default 1 MiB. */
  maxBodyBytes?: number;
  /**
   * Start from a state another control plane saved with saveState() (a restart: jobs,
   * executions, leases, one-time tokens, results, the runner token and settings carry over;
   * the request log, heartbeats and faults do not). runnerId / token / settings given here win.
   */
  state?: ControlPlaneState;
}

/**
 * What a control plane keeps in its database, as plain JSON (it survives JSON.stringify /
 * JSON.parse, e.g. through a file). Opaque to callers: pass it back to startControlPlane().
 */
export interface ControlPlaneState {
  version: 1;
  runnerId: string;
  token: string;
  settings: Partial<RunnerSettings> | 'missing';
  seq: number;
  clockOffsetMs: number;
  jobs: unknown[];
  tokens: Array<[string, unknown]>;
}

export interface EnqueueOptions {
  /** Lifetime of the plan's one-time token from now; default the server's oneTimeTokenTtlS. */
  oneTimeTokenTtlS?: number;
  /** The job times out this long after it is first claimed. */
  timeoutS?: number;
  /** Job type in listings (default the plan's type, or "oci-sync"). */
  type?: string;
  /** Start `queued` (not listed) instead of `available`; release with makeAvailable(). */
  queued?: boolean;
}

export interface ControlPlane {
  url: string;
  port: number;
  runnerId: string;
  /** The current runner token. */
  readonly token: string;
  /** Every request received, in order (live). */
  readonly requests: RequestRecord[];
  /** Heartbeats received (live). */
  readonly heartbeats: Array<HeartbeatBody & { at: string }>;
  stop(): Promise<void>;
  /** Add a job; returns its id. A one-time-token plan without a token value gets a fresh one. */
  enqueueJob(plan: object, opts?: EnqueueOptions): string;
  makeAvailable(jobId: string): void;
  cancelJob(jobId: string): void;
  timeOutJob(jobId: string): void;
  job(jobId: string): JobSnapshot;
  jobs(): JobSnapshot[];
  setFault(fault: Fault, opts?: FaultOptions): void;
  clearFaults(): void;
  /** Close the listener and every connection: connections are refused until comeUp(). */
  goDown(): Promise<void>;
  /** Listen again on the same port. */
  comeUp(): Promise<void>;
  readonly isUp: boolean;
  /** From now on only `next` is accepted (the old token gets 401). */
  rotateToken(next: string): void;
  setSettings(settings: Partial<RunnerSettings> | 'missing'): void;
  setIssueCredentials(fn: IssueCredentials): void;
  /** Everything durable, for a restart: stop() this one, then startControlPlane({ port, state }). */
  saveState(): ControlPlaneState;
  /** Move the server's clock forward (leases, token expiry, timeouts). */
  advanceClock(ms: number): void;
  now(): number;
}

// ---- internal state ----

interface ExecRec {
  id: string;
  jobId: string;
  instanceId: string;
  status: string;
  leaseExpiresAt: number;
  createdAt: number;
  closed: boolean;
  resultCanonical: string | undefined;
  statusHistory: Array<{ status: string; at: number }>;
  attachHistory: Array<{ instance_id: string; at: number }>;
}

interface JobRec {
  id: string;
  seq: number;
  type: string;
  status: JobStatus;
  createdAt: number;
  plan: Record<string, unknown>;
  oneTimeToken: string | undefined;
  timeoutS: number | undefined;
  startedAt: number | undefined;
  execution: ExecRec | undefined;
  results: Array<{ exec_id: string; body: unknown; status: number; at: number }>;
  result: ResultBody | undefined;
  progress: Array<{ exec_id: string; body: ProgressBody; at: number }>;
  statusHistory: Array<{ status: JobStatus; at: number }>;
  credentialsIssued: Array<{ exec_id: string; with_token: boolean; at: number }>;
}

interface TokenRec {
  expiresAt: number;
  boundTo: { jobId: string; execId: string } | undefined;
}

interface ActiveFault {
  fault: Fault;
  remaining: number;
  match: FaultOptions['match'];
}

class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** JSON with object keys sorted, so that two equal results compare equal however they were built. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isPlainObject(v)) {
    return `{${Object.keys(v)
      .filter((k) => v[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

function sourceHostOf(plan: Record<string, unknown>): string {
  const src = plan.source;
  const ref = isPlainObject(src) && typeof src.reference === 'string' ? src.reference : '';
  const first = ref.split('/')[0] ?? '';
  return first !== '' && (first.includes('.') || first.includes(':') || first === 'localhost') ? first.toLowerCase() : 'docker.io';
}

function oneTimeTokenOf(plan: Record<string, unknown>): string | undefined {
  const src = plan.source;
  if (!isPlainObject(src) || !isPlainObject(src.auth)) return undefined;
  return src.auth.kind === 'one-time-token' && typeof src.auth.one_time_token === 'string' ? src.auth.one_time_token : undefined;
}

export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const host = opts.host ?? '127.0.0.1';
  const saved = opts.state;
  if (saved !== undefined && saved.version !== 1) throw new Error(`control plane state version ${String(saved.version)} is not supported`);
  const runnerId = opts.runnerId ?? saved?.runnerId ?? DEFAULT_RUNNER_ID;
  const leaseS = opts.leaseS ?? DEFAULT_SETTINGS.lease_s;
  const maxBodyBytes = opts.maxBodyBytes ?? 1024 * 1024;
  const defaultTtlS = opts.oneTimeTokenTtlS ?? 3600;
  let token = opts.token ?? saved?.token ?? DEFAULT_RUNNER_TOKEN;
  let settings: Partial<RunnerSettings> | 'missing' = opts.settings ?? saved?.settings ?? {};
  let clockOffset = saved?.clockOffsetMs ?? 0;
  let seq = saved?.seq ?? 0;
  let up = false;
  const frozenAt = opts.frozenClock ? Date.now() : undefined;
  const now = () => (frozenAt ?? Date.now()) + clockOffset;
  const jobs = new Map<string, JobRec>();
  const tokens = new Map<string, TokenRec>();
  if (saved !== undefined) {
    for (const j of structuredClone(saved.jobs) as JobRec[]) jobs.set(j.id, j);
    for (const [k, v] of structuredClone(saved.tokens) as Array<[string, TokenRec]>) tokens.set(k, v);
  }
  const requests: RequestRecord[] = [];
  const heartbeats: Array<HeartbeatBody & { at: string }> = [];
  let faults: ActiveFault[] = [];

  let issueCredentials: IssueCredentials =
    opts.issueCredentials ??
    ((job, plan) => ({
      registry: sourceHostOf(plan),
      username: 'ferry-pull',
      password: `pull-secret-${job.id}-${randomBytes(6).toString('hex')}`,
      expires_at: iso(now() + 15 * 60_000),
    }));

  // ---- state helpers ----

  const setJobStatus = (job: JobRec, status: JobStatus) => {
    if (job.status === status) return;
    job.status = status;
    job.statusHistory.push({ status, at: now() });
  };

  const closeExecution = (exec: ExecRec, status: string) => {
    exec.closed = true;
    exec.status = status;
  };

  /** Apply timeouts lazily, as of now. */
  const sweep = () => {
    for (const job of jobs.values()) {
      if (job.status === 'in-progress' && job.timeoutS !== undefined && job.startedAt !== undefined && now() >= job.startedAt + job.timeoutS * 1000) {
        setJobStatus(job, 'timed-out');
        if (job.execution && !job.execution.closed) closeExecution(job.execution, 'timed-out');
      }
    }
  };

  const snapshotExec = (e: ExecRec): ExecutionSnapshot => ({
    id: e.id,
    job_id: e.jobId,
    instance_id: e.instanceId,
    status: e.status,
    lease_expires_at: iso(e.leaseExpiresAt),
    created_at: iso(e.createdAt),
    closed: e.closed,
    statusHistory: e.statusHistory.map((s) => ({ status: s.status, at: iso(s.at) })),
    attachHistory: e.attachHistory.map((s) => ({ instance_id: s.instance_id, at: iso(s.at) })),
  });

  const snapshotJob = (j: JobRec): JobSnapshot =>
    structuredClone({
      id: j.id,
      type: j.type,
      status: j.status,
      created_at: iso(j.createdAt),
      plan: j.plan,
      oneTimeToken: j.oneTimeToken,
      executions: j.execution ? [snapshotExec(j.execution)] : [],
      results: j.results.map((r) => ({ ...r, at: iso(r.at) })),
      result: j.result,
      progress: j.progress.map((p) => ({ ...p, at: iso(p.at) })),
      statusHistory: j.statusHistory.map((s) => ({ status: s.status, at: iso(s.at) })),
      credentialsIssued: j.credentialsIssued.map((c) => ({ ...c, at: iso(c.at) })),
    });

  const execView = (e: ExecRec) => ({ id: e.id, job_id: e.jobId, instance_id: e.instanceId, status: e.status, lease_expires_at: iso(e.leaseExpiresAt) });

  const mustJob = (id: string): JobRec => {
    const job = jobs.get(id);
    if (!job) throw new HttpError(404, CODES.notFound, `no job ${id}`);
    return job;
  };

  const mustExec = (job: JobRec, execId: string): ExecRec => {
    if (!job.execution || job.execution.id !== execId) throw new HttpError(404, CODES.notFound, `job ${job.id} has no execution ${execId}`);
    return job.execution;
  };

  /** The execution may still be worked on: its job is not final and it has no result. */
  const mustBeOpen = (job: JobRec, exec: ExecRec) => {
    if (job.status === 'cancelled') throw new HttpError(409, CODES.jobCancelled, `job ${job.id} was cancelled`);
    if (job.status === 'timed-out') throw new HttpError(409, CODES.jobTimedOut, `job ${job.id} timed out`);
    if (exec.closed) throw new HttpError(409, CODES.executionClosed, `execution ${exec.id} is closed (${exec.status})`);
  };

  const extendLease = (exec: ExecRec) => {
    exec.leaseExpiresAt = now() + leaseS * 1000;
  };

  /** The body if it fits the schema; 400 BAD_REQUEST naming every problem if not. */
  const checkBody = <T>(schema: Schema | ((v: unknown) => string[]), body: unknown, what: string): T => {
    const problems = typeof schema === 'function' ? schema(body) : violations(schema, body);
    if (problems.length > 0) throw new HttpError(400, CODES.badRequest, `${what} does not follow the contract: ${problems.slice(0, 10).join('; ')}`);
    return body as T;
  };

  const instanceIdOf = (body: unknown): string => checkBody<{ instance_id: string }>(INSTANCE_BODY, body, 'the body').instance_id;

  /** PATCH, progress and result come from the instance that holds the execution, or get 409 EXECUTION_NOT_HELD. */
  const mustHold = (job: JobRec, exec: ExecRec, instanceId: string) => {
    if (job.status === 'cancelled') throw new HttpError(409, CODES.jobCancelled, `job ${job.id} was cancelled`);
    if (job.status === 'timed-out') throw new HttpError(409, CODES.jobTimedOut, `job ${job.id} timed out`);
    if (exec.instanceId !== instanceId) throw new HttpError(409, CODES.executionNotHeld, `execution ${exec.id} is held by another instance now; stop working on it`);
  };

  // ---- endpoints ----

  async function route(method: string, segs: string[], query: URLSearchParams, body: unknown): Promise<Reply> {
    sweep();
    if (segs[0] !== 'v1') throw new HttpError(404, CODES.notFound, 'unknown path');
    if (segs[1] === 'runners' && segs.length === 4) {
      if (segs[2] !== runnerId) throw new HttpError(403, CODES.forbidden, `this token is not for runner ${segs[2]}`);
      const what = segs[3];
      if (what === 'settings') {
        allow(method, 'GET');
        if (settings === 'missing') throw new HttpError(404, CODES.notFound, 'no settings endpoint');
        return { status: 200, body: { ...DEFAULT_SETTINGS, lease_s: leaseS, ...settings } };
      }
      if (what === 'jobs') {
        allow(method, 'GET');
        return listJobs(query);
      }
      if (what === 'executions') {
        allow(method, 'GET');
        if (query.get('status') !== 'in-progress') throw new HttpError(400, CODES.badRequest, 'status must be in-progress');
        const open = [...jobs.values()]
          .sort((a, b) => a.seq - b.seq)
          .map((j) => j.execution)
          .filter((e): e is ExecRec => e !== undefined && !e.closed)
          .map(execView);
        return { status: 200, body: open };
      }
      if (what === 'heart-beats') {
        allow(method, 'POST');
        const hb = checkBody<HeartbeatBody>(HEARTBEAT_BODY, body, 'the heart-beat');
        heartbeats.push({ ...hb, at: iso(now()) });
        for (const job of jobs.values()) {
          const e = job.execution;
          if (e && !e.closed && e.instanceId === hb.instance_id) extendLease(e);
        }
        return { status: 204 };
      }
      throw new HttpError(404, CODES.notFound, 'unknown path');
    }
    if (segs[1] === 'runner-jobs' && segs.length >= 3) {
      const job = mustJob(segs[2]!);
      if (segs.length === 3) {
        allow(method, 'GET');
        return { status: 200, body: { id: job.id, status: job.status } };
      }
      if (segs.length === 4 && segs[3] === 'plan') {
        allow(method, 'GET');
        return { status: 200, body: job.plan };
      }
      if (segs.length === 4 && segs[3] === 'executions') {
        allow(method, 'POST');
        return claim(job, instanceIdOf(body));
      }
      if (segs[3] === 'executions' && segs.length >= 5) {
        const exec = mustExec(job, segs[4]!);
        if (segs.length === 5) {
          allow(method, 'PATCH');
          const update = checkBody<{ status: string; instance_id: string }>(STATUS_BODY, body, 'the status update');
          mustHold(job, exec, update.instance_id);
          mustBeOpen(job, exec);
          exec.status = update.status;
          exec.statusHistory.push({ status: exec.status, at: now() });
          extendLease(exec);
          return { status: 200, body: execView(exec) };
        }
        if (segs.length === 6) {
          switch (segs[5]) {
            case 'attach':
              allow(method, 'POST');
              return attach(job, exec, instanceIdOf(body));
            case 'registry-credentials':
              allow(method, 'POST');
              return credentials(job, exec, body);
            case 'progress': {
              allow(method, 'POST');
              const p = checkBody<ProgressBody>(PROGRESS_BODY, body, 'the progress report');
              mustHold(job, exec, p.instance_id);
              mustBeOpen(job, exec);
              job.progress.push({ exec_id: exec.id, body: p, at: now() });
              extendLease(exec);
              return { status: 204 };
            }
            case 'result':
              allow(method, 'POST');
              return result(job, exec, body);
          }
        }
      }
    }
    throw new HttpError(404, CODES.notFound, 'unknown path');
  }

  function allow(method: string, expected: string): void {
    if (method !== expected) throw new HttpError(405, 'METHOD_NOT_ALLOWED', `use ${expected}`);
  }

  function listJobs(query: URLSearchParams): Reply {
    if (query.get('status') !== 'available') throw new HttpError(400, CODES.badRequest, 'status must be available');
    const limitText = query.get('limit') ?? '';
    if (!/^\d{1,4}$/.test(limitText) || Number(limitText) < 1 || Number(limitText) > 1000) throw new HttpError(400, CODES.badRequest, 'limit must be an integer from 1 to 1000');
    const group = query.get('group');
    if (group !== null && group !== 'sync') return { status: 200, body: [] };
    const list = [...jobs.values()]
      .filter((j) => j.status === 'available')
      .sort((a, b) => a.createdAt - b.createdAt || a.seq - b.seq)
      .slice(0, Number(limitText))
      .map((j) => ({ id: j.id, type: j.type, status: j.status, created_at: iso(j.createdAt) }));
    return { status: 200, body: list };
  }

  function claim(job: JobRec, instanceId: string): Reply {
    const e = job.execution;
    if (e) {
      if (e.instanceId === instanceId) return { status: 200, body: execView(e) };
      throw new HttpError(409, CODES.claimConflict, `job ${job.id} is claimed by another instance`);
    }
    if (job.status !== 'available') throw new HttpError(409, CODES.jobNotAvailable, `job ${job.id} is ${job.status}`);
    const exec: ExecRec = {
      id: `exec-${String(++seq).padStart(4, '0')}`,
      jobId: job.id,
      instanceId,
      status: 'pending',
      leaseExpiresAt: now() + leaseS * 1000,
      createdAt: now(),
      closed: false,
      resultCanonical: undefined,
      statusHistory: [],
      attachHistory: [],
    };
    job.execution = exec;
    job.startedAt = now();
    setJobStatus(job, 'in-progress');
    return { status: 201, body: execView(exec) };
  }

  function attach(job: JobRec, exec: ExecRec, instanceId: string): Reply {
    mustBeOpen(job, exec);
    if (exec.instanceId !== instanceId) {
      if (exec.leaseExpiresAt > now()) throw new HttpError(409, CODES.leaseHeld, `execution ${exec.id} is held by another instance until ${iso(exec.leaseExpiresAt)}`);
      exec.instanceId = instanceId;
      exec.attachHistory.push({ instance_id: instanceId, at: now() });
    }
    extendLease(exec);
    return { status: 200, body: execView(exec) };
  }

  async function credentials(job: JobRec, exec: ExecRec, body: unknown): Promise<Reply> {
    mustBeOpen(job, exec);
    let withToken = false;
    if (body !== undefined && !(isPlainObject(body) && Object.keys(body).length === 0)) {
      if (!isPlainObject(body) || typeof body.one_time_token !== 'string' || body.one_time_token === '') {
        throw new HttpError(400, CODES.badRequest, 'body must be empty or {"one_time_token": "..."}');
      }
      const rec = tokens.get(body.one_time_token);
      if (!rec) throw new HttpError(403, 'TOKEN_INVALID', 'unknown one-time token');
      if (rec.boundTo && (rec.boundTo.jobId !== job.id || rec.boundTo.execId !== exec.id)) {
        throw new HttpError(410, CODES.tokenAlreadyUsed, 'this one-time token was already used');
      }
      if (!rec.boundTo) {
        if (now() >= rec.expiresAt) throw new HttpError(410, CODES.tokenExpired, 'this one-time token has expired');
        rec.boundTo = { jobId: job.id, execId: exec.id };
      }
      withToken = true;
    } else {
      const bound = [...tokens.values()].some((r) => r.boundTo?.jobId === job.id && r.boundTo.execId === exec.id);
      if (!bound) throw new HttpError(400, CODES.tokenRequired, 'the first call for an execution must carry the plan\'s one-time token');
    }
    const creds = await issueCredentials(snapshotJob(job), structuredClone(job.plan), snapshotExec(exec));
    job.credentialsIssued.push({ exec_id: exec.id, with_token: withToken, at: now() });
    return { status: 200, body: creds };
  }

  function result(job: JobRec, exec: ExecRec, body: unknown): Reply {
    const record = (status: number) => job.results.push({ exec_id: exec.id, body: structuredClone(body), status, at: now() });
    let r: ResultBody;
    try {
      r = checkBody<ResultBody>(resultViolations, body, 'the result');
      mustHold(job, exec, r.instance_id);
    } catch (e) {
      record((e as HttpError).status);
      throw e;
    }
    const c = canonical(r);
    if (exec.closed && exec.resultCanonical !== undefined) {
      if (exec.resultCanonical === c) {
        record(200);
        return { status: 200, body: { job_id: job.id, status: job.status } };
      }
      record(409);
      throw new HttpError(409, CODES.resultConflict, 'a different result was already reported');
    }
    try {
      mustBeOpen(job, exec);
    } catch (e) {
      record((e as HttpError).status);
      throw e;
    }
    exec.resultCanonical = c;
    closeExecution(exec, r.success ? 'finished' : 'failed');
    job.result = r;
    setJobStatus(job, r.success ? 'finished' : 'failed');
    record(200);
    return { status: 200, body: { job_id: job.id, status: job.status } };
  }

  // ---- transport ----

  const takeFault = (method: string, path: string): Fault | undefined => {
    for (const f of faults) {
      if (f.remaining <= 0) continue;
      if (f.match?.method && f.match.method.toUpperCase() !== method) continue;
      const p = f.match?.path;
      if (p !== undefined && !(typeof p === 'string' ? path.includes(p) : p.test(path))) continue;
      f.remaining--;
      faults = faults.filter((x) => x.remaining > 0);
      return f.fault;
    }
    return undefined;
  };

  const readBody = (req: IncomingMessage): Promise<Buffer | 'too-large'> =>
    new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let total = 0;
      let tooLarge = false;
      req.on('data', (c: Buffer) => {
        total += c.length;
        if (total > maxBodyBytes) tooLarge = true;
        else chunks.push(c);
      });
      req.on('end', () => resolve(tooLarge ? 'too-large' : Buffer.concat(chunks)));
      req.on('error', reject);
    });

  const send = (res: ServerResponse, reply: Reply, rec: RequestRecord) => {
    rec.status = reply.status;
    // Date on the server's own clock (advanceClock moves it too), as a real server's would be.
    const headers: Record<string, string> = { date: new Date(now()).toUTCString(), ...reply.headers };
    if (reply.body === undefined || reply.status === 204) {
      res.writeHead(reply.status, headers);
      res.end();
      return;
    }
    const text = JSON.stringify(reply.body);
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(Buffer.byteLength(text));
    res.writeHead(reply.status, headers);
    res.end(text);
  };

  const sendHuge = (res: ServerResponse, bytes: number, declareLength: boolean) => {
    const unit = '{"id":"job-x","type":"oci-sync","status":"available","created_at":"2026-01-01T00:00:00Z"},';
    const count = Math.max(1, Math.ceil(bytes / unit.length));
    const total = 1 + count * unit.length;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (declareLength) headers['content-length'] = String(total);
    res.writeHead(200, headers);
    res.on('error', () => {});
    let written = 0;
    const chunk = unit.repeat(512);
    const perChunk = 512;
    res.write('[');
    const pump = () => {
      while (written < count) {
        const n = Math.min(perChunk, count - written);
        let piece = n === perChunk ? chunk : unit.repeat(n);
        written += n;
        if (written === count) piece = `${piece.slice(0, -1)}]`;
        if (!res.write(piece)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://control-plane');
    const method = (req.method ?? 'GET').toUpperCase();
    const query: Record<string, string> = {};
    for (const [k, v] of url.searchParams) query[k] = v;
    const auth = req.headers.authorization;
    const rec: RequestRecord = {
      at: iso(now()),
      method,
      path: url.pathname,
      query,
      requestId: header(req, 'x-request-id'),
      userAgent: header(req, 'user-agent'),
      authorized: typeof auth === 'string' && /^bearer /i.test(auth) && auth.slice(7) === token,
      body: undefined,
      status: undefined,
      fault: undefined,
    };
    requests.push(rec);
    const raw = await readBody(req);
    if (raw !== 'too-large' && raw.length > 0) {
      try {
        rec.body = JSON.parse(raw.toString('utf8'));
      } catch {
        rec.body = raw.toString('utf8').slice(0, 1000);
      }
    }

    const fault = takeFault(method, url.pathname);
    rec.fault = fault?.kind;
    switch (fault?.kind) {
      case 'status': {
        const headers: Record<string, string> = {};
        if (fault.retryAfterS !== undefined) headers['retry-after'] = String(fault.retryAfterS);
        send(res, { status: fault.status, body: fault.body ?? { code: CODES.unavailable, message: 'injected fault' }, headers }, rec);
        return;
      }
      case 'huge':
        rec.status = 200;
        sendHuge(res, fault.bytes ?? 4 * 1024 * 1024, fault.declareLength ?? false);
        return;
      case 'malformed':
        rec.status = 200;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"id": "job-1", "status": "avail');
        return;
      case 'raw':
        rec.status = fault.status ?? 200;
        res.writeHead(rec.status, { 'content-type': fault.contentType ?? 'application/json' });
        res.end(fault.body);
        return;
      case 'hang':
        return;
      case 'reset':
        req.socket.destroy();
        return;
      case 'delay':
        await new Promise((r) => setTimeout(r, fault.ms));
        break;
      default:
        break;
    }

    let reply: Reply;
    if (!rec.authorized) {
      reply = { status: 401, body: { code: CODES.unauthorized, message: 'missing or invalid runner token' }, headers: { 'www-authenticate': 'Bearer realm="ferry-control-plane"' } };
    } else if (raw === 'too-large') {
      reply = { status: 413, body: { code: CODES.tooLarge, message: `request body larger than ${maxBodyBytes} bytes` } };
    } else if (raw.length > 0 && typeof rec.body === 'string') {
      reply = { status: 400, body: { code: CODES.badRequest, message: 'body is not JSON' } };
    } else {
      try {
        const segs = url.pathname.split('/').filter((s) => s !== '').map((s) => decodeURIComponent(s));
        reply = await route(method, segs, url.searchParams, rec.body);
      } catch (e) {
        if (e instanceof HttpError) reply = { status: e.status, body: { code: e.code, message: e.message } };
        else reply = { status: 500, body: { code: 'INTERNAL', message: (e as Error).message } };
      }
    }

    if (fault?.kind === 'drop-response') {
      rec.status = undefined;
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'wrong-shape') {
      const b = reply.body;
      reply = { status: reply.status === 204 ? 200 : reply.status, body: Array.isArray(b) ? { items: b } : b === undefined ? [] : [b] };
    }
    send(res, reply, rec);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 'INTERNAL', message: String(e) }));
      } else res.destroy();
    });
  });
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        up = true;
        resolve();
      });
    });

  const close = () =>
    new Promise<void>((resolve) => {
      if (!up) {
        resolve();
        return;
      }
      up = false;
      server.close(() => resolve());
      server.closeAllConnections();
      for (const s of sockets) s.destroy();
    });

  await listen(opts.port ?? 0);
  const port = (server.address() as AddressInfo).port;

  const cp: ControlPlane = {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    runnerId,
    get token() {
      return token;
    },
    requests,
    heartbeats,
    stop: close,
    enqueueJob(plan, eopts = {}) {
      if (!isPlainObject(plan)) throw new Error('enqueueJob: plan must be an object');
      const copy = structuredClone(plan) as Record<string, unknown>;
      const src = copy.source;
      if (isPlainObject(src) && isPlainObject(src.auth) && src.auth.kind === 'one-time-token' && (src.auth.one_time_token === undefined || src.auth.one_time_token === '')) {
        src.auth.one_time_token = `ott_${randomBytes(18).toString('base64url')}`;
      }
      const ott = oneTimeTokenOf(copy);
      if (ott !== undefined && !tokens.has(ott)) tokens.set(ott, { expiresAt: now() + (eopts.oneTimeTokenTtlS ?? defaultTtlS) * 1000, boundTo: undefined });
      const id = `job-${String(++seq).padStart(4, '0')}`;
      const job: JobRec = {
        id,
        seq,
        type: eopts.type ?? (typeof copy.type === 'string' ? copy.type : 'oci-sync'),
        status: eopts.queued ? 'queued' : 'available',
        createdAt: now(),
        plan: copy,
        oneTimeToken: ott,
        timeoutS: eopts.timeoutS,
        startedAt: undefined,
        execution: undefined,
        results: [],
        result: undefined,
        progress: [],
        statusHistory: [],
        credentialsIssued: [],
      };
      job.statusHistory.push({ status: job.status, at: now() });
      jobs.set(id, job);
      return id;
    },
    makeAvailable(jobId) {
      const job = mustJob(jobId);
      if (job.status === 'queued') setJobStatus(job, 'available');
    },
    cancelJob(jobId) {
      const job = mustJob(jobId);
      if (job.status === 'finished' || job.status === 'failed' || job.status === 'timed-out') return;
      setJobStatus(job, 'cancelled');
      if (job.execution && !job.execution.closed) closeExecution(job.execution, 'cancelled');
    },
    timeOutJob(jobId) {
      const job = mustJob(jobId);
      if (job.status === 'finished' || job.status === 'failed' || job.status === 'cancelled') return;
      setJobStatus(job, 'timed-out');
      if (job.execution && !job.execution.closed) closeExecution(job.execution, 'timed-out');
    },
    job(jobId) {
      sweep();
      return snapshotJob(mustJob(jobId));
    },
    jobs() {
      sweep();
      return [...jobs.values()].sort((a, b) => a.seq - b.seq).map(snapshotJob);
    },
    setFault(fault, fopts = {}) {
      faults.push({ fault, remaining: fopts.count ?? 1, match: fopts.match });
    },
    clearFaults() {
      faults = [];
    },
    goDown: close,
    async comeUp() {
      if (!up) await listen(port);
    },
    get isUp() {
      return up;
    },
    rotateToken(next) {
      token = next;
    },
    setSettings(s) {
      settings = s;
    },
    setIssueCredentials(fn) {
      issueCredentials = fn;
    },
    saveState() {
      sweep();
      // Through JSON, so a restored state is exactly what a file or a database would give back.
      return JSON.parse(
        JSON.stringify({ version: 1, runnerId, token, settings, seq, clockOffsetMs: clockOffset, jobs: [...jobs.values()], tokens: [...tokens.entries()] }),
      ) as ControlPlaneState;
    },
    advanceClock(ms) {
      clockOffset += ms;
    },
    now,
  };
  return cp;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

// ---- demo: run it standalone ----

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  if (args.includes('--help')) {
    console.log('usage: node test/harness/control-plane.ts [--port N] [--token T] [--runner-id ID] [--lease S] [plan.json ...]\nStarts the reference control plane, enqueues each plan file, and prints the URL and token.');
    process.exit(0);
  }
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    if (i < 0) return undefined;
    const v = args[i + 1];
    args.splice(i, 2);
    return v;
  };
  const port = value('--port');
  const tokenArg = value('--token');
  const runner = value('--runner-id');
  const lease = value('--lease');
  const cp = await startControlPlane({
    ...(port ? { port: Number(port) } : {}),
    ...(tokenArg ? { token: tokenArg } : {}),
    ...(runner ? { runnerId: runner } : {}),
    ...(lease ? { leaseS: Number(lease) } : {}),
  });
  const { readFile } = await import('node:fs/promises');
  for (const file of args) {
    const id = cp.enqueueJob(JSON.parse(await readFile(file, 'utf8')) as object);
    console.log(`enqueued ${file} as ${id}`);
  }
  console.log(`control plane listening on ${cp.url} (runner ${cp.runnerId}, token ${cp.token})`);
  const shutdown = () => {
    for (const j of cp.jobs()) console.log(`${j.id}: ${j.status}${j.result ? ` ${JSON.stringify(j.result)}` : ''}`);
    void cp.stop().then(() => process.exit(0));
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}
