// `docker-archive:FILE[:NAME:TAG]`: what `docker save` writes and `docker load` reads.
//
//   manifest.json   [{"Config": "<path>", "RepoTags": ["name:tag", ...] | null, "Layers": ["<path>", ...]}]
//   <paths>         the config JSON and the layer tars: `blobs/sha256/<hex>` (docker ≥ 25) or
//                   `<hex>.json` and `<id>/layer.tar` (older; a repeated layer is a relative
//                   symlink to the first copy, which is resolved inside the archive)
//   index.json,     docker ≥ 25 also writes the image as an OCI layout, with the original
//   oci-layout      manifest bytes
//
// Source. The image is the manifest.json entry whose RepoTags hold NAME:TAG (compared after
// normalization, so `alpine:3` matches `docker.io/library/alpine:3`), or the only entry. When the
// archive also has an OCI index.json listing a manifest with that image's config, that manifest
// is the root, byte for byte (an index is searched for the child with that config, so the root is
// the one platform the archive holds): the digest survives a registry → docker-archive →
// registry round trip. Otherwise a Docker v2 schema 2 manifest is synthesized (docker's own
// 3-space JSON), config type application/vnd.docker.container.image.v1+json, each layer typed by
// its first bytes (gzip magic → …rootfs.diff.tar.gzip, else …rootfs.diff.tar). Digests come from
// `blobs/<alg>/<hex>` names (verified by the reader as the bytes stream) or, for other names,
// from hashing the file once when the archive is opened.
//
// Destination. One image, one platform: an index is refused (USAGE) and so are referrers and a
// second image. Blobs are written as `blobs/sha256/<hex>` entries of a streamed tar (like
// oci-archive), and commit() adds manifest.json (Config, RepoTags, Layers: what `docker load`
// reads) plus the manifest blob, index.json and oci-layout (what docker ≥ 25 writes, and what
// makes the round trip byte-exact).
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { isDigest, parseDigest, type Digest } from '../reference/digest.ts';
import { formatReference, parseReference } from '../reference/reference.ts';
import { MAX_MANIFEST_BYTES, MediaType, parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.ts';
import type { FetchedManifest, ImageDestination, ManifestHead } from './types.ts';
import {
  blobName,
  digestFromBlobName,
  IMAGE_NAME,
  INDEX_FILE,
  LayoutReader,
  LayoutReaderSource,
  OCI_LAYOUT_BYTES,
  OCI_LAYOUT_FILE,
  prepareManifest,
  readLayoutIndex,
  REF_NAME,
  type SessionManifest,
} from './layout.ts';
import { normalizeEntryName, TarIndex, type TarFile, type TarIndexOptions } from './tar-index.ts';
import { TarFileWriter } from './tar-writer.ts';
import { checkArchiveTarget, Serial, TarFiles } from './oci-archive.ts';

export const MANIFEST_JSON = 'manifest.json';
export const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar';
export const DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
const MAX_IMAGES = 10_000;
const MAX_LAYERS = 10_000;
const MAX_CANDIDATES = 1000;

export const ONE_PLATFORM_MESSAGE = 'docker-archive holds one platform; use --platform os/arch or oci-archive';

interface SaveEntry {
  config: string;
  repoTags: string[];
  layers: string[];
}

function invalid(description: string, what: string): FerryError {
  return new FerryError('SOURCE_INVALID', `${description}: ${what}`, { side: 'source' });
}

/** `name:tag` in canonical form for comparison, or the text itself when it does not parse. */
function canonicalName(s: string): string {
  try {
    return formatReference(parseReference(s));
  } catch {
    return s;
  }
}

function parseManifestJson(bytes: Buffer, description: string): SaveEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw invalid(description, `manifest.json is not JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(doc)) throw invalid(description, 'manifest.json is not a JSON array');
  if (doc.length === 0) throw invalid(description, 'manifest.json lists no images');
  if (doc.length > MAX_IMAGES) throw invalid(description, `manifest.json lists more than ${MAX_IMAGES} images`);
  return doc.map((raw: unknown, i: number) => {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid(description, `manifest.json entry ${i} is not an object`);
    const e = raw as Record<string, unknown>;
    if (typeof e.Config !== 'string' || e.Config === '') throw invalid(description, `manifest.json entry ${i} has no Config path`);
    const tags = e.RepoTags ?? [];
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) throw invalid(description, `manifest.json entry ${i} has malformed RepoTags`);
    if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string' && l !== '')) throw invalid(description, `manifest.json entry ${i} has malformed Layers`);
    if (e.Layers.length > MAX_LAYERS) throw invalid(description, `manifest.json entry ${i} has more than ${MAX_LAYERS} layers`);
    return {
      config: normalizeEntryName(e.Config, description),
      repoTags: tags as string[],
      layers: (e.Layers as string[]).map((l) => normalizeEntryName(l, description)),
    };
  });
}

export class DockerArchiveSource extends LayoutReaderSource {
  /** The root manifest's digest: what to ask for. */
  readonly target: string;
  private readonly root: FetchedManifest;
  /** Names that select the root: the reference given, its tag, and the image's RepoTags. */
  private readonly rootNames: Set<string>;

  // index.json's tags (docker >= 25 archives): fallback and cosign tags are found there.
  private constructor(description: string, reader: LayoutReader, tags: Map<string, Descriptor>, root: FetchedManifest, rootNames: Set<string>) {
    super(description, reader, tags);
    this.root = root;
    this.target = root.digest;
    this.rootNames = rootNames;
  }

  static async open(file: string, dockerReference: string | undefined, logger: Logger, opts: TarIndexOptions = {}): Promise<DockerArchiveSource> {
    const description = `docker-archive:${file}`;
    const tar = await TarIndex.open(resolve(file), { description, ...opts });
    const files = new TarFiles(tar);
    const mj = tar.file(MANIFEST_JSON);
    if (!mj) {
      const hint = tar.file(INDEX_FILE) ? ' (it has an index.json: read it as oci-archive:)' : '';
      throw invalid(description, `no manifest.json: not a docker save archive${hint}`);
    }
    const entries = parseManifestJson(await tar.read(mj, MAX_MANIFEST_BYTES, 'manifest.json'), description);
    const entry = chooseEntry(entries, dockerReference, description);
    const rootNames = new Set<string>(entry.repoTags);
    if (dockerReference) {
      rootNames.add(dockerReference);
      const tag = parseReference(dockerReference).tag;
      if (tag) rootNames.add(tag);
    }

    const need = (name: string, what: string): TarFile => {
      const f = tar.file(name);
      if (!f) throw invalid(description, `manifest.json names ${what} "${name}", which is not a file in the archive`);
      return f;
    };
    const configFile = need(entry.config, 'config');
    const layerFiles = entry.layers.map((l) => need(l, 'layer'));
    const aliases = new Map<Digest, string>();
    const hashed = new Map<string, Digest>();
    const digestOfEntry = async (name: string, f: TarFile): Promise<Digest> => {
      const named = digestFromBlobName(name) ?? digestFromBlobName(f.name);
      if (named) return named;
      // Named otherwise (`<id>/layer.tar`): hash the bytes once, whatever links lead to them.
      let d = hashed.get(f.name);
      if (!d) {
        const hash = createHash('sha256');
        for await (const chunk of tar.stream(f, 0)) hash.update(chunk as Buffer);
        d = `sha256:${hash.digest('hex')}`;
        hashed.set(f.name, d);
        aliases.set(d, f.name);
      }
      return d;
    };
    const configDigest = await digestOfEntry(entry.config, configFile);
    const reader = new LayoutReader(files, aliases);

    // Docker ≥ 25: the original manifest, when index.json has one with this config.
    let tags = new Map<string, Descriptor>();
    let root: FetchedManifest | undefined;
    if (tar.file(INDEX_FILE)) {
      const layout = await readLayoutIndex(files, logger);
      tags = layout.tags;
      root = await findByConfig(layout.index.manifests, reader, configDigest, dockerReference);
      if (root) logger.debug({ source: description, digest: root.digest }, 'docker archive: using the OCI manifest from index.json');
    }
    if (!root) {
      const layers: Descriptor[] = [];
      for (let i = 0; i < layerFiles.length; i++) {
        const f = layerFiles[i]!;
        const head = await tar.read({ ...f, size: Math.min(f.size, 2) }, 2, 'layer');
        const gzip = head.byteLength === 2 && head[0] === 0x1f && head[1] === 0x8b;
        layers.push({ mediaType: gzip ? DOCKER_LAYER_GZIP : DOCKER_LAYER, size: f.size, digest: await digestOfEntry(entry.layers[i]!, f) });
      }
      const doc = {
        schemaVersion: 2,
        mediaType: MediaType.DockerManifest,
        config: { mediaType: MediaType.DockerConfig, size: configFile.size, digest: configDigest },
        layers: layers.map((l) => ({ mediaType: l.mediaType, size: l.size, digest: l.digest })),
      };
      const bytes = Buffer.from(JSON.stringify(doc, null, 3));
      root = { bytes, mediaType: MediaType.DockerManifest, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
      logger.debug({ source: description, digest: root.digest }, 'docker archive: synthesized a schema 2 manifest from manifest.json');
    }
    return new DockerArchiveSource(description, reader, tags, root, rootNames);
  }

  override async getManifest(target: string): Promise<FetchedManifest | undefined> {
    if (target === this.root.digest || this.rootNames.has(target) || (!isDigest(target) && [...this.rootNames].some((n) => canonicalName(n) === canonicalName(target)))) {
      return this.root;
    }
    return super.getManifest(target);
  }
}

function chooseEntry(entries: SaveEntry[], ref: string | undefined, description: string): SaveEntry {
  const all = (): string => entries.flatMap((e) => e.repoTags).slice(0, 20).join(', ') || 'no tags';
  if (ref === undefined) {
    if (entries.length === 1) return entries[0]!;
    throw new FerryError('USAGE', `${description} holds ${entries.length} images; name one with :NAME:TAG (it has: ${all()})`, { side: 'source' });
  }
  const want = canonicalName(ref);
  const found = entries.filter((e) => e.repoTags.some((t) => t === ref || canonicalName(t) === want));
  if (found.length === 0) throw new FerryError('SOURCE_NOT_FOUND', `${description} has no image tagged ${ref} (it has: ${all()})`, { side: 'source' });
  return found[0]!;
}

/** The manifest under index.json whose config is `config` (entries named like `ref` first), if any. */
async function findByConfig(manifests: Descriptor[], reader: LayoutReader, config: Digest, ref: string | undefined): Promise<FetchedManifest | undefined> {
  const want = ref ? canonicalName(ref) : undefined;
  const named = (d: Descriptor) => {
    if (!want) return false;
    const full = d.annotations?.[IMAGE_NAME];
    return (full !== undefined && canonicalName(full) === want) || d.annotations?.[REF_NAME] === ref;
  };
  const top = [...manifests].sort((a, b) => Number(named(b)) - Number(named(a)));
  let examined = 0;
  const visit = async (d: Descriptor, depth: number): Promise<FetchedManifest | undefined> => {
    if (++examined > MAX_CANDIDATES || depth > 2) return undefined;
    let m: FetchedManifest | undefined;
    let parsed: ParsedManifest;
    try {
      m = await reader.manifest(d.digest, d); // undefined: a platform the archive does not hold
      if (!m) return undefined;
      parsed = parseManifest(m.bytes, m.mediaType, 'source');
    } catch (e) {
      // Not a manifest ferry can use (or a broken one): not the image, which is checked on its own.
      if (e instanceof FerryError) return undefined;
      throw e;
    }
    if (parsed.kind === 'image') return parsed.manifest.config.digest === config ? m : undefined;
    for (const child of parsed.index.manifests) {
      const found = await visit(child, depth + 1);
      if (found) return found;
    }
    return undefined;
  };
  for (const d of top) {
    const found = await visit(d, 0);
    if (found) return found;
  }
  return undefined;
}

export class DockerArchiveDestination implements ImageDestination {
  readonly description: string;
  readonly maxConcurrentBlobs = 1;
  /** The tag part of NAME:TAG, if one was given (the image is stored once, whatever the target). */
  readonly target: string | undefined;
  /** Single platform: the engine should select one before writing anything. */
  readonly acceptsIndex = false;
  private readonly dockerReference: string | undefined;
  private readonly writer: TarFileWriter;
  private readonly blobs = new Map<Digest, number>();
  private readonly serial = new Serial();
  private image: SessionManifest | undefined;
  private dirsWritten = false;
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(writer: TarFileWriter, description: string, dockerReference: string | undefined) {
    this.writer = writer;
    this.description = description;
    this.dockerReference = dockerReference;
    this.target = dockerReference ? parseReference(dockerReference).tag : undefined;
  }

  static async open(file: string, dockerReference: string | undefined, _logger: Logger): Promise<DockerArchiveDestination> {
    const description = `docker-archive:${file}`;
    const path = resolve(file);
    if (dockerReference !== undefined) {
      const ref = parseReference(dockerReference, { defaultTag: false });
      if (ref.digest || !ref.tag) throw new FerryError('USAGE', `${description}: the image name must be NAME:TAG, got "${dockerReference}"`, { side: 'destination' });
    }
    await checkArchiveTarget(path, description);
    const writer = await TarFileWriter.create(path, description);
    return new DockerArchiveDestination(writer, description, dockerReference);
  }

  private check(): void {
    if (this.state !== 'open') throw new FerryError('INTERNAL', `${this.description} was already ${this.state}`, { side: 'destination' });
  }

  async headManifest(target: string): Promise<ManifestHead | undefined> {
    this.check();
    const m = this.image;
    if (!m) return undefined;
    if (target === m.digest || (!isDigest(target) && target === this.target)) return { digest: m.digest, mediaType: m.mediaType, size: m.bytes.byteLength };
    return undefined;
  }

  async hasBlob(digest: Digest, size: number): Promise<boolean> {
    this.check();
    return this.blobs.get(digest) === size;
  }

  async writeBlob(digest: Digest, size: number, _mediaType: string, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    await this.serial.run(async () => {
      this.check();
      if (this.blobs.has(digest)) {
        for await (const _ of chunks) {
          // Already written once.
        }
        return;
      }
      await this.ensureDirs(digest);
      await this.writer.addStream(blobName(digest), size, chunks, signal);
      this.blobs.set(digest, size);
    });
  }

  private async ensureDirs(digest: Digest): Promise<void> {
    if (parseDigest(digest).algorithm !== 'sha256') {
      throw new FerryError('USAGE', `${this.description}: docker archives hold sha256 content only, not ${digest}`, { side: 'destination' });
    }
    if (this.dirsWritten) return;
    await this.writer.addDirectory('blobs');
    await this.writer.addDirectory('blobs/sha256');
    this.dirsWritten = true;
  }

  async putManifest(target: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    return this.serial.run(async () => {
      this.check();
      const m = prepareManifest(target, bytes, mediaType, this.description);
      if (m.parsed.kind === 'index') throw new FerryError('USAGE', ONE_PLATFORM_MESSAGE, { side: 'destination' });
      const manifest = m.parsed.manifest;
      if (manifest.subject) {
        throw new FerryError('USAGE', `${this.description}: docker-archive cannot hold referrers (signatures, SBOMs, attestations); use oci-archive`, { side: 'destination' });
      }
      if (this.image) {
        if (this.image.digest === m.digest) return m.digest;
        throw new FerryError('USAGE', `${this.description}: docker-archive holds one image (already ${this.image.digest}, now ${m.digest}); use oci-archive`, { side: 'destination' });
      }
      const configType = manifest.config.mediaType;
      if (configType !== MediaType.DockerConfig && configType !== MediaType.OciConfig) {
        throw new FerryError('USAGE', `${this.description}: docker-archive holds container images, not artifacts of type ${manifest.artifactType ?? configType}; use oci-archive`, {
          side: 'destination',
        });
      }
      for (const d of [manifest.config, ...manifest.layers]) {
        if (this.blobs.get(d.digest) !== d.size) {
          throw new FerryError('DESTINATION_REJECTED', `${this.description}: manifest ${m.digest} refers to ${d.digest}, which was not written (a foreign layer?)`, {
            side: 'destination',
          });
        }
      }
      await this.ensureDirs(m.digest);
      await this.writer.addBuffer(blobName(m.digest), bytes);
      this.image = m;
      return m.digest;
    });
  }

  async commit(): Promise<void> {
    await this.serial.run(async () => {
      this.check();
      const m = this.image;
      if (!m || m.parsed.kind !== 'image') throw new FerryError('INTERNAL', `${this.description}: no image was written`, { side: 'destination' });
      const manifest = m.parsed.manifest;
      const manifestJson = [
        {
          Config: blobName(manifest.config.digest),
          RepoTags: this.dockerReference ? [this.dockerReference] : null,
          Layers: manifest.layers.map((l) => blobName(l.digest)),
        },
      ];
      const annotations: Record<string, string> = {};
      if (this.dockerReference) {
        annotations[IMAGE_NAME] = formatReference(parseReference(this.dockerReference));
        annotations[REF_NAME] = this.target!;
      }
      const entry: Descriptor = { mediaType: m.mediaType, digest: m.digest, size: m.bytes.byteLength };
      if (this.dockerReference) entry.annotations = annotations;
      const index = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [entry] };
      await this.writer.addBuffer(INDEX_FILE, Buffer.from(JSON.stringify(index)));
      await this.writer.addBuffer(MANIFEST_JSON, Buffer.from(JSON.stringify(manifestJson)));
      await this.writer.addBuffer(OCI_LAYOUT_FILE, OCI_LAYOUT_BYTES);
      await this.writer.finish();
      this.state = 'committed';
    });
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.writer.discard();
  }
}
