// Finding an image's referrers (signatures, SBOMs, attestations) at the source, the three ways they
// are kept: the referrers API, the referrers tag schema's fallback index (`sha256-<hex>`, where
// there is no API) and cosign's `sha256-<hex>.sig/.att/.sbom` tags. For every manifest of the image,
// and then for every referrer found (a signature of an SBOM), level by level.
//
// What it costs at the source, per copy: one tag list (which fallback and cosign tags exist: none
// is asked for in vain), and per subject at most one listing: the API's answer, or, where there is
// no API (learned from the first answer), the fallback index only when the tag exists. Then one GET
// per cosign tag that exists; referrers by digest come from the content cache on a re-run.
import { FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import type { Digest } from '../reference/digest.ts';
import { MediaType, parseManifest, type Descriptor } from '../oci/manifest.ts';
import { cosignTagsOf, referrersTagOf, subjectOf } from '../oci/referrers.ts';
import type { FetchedManifest, ImageSource } from '../ends/types.ts';
import type { ManifestNode, SourceGraph } from './graph.ts';

/** Referrers of referrers (signatures of attestations): deeper than this is a loop. */
export const MAX_REFERRER_DEPTH = 3;

export type FoundVia = 'api' | 'fallback-tag' | 'cosign-tag';

export interface FoundReferrer {
  node: ManifestNode;
  /** The manifest it was found for. */
  subject: Digest;
  via: FoundVia;
  /** The cosign tag it was found under. */
  tag?: string;
}

/** What the source keeps for one subject. */
export interface SubjectListing {
  /** Listed by the referrers API or the fallback index. */
  listed: Descriptor[];
  via: 'api' | 'fallback-tag' | undefined;
  /** The fallback index's bytes, where the referrers were listed there. */
  index?: Buffer;
  cosign: Array<{ tag: string; manifest: FetchedManifest }>;
}

export interface DiscoveredReferrers {
  /** Every referrer, each once, subjects' referrers before theirs. */
  found: FoundReferrer[];
  /** cosign's tags and the manifests they name (a manifest may also have been listed). */
  cosignTags: Array<{ tag: string; node: ManifestNode }>;
  /** The source's own fallback index per subject, where the referrers were listed there. */
  sourceIndexes: Map<Digest, Buffer>;
}

export const NO_REFERRERS: DiscoveredReferrers = { found: [], cosignTags: [], sourceIndexes: new Map() };

export class ReferrerFinder {
  private readonly src: ImageSource;
  private readonly graph: SourceGraph;
  private readonly signal: AbortSignal | undefined;
  private readonly log: Logger;
  /** Whether the source serves the referrers API: learned from its first answer. */
  private api: boolean | undefined;
  private tags: Promise<Set<string> | undefined> | undefined;

  constructor(src: ImageSource, graph: SourceGraph, logger: Logger, signal?: AbortSignal) {
    this.src = src;
    this.graph = graph;
    this.log = logger;
    this.signal = signal;
  }

  /** The referrers of `root` and of every manifest under it, and theirs in turn. */
  async discover(root: ManifestNode): Promise<DiscoveredReferrers> {
    const found: FoundReferrer[] = [];
    const cosignTags: Array<{ tag: string; node: ManifestNode }> = [];
    const sourceIndexes = new Map<Digest, Buffer>();
    // Every manifest met so far (the image's own, then referrers), by digest: each is visited once.
    const known = new Map<Digest, ManifestNode>();
    const image: ManifestNode[] = [];
    const collect = (n: ManifestNode) => {
      image.push(n);
      n.children.forEach(collect);
    };
    collect(root);
    for (const n of image) known.set(n.digest, n);

    let level = [...new Set(image.map((n) => n.digest))];
    for (let depth = 1; level.length > 0; depth++) {
      if (depth > MAX_REFERRER_DEPTH) {
        throw new FerryError('SOURCE_INVALID', `referrers nest more than ${MAX_REFERRER_DEPTH} levels below ${root.digest} (a loop?)`, { side: 'source' });
      }
      const listings = await Promise.all(level.map((s) => this.listingOf(s)));
      const next: Digest[] = [];
      for (let i = 0; i < level.length; i++) {
        const subject = level[i]!;
        const listing = listings[i]!;
        if (listing.index) sourceIndexes.set(subject, listing.index);
        const nodes = await Promise.all(listing.listed.map((d) => known.get(d.digest) ?? this.graph.fetchNode(d.digest, d)));
        for (let j = 0; j < nodes.length; j++) {
          const d = listing.listed[j]!;
          const node = nodes[j]!;
          // A referrer names its subject inside its own (verified) bytes. One listed under another
          // subject (the subject itself, a referrer listing itself or pointing back) is a
          // response that loops or lies.
          const claimed = subjectOf(node.parsed);
          if (claimed !== subject) {
            throw new FerryError(
              'SOURCE_INVALID',
              `the source lists ${d.digest} as a referrer of ${subject}, but its subject is ${claimed ?? 'not set'}: the referrers response loops or is inconsistent; refusing it`,
              { side: 'source' },
            );
          }
          if (known.has(d.digest)) continue;
          known.set(d.digest, node);
          await this.graph.expand(node, 0, new Set());
          found.push({ node, subject, via: listing.via! });
          next.push(node.digest);
        }
        for (const { tag, manifest } of listing.cosign) {
          const parsed = parseManifest(manifest.bytes, manifest.mediaType, 'source');
          const node = known.get(manifest.digest) ?? { digest: manifest.digest, mediaType: parsed.mediaType, bytes: manifest.bytes, parsed, children: [] };
          await this.graph.expand(node, 0, new Set());
          cosignTags.push({ tag, node });
          if (known.has(node.digest)) continue;
          known.set(node.digest, node);
          found.push({ node, subject, via: 'cosign-tag', tag });
          next.push(node.digest);
        }
      }
      level = next;
    }
    return { found, cosignTags, sourceIndexes };
  }

  /** The digests of the referrers `subject` has at the source, listed or under cosign's tags, each once. */
  async direct(subject: Digest): Promise<Digest[]> {
    const listing = await this.listingOf(subject);
    return [...new Set([...listing.listed.map((d) => d.digest), ...listing.cosign.map((c) => c.manifest.digest)])];
  }

  /** What the source keeps for one subject: the API's list or the fallback index, and cosign's tags. */
  async listingOf(subject: Digest): Promise<SubjectListing> {
    const cosign = Promise.all(
      cosignTagsOf(subject).map(async (tag) => {
        if (!(await this.mayExist(tag))) return undefined;
        const manifest = await this.src.getManifest(tag, this.signal);
        return manifest ? { tag, manifest } : undefined;
      }),
    );
    cosign.catch(() => undefined); // awaited below; the listing's failure is reported first
    let listed: Descriptor[] = [];
    let via: SubjectListing['via'];
    let index: Buffer | undefined;
    const pages = await this.apiListing(subject);
    if (pages) {
      via = 'api';
      for (const page of pages) {
        const parsed = parseManifest(page, MediaType.OciIndex, 'source');
        if (parsed.kind !== 'index') throw new FerryError('SOURCE_INVALID', `referrers response for ${subject} is not an index`, { side: 'source' });
        listed.push(...parsed.index.manifests);
      }
    }
    // No API, or one that lists nothing: a registry that enabled it without taking in the old
    // fallback indexes, as the spec asks, still has them under the tag.
    const tag = referrersTagOf(subject);
    if (listed.length === 0 && (await this.mayExist(tag))) {
      const fallback = await this.src.getManifest(tag, this.signal);
      if (fallback) {
        const parsed = parseManifest(fallback.bytes, fallback.mediaType, 'source');
        if (parsed.kind === 'index') {
          listed = parsed.index.manifests;
          via = 'fallback-tag';
          index = fallback.bytes;
        } else {
          this.log.warn({ source: this.src.description, tag }, 'the referrers fallback tag holds something other than an image index; ignored');
        }
      }
    }
    const out: SubjectListing = { listed, via, cosign: (await cosign).filter((c) => c !== undefined) };
    if (index) out.index = index;
    return out;
  }

  /**
   * The API's pages for `subject`; undefined where there is no API. A source that answered once
   * that it has none is not asked again in this copy (a registry end remembers it longer, and asks
   * once while its subjects wait: src/ends/registry/referrers.ts).
   */
  private async apiListing(subject: Digest): Promise<Buffer[] | undefined> {
    if (this.api === false) return undefined;
    const pages = await this.src.getReferrers(subject, this.signal);
    this.api = pages !== undefined;
    return pages;
  }

  /** Whether `tag` may exist: the source's tag list says, or, without one, it may. */
  private async mayExist(tag: string): Promise<boolean> {
    this.tags ??= this.listTags();
    const tags = await this.tags;
    return tags === undefined || tags.has(tag);
  }

  private async listTags(): Promise<Set<string> | undefined> {
    if (!this.src.listTags) return undefined;
    try {
      const tags = await this.src.listTags(this.signal);
      return tags ? new Set(tags) : undefined;
    } catch (e) {
      // Credentials that may pull but not list (an ECR role without ecr:ListImages): ask tag by tag.
      if (this.signal?.aborted || !(e instanceof FerryError) || e.retryable) throw e;
      this.log.debug({ source: this.src.description, code: e.code, problem: e.message }, 'the source would not list its tags; asking for referrer tags one by one');
      return undefined;
    }
  }
}
