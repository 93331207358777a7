// `ferry inspect`: read an image's manifests (never its layers) and describe it in the
// contract's Image shape, plus the layer list.
import { referenceTarget, repositoryName, type Reference } from '../reference/reference.ts';
import type { ImageSource } from '../ends/types.ts';
import { formatPlatform } from '../reference/platform.ts';
import type { Logger } from '../log/logger.ts';
import { ContentCache } from './content-cache.ts';
import { SourceGraph, artifactType, type ManifestNode } from './graph.ts';
import { ReferrerFinder, type FoundVia } from './referrers.ts';
import type { ImageOutput } from './types.ts';

/** A referrer as `ferry inspect` shows it: what it is, what it refers to, and where it was found. */
export interface InspectedReferrer {
  digest: string;
  artifact_type: string;
  media_type: string;
  size: number;
  /** The manifest it refers to: the image, one of its platforms, or another referrer. */
  subject: string;
  /** The referrers API, the `sha256-<hex>` fallback tag, or one of cosign's tags. */
  found_by: FoundVia;
  /** The cosign tag it is under. */
  tag?: string;
}

export interface InspectResult extends ImageOutput {
  layers: Array<{ digest: string; size: number; media_type: string; platform?: string }>;
  referrers: InspectedReferrer[];
}

/** `source` holds `ref` (a registry's RegistrySource for ref.repository). */
export async function inspectImage(source: ImageSource, ref: Reference, logger: Logger, cache = new ContentCache(), signal?: AbortSignal): Promise<InspectResult> {
  const graph = new SourceGraph(source, cache, signal);
  const root = await graph.fetchNode(referenceTarget(ref), undefined);
  await graph.expand(root, 0, new Set());
  const found = await new ReferrerFinder(source, graph, logger, signal).discover(root);
  const referrers = found.found.map(({ node, subject, via, tag }) => {
    const r: InspectedReferrer = { digest: node.digest, artifact_type: artifactType(node), media_type: node.mediaType, size: node.bytes.byteLength, subject, found_by: via };
    if (tag !== undefined) r.tag = tag;
    return r;
  });
  const image = { ...(await graph.imageOutput(root, [], { repository: repositoryName(ref), tag: ref.tag })), referrers };
  const layers: InspectResult['layers'] = [];
  const walk = (n: ManifestNode, platform: string | undefined) => {
    const p = n.platform ? formatPlatform(n.platform) : platform;
    if (n.parsed.kind === 'image') {
      for (const l of n.parsed.manifest.layers) {
        const entry: InspectResult['layers'][number] = { digest: l.digest, size: l.size, media_type: l.mediaType };
        if (p) entry.platform = p;
        layers.push(entry);
      }
    }
    for (const c of n.children) walk(c, p);
  };
  walk(root, undefined);
  return { ...image, layers };
}
