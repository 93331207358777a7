// `oci-archive:FILE[:TAG]`: an OCI image layout as one tar file.
//
// Source: the tar is indexed once (headers only, see tar-index.ts) and blobs are read with
// ranged file streams: nothing is extracted, memory does not grow with the archive.
// Destination: a new archive is streamed into a temporary file next to FILE (oci-layout first,
// then blobs one at a time, maxConcurrentBlobs 1), index.json is added at commit() and the file
// renamed over FILE; abort() deletes the temporary file. An existing FILE is replaced, not added to.
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { FerryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { isDigest, parseDigest, type Digest } from '../reference/digest.ts';
import type { ImageDestination, ManifestHead } from './types.ts';
import { blobName, IndexBuilder, INDEX_FILE, LayoutSource, OCI_LAYOUT_BYTES, OCI_LAYOUT_FILE, prepareManifest, type LayoutFiles } from './layout.ts';
import { TarIndex, type TarIndexOptions } from './tar-index.ts';
import { TarFileWriter } from './tar-writer.ts';

/** The files of a layout inside an indexed tar. */
export class TarFiles implements LayoutFiles {
  readonly tar: TarIndex;
  readonly description: string;

  constructor(tar: TarIndex) {
    this.tar = tar;
    this.description = tar.description;
  }

  async size(name: string): Promise<number | undefined> {
    return this.tar.file(name)?.size;
  }

  async read(name: string, max: number, what: string): Promise<Buffer | undefined> {
    const f = this.tar.file(name);
    return f ? this.tar.read(f, max, what) : undefined;
  }

  stream(name: string, offset: number, size: number, signal?: AbortSignal): AsyncIterable<Buffer> {
    const f = this.tar.file(name);
    if (!f) throw new FerryError('SOURCE_NOT_FOUND', `${this.description} has no file ${name}`, { side: 'source' });
    if (f.size !== size) throw new FerryError('SOURCE_INVALID', `${this.description}: ${name} is ${f.size} bytes in the archive, not ${size}`, { side: 'source' });
    return this.tar.stream(f, offset, signal);
  }
}

/** Open `oci-archive:FILE[:TAG]` for reading. */
export async function openOciArchiveSource(file: string, tag: string | undefined, logger: Logger, opts: TarIndexOptions = {}): Promise<LayoutSource> {
  const description = `oci-archive:${file}`;
  const tar = await TarIndex.open(resolve(file), { description, ...opts });
  return LayoutSource.open(new TarFiles(tar), tag, logger);
}

/** Check that FILE can be created: its directory exists and FILE is not a directory. */
export async function checkArchiveTarget(path: string, description: string): Promise<void> {
  try {
    const dir = await stat(dirname(path));
    if (!dir.isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new FerryError('USAGE', `cannot write ${description}: directory ${dirname(path)} does not exist or is not a directory`, { side: 'destination', cause: e });
  }
  try {
    if ((await stat(path)).isDirectory()) throw new FerryError('USAGE', `${description} is a directory (for a layout directory use oci:)`, { side: 'destination' });
  } catch (e) {
    if (e instanceof FerryError) throw e;
  }
}

/** Serializes calls: a tar takes one entry at a time, whatever the caller does. */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => {});
    return next;
  }
}

export class OciArchiveDestination implements ImageDestination {
  readonly description: string;
  readonly maxConcurrentBlobs = 1;
  readonly target: string | undefined;
  readonly acceptsIndex = true;
  private readonly writer: TarFileWriter;
  private readonly logger: Logger;
  private readonly builder = new IndexBuilder();
  private readonly blobs = new Map<Digest, number>();
  private readonly dirs = new Set<string>();
  private readonly serial = new Serial();
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(writer: TarFileWriter, description: string, tag: string | undefined, logger: Logger) {
    this.writer = writer;
    this.description = description;
    this.target = tag;
    this.logger = logger;
  }

  static async open(file: string, tag: string | undefined, logger: Logger): Promise<OciArchiveDestination> {
    const description = `oci-archive:${file}`;
    const path = resolve(file);
    await checkArchiveTarget(path, description);
    const writer = await TarFileWriter.create(path, description);
    const d = new OciArchiveDestination(writer, description, tag, logger);
    try {
      await writer.addBuffer(OCI_LAYOUT_FILE, OCI_LAYOUT_BYTES);
    } catch (e) {
      await writer.discard();
      throw e;
    }
    return d;
  }

  private check(): void {
    if (this.state !== 'open') throw new FerryError('INTERNAL', `${this.description} was already ${this.state}`, { side: 'destination' });
  }

  /** A new archive holds only what this session put in it. */
  async headManifest(target: string): Promise<ManifestHead | undefined> {
    this.check();
    if (isDigest(target)) {
      const m = this.builder.sessionManifest(target);
      return m ? { digest: m.digest, mediaType: m.mediaType, size: m.bytes.byteLength } : undefined;
    }
    const d = this.builder.tagged(target);
    return d ? { digest: d.digest, mediaType: d.mediaType, size: d.size } : undefined;
  }

  async hasBlob(digest: Digest, size: number): Promise<boolean> {
    this.check();
    return this.blobs.get(digest) === size;
  }

  async writeBlob(digest: Digest, size: number, _mediaType: string, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    await this.serial.run(async () => {
      this.check();
      if (this.blobs.has(digest)) {
        if (this.blobs.get(digest) !== size) throw new FerryError('SOURCE_INVALID', `blob ${digest} is declared with two sizes`, { side: 'source' });
        for await (const _ of chunks) {
          // Already in the archive: drain (verifying) without writing it twice.
        }
        return;
      }
      await this.ensureDirs(digest);
      await this.writer.addStream(blobName(digest), size, chunks, signal);
      this.blobs.set(digest, size);
    });
  }

  async putManifest(target: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    return this.serial.run(async () => {
      this.check();
      const m = prepareManifest(target, bytes, mediaType, this.description);
      await this.storeBuffer(m.digest, bytes);
      this.builder.record(target, m);
      return m.digest;
    });
  }

  private async ensureDirs(digest: Digest): Promise<void> {
    for (const dir of ['blobs', `blobs/${parseDigest(digest).algorithm}`]) {
      if (this.dirs.has(dir)) continue;
      await this.writer.addDirectory(dir);
      this.dirs.add(dir);
    }
  }

  private async storeBuffer(digest: Digest, bytes: Buffer): Promise<void> {
    if (this.blobs.has(digest)) return;
    await this.ensureDirs(digest);
    await this.writer.addBuffer(blobName(digest), bytes);
    this.blobs.set(digest, bytes.byteLength);
  }

  async commit(): Promise<void> {
    await this.serial.run(async () => {
      this.check();
      const { index, extra } = await this.builder.build(undefined, async () => undefined, this.logger, this.description);
      for (const b of extra) await this.storeBuffer(b.digest, b.bytes);
      await this.writer.addBuffer(INDEX_FILE, index);
      await this.writer.finish();
      this.state = 'committed';
    });
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.writer.discard();
  }
}
