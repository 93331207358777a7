// The OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md),
// wherever its files live: a directory, one tar, or the OCI half of a `docker save` archive.
//
//   oci-layout                 {"imageLayoutVersion":"1.0.0"}
//   index.json                 an OCI index; `org.opencontainers.image.ref.name` annotations are the tags
//   blobs/<alg>/<hex>          manifests, configs and layers by digest
//
// Reading: every manifest is bounded (4 MiB) and verified against its digest; blobs are streamed
// from the offset asked for and the engine's reader verifies them. A layout has no referrers API:
// referrers travel as the `<alg>-<hex>` fallback tag (an index of them) and cosign's
// `<alg>-<hex>.sig/.att/.sbom` tags, which are ordinary tags in index.json.
//
// Writing (IndexBuilder): manifests are stored as blobs as they come; index.json changes only at
// commit. Then every tag put in the session gets its entry (replacing an entry of the same name),
// every referrer put in the session is listed in its subject's fallback tag (created, or extended
// when it lacks some), and every manifest put by digest that nothing else in the session refers
// to (no tag, not an index child, not a referrer) gets an entry without a name, so an image
// written without a tag is still reachable from index.json.
import { FerryError, DigestMismatchError, type Side } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { digestOf, parseDigest, isDigest, type Digest } from '../reference/digest.ts';
import { MAX_MANIFEST_BYTES, MediaType, parseManifest, validateDescriptor, type Descriptor, type ImageIndex, type ParsedManifest } from '../oci/manifest.ts';
import { referrerDescriptor, referrersTagOf } from '../oci/referrers.ts';
import type { BlobStream, FetchedManifest, ImageSource, ManifestHead } from './types.ts';

export const REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's (and docker ≥ 25's) full image name annotation. */
export const IMAGE_NAME = 'io.containerd.image.name';
export const OCI_LAYOUT_FILE = 'oci-layout';
export const INDEX_FILE = 'index.json';
export const OCI_LAYOUT_BYTES = Buffer.from('{"imageLayoutVersion":"1.0.0"}');
/** index.json may list many images, but not unboundedly many. */
export const MAX_INDEX_ENTRIES = 100_000;

/** Where a blob lives in a layout: `blobs/<alg>/<hex>`. */
export function blobName(digest: Digest): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

/** The digest a `blobs/<alg>/<hex>` name stands for, if it is one. */
export function digestFromBlobName(name: string): Digest | undefined {
  const m = /^blobs\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(name);
  if (!m) return undefined;
  const d = `${m[1]}:${m[2]}`;
  return isDigest(d) ? d : undefined;
}

/** Fallback and cosign tags: they name referrers, never the image someone means to copy. */
export function isReferrerTag(tag: string): boolean {
  return /^sha(256|512)-[a-f0-9]{64,128}(\.(sig|att|sbom))?$/.test(tag);
}

/** Read access to a layout's files. Names are always ones this code built (fixed names and blob names). */
export interface LayoutFiles {
  readonly description: string;
  /** Size of the regular file `name`, undefined when there is none. */
  size(name: string): Promise<number | undefined>;
  /** A whole file of at most `max` bytes (larger is SOURCE_INVALID), undefined when there is none. */
  read(name: string, max: number, what: string): Promise<Buffer | undefined>;
  /** Bytes `offset` to `size` of a file already known to be `size` bytes long. */
  stream(name: string, offset: number, size: number, signal?: AbortSignal): AsyncIterable<Buffer>;
}

/**
 * `body`, which must bring `length` bytes. Fewer: the file shrank while ferry read it (an archive
 * rewritten or truncated meanwhile): SOURCE_INVALID, not a download to retry as if a network broke.
 */
async function* exactLength(body: AsyncIterable<Buffer>, length: number, what: string): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const piece of body) {
    n += piece.byteLength;
    yield piece;
  }
  if (n < length) {
    throw new FerryError('SOURCE_INVALID', `${what} ended after ${n} of its ${length} bytes: the file changed while ferry read it (rewritten or truncated); copy from a file nothing writes to`, { side: 'source' });
  }
}

