// Image references: `[docker://]host[:port]/path[:tag][@digest]`, validated against the
// distribution reference grammar and normalized the way Docker does. No I/O.
import { UsageError } from '../errors.ts';
import { parseDigest, type Digest } from './digest.ts';

export interface Reference {
  /** Registry host as written (normalized): `docker.io`, `localhost:5000`, `[::1]:5000`. */
  registry: string;
  /** Repository path inside the registry, e.g. `library/alpine`. */
  repository: string;
  tag?: string;
  digest?: Digest;
}

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
/** Docker Hub's API lives on a different host than its name. */
const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';

const MAX_NAME_LENGTH = 255;
// distribution/reference grammar
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const PORT = /^[0-9]+$/;

/** Parse a reference. Throws UsageError quoting the part that is wrong. */
export interface ParseOptions {
  /** Give a reference with neither tag nor digest the tag `latest` (default true). */
  defaultTag?: boolean;
}

export function parseReference(input: string, opts: ParseOptions = {}): Reference {
  const original = input;
  let s = input.trim();
  if (s.startsWith('docker://')) s = s.slice('docker://'.length);
  if (s === '') throw new UsageError('empty image reference');
  let digest: string | undefined;
  const at = s.indexOf('@');
  if (at >= 0) {
    digest = s.slice(at + 1);
    s = s.slice(0, at);
    try {
      parseDigest(digest);
    } catch (e) {
      throw new UsageError(`invalid reference "${original}": ${(e as Error).message}`);
    }
  }

  // A tag follows the last ':' that comes after the last '/' (a port's ':' comes before one).
  let tag: string | undefined;
  const lastSlash = s.lastIndexOf('/');
  const lastColon = s.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = s.slice(lastColon + 1);
    s = s.slice(0, lastColon);
    if (!TAG.test(tag)) {
      throw new UsageError(
        `invalid reference "${original}": tag "${tag}" must be 1-128 characters of letters, digits, '_', '.' or '-', not starting with '.' or '-'`,
      );
    }
  }

  let registry: string;
  let path: string;
  const firstSlash = s.indexOf('/');
  const first = firstSlash >= 0 ? s.slice(0, firstSlash) : '';
  if (firstSlash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    registry = validateDomain(first, original);
    path = s.slice(firstSlash + 1);
  } else {
    registry = DOCKER_HUB;
    path = s;
  }
  if (DOCKER_HUB_ALIASES.has(registry.toLowerCase())) {
    registry = DOCKER_HUB;
    if (!path.includes('/')) path = `library/${path}`;
  }

  if (path === '') throw new UsageError(`invalid reference "${original}": repository path is empty`);
  for (const component of path.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      const hint = /[A-Z]/.test(component) ? ' (repository names must be lowercase)' : '';
      throw new UsageError(
        `invalid reference "${original}": repository component "${component}" is not valid${hint}; use lowercase letters, digits and single '.', '_', '__' or '-' separators`,
      );
    }
  }
  // Docker counts the whole normalized name, `docker.io/` included, against the limit.
  const fullName = `${registry}/${path}`;
  if (fullName.length > MAX_NAME_LENGTH) {
    throw new UsageError(`invalid reference "${original}": name is ${fullName.length} characters, more than ${MAX_NAME_LENGTH}`);
  }

  if (tag === undefined && digest === undefined && opts.defaultTag !== false) tag = 'latest';
  const ref: Reference = { registry, repository: path };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

function validateDomain(domain: string, original: string): string {
  let host = domain;
  let port: string | undefined;
  if (domain.startsWith('[')) {
    const close = domain.indexOf(']');
    if (close < 0) throw new UsageError(`invalid reference "${original}": unterminated IPv6 address in "${domain}"`);
    host = domain.slice(0, close + 1);
    const rest = domain.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) throw new UsageError(`invalid reference "${original}": bad registry "${domain}"`);
      port = rest.slice(1);
    }
    if (!/^\[[0-9a-fA-F:.]+\]$/.test(host)) throw new UsageError(`invalid reference "${original}": bad IPv6 address "${host}"`);
  } else {
    const colon = domain.indexOf(':');
    if (colon >= 0) {
      host = domain.slice(0, colon);
      port = domain.slice(colon + 1);
    }
    for (const part of host.split('.')) {
      if (!DOMAIN_COMPONENT.test(part)) {
        throw new UsageError(`invalid reference "${original}": registry host "${host}" has an invalid part "${part}"`);
      }
    }
  }
  if (port !== undefined && (!PORT.test(port) || Number(port) < 1 || Number(port) > 65535)) {
    throw new UsageError(`invalid reference "${original}": registry port "${port}" must be a number from 1 to 65535`);
  }
  return (port !== undefined ? `${host}:${port}` : host).toLowerCase();
}

/** The host:port to connect to for a registry name (Docker Hub's API is on another host). */
export function registryEndpoint(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_ENDPOINT : registry;
}

/** The tag or digest to ask the registry for: the digest wins when both are given. */
export function referenceTarget(ref: Reference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}

/** Canonical string form: `host/repo[:tag][@digest]`. */
export function formatReference(ref: Reference): string {
  let s = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) s += `:${ref.tag}`;
  if (ref.digest !== undefined) s += `@${ref.digest}`;
  return s;
}

/** `name:tag`, or `name@sha256:…` for a digest (a tag never holds a ':', a digest always does). */
export function formatTarget(name: string, target: string): string {
  return `${name}${target.includes(':') ? '@' : ':'}${target}`;
}

/** `host/repo`, as the contract's Image output names a repository. */
export function repositoryName(ref: Reference): string {
  return `${ref.registry}/${ref.repository}`;
}

/** A copy of ref pointing at something else in the same repository. */
export function withTarget(ref: Reference, target: { tag?: string; digest?: string }): Reference {
  const out: Reference = { registry: ref.registry, repository: ref.repository };
  if (target.tag !== undefined) out.tag = target.tag;
  if (target.digest !== undefined) out.digest = target.digest;
  return out;
}
