// The control-plane contract's wire shapes (docs/control-plane.md), as the agent's client sends
// and reads them, with the checks the client applies to every response and to its own requests.
// Field names are the wire's (snake_case) on purpose. The reference control plane
// (test/harness/control-plane.ts) has its own schema, written from the contract, so a shape
// mistake here is caught there.
import { CONTRACT_CODES, type ContractCode } from '../errors.ts';
import type { ImageOutput } from '../copy/types.ts';
import { arrayOf, bool, int, num, object, oneOf, ShapeError, str, timestamp, type Check } from './validate.ts';

/**
 * Identifiers (runner, job, execution, instance ids) travel in URL paths, so ferry accepts only
 * URL-safe ones: letters, digits and `. _ ~ : -`, starting with a letter or digit, at most 200
 * characters. The contract does not say; a UUID, `job_123` or a ULID all fit.
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._~:-]{0,199}$/;
export const id: Check<string> = str({ min: 1, max: 200, pattern: ID_PATTERN, patternName: 'an identifier (letters, digits and ". _ ~ : -", at most 200 characters)' });

export const JOB_STATUSES = ['queued', 'available', 'in-progress', 'finished', 'failed', 'cancelled', 'timed-out'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
/** Statuses after which nothing more is reported for a job. */
export const FINAL_JOB_STATUSES: readonly JobStatus[] = ['finished', 'failed', 'cancelled', 'timed-out'];
/** Statuses that tell a running agent to stop work at once (and report nothing more). */
export const STOP_JOB_STATUSES: readonly JobStatus[] = ['cancelled', 'timed-out'];

/** Statuses the agent may PATCH onto an execution. */
export const EXECUTION_UPDATE_STATUSES = ['initializing', 'in-progress', 'cleaning-up'] as const;
export type ExecutionUpdateStatus = (typeof EXECUTION_UPDATE_STATUSES)[number];

export interface RunnerSettings {
  heartbeat_interval_s: number;
  poll_interval_s: number;
  lease_s: number;
}
export const DEFAULT_SETTINGS: Readonly<RunnerSettings> = Object.freeze({ heartbeat_interval_s: 5, poll_interval_s: 5, lease_s: 30 });

export interface JobSummary {
  id: string;
  type: string;
  status: string;
  created_at: string;
}

/** An execution as returned by claim and attach. */
export interface Execution {
  id: string;
  status: string;
  lease_expires_at: string;
}

/** An open execution as listed by `GET /v1/runners/{id}/executions?status=in-progress`. */
export interface OpenExecution {
  job_id: string;
  id: string;
  instance_id: string;
  lease_expires_at: string;
}

/** The credentials response as it travels: basic (username + password) or a registry bearer token. */
export type RegistryCredentialsBody =
  | { registry: string; username: string; password: string; expires_at: string }
  | { registry: string; token: string; expires_at: string };

export interface ProgressBody {
  bytes_done: number;
  bytes_total: number;
  blobs_done: number;
  blobs_total: number;
}

export interface ResultBody {
  success: boolean;
  error_code?: ContractCode;
  error_message?: string;
  outputs?: { image: ImageOutput };
}

/**
 * PATCH, progress and result carry the sending instance (v1.1): the control plane answers
 * 409 EXECUTION_NOT_HELD to one that no longer holds the execution, and that instance stops the job.
 */
export type FromInstance<T> = T & { instance_id: string };

export interface JobState {
  id: string;
  status: JobStatus;
}

export interface HeartbeatBody {
  instance_id: string;
  alive_time_s: number;
  version: string;
  jobs_running: number;
}

/** The body of any error response, as the reference control plane sends it. Optional for others. */
export interface ErrorBody {
  code: string;
  message?: string;
}

