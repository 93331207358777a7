// The copy engine: walk the source graph (index → manifests → config and layers, plus
// referrers), move every blob the destination lacks exactly once (skip → mount → stream,
// verified), then push manifests children-first and the tag last, so a failed copy never
// leaves a tag pointing at an incomplete image.
import { AbortedError, FerryError, toFerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { digestOf, type Digest } from '../reference/digest.ts';
import { formatPlatform, platformMatches } from '../reference/platform.ts';
import { MediaType, parseManifest, type Descriptor, type ImageIndex } from '../oci/manifest.ts';
import type { ImageDestination, ImageSource } from '../ends/types.ts';
import { RegistryDestination, RegistrySource } from '../ends/registry.ts';
import pLimit from 'p-limit';
import { counted, discardJournaled, uploadBlob, DEFAULT_UPLOAD_TUNING, type BlobUploadRequest, type UploadTuning } from './blob-upload.ts';
import { uploadEcrLayer, usesEcrLayerApi } from './ecr-layer-upload.ts';
import type { UploadJournal } from './journal.ts';
import type { BlobPlacements, UploadLead } from './placements.ts';
import { abortable } from '../util/abortable.ts';
import { readVerifiedBlob } from './blob-reader.ts';
import { SourceGraph, type ManifestNode } from './graph.ts';
import { ContentCache } from './content-cache.ts';
import { TransferLimits } from './limits.ts';
import type { CopyProgress, CopyReport, DryRunPlan, ImageOutput, PlatformSelection, TransferStats } from './types.ts';

/** What to read: an end and the tag or digest in it. */
export interface CopySource {
  end: ImageSource;
  /** Tag or digest to read (a digest when the reference pins one). */
  target: string;
  /** The pinned digest, if any: the manifest read must hash to it. */
  digest?: Digest;
  /** For the report: the reference as the user wrote it, normalized. */
  name: string;
}

/** Where to write: an end, and the tag (or digest) to write the image under. */
export interface CopyDestination {
  end: ImageDestination;
  tag?: string;
  digest?: Digest;
  name: string;
  /** The Image output's `repository` (`host/path` for registries, the archive for archives). */
  repository: string;
}

export interface CopyRequest {
  source: CopySource;
  destination: CopyDestination;
  platforms: PlatformSelection;
  referrers: boolean;
  limits: TransferLimits;
  logger: Logger;
  tuning?: UploadTuning;
  cache?: ContentCache;
  signal?: AbortSignal;
  onProgress?: (p: CopyProgress) => void;
  dryRun?: boolean;
  /** Journal of open uploads (in the state directory): chunked uploads survive a crash of this process. */
  journal?: UploadJournal;
  /** Who the journal records as opening the uploads: `copy` (default) or `job <id>`. */
  journalOwner?: string;
  /** Shared by copies running side by side (the agent's jobs): each blob goes up once per registry, then is mounted. */
  placements?: BlobPlacements;
}

/** Times a blob waits for another copy's upload of it before uploading it itself. */
const MAX_FOLLOWS = 3;

/** Referrers of referrers (signatures of attestations): deeper than this is a loop. */
const MAX_REFERRER_DEPTH = 3;


interface BlobInfo {
  digest: Digest;
  size: number;
  mediaType: string;
}

export async function copyImage(req: CopyRequest): Promise<CopyReport> {
  const started = Date.now();
  const engine = new CopyRun(req);
  const dst = req.destination.end;
  try {
    const report = await engine.run(started);
    // Archives become visible only now (index written, temporary file renamed); a dry run writes nothing.
    if (req.dryRun) await dst.abort?.();
    else await dst.commit?.();
    return report;
  } catch (e) {
    await dst.abort?.().catch(() => undefined);
    throw toFerryError(e);
  }
}

class CopyRun {
  private readonly req: CopyRequest;
  private readonly src: ImageSource;
  private readonly dst: ImageDestination;
  /** Destinations that write one blob at a time (archives) get their own limit on top. */
  private readonly dstLimit: <T>(fn: () => Promise<T>) => Promise<T>;
  private readonly log: Logger;
  private readonly cache: ContentCache;
  private readonly tuning: UploadTuning;
  private readonly graph: SourceGraph;
  private readonly stats: TransferStats = {
    blobs_copied: 0,
    blobs_skipped: 0,
    blobs_mounted: 0,
    blobs_restarted: 0,
    blobs_resumed: 0,
    bytes_transferred: 0,
    bytes_resent: 0,
    bytes_reread_for_hash: 0,
    bytes_total: 0,
    duration_ms: 0,
  };
  private readonly progress: CopyProgress = { bytes_done: 0, bytes_total: 0, blobs_done: 0, blobs_total: 0, active: [] };
  /** Blobs the destination said it has or lacks in one batched check (ECR), asked before the transfers. */
  private known: Map<Digest, boolean> | undefined;

  constructor(req: CopyRequest) {
    this.req = req;
    this.src = req.source.end;
    this.dst = req.destination.end;
    const own = Number.isFinite(this.dst.maxConcurrentBlobs) ? pLimit(Math.max(1, this.dst.maxConcurrentBlobs)) : undefined;
    this.dstLimit = own ? (fn) => own(fn) : (fn) => fn();
    this.log = req.logger;
    this.cache = req.cache ?? new ContentCache();
    this.tuning = req.tuning ?? DEFAULT_UPLOAD_TUNING;
    this.graph = new SourceGraph(req.source.end, this.cache, req.signal);
  }

  async run(started: number): Promise<CopyReport> {
    const { source, destination, signal } = this.req;
    // 1. The source root, by digest when pinned. What the destination holds under the tag (or the
    // pinned digest) is asked at the same time: the first two round trips of every copy overlap.
    const namedTarget = destination.tag ?? destination.digest;
    const namedHead = namedTarget !== undefined ? this.dst.headManifest(namedTarget, signal) : undefined;
    namedHead?.catch(() => undefined); // awaited in step 3; a failing source is reported first
    const sourceRoot = await this.graph.fetchNode(source.target, undefined);
    if (source.digest && sourceRoot.digest !== source.digest) {
      throw new FerryError('DIGEST_MISMATCH', `source manifest hashes to ${sourceRoot.digest}, not the pinned ${source.digest}`, { side: 'source' });
    }

    // 2. What we will write at the destination: the root as is, or a platform subset.
    const { root, leftBehindIndex } = await this.selectPlatforms(sourceRoot);
    const digestChanged = root.digest !== sourceRoot.digest;
    if (root.parsed.kind === 'index' && this.dst.acceptsIndex === false) {
      const have = root.parsed.index.manifests.map((d) => (d.platform ? formatPlatform(d.platform) : d.digest)).join(', ');
      throw new FerryError('USAGE', `${destination.name} holds one platform, but the source is a multi-platform index (${have}): choose one with --platform os/arch, or use oci-archive:`);
    }

    // 3. Does the destination already have it? One HEAD answers that for a re-run.
    const dstTarget = namedTarget ?? root.digest;
    if (destination.digest && !destination.tag && destination.digest !== root.digest) {
      throw new FerryError('USAGE', `destination pins ${destination.digest} but the image to copy is ${root.digest}`);
    }
    const existing = await (namedHead ?? this.dst.headManifest(dstTarget, signal));
    const upToDate = existing?.digest === root.digest;
    let previousDigest: string | undefined;
    if (existing?.digest && !upToDate && destination.tag) previousDigest = existing.digest;

    // 4. The rest of the graph (children come from the cache on a re-run).
    await this.graph.expand(root, 0, new Set());
    const referrers = this.req.referrers ? await this.discoverReferrers(root) : { nodes: [], tags: [] as Array<{ tag: string; node: ManifestNode }> };
    const leftBehind = leftBehindIndex && this.req.referrers ? (await this.referrerDescriptors(leftBehindIndex.digest)).map((d) => d.digest) : [];

    const imageOutput = await this.graph.imageOutput(root, referrers.nodes, destination);
    const toWrite = upToDate ? [] : [root];
    const referrerRoots = referrers.nodes;
    const blobs = this.collectBlobs([...toWrite, ...referrerRoots]);
    this.stats.bytes_total = [...blobs.values()].reduce((n, b) => n + b.size, 0);
    this.progress.bytes_total = this.stats.bytes_total;
    this.progress.blobs_total = blobs.size;

    if (upToDate && referrerRoots.length === 0) {
      this.log.info({ destination: destination.name, digest: root.digest }, 'destination already up to date');
    }

    // ECR: one BatchCheckLayerAvailability per 100 blobs instead of a HEAD each.
    if (this.dst instanceof RegistryDestination && blobs.size > 0) this.known = await this.dst.checkBlobs([...blobs.keys()], signal);

    if (this.req.dryRun) {
      const plan = await this.planDryRun(blobs, [...toWrite, ...referrerRoots]);
      this.stats.duration_ms = Date.now() - started;
      return this.report(imageOutput, digestChanged, leftBehind, previousDigest, plan);
    }

    // 5. Blobs, all at once within the limits (after dropping journaled uploads this copy no longer needs).
    await this.sweepJournal(blobs);
    await this.transferBlobs(blobs);

    // 6. Manifests children-first, referrers after their subjects, the tag last.
    const pushed = new Set<Digest>();
    // With referrers to push, the root goes up by digest first and gets its tag at the very end.
    const tagNow = referrerRoots.length === 0 ? destination.tag : undefined;
    for (const node of toWrite) await this.pushTree(node, pushed, tagNow);
    for (const node of referrerRoots) await this.pushTree(node, pushed, undefined);
    for (const { tag, node } of referrers.tags) await this.dst.putManifest(tag, node.bytes, node.mediaType, signal);
    if (!upToDate && referrerRoots.length > 0 && destination.tag) {
      await this.dst.putManifest(destination.tag, root.bytes, root.mediaType, signal);
    }
    if (previousDigest) {
      this.log.warn({ tag: destination.tag, previous_digest: previousDigest, digest: root.digest }, 'destination tag pointed at another digest; overwritten');
    }
    this.stats.duration_ms = Date.now() - started;
    return this.report(imageOutput, digestChanged, leftBehind, previousDigest);
  }

  private report(image: ImageOutput, digestChanged: boolean, leftBehind: string[], previousDigest: string | undefined, plan?: DryRunPlan): CopyReport {
    const r: CopyReport = {
      source: this.req.source.name,
      destination: this.req.destination.name,
      image,
      digest_changed: digestChanged,
      referrers_left_behind: leftBehind,
      transfer: { ...this.stats },
    };
    if (previousDigest) r.previous_digest = previousDigest;
    if (plan) r.dry_run = plan;
    return r;
  }

  // ---- graph -----------------------------------------------------------------------------

  private async selectPlatforms(root: ManifestNode): Promise<{ root: ManifestNode; leftBehindIndex?: ManifestNode }> {
    const wanted = this.req.platforms;
    if (wanted === 'all' || root.parsed.kind !== 'index') return { root };
    const index = root.parsed.index;
    const selected = index.manifests.filter((d) => wanted.some((w) => platformMatches(w, d.platform)));
    const missing = wanted.filter((w) => !index.manifests.some((d) => platformMatches(w, d.platform)));
    if (missing.length > 0) {
      const have = index.manifests.map((d) => (d.platform ? formatPlatform(d.platform) : d.digest)).join(', ');
      throw new FerryError('SOURCE_NOT_FOUND', `platform ${missing.map(formatPlatform).join(', ')} not in the source index (it has: ${have})`, { side: 'source' });
    }
    if (selected.length === index.manifests.length) return { root };
    if (selected.length === 1) {
      const only = selected[0]!;
      const child = await this.graph.fetchNode(only.digest, only);
      if (only.platform) child.platform = only.platform;
      return { root: child, leftBehindIndex: root };
    }
    // A new index with just the chosen platforms: same fields, fewer entries.
    const subset: ImageIndex = { ...index, manifests: selected };
    const bytes = Buffer.from(JSON.stringify(subset));
    const digest = digestOf(bytes);
    const parsed = parseManifest(bytes, root.mediaType, 'source');
    return { root: { digest, mediaType: root.mediaType, bytes, parsed, children: [] }, leftBehindIndex: root };
  }

  /** Every blob under these manifests, each once. */
  private collectBlobs(nodes: ManifestNode[]): Map<Digest, BlobInfo> {
    const blobs = new Map<Digest, BlobInfo>();
    const add = (d: Descriptor) => {
      const seen = blobs.get(d.digest);
      if (seen && seen.size !== d.size) {
        throw new FerryError('SOURCE_INVALID', `blob ${d.digest} is declared with two sizes (${seen.size} and ${d.size})`, { side: 'source' });
      }
      if (!seen) blobs.set(d.digest, { digest: d.digest, size: d.size, mediaType: d.mediaType });
    };
    const visit = (n: ManifestNode) => {
      if (n.parsed.kind === 'image') {
        add(n.parsed.manifest.config);
        for (const l of n.parsed.manifest.layers) {
          // Foreign layers (urls) are not stored in the registry; they are not ours to copy.
          if (l.urls && l.urls.length > 0 && l.mediaType.includes('foreign')) continue;
          add(l);
        }
      }
      n.children.forEach(visit);
    };
    nodes.forEach(visit);
    return blobs;
  }

  // ---- referrers -------------------------------------------------------------------------

  private async referrerDescriptors(subject: Digest): Promise<Descriptor[]> {
    const pages = await this.src.getReferrers(subject, this.req.signal);
    if (pages === undefined) return [];
    const out: Descriptor[] = [];
    for (const page of pages) {
      const parsed = parseManifest(page, MediaType.OciIndex, 'source');
      if (parsed.kind !== 'index') throw new FerryError('SOURCE_INVALID', `referrers response for ${subject} is not an index`, { side: 'source' });
      out.push(...parsed.index.manifests);
    }
    return out;
  }

  /**
   * Referrers of every manifest in the image: through the referrers API, else the
   * `sha256-<hex>` fallback tag, plus cosign's `.sig` / `.att` / `.sbom` tags.
   */
  private async discoverReferrers(root: ManifestNode): Promise<{ nodes: ManifestNode[]; tags: Array<{ tag: string; node: ManifestNode }> }> {
    const nodes: ManifestNode[] = [];
    const tags: Array<{ tag: string; node: ManifestNode }> = [];
    // Every manifest met so far (the image's own, then referrers), by digest: each is visited once.
    const known = new Map<Digest, ManifestNode>();
    const subjects: ManifestNode[] = [];
    const collect = (n: ManifestNode) => {
      subjects.push(n);
      n.children.forEach(collect);
    };
    collect(root);
    for (const s of subjects) known.set(s.digest, s);

    const visit = async (subject: Digest, depth: number): Promise<void> => {
      if (depth > MAX_REFERRER_DEPTH) {
        throw new FerryError('SOURCE_INVALID', `referrers nest more than ${MAX_REFERRER_DEPTH} levels below ${root.digest} (a loop?)`, { side: 'source' });
      }
      const hex = subject.split(':')[1]!;
      const algo = subject.split(':')[0]!;
      let descriptors = await this.referrerDescriptors(subject);
      const found: ManifestNode[] = [];
      if (descriptors.length === 0) {
        const fallback = await this.src.getManifest(`${algo}-${hex}`, this.req.signal);
        if (fallback) {
          const parsed = parseManifest(fallback.bytes, fallback.mediaType, 'source');
          if (parsed.kind === 'index') {
            descriptors = parsed.index.manifests;
            tags.push({ tag: `${algo}-${hex}`, node: { digest: fallback.digest, mediaType: parsed.mediaType, bytes: fallback.bytes, parsed, children: [] } });
          }
        }
      }
      for (const d of descriptors) {
        // A referrer names its subject inside its own (verified) bytes. One listed under another
        // subject — the subject itself, a referrer listing itself or pointing back — is a
        // response that loops or lies.
        const node = known.get(d.digest) ?? (await this.graph.fetchNode(d.digest, d));
        const claimed = subjectOf(node);
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
        found.push(node);
      }
      for (const suffix of ['sig', 'att', 'sbom']) {
        const tag = `${algo}-${hex}.${suffix}`;
        const m = await this.src.getManifest(tag, this.req.signal);
        if (!m) continue;
        const parsed = parseManifest(m.bytes, m.mediaType, 'source');
        const node: ManifestNode = { digest: m.digest, mediaType: parsed.mediaType, bytes: m.bytes, parsed, children: [] };
        await this.graph.expand(node, 0, new Set());
        tags.push({ tag, node });
        if (!known.has(node.digest)) {
          known.set(node.digest, node);
          found.push(node);
        }
      }
      nodes.push(...found);
      for (const n of found) await visit(n.digest, depth + 1);
    };
    for (const s of subjects) await visit(s.digest, 1);
    return { nodes, tags };
  }

  // ---- transfer --------------------------------------------------------------------------

  private async planDryRun(blobs: Map<Digest, BlobInfo>, manifests: ManifestNode[]): Promise<DryRunPlan> {
    const sameRegistry = this.mountFrom() !== undefined;
    const entries = await Promise.all(
      [...blobs.values()].map((b) =>
        this.req.limits.run(this.limitHosts(), async () => {
          const have = this.known?.get(b.digest) ?? (await this.dst.hasBlob(b.digest, b.size, this.req.signal));
          const action: 'copy' | 'skip' | 'mount' = have ? 'skip' : sameRegistry ? 'mount' : 'copy';
          return { digest: b.digest, size: b.size, action };
        }),
      ),
    );
    const all: ManifestNode[] = [];
    const walk = (n: ManifestNode) => {
      n.children.forEach(walk);
      all.push(n);
    };
    manifests.forEach(walk);
    return {
      blobs: entries,
      manifests: all.map((n) => ({ digest: n.digest, media_type: n.mediaType, action: 'copy' as const })),
      bytes_to_copy: entries.filter((e) => e.action === 'copy').reduce((n, e) => n + e.size, 0),
    };
  }

  private async transferBlobs(blobs: Map<Digest, BlobInfo>): Promise<void> {
    // One failure stops the others (their sessions are cancelled), then the first error is thrown.
    const inner = new AbortController();
    const outer = this.req.signal;
    // The caller's reason goes along (SUSPEND keeps journaled uploads open).
    const onOuterAbort = () => inner.abort(outer?.reason);
    outer?.addEventListener('abort', onOuterAbort, { once: true });
    let firstError: unknown;
    const present = this.checkPresence(blobs, inner.signal);
    try {
      await Promise.all(
        [...blobs.values()].map((b) =>
          this.req.limits
            .run(this.limitHosts(), () =>
              this.dstLimit(() => {
                if (inner.signal.aborted) throw new AbortedError();
                return this.transferBlob(b, present.get(b.digest)!, inner.signal);
              }),
            )
            .catch((e) => {
              if (firstError === undefined) {
                firstError = e;
                inner.abort();
              }
            }),
        ),
      );
    } finally {
      outer?.removeEventListener('abort', onOuterAbort);
    }
    if (firstError !== undefined) {
      if (outer?.aborted) throw new AbortedError('copy cancelled');
      throw firstError;
    }
  }

  /**
   * Whether the destination already has each blob, asked ahead of the transfers: a blob's HEAD
   * then no longer stands between its transfer slot and its first byte (one round trip of the
   * four a blob costs; it tells on a registry far away, test/e2e/round-trips.test.ts). The answer
   * is as of the check; a blob another copy lands meanwhile is still found by the sibling
   * placements below.
   */
  private checkPresence(blobs: Map<Digest, BlobInfo>, signal: AbortSignal): Map<Digest, Promise<boolean>> {
    const present = new Map<Digest, Promise<boolean>>();
    for (const b of blobs.values()) {
      const known = this.known?.get(b.digest);
      const check = known !== undefined ? Promise.resolve(known) : this.req.limits.check(this.limitHosts()[0]!, () => this.dst.hasBlob(b.digest, b.size, signal));
      // Awaited by the blob's transfer, which reports a failure; until then it is not unhandled.
      check.catch(() => undefined);
      present.set(b.digest, check);
    }
    return present;
  }

  private async transferBlob(b: BlobInfo, present: Promise<boolean>, signal: AbortSignal): Promise<void> {
    const active = { digest: b.digest, done: 0, size: b.size };
    const finish = (kind: 'copied' | 'skipped' | 'mounted') => {
      this.stats[`blobs_${kind}`]++;
      this.progress.blobs_done++;
      this.progress.bytes_done += b.size - active.done;
      this.progress.active = this.progress.active.filter((a) => a !== active);
      this.emit();
    };
    const placements = this.dst instanceof RegistryDestination ? this.req.placements : undefined;
    const place = (repository: string) => {
      if (this.dst instanceof RegistryDestination) placements?.record(this.dst.client.registry, b.digest, repository);
    };
    if (await present) {
      // Committed by a process that died before it could drop its journal entry.
      if (this.req.journal && this.dst instanceof RegistryDestination) {
        const key = { registry: this.dst.client.registry, repository: this.dst.repository, digest: b.digest };
        const entry = await this.req.journal.get(key);
        if (entry) await discardJournaled(this.journalTarget(this.dst), entry, 'the blob is already complete at the destination');
      }
      if (this.dst instanceof RegistryDestination) place(this.dst.repository);
      return finish('skipped');
    }
    const from = this.mountFrom();
    if (from !== undefined && this.dst instanceof RegistryDestination) {
      if (await this.dst.client.mountBlob(this.dst.repository, b.digest, from, signal)) {
        place(this.dst.repository);
        return finish('mounted');
      }
    }
    let lead: UploadLead | undefined;
    if (placements && this.dst instanceof RegistryDestination) {
      const placed = await this.placeFromSiblings(placements, this.dst, b, signal);
      if (placed) return finish(placed);
      for (let follows = 0; follows < MAX_FOLLOWS; follows++) {
        const claim = placements.begin(this.dst.client.registry, b.digest);
        if (claim.lead) {
          lead = claim;
          break;
        }
        // Another copy is uploading this blob to this registry: wait, then mount it from there.
        this.log.debug({ digest: b.digest }, 'waiting for another copy\'s upload of this blob, to mount it');
        await abortable(claim.landed, signal);
        const after = await this.placeFromSiblings(placements, this.dst, b, signal);
        if (after) return finish(after);
      }
    }
    try {
      await this.streamBlob(b, signal, active);
      if (this.dst instanceof RegistryDestination) {
        place(this.dst.repository);
        lead?.settle(this.dst.repository);
      }
    } finally {
      lead?.settle(undefined);
    }
    finish('copied');
  }

  /**
   * Mount a blob this process put into another repository of the destination registry.
   * Undefined when no sibling holds it or every mount was refused (the caller uploads).
   */
  private async placeFromSiblings(placements: BlobPlacements, dst: RegistryDestination, b: BlobInfo, signal: AbortSignal): Promise<'mounted' | 'skipped' | undefined> {
    const registry = dst.client.registry;
    for (const holder of placements.holders(registry, b.digest)) {
      if (holder === dst.repository) {
        // Another copy into this same repository finished it.
        if (await dst.hasBlob(b.digest, b.size, signal)) return 'skipped';
        placements.forget(registry, b.digest, holder);
        continue;
      }
      let mounted = false;
      try {
        mounted = await dst.client.mountBlob(dst.repository, b.digest, holder, signal);
      } catch (e) {
        // Credentials that may push here but not pull from there: upload instead.
        if (signal.aborted || !(e instanceof FerryError) || e.retryable) throw e;
        this.log.debug({ digest: b.digest, from: holder, code: e.code }, 'mount from a sibling repository refused; uploading');
      }
      if (mounted) {
        placements.record(registry, b.digest, dst.repository);
        return 'mounted';
      }
      placements.forget(registry, b.digest, holder);
    }
    return undefined;
  }

  /** Read the blob from the source, verified, and write it to the destination. */
  private async streamBlob(b: BlobInfo, signal: AbortSignal, active: { digest: Digest; done: number; size: number }): Promise<void> {
    this.progress.active.push(active);
    // Small blobs the engine already read (image configs, for the report) come from the cache,
    // not from a second source request; the reader verifies them all the same.
    const cached = await this.cache.get(b.digest);
    const source = cached && cached.byteLength === b.size ? bufferSource(this.src.description, cached) : this.src;
    const onBytes = (n: number) => {
      this.stats.bytes_transferred += n;
      if (active.done + n <= b.size) {
        active.done += n;
        this.progress.bytes_done += n;
      }
      this.emit();
    };
    if (this.dst instanceof RegistryDestination) {
      // Registries get the resumable path: chunked uploads that continue from the acknowledged offset;
      // large layers to ECR go through ECR's own layer-upload API (resumable where its Docker API is not).
      const upload: BlobUploadRequest = {
        source,
        destination: this.dst.client,
        destinationRepository: this.dst.repository,
        digest: b.digest,
        size: b.size,
        tuning: this.tuning,
        logger: this.log,
        signal,
        onBytes,
        journal: this.req.journal,
        sourceName: this.req.source.name,
        journalOwner: this.req.journalOwner,
      };
      const ecr = usesEcrLayerApi(b.size, this.tuning) ? await this.dst.ecrLayerApi() : undefined;
      const result = ecr ? await uploadEcrLayer(upload, ecr) : await uploadBlob(upload);
      this.stats.blobs_restarted += result.restarts;
      if (result.resumes > 0) this.stats.blobs_resumed++;
      this.stats.bytes_resent += result.bytesResent;
      this.stats.bytes_reread_for_hash += result.bytesRereadForHash;
    } else {
      const chunks = counted(readVerifiedBlob({ source, digest: b.digest, size: b.size, signal }), onBytes);
      await this.dst.writeBlob(b.digest, b.size, b.mediaType, chunks, signal);
    }
  }

  private journalTarget(dst: RegistryDestination) {
    return { destination: dst.client, destinationRepository: dst.repository, journal: this.req.journal, logger: this.log };
  }

  /**
   * Journaled uploads to this repository from this same source whose blob this copy does not
   * need: the source changed since (its tag points at another image). Their sessions are deleted.
   */
  private async sweepJournal(blobs: Map<Digest, BlobInfo>): Promise<void> {
    const journal = this.req.journal;
    if (!journal || !(this.dst instanceof RegistryDestination)) return;
    const entries = await journal.list(this.dst.client.registry, this.dst.repository);
    for (const entry of entries) {
      if (entry.source !== this.req.source.name) continue;
      const wanted = blobs.get(entry.digest as Digest);
      if (wanted && wanted.size === entry.size) continue;
      await discardJournaled(this.journalTarget(this.dst), entry, 'the source changed: this copy no longer needs the blob');
    }
  }

  /** The source repository to mount from: both ends in one registry, different repositories. */
  private mountFrom(): string | undefined {
    const src = this.src;
    const dst = this.dst;
    if (!(src instanceof RegistrySource) || !(dst instanceof RegistryDestination)) return undefined;
    return src.client.registry === dst.client.registry && src.repository !== dst.repository ? src.repository : undefined;
  }

  /** The registry hosts a transfer holds slots of (src/copy/limits.ts): the destination's first, then the source's. */
  private limitHosts(): string[] {
    const dst = this.dst instanceof RegistryDestination ? this.dst.client.baseUrl.host : this.dst.description;
    return this.src instanceof RegistrySource ? [dst, this.src.client.baseUrl.host] : [dst];
  }

  private emit(): void {
    this.req.onProgress?.(this.progress);
  }

  /** Push a manifest tree children-first; the node itself by digest, or by `tag` when given. */
  private async pushTree(node: ManifestNode, pushed: Set<Digest>, tag: string | undefined): Promise<void> {
    for (const c of node.children) await this.pushTree(c, pushed, undefined);
    if (tag === undefined && pushed.has(node.digest)) return;
    await this.dst.putManifest(tag ?? node.digest, node.bytes, node.mediaType, this.req.signal);
    pushed.add(node.digest);
  }
}

/** The digest a manifest names as its `subject`, if any. */
function subjectOf(n: ManifestNode): Digest | undefined {
  return n.parsed.kind === 'image' ? n.parsed.manifest.subject?.digest : n.parsed.index.subject?.digest;
}

/** An ImageSource over bytes already in memory (verified again by the reader). */
function bufferSource(description: string, bytes: Buffer): ImageSource {
  return {
    description,
    getManifest: async () => undefined,
    getReferrers: async () => undefined,
    openBlob: async (_digest, _size, offset) => ({ body: (async function* () { yield bytes.subarray(offset); })() }),
  };
}
