// Referrers at a registry: does it serve the referrers API (both sides of a copy ask), and, at a
// destination that does not, the referrers tag schema's fallback index (`sha256-<hex of the
// subject>`) kept as the OCI distribution spec asks of clients ("Pushing Manifests with Subject"):
//   - what the tag holds is read (404: an empty index) and merged: entries others pushed stay,
//     in their order, and so do the document's other fields; ours are appended when missing;
//   - nothing is written when it already lists every referrer copied;
//   - a tag that holds something other than an index is reported and left alone.
// Concurrent writers (the spec leaves the race to clients): the write is conditional (If-Match on the
// ETag read) where the registry honours it, and read back after (a HEAD): when another writer
// replaced it in between, its index is read and merged again, up to MAX_ROUNDS times. A writer that
// reads before ferry's write and writes after ferry's check can still drop ferry's entries on a
// registry without conditional writes; the next re-sync finds them missing and adds them back.
//
// Whether a registry serves the API is a fact about the registry, learned once per process and
// registry (and again after an hour: a registry may be upgraded), on either side of a copy: from the
// `OCI-Subject` header a registry with the API MUST send when it takes a manifest with a subject, or
// from a GET of the referrers API in a repository that exists (404: none, as on distribution 2.8).
// A source known to have none is not asked again (RegistrySource.getReferrers).
import type { Logger } from '../../log/logger.ts';
import { FerryError } from '../../errors.ts';
import { digestOf, type Digest } from '../../reference/digest.ts';
import { MediaType, parseManifest, type Descriptor } from '../../oci/manifest.ts';
import { extendReferrersIndex, newReferrersIndex, referrersTagOf } from '../../oci/referrers.ts';
import type { RegistryClient } from '../../registry/client.ts';
import type { ReferrersListing, ReferrersListOptions } from '../types.ts';

/** Reads and writes of one fallback index before ferry stops contending with other writers. */
const MAX_ROUNDS = 3;

/** How long what a registry said about its referrers API is taken as true. */
const REMEMBER_API_MS = 60 * 60 * 1000;

/** What each registry (by name) said about its referrers API, and when. */
const apiByRegistry = new Map<string, { api: boolean; at: number }>();

/** True or false when `registry` told within the last hour; undefined before. */
export function knownReferrersApi(registry: string): boolean | undefined {
  const known = apiByRegistry.get(registry);
  if (!known) return undefined;
  if (Date.now() - known.at > REMEMBER_API_MS) {
    apiByRegistry.delete(registry);
    return undefined;
  }
  return known.api;
}

/** The first question to a registry whose answer nobody knows yet, while it is out. */
const firstQuestions = new Map<string, Promise<unknown>>();

/**
 * The source side: the referrers API's pages for `digest`, or undefined where the registry has
 * none. A registry known to have none is not asked; while nobody knows, one copy asks and the
 * others (the agent's jobs side by side) wait for that answer. The repository exists (its
 * manifest was read), so no answer means no API.
 */
export async function sourceReferrers(client: RegistryClient, repository: string, digest: Digest, signal?: AbortSignal): Promise<Buffer[] | undefined> {
  const registry = client.registry;
  const pending = knownReferrersApi(registry) === undefined ? firstQuestions.get(registry) : undefined;
  if (pending) await pending.catch(() => undefined);
  if (knownReferrersApi(registry) === false) return undefined;
  const asked = client.getReferrers(repository, digest, signal).then((pages) => {
    noteReferrersApi(registry, pages !== undefined);
    return pages;
  });
  if (knownReferrersApi(registry) === undefined && !firstQuestions.has(registry)) {
    firstQuestions.set(registry, asked);
    asked.then(
      () => firstQuestions.delete(registry),
      () => firstQuestions.delete(registry),
    );
  }
  return asked;
}

/** Remember what `registry` said about its referrers API; true when that is news. */
export function noteReferrersApi(registry: string, api: boolean): boolean {
  const before = knownReferrersApi(registry);
  apiByRegistry.set(registry, { api, at: Date.now() });
  return before !== api;
}

