// Job plans (`type: "oci-sync"`): checked completely before any work starts. A plan that
// cannot be used fails its job with INVALID_PLAN; the destination must lie inside the agent's
// configured local registry so that the agent's own credentials are never sent elsewhere.
import { FerryError, UsageError } from '../errors.ts';
import { parsePlatform, formatPlatform, type Platform } from '../reference/platform.ts';
import { parseReference, DOCKER_HUB, type Reference } from '../reference/reference.ts';
import { describeJson, isPlainObject, sanitizeText } from './validate.ts';

export type SourceAuth =
  | { kind: 'one-time-token'; one_time_token: string }
  | { kind: 'anonymous' }
  | { kind: 'aws-ecr'; iam_role_arn: string; region: string }
  | { kind: 'gcp-gar'; service_account_email: string; workload_identity_provider?: string };

export type DestinationAuth = { kind: 'local' };

export interface Plan {
  type: 'oci-sync';
  source: { reference: string; ref: Reference; auth: SourceAuth };
  destination: { reference: string; ref: Reference; auth: DestinationAuth };
  /** `all`: the index byte-exact; otherwise the platforms to keep (deduplicated, in plan order). */
  platforms: 'all' | Platform[];
  referrers: boolean;
}

/** The agent's local registry: a host and, optionally, a repository prefix inside it. */
export interface LocalRegistry {
  /** Normalized registry host[:port], as references name it. */
  host: string;
  /** Repository prefix without slashes at either end, e.g. `install_789`. */
  prefix?: string;
}

export const PLAN_TYPES = ['oci-sync'] as const;
export const SOURCE_AUTH_KINDS = ['one-time-token', 'anonymous', 'aws-ecr', 'gcp-gar'] as const;
const MAX_PLATFORMS = 64;

function invalid(message: string, cause?: unknown): FerryError {
  return new FerryError('INVALID_PLAN', `invalid plan: ${message}`, cause === undefined ? {} : { cause });
}

function field(o: Record<string, unknown>, key: string, path: string): unknown {
  if (!Object.hasOwn(o, key) || o[key] === undefined || o[key] === null) throw invalid(`${path}.${key} is missing`);
  return o[key];
}

function obj(v: unknown, path: string): Record<string, unknown> {
  if (!isPlainObject(v)) throw invalid(`${path} must be an object, got ${describeJson(v)}`);
  return v;
}

function text(v: unknown, path: string, max = 1024): string {
  if (typeof v !== 'string') throw invalid(`${path} must be a string, got ${describeJson(v)}`);
  if (v.length === 0) throw invalid(`${path} must not be empty`);
  if (v.length > max) throw invalid(`${path} is longer than ${max} characters`);
  return v;
}

const TRANSPORTS = /^(docker|oci|oci-archive|docker-archive|dir|containers-storage|docker-daemon|ostree|sif|tarball):(?!\d+(\/|$))/i;

/**
 * A plan reference: a full registry reference with an explicit registry host. Transports
 * (`oci:`, `docker-archive:`, `docker://`…), local paths and short Docker Hub names are refused.
 */