/** Codes the reference control plane puts in error bodies (beyond the contract's TOKEN_* ones). */
export const SERVER_ERROR_CODES = {
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

// ---- response checks ----

const nonNegInt = int({ min: 0, max: Number.MAX_SAFE_INTEGER });

export const checkJobSummary: Check<JobSummary> = object({ id, type: str({ min: 1, max: 100 }), status: str({ max: 100 }), created_at: timestamp });

export const checkExecution: Check<Execution> = object({ id, status: str({ min: 1, max: 100 }), lease_expires_at: timestamp });

export const checkOpenExecution: Check<OpenExecution> = object({ job_id: id, id, instance_id: id, lease_expires_at: timestamp });

export const checkJobState: Check<JobState> = object({ id, status: oneOf(JOB_STATUSES) });

/** Registry bearer tokens (JWTs) can be long, but not unboundedly so. */
const secret = str({ min: 1, max: 16 * 1024 });
const registryHost = str({ min: 1, max: 255, pattern: /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, patternName: 'a registry host[:port]' });

export const checkCredentialsBody: Check<RegistryCredentialsBody> = (v, path) => {
  const base = object({ registry: registryHost, expires_at: timestamp }, { username: str({ min: 1, max: 1024 }), password: secret, token: secret })(v, path);
  const hasBasic = base.username !== undefined || base.password !== undefined;
  if (hasBasic && base.token !== undefined) {
    throw new ShapeError(path, 'has both username/password and token');
  }
  if (base.token !== undefined) return { registry: base.registry, token: base.token, expires_at: base.expires_at };
  if (base.username !== undefined && base.password !== undefined) {
    return { registry: base.registry, username: base.username, password: base.password, expires_at: base.expires_at };
  }
  throw new ShapeError(path, 'needs either username and password, or token');
};

const PROGRESS_FIELDS = { bytes_done: nonNegInt, bytes_total: nonNegInt, blobs_done: nonNegInt, blobs_total: nonNegInt };
export const checkProgressBody: Check<ProgressBody> = object(PROGRESS_FIELDS);
export const checkProgressRequest: Check<FromInstance<ProgressBody>> = object({ instance_id: id, ...PROGRESS_FIELDS });

export const checkStatusRequest: Check<FromInstance<{ status: ExecutionUpdateStatus }>> = object({ instance_id: id, status: oneOf(EXECUTION_UPDATE_STATUSES) });

export const checkHeartbeatBody: Check<HeartbeatBody> = object({
  instance_id: id,
  alive_time_s: num({ min: 0 }),
  version: str({ min: 1, max: 100 }),
  jobs_running: nonNegInt,
});

const checkPlatformOutput = object(
  { os: str({ min: 1, max: 100 }), architecture: str({ min: 1, max: 100 }), digest: str({ min: 1, max: 200 }) },
  { variant: str({ min: 1, max: 100 }) },
);

export const checkImageOutput: Check<ImageOutput> = object(
  {
    repository: str({ min: 1, max: 512 }),
    digest: str({ min: 1, max: 200 }),
    media_type: str({ min: 1, max: 255 }),
    size: nonNegInt,
    platforms: arrayOf(checkPlatformOutput, { max: 1000 }),
    referrers: arrayOf(object({ digest: str({ min: 1, max: 200 }), artifact_type: str({ max: 255 }) }), { max: 10_000 }),
  },
  { tag: str({ min: 1, max: 128 }) },
);

const RESULT_OPTIONAL = { error_code: oneOf(CONTRACT_CODES), error_message: str({ max: 8192 }), outputs: object({ image: checkImageOutput }) };
/** A result as the agent keeps it (pending results in the state directory). */
export const checkResultBody: Check<ResultBody> = object({ success: bool }, RESULT_OPTIONAL);
/** A result as the agent sends it. */
export const checkResultRequest: Check<FromInstance<ResultBody>> = object({ instance_id: id, success: bool }, RESULT_OPTIONAL);

export function isFinalJobStatus(s: JobStatus): boolean {
  return FINAL_JOB_STATUSES.includes(s);
}

export function shouldStop(s: JobStatus): boolean {
  return STOP_JOB_STATUSES.includes(s);
}
