// Where this process has put blobs, per destination registry, so that copies running side by side
// (the agent's jobs, a sync plan's images) upload each blob once per registry and mount it
// into every other repository: one request and no bytes instead of a second upload. A fleet
// of images on shared base layers moves each base layer once (docs/performance.md, fleet).
//
// Knowledge only ever comes from this process's own successful transfers, and a mount the
// registry refuses just falls back to an upload, so a stale entry costs one request.
import type { Digest } from '../../reference/digest.ts';

/** A claim on uploading a blob to a registry; the others wait for it, then mount. */
export interface UploadLead {
  readonly lead: true;
  /** The upload finished (the blob is in `repository`) or failed (`undefined`: a waiter uploads itself). */
  settle(repository: string | undefined): void;
}

/** Someone else is uploading the blob: wait for the repository it lands in. */
export interface UploadFollower {
  readonly lead: false;
  /** The repository holding the blob, or undefined if that upload failed. */
  readonly landed: Promise<string | undefined>;
}

interface Entry {
  /** Repositories known to hold the blob, most recent last. */
  holders: string[];
  inflight?: Promise<string | undefined>;
}

/** Repositories remembered per blob: enough to find one that still holds it. */
const MAX_HOLDERS = 4;
/** Blobs remembered per process (an agent runs for months): oldest forgotten first. */
const MAX_ENTRIES = 100_000;

export class BlobPlacements {
  private readonly entries = new Map<string, Entry>();

  /** Repositories of `registry` this process saw holding `digest`, most recent first. */
  holders(registry: string, digest: Digest): string[] {
    return [...(this.entries.get(key(registry, digest))?.holders ?? [])].reverse();
  }

  /** `repository` of `registry` holds `digest` (uploaded, mounted or found there). */
  record(registry: string, digest: Digest, repository: string): void {
    const e = this.entry(registry, digest);
    e.holders = [...e.holders.filter((r) => r !== repository), repository].slice(-MAX_HOLDERS);
  }

  /** The repository stopped holding the blob (a mount from it was refused). */
  forget(registry: string, digest: Digest, repository: string): void {
    const e = this.entries.get(key(registry, digest));
    if (e) e.holders = e.holders.filter((r) => r !== repository);
  }

  /** Lead the upload of `digest` to `registry`, or follow the upload already under way. */
  begin(registry: string, digest: Digest): UploadLead | UploadFollower {
    const e = this.entry(registry, digest);
    if (e.inflight) return { lead: false, landed: e.inflight };
    let resolve!: (repository: string | undefined) => void;
    const inflight = new Promise<string | undefined>((r) => (resolve = r));
    e.inflight = inflight;
    let settled = false;
    return {
      lead: true,
      settle: (repository) => {
        if (settled) return;
        settled = true;
        if (e.inflight === inflight) delete e.inflight;
        if (repository !== undefined) this.record(registry, digest, repository);
        resolve(repository);
      },
    };
  }

  private entry(registry: string, digest: Digest): Entry {
    const k = key(registry, digest);
    let e = this.entries.get(k);
    if (e) {
      // Most recently used last, so the oldest go first when the map is full.
      this.entries.delete(k);
    } else {
      e = { holders: [] };
      if (this.entries.size >= MAX_ENTRIES) {
        const oldest = this.entries.keys().next().value;
        if (oldest !== undefined) this.entries.delete(oldest);
      }
    }
    this.entries.set(k, e);
    return e;
  }
}

function key(registry: string, digest: Digest): string {
  return `${registry}\n${digest}`;
}
