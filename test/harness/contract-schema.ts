// The reference control plane's own schema for what an agent sends, written from the contract
// (docs/control-plane.md, v1.1) and nothing else: it shares no code with the agent's checkers
// (src/agent/contract.ts, src/agent/validate.ts), so a shape mistake the agent makes and its own
// checks let through is still refused here, as a real control plane would refuse it.
//
// Where the contract names a field, its type follows from the contract's wording; where it is
// silent this schema is strict, and says so:
// - a field the contract does not name is refused (a misspelt optional field cannot slip by);
// - ids are the URL-safe identifiers of the contract's paths (letters, digits, `. _ ~ : -`);
// - a failed result needs an `error_code` from the contract's list, a successful one has none;
// - digests are `algorithm:encoded` as in the OCI image spec, sha256 with 64 lowercase hex digits.

export const CONTRACT_ERROR_CODES = [
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

export const SETTABLE_EXECUTION_STATUSES = ['initializing', 'in-progress', 'cleaning-up'] as const;

export type Schema =
  | { type: 'string'; min?: number; max?: number; pattern?: RegExp; enum?: readonly string[] }
  | { type: 'integer'; min?: number }
  | { type: 'number'; min?: number }
  | { type: 'boolean' }
  | { type: 'array'; items: Schema; max?: number }
  | { type: 'object'; required: Record<string, Schema>; optional?: Record<string, Schema> };

const ID = /^[A-Za-z0-9][A-Za-z0-9._~:-]{0,199}$/;
const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}|[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,})$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** `<host>/<path>`: a registry host (with a port, maybe) and at least one path component. */
const REPOSITORY = /^[A-Za-z0-9.-]+(:\d{1,5})?\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const MEDIA_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

const id: Schema = { type: 'string', pattern: ID };
const count: Schema = { type: 'integer', min: 0 };
const digest: Schema = { type: 'string', pattern: DIGEST };

/** `{"instance_id"}`: claim and attach. */
export const INSTANCE_BODY: Schema = { type: 'object', required: { instance_id: id } };

/** `{"instance_id", "alive_time_s", "version", "jobs_running"}`. */
export const HEARTBEAT_BODY: Schema = {
  type: 'object',
  required: { instance_id: id, alive_time_s: { type: 'number', min: 0 }, version: { type: 'string', min: 1, max: 100 }, jobs_running: count },
};

/** `{"status": S, "instance_id"}`. */
export const STATUS_BODY: Schema = { type: 'object', required: { status: { type: 'string', enum: SETTABLE_EXECUTION_STATUSES }, instance_id: id } };

/** `{"instance_id", "bytes_done", "bytes_total", "blobs_done", "blobs_total"}`. */
export const PROGRESS_BODY: Schema = { type: 'object', required: { instance_id: id, bytes_done: count, bytes_total: count, blobs_done: count, blobs_total: count } };

/** The contract's Image output. */
export const IMAGE: Schema = {
  type: 'object',
  required: {
    repository: { type: 'string', max: 512, pattern: REPOSITORY },
    digest,
    media_type: { type: 'string', pattern: MEDIA_TYPE },
    size: count,
    platforms: {
      type: 'array',
      items: { type: 'object', required: { os: { type: 'string', min: 1, max: 100 }, architecture: { type: 'string', min: 1, max: 100 }, digest }, optional: { variant: { type: 'string', min: 1, max: 100 } } },
    },
    referrers: { type: 'array', items: { type: 'object', required: { digest, artifact_type: { type: 'string', max: 255 } } } },
  },
  // A destination pinned by digest alone has no tag.
  optional: { tag: { type: 'string', pattern: TAG } },
};

/** `{"instance_id", "success", "error_code"?, "error_message"?, "outputs"?: {"image": Image}}`. */
export const RESULT_BODY: Schema = {
  type: 'object',
  required: { instance_id: id, success: { type: 'boolean' } },
  optional: {
    error_code: { type: 'string', enum: CONTRACT_ERROR_CODES },
    error_message: { type: 'string', max: 8192 },
    outputs: { type: 'object', required: { image: IMAGE } },
  },
};

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/** Every way `value` breaks `schema`, as `$.path: problem` lines; empty when it fits. */
export function violations(schema: Schema, value: unknown, path = '$'): string[] {
  switch (schema.type) {
    case 'string': {
      if (typeof value !== 'string') return [`${path}: must be a string, is ${kindOf(value)}`];
      const out: string[] = [];
      if (schema.min !== undefined && value.length < schema.min) out.push(`${path}: shorter than ${schema.min}`);
      if (schema.max !== undefined && value.length > schema.max) out.push(`${path}: longer than ${schema.max}`);
      if (schema.pattern && !schema.pattern.test(value)) out.push(`${path}: ${JSON.stringify(value.slice(0, 80))} does not match ${schema.pattern}`);
      if (schema.enum && !schema.enum.includes(value)) out.push(`${path}: ${JSON.stringify(value.slice(0, 80))} is not one of ${schema.enum.join(', ')}`);
      return out;
    }
    case 'integer':
    case 'number': {
      if (typeof value !== 'number' || !Number.isFinite(value)) return [`${path}: must be a number, is ${kindOf(value)}`];
      if (schema.type === 'integer' && !Number.isSafeInteger(value)) return [`${path}: must be a whole number, is ${value}`];
      return schema.min !== undefined && value < schema.min ? [`${path}: must be at least ${schema.min}, is ${value}`] : [];
    }
    case 'boolean':
      return typeof value === 'boolean' ? [] : [`${path}: must be true or false, is ${kindOf(value)}`];
    case 'array': {
      if (!Array.isArray(value)) return [`${path}: must be an array, is ${kindOf(value)}`];
      if (schema.max !== undefined && value.length > schema.max) return [`${path}: more than ${schema.max} items`];
      return value.flatMap((item, i) => violations(schema.items, item, `${path}[${i}]`));
    }
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return [`${path}: must be an object, is ${kindOf(value)}`];
      const o = value as Record<string, unknown>;
      const optional = schema.optional ?? {};
      const out: string[] = [];
      for (const [k, s] of Object.entries(schema.required)) {
        if (!Object.hasOwn(o, k)) out.push(`${path}.${k}: missing`);
        else out.push(...violations(s, o[k], `${path}.${k}`));
      }
      for (const [k, v] of Object.entries(o)) {
        if (Object.hasOwn(schema.required, k)) continue;
        if (!Object.hasOwn(optional, k)) out.push(`${path}.${k}: not a field of this body`);
        else out.push(...violations(optional[k]!, v, `${path}.${k}`));
      }
      return out;
    }
  }
}

/** A result's rules beyond its shape: a failure names its code; a success has no error fields. */
export function resultViolations(value: unknown): string[] {
  const out = violations(RESULT_BODY, value);
  if (out.length > 0) return out;
  const r = value as { success: boolean; error_code?: string; error_message?: string };
  if (!r.success && r.error_code === undefined) out.push('$.error_code: a failed result must name its error code');
  if (r.success && (r.error_code !== undefined || r.error_message !== undefined)) out.push('$: a successful result carries no error_code or error_message');
  return out;
}
