// The copy engine: walk the source graph (index → manifests → config and layers, plus
// referrers), move every blob the destination lacks exactly once (skip → mount → stream,
// verified), then push manifests children-first and the tag last, so a failed copy never
// leaves a tag pointing at an incomplete image.
import { AbortedError, FerryError, toFerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { digestOf, type Digest } from '../reference/digest.ts';
import { formatPlatform, platformMatches } from '../reference/platform.ts';
import { parseManifest, type Descriptor, type ImageIndex } from '../oci/manifest.ts';
import { referrerDescriptor, subjectOf } from '../oci/referrers.ts';
import type { BlobContext, BlobRef, CopyDestination, CopySource, ImageDestination, ImageSource } from '../ends/types.ts';
import pLimit from 'p-limit';
import { counted, readVerifiedBlob } from '../blob/verify.ts';
import { SourceGraph, type ManifestNode } from './graph.ts';
import { NO_REFERRERS, ReferrerFinder, type DiscoveredReferrers } from './referrers.ts';
import { ContentCache } from './content-cache.ts';
import { TransferLimits } from './limits.ts';
import type { CopyProgress, CopyReport, DryRunPlan, ImageOutput, PlatformSelection, TransferStats } from './types.ts';

export type { CopyDestination, CopySource } from '../ends/types.ts';

export interface CopyRequest {
  source: CopySource;
  destination: CopyDestination;
  platforms: PlatformSelection;
  referrers: boolean;
  limits: TransferLimits;
  logger: Logger;
  cache?: ContentCache;
  /** Aborted: stop at once. With SUSPEND as the reason, what the destination journaled stays to be resumed. */
  signal?: AbortSignal;
  /**
   * Aborted: stop soon without losing work (`ferry copy`'s first Ctrl-C). Nothing new begins (no
   * blob, no manifest), what sends nothing stops at once, and the blob writes in flight go on to
   * a point the next run continues from (an upload's chunk in flight); then the copy rejects
   * with an AbortedError. The caller bounds the wait by aborting `signal` with SUSPEND.
   */
  park?: AbortSignal;
  /**
   * Awaited before each write to the destination begins (a blob's upload or mount, a manifest, a
   * referrers index); a rejection fails the copy. The agent holds writes here while it is not
   * sure it still holds the job (a process frozen past its lease must not write once it thaws).
   */
  beforeWrite?: () => Promise<void>;
  onProgress?: (p: CopyProgress) => void;
  dryRun?: boolean;
}

/** What a copy still has to write for the referrers: on a re-run, only what the destination lacks. */
interface PendingReferrers {
  /** Referrer manifests to push (with their blobs). */
  nodes: ManifestNode[];
  /** cosign tags that do not name their manifest yet. */
  tags: Array<{ tag: string; node: ManifestNode }>;
  /** Subjects whose referrers are not all listed yet, with every referrer to list for each. */
  subjects: Map<Digest, Descriptor[]>;
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
  private readonly graph: SourceGraph;
  /** For everything but the blob writes: aborted by the caller's signal, or as soon as the copy is parked. */
  private readonly signal: AbortSignal | undefined;
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
    manifests_written: 0,
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
    this.signal = req.park ? (req.signal ? AbortSignal.any([req.signal, req.park]) : req.park) : req.signal;
    this.graph = new SourceGraph(req.source.end, this.cache, this.signal);
  }

  async run(started: number): Promise<CopyReport> {
    const { source, destination } = this.req;
    const signal = this.signal;
    // 0. Connections for the transfers, opened while the manifests are read (their handshakes are
    // two round trips each across a network).
    if (!this.req.dryRun) {
      this.src.warm?.();
      this.dst.warm?.();
    }
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
    // 4. The rest of the graph (children come from the cache on a re-run), fetched while the
    // destination is asked about the root: an index's children do not wait for that answer.
    const expanded = this.graph.expand(root, 0, new Set());
    expanded.catch(() => undefined); // awaited below, after the destination's answer
    const existing = await (namedHead ?? this.dst.headManifest(dstTarget, signal));
    const upToDate = existing?.digest === root.digest;
    let previousDigest: string | undefined;
    if (existing?.digest && !upToDate && destination.tag) previousDigest = existing.digest;
    await expanded;
    const finder = new ReferrerFinder(this.src, this.graph, this.log, signal);
    const referrers = this.req.referrers ? await finder.discover(root) : NO_REFERRERS;
    const leftBehind = leftBehindIndex && this.req.referrers ? await finder.direct(leftBehindIndex.digest) : [];

    // The report's image (an image's platform is in its config blob, a read of its own): not on the transfers' path.
    const imageOutput = this.graph.imageOutput(root, referrers.found.map((f) => f.node), destination);
    imageOutput.catch(() => undefined); // awaited for the report
    const toWrite = upToDate ? [] : [root];
    // A re-run writes none of the referrers the destination already has and lists.
    const pending = await this.pendingReferrers(referrers);
    const referrerRoots = pending.nodes;
    const blobs = this.collectBlobs([...toWrite, ...referrerRoots]);
    this.stats.bytes_total = [...blobs.values()].reduce((n, b) => n + b.size, 0);
    this.progress.bytes_total = this.stats.bytes_total;
    this.progress.blobs_total = blobs.size;

    if (upToDate && referrerRoots.length === 0 && pending.tags.length === 0 && pending.subjects.size === 0) {
      this.log.info({ destination: destination.name, digest: root.digest }, 'destination already up to date');
    }

    // Asked in few requests where the end can (ECR: one BatchCheckLayerAvailability per 100 blobs) instead of a HEAD each.
    if (this.dst.checkBlobs && blobs.size > 0) this.known = await this.dst.checkBlobs([...blobs.keys()], signal);

    if (this.req.dryRun) {
      const plan = await this.planDryRun(blobs, [...toWrite, ...referrerRoots]);
      this.stats.duration_ms = Date.now() - started;
      return this.report(await imageOutput, digestChanged, leftBehind, previousDigest, plan);
    }

    // 5. Blobs, all at once within the limits (after the end dropped what it kept for blobs this copy no longer needs).
    await this.dst.prepareBlobs?.(blobs, { logger: this.log, sourceName: source.name, signal });
    await this.transferBlobs(blobs);
    this.parked();

    // 6. Manifests children-first, referrers after their subjects, the tag last.
    const pushed = new Map<Digest, Promise<void>>();
    // With referrers to push, the root goes up by digest first and gets its tag at the very end.
    const tagNow = referrerRoots.length === 0 ? destination.tag : undefined;
    for (const node of toWrite) await this.pushTree(node, pushed, tagNow);
    for (const node of referrerRoots) await this.pushTree(node, pushed, undefined);
    await this.listReferrers(pending.subjects, referrers.sourceIndexes);
    for (const { tag, node } of pending.tags) {
      await this.mayWrite();
      await this.dst.putManifest(tag, node.bytes, node.mediaType, signal);
      this.stats.manifests_written++;
    }
    if (!upToDate && referrerRoots.length > 0 && destination.tag) {
      await this.mayWrite();
      await this.dst.putManifest(destination.tag, root.bytes, root.mediaType, signal);
      this.stats.manifests_written++;
    }
    if (previousDigest) {
      this.log.warn({ tag: destination.tag, previous_digest: previousDigest, digest: root.digest }, 'destination tag pointed at another digest; overwritten');
    }
    const image = await imageOutput;
    this.stats.duration_ms = Date.now() - started;
    return this.report(image, digestChanged, leftBehind, previousDigest);
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
  private collectBlobs(nodes: ManifestNode[]): Map<Digest, BlobRef> {
    const blobs = new Map<Digest, BlobRef>();
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

  /**
   * What the destination lacks of the referrers found: a cosign tag that names its manifest already
   * (one HEAD each) needs nothing, nor does a referrer the destination lists for its subject (one
   * request per subject: its referrers API or its fallback index). The rest is written.
   */
  private async pendingReferrers(found: DiscoveredReferrers): Promise<PendingReferrers> {
    const { limits } = this.req;
    const signal = this.signal;
    const dst = this.dst;
    const check = <T>(fn: () => Promise<T>) => limits.check(dst.description, fn);
    const tags = await Promise.all(
      found.cosignTags.map(async (t) => ({ ...t, current: (await check(() => dst.headManifest(t.tag, signal)))?.digest })),
    );
    const bySubject = new Map<Digest, Descriptor[]>();
    for (const { node } of found.found) {
      const subject = subjectOf(node.parsed);
      if (subject === undefined) continue;
      const list = bySubject.get(subject) ?? [];
      list.push(referrerDescriptor(node));
      bySubject.set(subject, list);
    }
    const listed = new Set<Digest>();
    const listedReferrers = dst.listedReferrers?.bind(dst);
    if (listedReferrers) {
      await Promise.all(
        [...bySubject].map(async ([subject, referrers]) => {
          for (const d of await check(() => listedReferrers(subject, referrers, { signal, known: this.cache }))) listed.add(d);
        }),
      );
    }
    const present = new Set([...listed, ...tags.filter((t) => t.current === t.node.digest).map((t) => t.node.digest)]);
    return {
      nodes: found.found.map((f) => f.node).filter((n) => !present.has(n.digest)),
      tags: tags.filter((t) => t.current !== t.node.digest).map(({ tag, node }) => ({ tag, node })),
      subjects: new Map([...bySubject].filter(([, referrers]) => referrers.some((r) => !listed.has(r.digest)))),
    };
  }

  /** After the referrers were pushed: list them for their subjects where the destination's clients look. */
  private async listReferrers(subjects: Map<Digest, Descriptor[]>, sourceIndexes: Map<Digest, Buffer>): Promise<void> {
    const update = this.dst.updateReferrersIndex?.bind(this.dst);
    if (!update) return;
    await Promise.all(
      [...subjects].map(async ([subject, referrers]) => {
        await this.mayWrite();
        const done = await update(subject, referrers, { signal: this.signal, known: this.cache, proposed: sourceIndexes.get(subject) });
        if (done === 'written') this.stats.manifests_written++;
        this.log.debug({ subject, referrers: referrers.length, listing: done }, 'referrers listed');
      }),
    );
  }

  // ---- transfer --------------------------------------------------------------------------

  private async planDryRun(blobs: Map<Digest, BlobRef>, manifests: ManifestNode[]): Promise<DryRunPlan> {
    const mountable = this.dst.mountableFrom?.(this.src) === true;
    const entries = await Promise.all(
      [...blobs.values()].map((b) =>
        this.req.limits.run(this.limitHosts(), async () => {
          const have = this.known?.get(b.digest) ?? (await this.dst.hasBlob(b.digest, b.size, this.signal));
          const action: 'copy' | 'skip' | 'mount' = have ? 'skip' : mountable ? 'mount' : 'copy';
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

  private async transferBlobs(blobs: Map<Digest, BlobRef>): Promise<void> {
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
                this.parked();
                return this.transferBlob(b, present.get(b.digest)!, inner.signal);
              }),
            )
            .catch((e) => {
              if (firstError !== undefined) return;
              firstError = e;
              // Parked: the other blobs stop at their own resumable points (chunks in flight finish), nothing is cut.
              if (!this.req.park?.aborted) inner.abort();
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
   * is as of the check; a blob another copy lands meanwhile is still found by the end's reuse
   * (a registry's sibling placements).
   */
  private checkPresence(blobs: Map<Digest, BlobRef>, signal: AbortSignal): Map<Digest, Promise<boolean>> {
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

  private async transferBlob(b: BlobRef, present: Promise<boolean>, signal: AbortSignal): Promise<void> {
    const active = { digest: b.digest, done: 0, size: b.size };
    const finish = (kind: 'copied' | 'skipped' | 'mounted') => {
      this.stats[`blobs_${kind}`]++;
      this.progress.blobs_done++;
      this.progress.bytes_done += b.size - active.done;
      this.progress.active = this.progress.active.filter((a) => a !== active);
      this.emit();
    };
    const copy: BlobContext = { signal, logger: this.log, sourceName: this.req.source.name, park: this.req.park, beforeWrite: this.req.beforeWrite };
    if (await present) {
      await this.dst.blobPresent?.(b, copy);
      return finish('skipped');
    }
    this.parked();
    await this.mayWrite();
    // Without its bytes where the end can: a mount from the source, or from where another copy put it.
    const reused = await this.dst.reuseBlob?.(b, this.src, copy);
    if (reused) return finish(reused);
    finish(await this.streamBlob(b, copy, active));
  }

  /** Read the blob from the source, verified, and write it to the destination. */
  private async streamBlob(b: BlobRef, copy: BlobContext, active: { digest: Digest; done: number; size: number }): Promise<'copied' | 'mounted' | 'skipped'> {
    const onStart = () => void this.progress.active.push(active);
    // Small blobs the engine already read (image configs, for the report) come from the cache,
    // not from a second source request; the reader verifies them all the same.
    const cached = (await this.graph.configRead(b.digest)?.catch(() => undefined)) ?? (await this.cache.get(b.digest));
    const source = cached && cached.byteLength === b.size ? bufferSource(this.src.description, cached) : this.src;
    const onBytes = (n: number) => {
      this.stats.bytes_transferred += n;
      if (active.done + n <= b.size) {
        active.done += n;
        this.progress.bytes_done += n;
      }
      this.emit();
    };
    if (this.dst.putBlob) {
      // An end with an upload protocol of its own (a registry: chunked uploads that continue from
      // the acknowledged offset, the pipe, ECR's layer API) reads the source itself.
      const result = await this.dst.putBlob(b, source, { ...copy, onStart, onBytes });
      this.stats.blobs_restarted += result.restarts;
      if (result.resumes > 0) this.stats.blobs_resumed++;
      this.stats.bytes_resent += result.bytesResent;
      this.stats.bytes_reread_for_hash += result.bytesRereadForHash;
      return result.outcome;
    }
    onStart();
    const chunks = counted(readVerifiedBlob({ source, digest: b.digest, size: b.size, signal: copy.signal }), onBytes);
    await this.dst.writeBlob(b.digest, b.size, b.mediaType, chunks, copy.signal);
    return 'copied';
  }

  /** The registry hosts a transfer holds slots of (src/copy/limits.ts): the destination's first, then the source's. */
  private limitHosts(): string[] {
    const dst = this.dst.networkHost ?? this.dst.description;
    return this.src.networkHost !== undefined ? [dst, this.src.networkHost] : [dst];
  }

  /** The caller's say before a write begins (CopyRequest.beforeWrite). */
  private async mayWrite(): Promise<void> {
    await this.req.beforeWrite?.();
  }

  /** Parked: nothing new begins. */
  private parked(): void {
    if (this.req.park?.aborted) throw new AbortedError('stopping: nothing new begins');
  }

  private emit(): void {
    this.req.onProgress?.(this.progress);
  }

  /**
   * Push a manifest tree children-first (an index's children at once: a round trip each would
   * follow one another otherwise); the node itself by digest, or by `tag` when given.
   */
  private async pushTree(node: ManifestNode, pushed: Map<Digest, Promise<void>>, tag: string | undefined): Promise<void> {
    await Promise.all(node.children.map((c) => this.pushTree(c, pushed, undefined)));
    if (tag === undefined) {
      const pushing = pushed.get(node.digest);
      if (pushing) return pushing;
    }
    this.parked();
    const put = this.mayWrite()
      .then(() => this.dst.putManifest(tag ?? node.digest, node.bytes, node.mediaType, this.signal))
      .then(() => {
        this.stats.manifests_written++;
      });
    if (tag === undefined) pushed.set(node.digest, put);
    await put;
  }
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