export function parsePlanReference(value: unknown, path: string): Reference {
  const s = text(value, path, 1024);
  const shown = JSON.stringify(sanitizeText(s, 120));
  if (s.includes('://') || TRANSPORTS.test(s)) throw invalid(`${path} ${shown} names a transport; plans take registry references only`);
  if (s.startsWith('/') || s.startsWith('.') || s.startsWith('~')) throw invalid(`${path} ${shown} is a local path; plans take registry references only`);
  const first = s.slice(0, s.indexOf('/') >= 0 ? s.indexOf('/') : 0);
  if (!(first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    throw invalid(`${path} ${shown} must start with a registry host (e.g. registry.example.com/repo:tag)`);
  }
  try {
    return parseReference(s);
  } catch (e) {
    throw invalid(`${path}: ${(e as Error).message}`, e);
  }
}

function parseSourceAuth(v: unknown, path: string): SourceAuth {
  const o = obj(v, path);
  const kind = text(field(o, 'kind', path), `${path}.kind`, 100);
  switch (kind) {
    case 'one-time-token':
      return { kind, one_time_token: text(field(o, 'one_time_token', path), `${path}.one_time_token`, 4096) };
    case 'anonymous':
      return { kind };
    case 'aws-ecr': {
      const arn = text(field(o, 'iam_role_arn', path), `${path}.iam_role_arn`, 2048);
      if (!/^arn:aws[a-z-]*:iam::\d{12}:role\/.+$/.test(arn)) throw invalid(`${path}.iam_role_arn is not an IAM role ARN`);
      const region = text(field(o, 'region', path), `${path}.region`, 64);
      if (!/^[a-z]{2}(-[a-z]+)+-\d+$/.test(region)) throw invalid(`${path}.region ${JSON.stringify(sanitizeText(region, 64))} is not an AWS region`);
      return { kind, iam_role_arn: arn, region };
    }
    case 'gcp-gar': {
      const email = text(field(o, 'service_account_email', path), `${path}.service_account_email`, 320);
      if (!/^[^@\s]+@[^@\s]+$/.test(email)) throw invalid(`${path}.service_account_email is not an email address`);
      const out: SourceAuth = { kind, service_account_email: email };
      if (o.workload_identity_provider !== undefined && o.workload_identity_provider !== null) {
        out.workload_identity_provider = text(o.workload_identity_provider, `${path}.workload_identity_provider`, 1024);
      }
      return out;
    }
    default:
      throw invalid(`${path}.kind ${JSON.stringify(sanitizeText(kind, 60))} is not one of ${SOURCE_AUTH_KINDS.join(', ')}`);
  }
}

function parsePlatforms(v: unknown): 'all' | Platform[] {
  if (v === undefined || v === null || v === 'all') return 'all';
  if (!Array.isArray(v)) throw invalid(`platforms must be "all" or a list like ["linux/amd64"], got ${describeJson(v)}`);
  if (v.length === 0) throw invalid('platforms must not be an empty list');
  if (v.length > MAX_PLATFORMS) throw invalid(`platforms lists ${v.length} platforms, more than ${MAX_PLATFORMS}`);
  const seen = new Set<string>();
  const out: Platform[] = [];
  v.forEach((p, i) => {
    let platform: Platform;
    try {
      platform = parsePlatform(text(p, `platforms[${i}]`, 100));
    } catch (e) {
      if (e instanceof UsageError) throw invalid(`platforms[${i}]: ${e.message}`, e);
      throw e;
    }
    const key = formatPlatform(platform);
    if (!seen.has(key)) {
      seen.add(key);
      out.push(platform);
    }
  });
  return out;
}

export interface ParsePlanOptions {
  /** When given, the destination must lie inside it. */
  localRegistry?: LocalRegistry;
}

/**
 * Check a plan from the control plane. Unknown fields are ignored; an unknown `type` or auth
 * `kind`, a malformed reference, or a destination outside the local registry throws
 * FerryError INVALID_PLAN. `platforms` defaults to "all" and `referrers` to true when absent.
 */
export function parsePlan(raw: unknown, opts: ParsePlanOptions = {}): Plan {
  const o = obj(raw, 'plan');
  const type = text(field(o, 'type', 'plan'), 'type', 100);
  if (type !== 'oci-sync') throw invalid(`type ${JSON.stringify(sanitizeText(type, 60))} is not one of ${PLAN_TYPES.join(', ')}`);

  const src = obj(field(o, 'source', 'plan'), 'source');
  const sourceReference = text(field(src, 'reference', 'source'), 'source.reference');
  const sourceRef = parsePlanReference(sourceReference, 'source.reference');
  const sourceAuth = parseSourceAuth(field(src, 'auth', 'source'), 'source.auth');

  const dst = obj(field(o, 'destination', 'plan'), 'destination');
  const destinationReference = text(field(dst, 'reference', 'destination'), 'destination.reference');
  const destinationRef = parsePlanReference(destinationReference, 'destination.reference');
  const dauth = obj(field(dst, 'auth', 'destination'), 'destination.auth');
  const dkind = text(field(dauth, 'kind', 'destination.auth'), 'destination.auth.kind', 100);
  if (dkind !== 'local') throw invalid(`destination.auth.kind ${JSON.stringify(sanitizeText(dkind, 60))} is not "local"`);

  const platforms = parsePlatforms(o.platforms);
  let referrers = true;
  if (o.referrers !== undefined && o.referrers !== null) {
    if (typeof o.referrers !== 'boolean') throw invalid(`referrers must be a boolean, got ${describeJson(o.referrers)}`);
    referrers = o.referrers;
  }

  const plan: Plan = {
    type: 'oci-sync',
    source: { reference: sourceReference, ref: sourceRef, auth: sourceAuth },
    destination: { reference: destinationReference, ref: destinationRef, auth: { kind: 'local' } },
    platforms,
    referrers,
  };
  if (opts.localRegistry) checkPlanDestination(plan, opts.localRegistry);
  return plan;
}

/** Throw INVALID_PLAN unless the destination lies inside the local registry (host, and prefix if any). */
export function checkPlanDestination(plan: Plan, local: LocalRegistry): void {
  if (!isInsideLocalRegistry(plan.destination.ref, local)) {
    const where = local.prefix ? `${local.host}/${local.prefix}/…` : `${local.host}/…`;
    throw invalid(
      `destination ${JSON.stringify(sanitizeText(plan.destination.reference, 200))} is outside the local registry ${where}; refusing to send the agent's credentials elsewhere`,
    );
  }
}

export function isInsideLocalRegistry(ref: Reference, local: LocalRegistry): boolean {
  if (normalizeRegistryHost(ref.registry) !== normalizeRegistryHost(local.host)) return false;
  if (!local.prefix) return true;
  return ref.repository === local.prefix || ref.repository.startsWith(`${local.prefix}/`);
}

/** Registry hosts compared the way references name them: lowercase, Docker Hub's aliases folded. */
export function normalizeRegistryHost(host: string): string {
  const h = host.toLowerCase();
  return h === 'index.docker.io' || h === 'registry-1.docker.io' ? DOCKER_HUB : h;
}

/**
 * Parse `HOST[:PORT][/PREFIX]` (the `--local-registry` setting). Throws UsageError with
 * `what` (the setting's name) in the message.
 */
export function parseLocalRegistry(value: string, what = '--local-registry'): LocalRegistry {
  const s = value.trim().replace(/\/+$/, '');
  if (s === '') throw new UsageError(`${what}: must not be empty; expected HOST[:PORT][/PREFIX]`);
  if (s.includes('://')) throw new UsageError(`${what}: "${s}" must be HOST[:PORT][/PREFIX] without a scheme`);
  if (s.includes('@')) throw new UsageError(`${what}: "${s}" must not name a digest`);
  const slash = s.indexOf('/');
  const host = slash >= 0 ? s.slice(0, slash) : s;
  const prefix = slash >= 0 ? s.slice(slash + 1) : '';
  if (!(host.includes('.') || host.includes(':') || host === 'localhost' || host.startsWith('['))) {
    throw new UsageError(`${what}: "${host}" is not a registry host; use a name with a dot or a port, or localhost (e.g. registry.example.com[/prefix])`);
  }
  let ref: Reference;
  try {
    // Parse as a reference so that the host and the prefix follow the same grammar (and normalization) as plan references.
    ref = parseReference(`${host}/${prefix === '' ? 'x' : `${prefix}/x`}`);
  } catch (e) {
    throw new UsageError(`${what}: ${(e as Error).message.replace(/^invalid reference "[^"]*": /, `"${s}": `)}`);
  }
  if (ref.tag !== 'latest' || ref.digest !== undefined) throw new UsageError(`${what}: "${s}" must not carry a tag or digest`);
  const out: LocalRegistry = { host: normalizeRegistryHost(ref.registry) };
  if (prefix !== '') out.prefix = ref.repository.slice(0, -2);
  return out;
}