/** The fallback index as read: its bytes and entries, and what to send in If-Match to write it back. */
interface FallbackIndex {
  digest: Digest;
  etag: string | undefined;
  bytes: Buffer;
  entries: Descriptor[];
}

export class RegistryReferrers {
  private readonly client: RegistryClient;
  private readonly repository: string;
  private readonly log: Logger;
  /** The fallback index per subject as last read in this copy (listedReferrers, then updateReferrersIndex). */
  private readonly lastRead = new Map<Digest, FallbackIndex | undefined | 'not-an-index'>();

  constructor(client: RegistryClient, repository: string) {
    this.client = client;
    this.repository = repository;
    this.log = client.logger;
  }

  /** True or false once the registry has told; undefined before. */
  get servesApi(): boolean | undefined {
    return knownReferrersApi(this.client.registry);
  }

  /**
   * A manifest went up: a subject in it, and the registry's answer, say whether it serves the
   * referrers API (a registry with the API MUST answer such a PUT with `OCI-Subject`).
   */
  notePut(bytes: Buffer, ociSubject: string | undefined): void {
    if (ociSubject) {
      this.remember(true);
      return;
    }
    if (!bytes.includes('"subject"')) return;
    try {
      const doc = JSON.parse(bytes.toString('utf8')) as { subject?: { digest?: unknown } };
      if (typeof doc.subject?.digest === 'string') this.remember(false);
    } catch {
      // Not JSON: the registry took it anyway; it says nothing about referrers.
    }
  }

  async listed(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions): Promise<Set<Digest>> {
    const wanted = new Set(referrers.map((r) => r.digest));
    if (this.servesApi === true) return this.listedByApi(subject, wanted, o.signal);
    const index = await this.readFallback(subject, o);
    const listed = new Set(index && index !== 'not-an-index' ? index.entries.map((e) => e.digest).filter((d) => wanted.has(d)) : []);
    // All listed: whatever the registry serves, clients find them.
    if (listed.size === wanted.size || this.servesApi === false) return listed;
    const byApi = await this.probe(subject, o.signal, false);
    if (byApi === undefined) return listed;
    return new Set([...byApi].filter((d) => wanted.has(d)));
  }

