// The source side of a copy as a graph: manifests fetched (from the content cache when it
// has them), parsed and bounded, indexes expanded into their children without cycles, and
// the image described in the contract's Image shape.
import { FerryError } from '../errors.ts';
import { digestOf, type Digest } from '../reference/digest.ts';
import type { Platform } from '../reference/platform.ts';
import { formatTarget } from '../reference/reference.ts';
import { MediaType, parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.ts';
import type { FetchedManifest, ImageSource } from '../ends/types.ts';
import { readVerifiedBlobWhole } from '../blob/verify.ts';
import type { ContentCache } from './content-cache.ts';
import type { ImageOutput } from './types.ts';

export interface ManifestNode {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  parsed: ParsedManifest;
  children: ManifestNode[];
  /** Platform from the parent index's descriptor. */
  platform?: Platform;
}

/** Indexes may nest; deeper than this is hostile or broken. */
export const MAX_INDEX_DEPTH = 4;
const MAX_GRAPH_NODES = 10_000;
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export class SourceGraph {
  readonly source: ImageSource;
  private readonly cache: ContentCache;
  private readonly signal: AbortSignal | undefined;
  private nodeCount = 0;
  /** Source fetches by digest in flight: an index may list one child many times, fetched once. */
  private readonly fetching = new Map<string, Promise<FetchedManifest | undefined>>();
  /** Config blobs read for the report, by digest: the blob's transfer takes the bytes from here. */
  private readonly configReads = new Map<Digest, Promise<Buffer>>();

  constructor(source: ImageSource, cache: ContentCache, signal: AbortSignal | undefined) {
    this.source = source;
    this.cache = cache;
    this.signal = signal;
  }

  /** Fetch a manifest from the cache (by digest) or the source, parsed and bounded. */
  async fetchNode(target: string, expected: Descriptor | undefined): Promise<ManifestNode> {
    if (++this.nodeCount > MAX_GRAPH_NODES) throw new FerryError('SOURCE_INVALID', `source graph has more than ${MAX_GRAPH_NODES} manifests`, { side: 'source' });
    const isDigestTarget = target.includes(':');
    let bytes = isDigestTarget ? await this.cache.get(target) : undefined;
    let mediaType = expected?.mediaType;
    let digest = isDigestTarget ? target : undefined;
    if (!bytes) {
      const fetched = await this.fetchOnce(target, isDigestTarget);
      if (!fetched) {
        throw new FerryError('SOURCE_NOT_FOUND', `${formatTarget(this.source.description, target)} not found (check the repository and ${isDigestTarget ? 'digest' : 'tag'})`, { side: 'source', status: 404 });
      }
      bytes = fetched.bytes;
      digest = fetched.digest;
      mediaType = mediaType ?? fetched.mediaType;
    }
    if (expected && expected.size !== bytes.byteLength) {
      throw new FerryError('SOURCE_INVALID', `manifest ${target} is ${bytes.byteLength} bytes but its descriptor says ${expected.size}`, { side: 'source' });
    }
    const parsed = parseManifest(bytes, mediaType, 'source');
    return { digest: digest ?? digestOf(bytes), mediaType: parsed.mediaType, bytes, parsed, children: [] };
  }

  /** The source's manifest, stored in the cache; one request per digest however many ask at once. */
  private fetchOnce(target: string, isDigestTarget: boolean): Promise<FetchedManifest | undefined> {
    const fetch = async () => {
      const fetched = await this.source.getManifest(target, this.signal);
      if (fetched) await this.cache.put(fetched.digest, fetched.bytes);
      return fetched;
    };
    if (!isDigestTarget) return fetch();
    let p = this.fetching.get(target);
    if (!p) {
      p = fetch();
      this.fetching.set(target, p);
    }
    return p;
  }

  /** Fetch the children of an index (recursively), bounded in depth and free of cycles. */
  async expand(node: ManifestNode, depth: number, path: Set<Digest>): Promise<void> {
    if (node.parsed.kind !== 'index' || node.children.length > 0) return;
    if (depth >= MAX_INDEX_DEPTH) throw new FerryError('SOURCE_INVALID', `index ${node.digest} nests more than ${MAX_INDEX_DEPTH} levels deep`, { side: 'source' });
    path.add(node.digest);
    const descriptors = node.parsed.index.manifests;
    for (const d of descriptors) {
      if (path.has(d.digest)) throw new FerryError('SOURCE_INVALID', `index ${node.digest} refers to itself (cycle through ${d.digest})`, { side: 'source' });
    }
    node.children = await Promise.all(
      descriptors.map(async (d) => {
        const child = await this.fetchNode(d.digest, d);
        if (d.platform) child.platform = d.platform;
        await this.expand(child, depth + 1, new Set(path));
        return child;
      }),
    );
    path.delete(node.digest);
  }

  /** A config blob being read for the report (verified), if one is: its transfer need not ask the source again. */
  configRead(digest: Digest): Promise<Buffer> | undefined {
    return this.configReads.get(digest);
  }

  async imageOutput(root: ManifestNode, referrers: ManifestNode[], destination: { repository: string; tag?: string | undefined }): Promise<ImageOutput> {
    const counted = new Set<Digest>();
    let size = 0;
    const count = (digest: Digest, n: number) => {
      if (!counted.has(digest)) {
        counted.add(digest);
        size += n;
      }
    };
    const walk = (n: ManifestNode) => {
      count(n.digest, n.bytes.byteLength);
      if (n.parsed.kind === 'image') {
        count(n.parsed.manifest.config.digest, n.parsed.manifest.config.size);
        for (const l of n.parsed.manifest.layers) count(l.digest, l.size);
      }
      n.children.forEach(walk);
    };
    walk(root);
    const platforms: ImageOutput['platforms'] = [];
    if (root.parsed.kind === 'index') {
      for (const c of root.children) {
        if (!c.platform) continue;
        const p: ImageOutput['platforms'][number] = { os: c.platform.os, architecture: c.platform.architecture, digest: c.digest };
        if (c.platform.variant) p.variant = c.platform.variant;
        platforms.push(p);
      }
    } else {
      const p = root.platform ?? (await this.configPlatform(root));
      if (p && p.os && p.architecture) {
        const entry: ImageOutput['platforms'][number] = { os: p.os, architecture: p.architecture, digest: root.digest };
        if (p.variant) entry.variant = p.variant;
        platforms.push(entry);
      }
    }
    const out: ImageOutput = {
      repository: destination.repository,
      digest: root.digest,
      media_type: root.mediaType,
      size,
      platforms,
      referrers: referrers.map((r) => ({ digest: r.digest, artifact_type: artifactType(r) })),
    };
    if (destination.tag) out.tag = destination.tag;
    return out;
  }

  /** os/architecture from an image's config blob (cached; small). */
  private async configPlatform(node: ManifestNode): Promise<Platform | undefined> {
    if (node.parsed.kind !== 'image') return undefined;
    const config = node.parsed.manifest.config;
    if (config.mediaType !== MediaType.OciConfig && config.mediaType !== MediaType.DockerConfig) return undefined;
    if (config.size > MAX_CONFIG_BYTES) return undefined;
    let read = this.configReads.get(config.digest);
    if (!read) {
      read = (async () => {
        const cached = await this.cache.get(config.digest);
        if (cached) return cached;
        const fetched = await readVerifiedBlobWhole({ source: this.source, digest: config.digest, size: config.size, signal: this.signal });
        await this.cache.put(config.digest, fetched);
        return fetched;
      })();
      this.configReads.set(config.digest, read);
    }
    const bytes = await read;
    try {
      const doc = JSON.parse(bytes.toString('utf8')) as { os?: unknown; architecture?: unknown; variant?: unknown };
      if (typeof doc.os !== 'string' || typeof doc.architecture !== 'string') return undefined;
      const p: Platform = { os: doc.os, architecture: doc.architecture };
      if (typeof doc.variant === 'string') p.variant = doc.variant;
      return p;
    } catch {
      return undefined;
    }
  }
}

export function artifactType(n: ManifestNode): string {
  if (n.parsed.kind === 'image') return n.parsed.manifest.artifactType ?? n.parsed.manifest.config.mediaType;
  return n.parsed.index.artifactType ?? n.mediaType;
}
