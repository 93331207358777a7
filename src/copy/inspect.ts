// `ferry inspect`: read an image's manifests (never its layers) and describe it in the
// contract's Image shape, plus the layer list.
import { referenceTarget, repositoryName, type Reference } from '../reference/reference.ts';
import type { ImageSource } from '../ends/types.ts';
import { formatPlatform } from '../reference/platform.ts';
import { ContentCache } from './content-cache.ts';
import { SourceGraph, type ManifestNode } from './graph.ts';
import type { ImageOutput } from './types.ts';

export interface InspectResult extends ImageOutput {
  layers: Array<{ digest: string; size: number; media_type: string; platform?: string }>;
}

/** `source` holds `ref` (a registry's RegistrySource for ref.repository). */
export async function inspectImage(source: ImageSource, ref: Reference, cache = new ContentCache(), signal?: AbortSignal): Promise<InspectResult> {
  const graph = new SourceGraph(source, cache, signal);
  const root = await graph.fetchNode(referenceTarget(ref), undefined);
  await graph.expand(root, 0, new Set());
  const image = await graph.imageOutput(root, [], { repository: repositoryName(ref), tag: ref.tag });
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
