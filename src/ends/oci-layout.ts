// `oci:DIR[:TAG]`: an OCI image layout directory, as source and as destination.
//
// Destination: blobs and manifests go to a temporary file in blobs/<alg>/, are fsynced and then
// renamed to their digest, so a blob is either complete or absent under its name (a crash leaves
// at most a `.ferry-*.tmp` file, which nothing reads). index.json changes only at commit(),
// re-read just before and replaced atomically (temp file, fsync, rename), so a failed or aborted
// copy never moves a tag. Blobs already in the layout with the right size are not written again.
// Writes to one layout from two processes at once are not coordinated: the last commit's tags win.
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { AbortedError, FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { isDigest, type Digest } from '../reference/digest.ts';
import { MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ImageIndex } from '../oci/manifest.ts';
import type { ImageDestination, ManifestHead } from './types.ts';
import {
  blobName,
  checkOciLayout,
  INDEX_FILE,
  IndexBuilder,
  LayoutSource,
  OCI_LAYOUT_BYTES,
  OCI_LAYOUT_FILE,
  parseIndexJson,
  prepareManifest,
  REF_NAME,
  type LayoutFiles,
} from './layout.ts';
import { openError } from './tar-index.ts';
import { syncDirectory, writeError } from './tar-writer.ts';

/** The files of a layout directory. */
export class DirectoryFiles implements LayoutFiles {
  readonly root: string;
  readonly description: string;
  private readonly side: 'source' | 'destination';

  constructor(root: string, description: string, side: 'source' | 'destination' = 'source') {
    this.root = root;
    this.description = description;
    this.side = side;
  }

  path(name: string): string {
    return join(this.root, ...name.split('/'));
  }

  async size(name: string): Promise<number | undefined> {
    try {
      const st = await stat(this.path(name));
      return st.isFile() ? st.size : undefined;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw this.ioError(e);
    }
  }

  async read(name: string, max: number, what: string): Promise<Buffer | undefined> {
    let fh: FileHandle;
    try {
      fh = await open(this.path(name), 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw this.ioError(e);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) return undefined;
      if (st.size > max) {
        const code = this.side === 'source' ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED';
        throw new FerryError(code, `${this.description}: ${what} is ${st.size} bytes, more than the ${max}-byte limit`, { side: this.side });
      }
      const buf = Buffer.alloc(st.size);
      let done = 0;
      while (done < buf.byteLength) {
        const { bytesRead } = await fh.read(buf, done, buf.byteLength - done, done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf.subarray(0, done);
    } finally {
      await fh.close();
    }
  }

  stream(name: string, offset: number, size: number, signal?: AbortSignal): AsyncIterable<Buffer> {
    if (offset >= size) return (async function* () {})();
    // Bounded to the size asked for: a file that grew meanwhile cannot send more.
    return createReadStream(this.path(name), { start: offset, end: size - 1, highWaterMark: 1024 * 1024, ...(signal ? { signal } : {}) });
  }

  private ioError(e: unknown): FerryError {
    return this.side === 'source' ? openError(e, this.description) : writeError(e, this.description);
  }
}

/** Open `oci:DIR[:TAG]` for reading. */
export async function openOciLayoutSource(dir: string, tag: string | undefined, logger: Logger): Promise<LayoutSource> {
  const root = resolve(dir);
  const description = `oci:${dir}`;
  try {
    const st = await stat(root);
    if (!st.isDirectory()) throw new FerryError('USAGE', `${description} is not a directory (for a tar file use oci-archive:)`, { side: 'source' });
  } catch (e) {
    if (e instanceof FerryError) throw e;
    throw openError(e, description);
  }
  return LayoutSource.open(new DirectoryFiles(root, description, 'source'), tag, logger);
}

export class OciLayoutDestination implements ImageDestination {
  readonly description: string;
  /** Local disk: several blobs at once are fine. */
  readonly maxConcurrentBlobs = 4;
  /** The tag to put the image under (undefined: by digest, listed in index.json without a name). */
  readonly target: string | undefined;
  readonly acceptsIndex = true;
  private readonly root: string;
  private readonly files: DirectoryFiles;
  private readonly logger: Logger;
  private readonly builder = new IndexBuilder();
  /** The index.json as it was when opened: answers headManifest for tags not put in this session. */
  private readonly existing: ImageIndex | undefined;
  private readonly temps = new Set<string>();
  private readonly touchedDirs = new Set<string>();
  /** The outermost directory open() created (the layout's own, or a parent too); undefined: it existed. */
  private readonly createdFrom: string | undefined;
  /** Blobs this copy put in place: removed again when it fails in a layout it created. */
  private readonly written = new Set<string>();
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(root: string, description: string, tag: string | undefined, existing: ImageIndex | undefined, logger: Logger, createdFrom: string | undefined) {
    this.root = root;
    this.createdFrom = createdFrom;
    this.description = description;
    this.target = tag;
    this.existing = existing;
    this.logger = logger;
    this.files = new DirectoryFiles(root, description, 'destination');
  }

  /** Open (creating it if needed) `oci:DIR[:TAG]` for writing. An existing layout is added to. */
  static async open(dir: string, tag: string | undefined, logger: Logger): Promise<OciLayoutDestination> {
    const root = resolve(dir);
    const description = `oci:${dir}`;
    let createdFrom: string | undefined;
    try {
      createdFrom = await mkdir(root, { recursive: true });
    } catch (e) {
      throw new FerryError('USAGE', `cannot create ${description}: ${(e as Error).message}`, { side: 'destination', cause: e });
    }
    const files = new DirectoryFiles(root, description, 'destination');
    const layout = await files.read(OCI_LAYOUT_FILE, 4096, 'oci-layout');
    if (layout) checkOciLayout(layout, description, 'destination');
    const indexBytes = await files.read(INDEX_FILE, MAX_MANIFEST_BYTES, 'index.json');
    const existing = indexBytes ? parseIndexJson(indexBytes, description, 'destination') : undefined;
    return new OciLayoutDestination(root, description, tag, existing, logger, createdFrom);
  }

  private check(): void {
    if (this.state !== 'open') throw new FerryError('INTERNAL', `${this.description} was already ${this.state}`, { side: 'destination' });
  }

  async headManifest(target: string): Promise<ManifestHead | undefined> {
    this.check();
    if (isDigest(target)) {
      const session = this.builder.sessionManifest(target);
      if (session) return { digest: session.digest, mediaType: session.mediaType, size: session.bytes.byteLength };
      const bytes = await this.files.read(blobName(target), MAX_MANIFEST_BYTES, `manifest ${target}`).catch(() => undefined);
      if (!bytes) return undefined;
      try {
        return { digest: target, mediaType: parseManifest(bytes, undefined, 'destination').mediaType, size: bytes.byteLength };
      } catch {
        return undefined; // a blob that is not a manifest: not this manifest
      }
    }
    const d = this.builder.tagged(target) ?? this.existing?.manifests.find((e) => e.annotations?.[REF_NAME] === target);
    if (!d) return undefined;
    // A tag whose manifest blob is gone is as good as no tag.
    if ((await this.files.size(blobName(d.digest))) !== d.size) return undefined;
    return { digest: d.digest, mediaType: d.mediaType, size: d.size };
  }

  async hasBlob(digest: Digest, size: number): Promise<boolean> {
    this.check();
    return (await this.files.size(blobName(digest))) === size;
  }

  async putManifest(target: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    this.check();
    const m = prepareManifest(target, bytes, mediaType, this.description);
    if ((await this.files.size(blobName(m.digest))) !== bytes.byteLength) await this.storeBuffer(m.digest, bytes);
    this.builder.record(target, m);
    return m.digest;
  }

  async writeBlob(digest: Digest, size: number, _mediaType: string, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    this.check();
    await this.store(digest, size, chunks, signal);
  }

  private async storeBuffer(digest: Digest, bytes: Buffer): Promise<void> {
    await this.store(digest, bytes.byteLength, (async function* () {
      yield bytes;
    })());
  }

  /** Write to a temp file in blobs/<alg>/, fsync, rename to the digest: complete or absent. */
  private async store(digest: Digest, size: number, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    const final = this.files.path(blobName(digest));
    const dir = dirname(final);
    const temp = join(dir, `.ferry-${digest.split(':')[1]!.slice(0, 16)}-${randomBytes(6).toString('hex')}.tmp`);
    let fh: FileHandle | undefined;
    this.temps.add(temp);
    try {
      try {
        await mkdir(dir, { recursive: true });
        this.touchedDirs.add(dir);
        fh = await open(temp, 'wx', 0o644);
      } catch (e) {
        throw writeError(e, this.description);
      }
      let n = 0;
      for await (const chunk of chunks) {
        if (signal?.aborted) throw new AbortedError();
        n += chunk.byteLength;
        if (n > size) throw new FerryError('DIGEST_MISMATCH', `${this.description}: blob ${digest} delivered more than its declared ${size} bytes`, { side: 'source' });
        let done = 0;
        while (done < chunk.byteLength) {
          const { bytesWritten } = await fh.write(chunk, done, chunk.byteLength - done).catch((e: unknown) => {
            throw writeError(e, this.description);
          });
          done += bytesWritten;
        }
      }
      if (n !== size) throw new FerryError('DIGEST_MISMATCH', `${this.description}: blob ${digest} delivered ${n} of its declared ${size} bytes`, { side: 'source' });
      try {
        await fh.sync();
        await fh.close();
        fh = undefined;
        await rename(temp, final);
      } catch (e) {
        throw writeError(e, this.description);
      }
      this.temps.delete(temp);
      this.written.add(final);
    } catch (e) {
      await fh?.close().catch(() => {});
      await unlink(temp).catch(() => {});
      this.temps.delete(temp);
      throw e;
    }
  }

  /** Write index.json (and oci-layout when missing) atomically. */
  async commit(): Promise<void> {
    this.check();
    // Re-read: another writer may have committed since we opened.
    const currentBytes = await this.files.read(INDEX_FILE, MAX_MANIFEST_BYTES, 'index.json');
    const current = currentBytes ? parseIndexJson(currentBytes, this.description, 'destination') : undefined;
    const { index, extra } = await this.builder.build(
      current,
      (d: Descriptor) => this.files.read(blobName(d.digest), MAX_MANIFEST_BYTES, `manifest ${d.digest}`).catch(() => undefined),
      this.logger,
      this.description,
    );
    for (const b of extra) {
      if ((await this.files.size(blobName(b.digest))) !== b.bytes.byteLength) await this.storeBuffer(b.digest, b.bytes);
    }
    for (const dir of this.touchedDirs) await syncDirectory(dir);
    if ((await this.files.size(OCI_LAYOUT_FILE)) === undefined) await this.replaceFile(OCI_LAYOUT_FILE, OCI_LAYOUT_BYTES);
    await this.replaceFile(INDEX_FILE, index);
    await syncDirectory(this.root);
    this.state = 'committed';
  }

  private async replaceFile(name: string, bytes: Buffer): Promise<void> {
    const final = this.files.path(name);
    const temp = join(this.root, `.${name}.ferry-${randomBytes(6).toString('hex')}.tmp`);
    this.temps.add(temp);
    let fh: FileHandle | undefined;
    try {
      fh = await open(temp, 'wx', 0o644);
      await fh.writeFile(bytes);
      await fh.sync();
      await fh.close();
      fh = undefined;
      await rename(temp, final);
      this.temps.delete(temp);
    } catch (e) {
      await fh?.close().catch(() => {});
      await unlink(temp).catch(() => {});
      this.temps.delete(temp);
      throw writeError(e, this.description);
    }
  }

  /**
   * Leave index.json as it was; remove temporary files. A layout this copy created is removed
   * again, blobs and directories (nothing half-written is left, e.g. after a full disk), unless
   * another writer committed an index.json there meanwhile. In a layout that existed, blobs
   * already renamed stay: content-addressed and complete, and another writer may have found them
   * there and listed them.
   */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    for (const t of this.temps) await unlink(t).catch(() => {});
    this.temps.clear();
    if (this.createdFrom === undefined || (await this.files.size(INDEX_FILE)) !== undefined) return;
    for (const f of this.written) await unlink(f).catch(() => {});
    // Deepest first; rmdir removes only empty directories, so another writer's files stay.
    const dirs = [...this.touchedDirs, join(this.root, 'blobs')];
    for (let d = this.root; ; d = dirname(d)) {
      dirs.push(d);
      if (d === this.createdFrom || d === dirname(d)) break;
    }
    for (const d of dirs) await rmdir(d).catch(() => {});
  }
}
