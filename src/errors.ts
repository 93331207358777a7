// One error hierarchy for the whole of ferry. Every error carries a stable code (the
// control-plane contract's codes, plus USAGE for bad local input), which side of a copy
// failed, and whether trying again could help. The CLI prints `code: message`; the agent
// reports `code`.

export const CONTRACT_CODES = [
  'SOURCE_AUTH',
  'SOURCE_NOT_FOUND',
  'SOURCE_INVALID',
  'DIGEST_MISMATCH',
  'DESTINATION_AUTH',
  'DESTINATION_REJECTED',
  'TOKEN_ALREADY_USED',
  'TOKEN_EXPIRED',
  'INVALID_PLAN',
  'REGISTRY_UNAVAILABLE',
  'INTERNAL',
] as const;

export type ContractCode = (typeof CONTRACT_CODES)[number];
/**
 * USAGE: bad flags, a bad reference or a bad local file — exit code 2, never a registry's fault.
 * INTERRUPTED: the caller stopped the operation (Ctrl-C, SIGTERM, a cancelled job, the agent
 * shutting down) — nobody's fault, and never a job's result (the agent leaves such a job open or
 * reports nothing, as the contract says).
 */
export type ErrorCode = ContractCode | 'USAGE' | 'INTERRUPTED';
export type Side = 'source' | 'destination';

export interface FerryErrorOptions {
  side?: Side;
  retryable?: boolean;
  status?: number;
  /** Error codes from the registry's JSON error body, e.g. BLOB_UNKNOWN, DENIED. */
  registryCodes?: string[];
  cause?: unknown;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly side: Side | undefined;
  readonly retryable: boolean;
  readonly status: number | undefined;
  readonly registryCodes: string[];

  constructor(code: ErrorCode, message: string, opts: FerryErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'FerryError';
    this.code = code;
    this.side = opts.side;
    this.retryable = opts.retryable ?? false;
    this.status = opts.status;
    this.registryCodes = opts.registryCodes ?? [];
  }
}

/** Bad input from the person or file at hand: flags, reference syntax, plan files. Exit 2. */
export class UsageError extends FerryError {
  constructor(message: string, opts: FerryErrorOptions = {}) {
    super('USAGE', message, opts);
    this.name = 'UsageError';
  }
}

/** Something the registry said, with its HTTP status and error codes. */
export class RegistryError extends FerryError {
  constructor(code: ErrorCode, message: string, opts: FerryErrorOptions = {}) {
    super(code, message, opts);
    this.name = 'RegistryError';
  }
}

/** Bytes that did not hash to the digest they were fetched under. Never retried blindly. */
export class DigestMismatchError extends FerryError {
  constructor(message: string, opts: FerryErrorOptions = {}) {
    super('DIGEST_MISMATCH', message, opts);
    this.name = 'DigestMismatchError';
  }
}

/** A network-level failure (reset, timeout, refused). Retryable; becomes REGISTRY_UNAVAILABLE when retries run out. */
export class NetworkError extends FerryError {
  constructor(message: string, opts: FerryErrorOptions = {}) {
    super('REGISTRY_UNAVAILABLE', message, { retryable: true, ...opts });
    this.name = 'NetworkError';
  }
}

/** The operation was cancelled by its caller (job cancelled, SIGINT). */
export class AbortedError extends FerryError {
  constructor(message = 'operation cancelled', opts: FerryErrorOptions = {}) {
    super('INTERRUPTED', message, opts);
    this.name = 'AbortedError';
  }
}

export function isFerryError(e: unknown): e is FerryError {
  return e instanceof FerryError;
}

/** Any thrown value as a FerryError (unknown errors become INTERNAL). */
export function toFerryError(e: unknown): FerryError {
  if (e instanceof FerryError) return e;
  const err = e instanceof Error ? e : new Error(String(e));
  if (err.name === 'AbortError') return new AbortedError(err.message, { cause: err });
  return new FerryError('INTERNAL', err.message, { cause: err });
}

/**
 * The code the agent reports to the control plane: USAGE errors in a plan become INVALID_PLAN.
 * An interrupted job is never reported (it is left open, or was cancelled); reporting one as a
 * failure would be a bug in ferry, and is said so.
 */
export function contractCode(e: FerryError): ContractCode {
  if (e.code === 'USAGE') return 'INVALID_PLAN';
  if (e.code === 'INTERRUPTED') return 'INTERNAL';
  return e.code;
}

/** Process exit code for the CLI: 2 for bad local input, 130 for an interruption (128 + SIGINT), 1 for everything else. */
export function exitCodeFor(e: FerryError): number {
  if (e.code === 'USAGE') return 2;
  if (e.code === 'INTERRUPTED') return 130;
  return 1;
}
