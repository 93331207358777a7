// A small content-addressed cache of manifests and image configs, kept in the state
// directory. It lets a re-run that finds the destination already up to date build its report
// without asking the source for anything but the root manifest. Everything read back is
// verified against its digest, so a corrupt or tampered cache is just a miss.
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { digestOf, parseDigest, type Digest } from '../reference/digest.ts';

const MAX_CACHED_BYTES = 4 * 1024 * 1024;

export class ContentCache {
  private readonly memory = new Map<Digest, Buffer>();
  private readonly dir: string | undefined;
  /** Digests on disk, listed once: a miss costs no failed open (a copy asks once per blob). */
  private onDisk: Promise<Set<Digest>> | undefined;

  /** dir undefined: memory only (for one process). */
  constructor(dir?: string) {
    this.dir = dir;
  }

  async get(digest: Digest): Promise<Buffer | undefined> {
    const hit = this.memory.get(digest);
    if (hit) return hit;
    if (!this.dir) return undefined;
    if (!(await this.listed()).has(digest)) return undefined;
    try {
      const { algorithm, hex } = parseDigest(digest);
      const bytes = await readFile(join(this.dir, algorithm, hex));
      if (digestOf(bytes, algorithm) !== digest) return undefined;
      this.memory.set(digest, bytes);
      return bytes;
    } catch {
      return undefined;
    }
  }

  /** Store bytes already verified against `digest`. Failures to write are ignored: it is a cache. */
  async put(digest: Digest, bytes: Buffer): Promise<void> {
    if (bytes.byteLength > MAX_CACHED_BYTES) return;
    this.memory.set(digest, bytes);
    if (!this.dir) return;
    try {
      const { algorithm, hex } = parseDigest(digest);
      const dir = join(this.dir, algorithm);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const tmp = join(dir, `.${hex}.${process.pid}.tmp`);
      await writeFile(tmp, bytes, { mode: 0o600 });
      await rename(tmp, join(dir, hex));
      (await this.listed()).add(digest);
    } catch {
      // read-only or full disk: carry on without the cache
    }
  }

  private listed(): Promise<Set<Digest>> {
    const dir = this.dir;
    this.onDisk ??= (async () => {
      const found = new Set<Digest>();
      if (!dir) return found;
      for (const algorithm of ['sha256', 'sha512']) {
        const names = await readdir(join(dir, algorithm)).catch(() => [] as string[]);
        for (const hex of names) if (!hex.startsWith('.')) found.add(`${algorithm}:${hex}` as Digest);
      }
      return found;
    })();
    return this.onDisk;
  }
}
