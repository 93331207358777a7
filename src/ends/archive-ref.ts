// Local image ends written as `transport:path[:ref]`. No I/O: the split between path and tag is
// purely syntactic, so the same string means the same thing whether or not the path exists yet.
//
//   oci:DIR[:TAG]              an OCI image layout directory; TAG is an index.json ref.name
//   oci-archive:FILE[:TAG]     the same layout as one tar file
//   docker-archive:FILE[:NAME:TAG]
//                              what `docker save` writes and `docker load` reads; the optional
//                              reference is a RepoTags entry such as `myapp:1.0` or
//                              `registry.example.com:5000/team/app:1.0` (the tag is required)
//
// Where the path ends:
// - oci, oci-archive: the text after the LAST ':' is the tag, unless it contains a '/' (a tag
//   never does), in which case there is no tag and the whole text is the path. A tag must match
//   the reference tag grammar (1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'); anything
//   else after the last ':' is a usage error rather than silently part of the path. So a path
//   whose last component contains ':' needs an explicit tag (`oci:/data/a:b:latest`), or, for a
//   directory, a trailing '/' (`oci:/data/a:b/`).
// - docker-archive: the path ends at the FIRST ':' after which a complete `name:tag` reference
//   follows (the distribution grammar; a name never contains ':' except in a registry port, and
//   always needs the explicit tag here). If no ':' is followed by one, there is no reference and
//   the whole text is the path (`docker-archive:/data/a:b.tar` is the file `/data/a:b.tar`, and
//   so is `docker-archive:/x.tar:myapp`: write `myapp:latest`). A last path component with two
//   or more ':' where nothing parses is refused as a bad name:tag rather than taken as a file.
//
// A registry whose host is literally `oci`, `oci-archive` or `docker-archive` with a port must be
// written with the `docker://` prefix to be told apart from these transports.
import { UsageError } from '../errors.ts';
import { parseReference } from '../reference/reference.ts';

export type ArchiveTransport = 'oci' | 'oci-archive' | 'docker-archive';

export interface ArchiveReference {
  transport: ArchiveTransport;
  /** The path exactly as written (relative paths are resolved by whoever opens it). */
  path: string;
  /**
   * The tag: for oci and oci-archive the `org.opencontainers.image.ref.name` to read or write;
   * for docker-archive the tag part of `dockerReference`.
   */
  tag?: string;
  /** docker-archive only: the RepoTags entry as written, e.g. `myapp:1.0`. */
  dockerReference?: string;
}

const TRANSPORTS: readonly ArchiveTransport[] = ['oci', 'oci-archive', 'docker-archive'];
const TAG = /^[\w][\w.-]{0,127}$/;
const TAG_RULE = "1-128 characters of letters, digits, '_', '.' or '-', not starting with '.' or '-'";

function transportOf(s: string): ArchiveTransport | undefined {
  const colon = s.indexOf(':');
  if (colon < 0) return undefined;
  const t = s.slice(0, colon);
  return (TRANSPORTS as readonly string[]).includes(t) ? (t as ArchiveTransport) : undefined;
}

/** Whether `s` names a local end (`oci:`, `oci-archive:` or `docker-archive:`) rather than a registry. */
export function isArchiveReference(s: string): boolean {
  return transportOf(s.trim()) !== undefined;
}

/** Parse `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker-archive:FILE[:NAME:TAG]`. Throws UsageError. */
export function parseArchiveReference(input: string): ArchiveReference {
  const s = input.trim();
  const transport = transportOf(s);
  if (!transport) throw new UsageError(`"${input}" is not a local image reference: expected oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]`);
  const rest = s.slice(transport.length + 1);
  const ref = transport === 'docker-archive' ? splitDocker(rest, input) : splitTagged(rest, input);
  if (ref.path === '') throw new UsageError(`invalid reference "${input}": the ${transport === 'oci' ? 'directory' : 'file'} path is empty`);
  if (ref.path.includes('\0')) throw new UsageError(`invalid reference "${input}": the path contains a NUL character`);
  return { transport, ...ref };
}

function splitTagged(rest: string, input: string): Omit<ArchiveReference, 'transport'> {
  const colon = rest.lastIndexOf(':');
  if (colon < 0) return { path: rest };
  const tag = rest.slice(colon + 1);
  if (tag.includes('/')) return { path: rest };
  if (!TAG.test(tag)) {
    throw new UsageError(
      `invalid reference "${input}": "${tag}" after the last ':' is not a valid tag (${TAG_RULE}); a path containing ':' needs an explicit :TAG at the end`,
    );
  }
  return { path: rest.slice(0, colon), tag };
}

function splitDocker(rest: string, input: string): Omit<ArchiveReference, 'transport'> {
  for (let i = rest.indexOf(':'); i >= 0; i = rest.indexOf(':', i + 1)) {
    const candidate = rest.slice(i + 1);
    const tag = taggedNameTag(candidate);
    if (tag !== undefined) return { path: rest.slice(0, i), tag, dockerReference: candidate };
  }
  if (/:[^/]*:[^/]*$/.test(rest)) {
    // Looks like it meant to carry a name:tag (two ':' in the last path component) but none parsed.
    const last = rest.slice(rest.lastIndexOf('/') + 1);
    throw new UsageError(`invalid reference "${input}": "${last.slice(last.indexOf(':') + 1)}" is not a valid name:tag (e.g. myapp:1.0)`);
  }
  return { path: rest };
}

/** The tag of a `name:tag` reference (no digest), or undefined when `s` is not one. */
function taggedNameTag(s: string): string | undefined {
  if (s === '' || s.includes('@') || s !== s.trim()) return undefined;
  try {
    const ref = parseReference(s, { defaultTag: false });
    return ref.tag;
  } catch {
    return undefined;
  }
}

/** The reference in the form it was written: `oci:/dir:tag`, `docker-archive:/x.tar:app:1`. */
export function formatArchiveReference(ref: ArchiveReference): string {
  if (ref.transport === 'docker-archive') return `${ref.transport}:${ref.path}${ref.dockerReference ? `:${ref.dockerReference}` : ''}`;
  return `${ref.transport}:${ref.path}${ref.tag ? `:${ref.tag}` : ''}`;
}
