// Referrers (signatures, SBOMs, attestations) as the OCI distribution spec names and lists them
// where a registry has no referrers API, and as cosign tags them. No I/O.
import { parseDigest, type Digest } from '../reference/digest.ts';
import { MediaType, type Descriptor, type ImageIndex, type ParsedManifest } from './manifest.ts';

/**
 * The referrers tag schema's tag for a subject: the algorithm (at most 32 characters), `-`, and the
 * encoded part cut to 64 characters (`sha256-<hex>`; a sha512 digest keeps its first 64 hex).
 */
export function referrersTagOf(subject: Digest): string {
  const { algorithm, hex } = parseDigest(subject);
  return `${algorithm.slice(0, 32)}-${hex.slice(0, 64)}`;
}

/** cosign's tags beside a subject: `sha256-<hex>.sig`, `.att`, `.sbom`. */
export const COSIGN_SUFFIXES = ['sig', 'att', 'sbom'] as const;

export function cosignTagsOf(subject: Digest): string[] {
  const base = referrersTagOf(subject);
  return COSIGN_SUFFIXES.map((s) => `${base}.${s}`);
}

/** The digest a manifest names as its `subject`, if any. */
export function subjectOf(parsed: ParsedManifest): Digest | undefined {
  return parsed.kind === 'image' ? parsed.manifest.subject?.digest : parsed.index.subject?.digest;
}

/**
 * A referrer's entry in a referrers list, as the spec has the referrers API (and a client keeping the
 * fallback index) write it: its media type, digest and size, its `artifactType` (an image manifest
 * without one takes its config's media type; an index without one has none) and all its annotations.
 */
export function referrerDescriptor(m: { digest: Digest; mediaType: string; bytes: Buffer; parsed: ParsedManifest }): Descriptor {
  const d: Descriptor = { mediaType: m.mediaType, digest: m.digest, size: m.bytes.byteLength };
  const artifactType = m.parsed.kind === 'image' ? (m.parsed.manifest.artifactType ?? m.parsed.manifest.config.mediaType) : m.parsed.index.artifactType;
  if (artifactType) d.artifactType = artifactType;
  const annotations = m.parsed.kind === 'image' ? m.parsed.manifest.annotations : m.parsed.index.annotations;
  if (annotations && typeof annotations === 'object' && Object.keys(annotations).length > 0) d.annotations = annotations;
  return d;
}

/** A new referrers index listing `entries`. */
export function newReferrersIndex(entries: Descriptor[]): Buffer {
  const doc: ImageIndex = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: entries };
  return Buffer.from(JSON.stringify(doc));
}

/**
 * `existing` (the bytes of a referrers index) with `missing` appended: every entry already there
 * stays as it is, in its order, and so do the document's other fields.
 */
export function extendReferrersIndex(existing: Buffer, missing: Descriptor[]): Buffer {
  const doc = JSON.parse(existing.toString('utf8')) as Record<string, unknown> & { manifests: unknown[] };
  return Buffer.from(JSON.stringify({ ...doc, manifests: [...doc.manifests, ...missing] }));
}