  async update(subject: Digest, referrers: Descriptor[], o: ReferrersListOptions & { proposed?: Buffer | undefined }): Promise<ReferrersListing> {
    if (referrers.length === 0) return 'unchanged';
    if (this.servesApi === undefined) await this.probe(subject, o.signal, true);
    if (this.servesApi === true) return 'api';
    const tag = referrersTagOf(subject);
    let wrote = false;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const current = round === 0 && this.lastRead.has(subject) ? this.lastRead.get(subject) : await this.readFallback(subject, o, true);
      if (current === 'not-an-index') {
        this.log.warn(
          { repository: this.repository, tag },
          'the referrers fallback tag holds something other than an image index; left as it is, so clients without the referrers API will not find the referrers copied',
        );
        return 'skipped';
      }
      const have = new Set(current?.entries.map((e) => e.digest) ?? []);
      const missing = referrers.filter((r) => !have.has(r.digest));
      if (missing.length === 0) return wrote ? 'written' : 'unchanged';
      const bytes = current ? extendReferrersIndex(current.bytes, missing) : (usable(o.proposed, referrers) ?? newReferrersIndex(referrers));
      const digest = digestOf(bytes);
      const answer = await this.client.pushManifest(this.repository, tag, bytes, MediaType.OciIndex, { ifMatch: current?.etag, signal: o.signal });
      if (answer === 'precondition-failed') {
        this.log.debug({ repository: this.repository, tag }, 'the referrers fallback index changed since it was read; reading it again');
        continue;
      }
      wrote = true;
      await o.known?.put(digest, bytes);
      // Read back: another writer may have replaced it meanwhile (the registry ignored If-Match, or none was sent).
      const after = await this.client.headManifest(this.repository, tag, o.signal);
      if (after?.digest === undefined || after.digest === digest) return 'written';
      this.log.info({ repository: this.repository, tag }, 'another client rewrote the referrers fallback index meanwhile; merging again');
    }
    this.log.warn({ repository: this.repository, tag, rounds: MAX_ROUNDS }, 'the referrers fallback index kept changing under other writers; the next copy checks it again');
    return 'written';
  }

  private remember(api: boolean): void {
    if (!noteReferrersApi(this.client.registry, api)) return;
    this.log.debug({ registry: this.client.registry, referrers_api: api }, api ? 'the registry serves the referrers API' : 'the registry has no referrers API: ferry keeps the fallback tags');
  }

  /**
   * The referrers the API lists for `subject`; undefined without an API. An answer means an API. A 404
   * means none only once the repository exists (a registry with the API may answer 404 for a
   * repository it does not know yet): `afterPush` says it does.
   */
  private async probe(subject: Digest, signal: AbortSignal | undefined, afterPush: boolean): Promise<Set<Digest> | undefined> {
    const pages = await this.client.getReferrers(this.repository, subject, signal);
    if (pages !== undefined || afterPush) this.remember(pages !== undefined);
    return pages === undefined ? undefined : digestsOf(pages, subject);
  }

  private async listedByApi(subject: Digest, wanted: Set<Digest>, signal: AbortSignal | undefined): Promise<Set<Digest>> {
    const listed = await this.probe(subject, signal, false);
    return new Set([...(listed ?? [])].filter((d) => wanted.has(d)));
  }

  /**
   * The fallback index for `subject`: a HEAD of the tag, and its bytes from what the copy already
   * holds by that digest (the one written or read last time) or else a GET by digest (verified).
   */
  private async readFallback(subject: Digest, o: ReferrersListOptions, fresh = false): Promise<FallbackIndex | undefined | 'not-an-index'> {
    if (!fresh && this.lastRead.has(subject)) return this.lastRead.get(subject);
    const tag = referrersTagOf(subject);
    const head = await this.client.headManifest(this.repository, tag, o.signal);
    let result: FallbackIndex | undefined | 'not-an-index';
    if (!head) {
      result = undefined;
    } else {
      let bytes = head.digest ? await o.known?.get(head.digest) : undefined;
      let mediaType = head.mediaType;
      let digest = head.digest;
      if (!bytes) {
        const got = await this.client.getManifest(this.repository, head.digest ?? tag, o.signal);
        if (!got) {
          result = undefined;
        } else {
          bytes = got.bytes;
          mediaType = got.mediaType;
          digest = got.digest;
          await o.known?.put(got.digest, got.bytes);
        }
      }
      if (bytes && digest) result = parseFallback(bytes, mediaType, digest, head.etag);
    }
    this.lastRead.set(subject, result);
    return result;
  }
}

/** The index's entries, or 'not-an-index' for anything else under the tag. */
function parseFallback(bytes: Buffer, mediaType: string | undefined, digest: Digest, etag: string | undefined): FallbackIndex | 'not-an-index' {
  try {
    const parsed = parseManifest(bytes, mediaType, 'destination');
    if (parsed.kind !== 'index') return 'not-an-index';
    return { digest, etag, bytes, entries: parsed.index.manifests };
  } catch (e) {
    if (e instanceof FerryError) return 'not-an-index';
    throw e;
  }
}

/** The source's own index, when it lists exactly these referrers (then it is written as it is). */
function usable(proposed: Buffer | undefined, referrers: Descriptor[]): Buffer | undefined {
  if (!proposed) return undefined;
  try {
    const parsed = parseManifest(proposed, MediaType.OciIndex, 'source');
    if (parsed.kind !== 'index') return undefined;
    const listed = parsed.index.manifests.map((d) => d.digest);
    const want = new Set(referrers.map((r) => r.digest));
    return listed.length === want.size && listed.every((d) => want.has(d)) ? proposed : undefined;
  } catch {
    return undefined;
  }
}

function digestsOf(pages: Buffer[], subject: Digest): Set<Digest> {
  const out = new Set<Digest>();
  for (const page of pages) {
    const parsed = parseManifest(page, MediaType.OciIndex, 'destination');
    if (parsed.kind !== 'index') throw new FerryError('DESTINATION_REJECTED', `the destination's referrers response for ${subject} is not an index`, { side: 'destination' });
    for (const d of parsed.index.manifests) out.add(d.digest);
  }
  return out;
}
