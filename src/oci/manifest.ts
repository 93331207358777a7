// OCI and Docker manifest formats: media types, descriptor and manifest shapes, and
// validation of untrusted manifest bytes. No I/O.
import { FerryError, type Side } from '../errors.ts';
import { isDigest, type Digest } from '../reference/digest.ts';
import type { Platform } from '../reference/platform.ts';

export const MediaType = {
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  DockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

/** Every manifest type ferry copies, in the order sent in `Accept`. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  MediaType.OciIndex,
  MediaType.OciManifest,
  MediaType.DockerList,
  MediaType.DockerManifest,
];

export const INDEX_MEDIA_TYPES: readonly string[] = [MediaType.OciIndex, MediaType.DockerList];

/** Registries accept manifests up to 4 MiB; anything larger from a source is hostile or broken. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Platform & { 'os.version'?: string; 'os.features'?: string[] };
  artifactType?: string;
  annotations?: Record<string, string>;
  urls?: string[];
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export type ParsedManifest =
  | { kind: 'index'; mediaType: string; index: ImageIndex }
  | { kind: 'image'; mediaType: string; manifest: ImageManifest };

export function isIndexMediaType(mt: string): boolean {
  return INDEX_MEDIA_TYPES.includes(mt);
}

function invalid(side: Side, what: string): FerryError {
  return new FerryError(side === 'source' ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED', what, { side });
}

/**
 * Parse untrusted manifest bytes. `contentType` is what the registry said; the manifest's own
 * `mediaType` wins when present (registries are known to send loose Content-Types, so a
 * disagreement is not treated as hostile). Without either, the shape decides.
 */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined, side: Side = 'source'): ParsedManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw invalid(side, `manifest is ${bytes.byteLength} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (e) {
    throw invalid(side, `manifest is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalid(side, 'manifest is not a JSON object');
  const obj = doc as Record<string, unknown>;
  if (obj.schemaVersion !== 2) throw invalid(side, `unsupported manifest schemaVersion ${JSON.stringify(obj.schemaVersion)} (only 2 is supported)`);

  const declared = typeof obj.mediaType === 'string' ? obj.mediaType : undefined;
  const header = contentType?.split(';')[0]?.trim();
  let mediaType = declared ?? (header && MANIFEST_MEDIA_TYPES.includes(header) ? header : undefined);
  if (!mediaType) {
    // OCI allows omitting mediaType; infer from shape.
    mediaType = Array.isArray(obj.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
  }
  if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw invalid(side, `unknown manifest media type "${mediaType}"`);

  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(obj.manifests)) throw invalid(side, `index (${mediaType}) has no "manifests" array`);
    const manifests = obj.manifests.map((d, i) => validateDescriptor(d, `manifests[${i}]`, side));
    for (const d of manifests) {
      if (!MANIFEST_MEDIA_TYPES.includes(d.mediaType)) {
        throw invalid(side, `index entry ${d.digest} has unknown media type "${d.mediaType}"`);
      }
    }
    const index = { ...(obj as object), manifests } as ImageIndex;
    if (obj.subject !== undefined) index.subject = validateDescriptor(obj.subject, 'subject', side);
    return { kind: 'index', mediaType, index };
  }
  if (typeof obj.config !== 'object' || obj.config === null) throw invalid(side, `image manifest has no "config" descriptor`);
  const config = validateDescriptor(obj.config, 'config', side);
  const layersRaw = obj.layers ?? [];
  if (!Array.isArray(layersRaw)) throw invalid(side, `image manifest "layers" is not an array`);
  const layers = layersRaw.map((d, i) => validateDescriptor(d, `layers[${i}]`, side));
  const manifest = { ...(obj as object), config, layers } as ImageManifest;
  if (obj.subject !== undefined) manifest.subject = validateDescriptor(obj.subject, 'subject', side);
  return { kind: 'image', mediaType, manifest };
}

const MAX_BLOB_SIZE = 2 ** 50; // 1 PiB: anything larger is a lie

export function validateDescriptor(d: unknown, where: string, side: Side): Descriptor {
  if (typeof d !== 'object' || d === null) throw invalid(side, `${where} is not a descriptor object`);
  const o = d as Record<string, unknown>;
  if (typeof o.mediaType !== 'string' || o.mediaType.length === 0 || o.mediaType.length > 255) {
    throw invalid(side, `${where} has no valid mediaType`);
  }
  if (typeof o.digest !== 'string' || !isDigest(o.digest)) throw invalid(side, `${where} has an invalid digest ${JSON.stringify(o.digest)}`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0 || o.size > MAX_BLOB_SIZE) {
    throw invalid(side, `${where} (${o.digest}) has an invalid size ${JSON.stringify(o.size)}`);
  }
  return o as unknown as Descriptor;
}