function invalid(side: Side, message: string, cause?: unknown): FerryError {
  return new FerryError(side === 'source' ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED', message, cause === undefined ? { side } : { side, cause });
}

/** Check an `oci-layout` file. */
export function checkOciLayout(bytes: Buffer, description: string, side: Side): void {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid(side, `${description}: oci-layout is not JSON`);
  }
  const version = (doc as { imageLayoutVersion?: unknown } | null)?.imageLayoutVersion;
  if (typeof version !== 'string') throw invalid(side, `${description}: oci-layout has no imageLayoutVersion`);
  if (!/^1\.\d+\.\d+$/.test(version)) throw invalid(side, `${description}: unsupported image layout version "${version}" (ferry reads 1.x)`);
}

/**
 * Parse and check an index.json: an OCI index of well-formed descriptors, bounded. Entries of
 * media types ferry does not copy are kept (they fail only if someone asks for them).
 */
export function parseIndexJson(bytes: Buffer, description: string, side: Side): ImageIndex {
  const bad = (what: string) => invalid(side, `${description}: index.json ${what}`);
  if (bytes.byteLength > MAX_MANIFEST_BYTES) throw bad(`is ${bytes.byteLength} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw bad(`is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('is not a JSON object');
  const obj = doc as Record<string, unknown>;
  if (obj.schemaVersion !== 2) throw bad(`has schemaVersion ${JSON.stringify(obj.schemaVersion)}, not 2`);
  if (obj.mediaType !== undefined && obj.mediaType !== MediaType.OciIndex) throw bad(`has media type ${JSON.stringify(obj.mediaType)}, not ${MediaType.OciIndex}`);
  if (!Array.isArray(obj.manifests)) throw bad('has no "manifests" array');
  if (obj.manifests.length > MAX_INDEX_ENTRIES) throw bad(`lists more than ${MAX_INDEX_ENTRIES} manifests`);
  const manifests = obj.manifests.map((raw: unknown, i: number) => {
    let d: Descriptor;
    try {
      d = validateDescriptor(raw, `manifests[${i}]`, side);
    } catch (e) {
      throw bad((e as Error).message);
    }
    if (d.annotations !== undefined) {
      if (typeof d.annotations !== 'object' || d.annotations === null || Array.isArray(d.annotations)) throw bad(`entry ${d.digest} has malformed annotations`);
      const name = d.annotations[REF_NAME];
      if (name !== undefined && typeof name !== 'string') throw bad(`entry ${d.digest} has a non-string ${REF_NAME}`);
    }
    return d;
  });
  return { ...(obj as object), schemaVersion: 2, manifests } as ImageIndex;
}

/** Tag → descriptor from index.json; the same name for two different manifests is refused. */
export function tagsOf(index: ImageIndex, description: string, side: Side): Map<string, Descriptor> {
  const tags = new Map<string, Descriptor>();
  for (const d of index.manifests) {
    const name = d.annotations?.[REF_NAME];
    if (name === undefined) continue;
    const seen = tags.get(name);
    if (seen && seen.digest !== d.digest) throw invalid(side, `${description}: index.json names "${name}" for two manifests (${seen.digest} and ${d.digest})`);
    tags.set(name, d);
  }
  return tags;
}

/**
 * Reading manifests and blobs of a layout by digest. `aliases` lets a docker archive serve
 * digests whose bytes live under other names (`<id>/layer.tar`).
 */
export class LayoutReader {
  readonly files: LayoutFiles;
  private readonly aliases: Map<Digest, string>;

  constructor(files: LayoutFiles, aliases: Map<Digest, string> = new Map()) {
    this.files = files;
    this.aliases = aliases;
  }

  nameOf(digest: Digest): string {
    return this.aliases.get(digest) ?? blobName(digest);
  }

  /**
   * A manifest by digest, verified, bounded; `expected` is the descriptor it was found through
   * (its size must match). Undefined when the layout does not have it.
   */
  async manifest(digest: Digest, expected?: Descriptor): Promise<FetchedManifest | undefined> {
    const { description } = this.files;
    if (expected && expected.size > MAX_MANIFEST_BYTES) {
      throw invalid('source', `${description}: manifest ${digest} is ${expected.size} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
    }
    const bytes = await this.files.read(this.nameOf(digest), MAX_MANIFEST_BYTES, `manifest ${digest}`);
    if (!bytes) return undefined;
    const actual = digestOf(bytes, parseDigest(digest).algorithm);
    if (actual !== digest) throw new DigestMismatchError(`${description}: manifest ${digest} hashes to ${actual}`, { side: 'source' });
    if (expected && expected.size !== bytes.byteLength) {
      throw invalid('source', `${description}: manifest ${digest} is ${bytes.byteLength} bytes but index.json says ${expected.size}`);
    }
    let mediaType: string;
    try {
      mediaType = parseManifest(bytes, expected?.mediaType, 'source').mediaType;
    } catch (e) {
      if (e instanceof FerryError) throw invalid('source', `${description}: manifest ${digest}: ${e.message}`, e);
      throw e;
    }
    return { bytes, mediaType, digest };
  }

  async openBlob(digest: Digest, size: number, offset: number, signal?: AbortSignal): Promise<BlobStream> {
    const { description } = this.files;
    const name = this.nameOf(digest);
    const actual = await this.files.size(name);
    if (actual === undefined) throw new FerryError('SOURCE_NOT_FOUND', `${description} has no blob ${digest}`, { side: 'source' });
    if (actual !== size) {
      throw invalid('source', `${description}: blob ${digest} is ${actual} bytes but its descriptor says ${size}`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > size) {
      throw new FerryError('INTERNAL', `blob ${digest}: offset ${offset} outside 0..${size}`, { side: 'source' });
    }
    return { body: exactLength(this.files.stream(name, offset, size, signal), size - offset, `${description}: blob ${digest} from byte ${offset}`) };
  }
}

/** An OCI layout as an image source (a directory or an archive, through its LayoutFiles). */
/**
 * A source read through a LayoutReader (an OCI layout, an OCI archive, a docker archive):
 * manifests by digest or by index.json tag, blobs from the reader, no referrers API (referrers
 * in a layout are found through its index). Subclasses say how the files are opened.
 */
export abstract class LayoutReaderSource implements ImageSource {
  readonly description: string;
  /** What to ask for as the root of the copy. */
  abstract readonly target: string;
  readonly reader: LayoutReader;
  /** index.json's tags (`org.opencontainers.image.ref.name`). */
  protected readonly tags: Map<string, Descriptor>;

  protected constructor(description: string, reader: LayoutReader, tags: Map<string, Descriptor>) {
    this.description = description;
    this.reader = reader;
    this.tags = tags;
  }

  async getManifest(target: string): Promise<FetchedManifest | undefined> {
    if (isDigest(target)) return this.reader.manifest(target);
    const d = this.tags.get(target);
    if (!d) return undefined;
    const m = await this.reader.manifest(d.digest, d);
    if (!m) throw new FerryError('SOURCE_INVALID', `${this.description}: index.json tag "${target}" points at ${d.digest}, which is missing from it`, { side: 'source' });
    return m;
  }

  async getReferrers(): Promise<Buffer[] | undefined> {
    return undefined;
  }

  async listTags(): Promise<string[]> {
    return [...this.tags.keys()];
  }

  openBlob(digest: Digest, size: number, offset: number, signal?: AbortSignal): Promise<BlobStream> {
    return this.reader.openBlob(digest, size, offset, signal);
  }

  async close(): Promise<void> {}
}

export class LayoutSource extends LayoutReaderSource {
  /** What to ask for as the root of the copy: the tag given, or the layout's only image. */
  readonly target: string;
  readonly index: ImageIndex;

  private constructor(reader: LayoutReader, index: ImageIndex, tags: Map<string, Descriptor>, target: string) {
    super(reader.files.description, reader, tags);
    this.index = index;
    this.target = target;
  }

  /** Read index.json (required) and oci-layout (checked when present), and resolve `tag`. */
  static async open(files: LayoutFiles, tag: string | undefined, logger: Logger): Promise<LayoutSource> {
    const { index, tags } = await readLayoutIndex(files, logger);
    return new LayoutSource(new LayoutReader(files), index, tags, chooseTarget(index, tags, tag, files.description));
  }

  tagged(tag: string): Descriptor | undefined {
    return this.tags.get(tag);
  }
}

/** index.json (required) and oci-layout (checked when present) of a layout being read. */
export async function readLayoutIndex(files: LayoutFiles, logger: Logger): Promise<{ index: ImageIndex; tags: Map<string, Descriptor> }> {
  const { description } = files;
  const layout = await files.read(OCI_LAYOUT_FILE, 4096, 'oci-layout');
  if (layout) checkOciLayout(layout, description, 'source');
  else logger.debug({ source: description }, 'no oci-layout file; reading index.json anyway');
  const bytes = await files.read(INDEX_FILE, MAX_MANIFEST_BYTES, 'index.json');
  if (!bytes) throw new FerryError('SOURCE_INVALID', `${description} is not an OCI image layout: it has no index.json`, { side: 'source' });
  const index = parseIndexJson(bytes, description, 'source');
  return { index, tags: tagsOf(index, description, 'source') };
}

function chooseTarget(index: ImageIndex, tags: Map<string, Descriptor>, tag: string | undefined, description: string): string {
  if (tag !== undefined) {
    if (tags.has(tag)) return tag;
    const have = [...tags.keys()].filter((t) => !isReferrerTag(t));
    throw new FerryError('SOURCE_NOT_FOUND', `${description} has no tag "${tag}"${have.length ? ` (it has: ${have.slice(0, 20).join(', ')})` : ' (it has no tags)'}`, { side: 'source' });
  }
  const candidates = index.manifests.filter((d) => {
    const name = d.annotations?.[REF_NAME];
    return name === undefined || !isReferrerTag(name);
  });
  const digests = new Set(candidates.map((d) => d.digest));
  if (digests.size === 0) throw new FerryError('SOURCE_NOT_FOUND', `${description} holds no images (index.json is empty)`, { side: 'source' });
  if (digests.size > 1) {
    const names = candidates.map((d) => d.annotations?.[REF_NAME] ?? d.digest);
    throw new FerryError('USAGE', `${description} holds ${digests.size} images; name one with :TAG (it has: ${names.slice(0, 20).join(', ')})`, { side: 'source' });
  }
  const only = candidates[0]!;
  return only.annotations?.[REF_NAME] ?? only.digest;
}

/** A manifest written in this session. */
export interface SessionManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  parsed: ParsedManifest;
}

/** A manifest about to be stored: checked, parsed, its digest computed (and matched against a digest target). */
export function prepareManifest(target: string, bytes: Buffer, mediaType: string, description: string): SessionManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw invalid('destination', `${description}: manifest is ${bytes.byteLength} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
  }
  const parsed = parseManifest(bytes, mediaType, 'destination');
  const algorithm = isDigest(target) ? parseDigest(target).algorithm : 'sha256';
  const digest = digestOf(bytes, algorithm);
  if (isDigest(target) && target !== digest) {
    throw new FerryError('DIGEST_MISMATCH', `${description}: manifest put as ${target} hashes to ${digest}`, { side: 'destination' });
  }
  if (!isDigest(target) && !/^[\w][\w.-]{0,127}$/.test(target) && !isReferrerTag(target)) {
    throw new FerryError('USAGE', `${description}: "${target}" is not a valid tag`, { side: 'destination' });
  }
  return { digest, mediaType: parsed.mediaType, bytes, parsed };
}

function subjectOf(m: SessionManifest): Descriptor | undefined {
  return m.parsed.kind === 'image' ? m.parsed.manifest.subject : m.parsed.index.subject;
}

/** Blobs to store before index.json is written (fallback referrer indexes). */
export interface ExtraBlob {
  digest: Digest;
  bytes: Buffer;
}

/** What a session wrote, and the index.json it leads to. */
export class IndexBuilder {
  private readonly manifests = new Map<Digest, SessionManifest>();
  private readonly tags = new Map<string, Descriptor>();

  /** Remember a manifest stored under `target` (a tag or its digest). */
  record(target: string, m: SessionManifest): void {
    if (!this.manifests.has(m.digest)) this.manifests.set(m.digest, m);
    if (!isDigest(target)) this.tags.set(target, { mediaType: m.mediaType, digest: m.digest, size: m.bytes.byteLength });
  }

  hasManifest(digest: Digest): boolean {
    return this.manifests.has(digest);
  }

  sessionManifest(digest: Digest): SessionManifest | undefined {
    return this.manifests.get(digest);
  }

  tagged(tag: string): Descriptor | undefined {
    return this.tags.get(tag);
  }

  /**
   * index.json after this session, over `existing` (the layout's current index, if any).
   * `readBlob` reads a manifest already in the layout (to extend a fallback tag).
   */
  async build(
    existing: ImageIndex | undefined,
    readBlob: (d: Descriptor) => Promise<Buffer | undefined>,
    logger: Logger,
    description: string,
  ): Promise<{ index: Buffer; extra: ExtraBlob[] }> {
    const entries: Descriptor[] = existing ? [...existing.manifests] : [];
    const tags = new Map(this.tags);
    const extra: ExtraBlob[] = [];
    const nameOf = (d: Descriptor) => d.annotations?.[REF_NAME];

    // Referrers, grouped by subject, in the order they were put.
    const bySubject = new Map<Digest, Descriptor[]>();
    for (const m of this.manifests.values()) {
      const subject = subjectOf(m);
      if (!subject) continue;
      const list = bySubject.get(subject.digest) ?? [];
      list.push(referrerDescriptor(m));
      bySubject.set(subject.digest, list);
    }
    for (const [subject, referrers] of bySubject) {
      const tag = referrersTagOf(subject);
      const current = tags.get(tag) ?? entries.find((d) => nameOf(d) === tag);
      let doc: ImageIndex & Record<string, unknown>;
      if (current) {
        const bytes = this.manifests.get(current.digest)?.bytes ?? (await readBlob(current));
        let parsed: ParsedManifest | undefined;
        try {
          parsed = bytes ? parseManifest(bytes, current.mediaType, 'destination') : undefined;
        } catch {
          parsed = undefined;
        }
        if (!bytes || !parsed || parsed.kind !== 'index') {
          logger.warn({ destination: description, tag }, 'fallback referrers tag is not an index; left as it is');
          continue;
        }
        const have = new Set(parsed.index.manifests.map((d) => d.digest));
        const missing = referrers.filter((r) => !have.has(r.digest));
        if (missing.length === 0) continue;
        doc = { ...(JSON.parse(bytes.toString('utf8')) as ImageIndex & Record<string, unknown>) };
        doc.manifests = [...parsed.index.manifests, ...missing];
      } else {
        doc = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: referrers };
      }
      const bytes = Buffer.from(JSON.stringify(doc));
      const digest = digestOf(bytes);
      extra.push({ digest, bytes });
      tags.set(tag, { mediaType: MediaType.OciIndex, digest, size: bytes.byteLength });
    }

    for (const [tag, d] of tags) {
      const entry: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size, annotations: { [REF_NAME]: tag } };
      const at = entries.findIndex((e) => nameOf(e) === tag);
      if (at >= 0) entries[at] = entry;
      else entries.push(entry);
    }

    // Roots put by digest only: reachable from index.json without a name.
    const children = new Set<Digest>();
    for (const m of this.manifests.values()) if (m.parsed.kind === 'index') for (const c of m.parsed.index.manifests) children.add(c.digest);
    const tagged = new Set([...tags.values()].map((d) => d.digest));
    for (const m of this.manifests.values()) {
      if (subjectOf(m) || children.has(m.digest) || tagged.has(m.digest)) continue;
      if (entries.some((e) => e.digest === m.digest)) continue;
      entries.push({ mediaType: m.mediaType, digest: m.digest, size: m.bytes.byteLength });
    }

    const doc: Record<string, unknown> = existing ? { ...(existing as unknown as Record<string, unknown>) } : {};
    doc.schemaVersion = 2;
    doc.mediaType = MediaType.OciIndex;
    doc.manifests = entries;
    return { index: Buffer.from(JSON.stringify(doc)), extra };
  }
}

/** A manifest's head from stored bytes. */
export function headOf(m: { digest: Digest; mediaType: string; size: number }): ManifestHead {
  return { digest: m.digest, mediaType: m.mediaType, size: m.size };
}
