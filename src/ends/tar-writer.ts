// Writing a tar archive as a stream of entries into a temporary file, then renaming it into
// place: the named file is either the old one or a complete archive, never half of one.
//
// Headers and padding come from tar-stream's `pack`. Each entry goes through a pack of its own
// whose output is written at a known position of the file, so an entry whose bytes stop coming
// (a source that fails its digest check) is cut off again by truncating the file to where the
// entry began: nothing is left under that name and the entry can be written again. After each
// entry the file ends in a valid end-of-archive marker, which the next entry overwrites.
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pack, type Header } from 'tar-stream';
import { AbortedError, FerryError } from '../errors.ts';

/** Every entry gets the same metadata, so the same image gives the same archive bytes. */
const EPOCH = new Date(0);
const END_OF_ARCHIVE = Buffer.alloc(1024);

export class TarFileWriter {
  /** The file the archive becomes at `finish()`. */
  readonly target: string;
  /** The temporary file next to it. */
  readonly tempPath: string;
  private readonly description: string;
  private fh: FileHandle | undefined;
  /** Where the next entry's header goes. */
  private pos = 0;
  private busy = false;
  private closed = false;
  /** A failed entry could not be cut out again: the archive cannot be finished. */
  private broken: FerryError | undefined;

  private constructor(target: string, tempPath: string, fh: FileHandle, description: string) {
    this.target = target;
    this.tempPath = tempPath;
    this.fh = fh;
    this.description = description;
  }

  /** Start a new archive for `target` (a sibling temporary file, so the final rename is atomic). */
  static async create(target: string, description: string): Promise<TarFileWriter> {
    const tempPath = join(dirname(target), `.${basename(target)}.ferry-${randomBytes(6).toString('hex')}.tmp`);
    let fh: FileHandle;
    try {
      fh = await open(tempPath, 'wx', 0o644);
    } catch (e) {
      throw writeError(e, description);
    }
    const w = new TarFileWriter(target, tempPath, fh, description);
    await w.writeAt(END_OF_ARCHIVE, 0);
    return w;
  }

  /** Bytes of archive written so far (entries only). */
  get size(): number {
    return this.pos;
  }

  async addDirectory(name: string): Promise<void> {
    await this.addEntry({ name, type: 'directory', mode: 0o755 }, 0, emptyChunks());
  }

  async addBuffer(name: string, data: Buffer): Promise<void> {
    await this.addEntry({ name, type: 'file', mode: 0o644 }, data.byteLength, oneChunk(data));
  }

  /**
   * An entry of exactly `size` bytes from `chunks`. If the chunks fail or come out a different
   * length, the entry is removed again (the file is truncated to where it began) and the error
   * is thrown: the archive is as it was before the call.
   */
  async addStream(name: string, size: number, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    await this.addEntry({ name, type: 'file', mode: 0o644 }, size, chunks, signal);
  }

  private async addEntry(header: Pick<Header, 'name' | 'type' | 'mode'>, size: number, chunks: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<void> {
    if (this.closed || !this.fh) throw new FerryError('INTERNAL', `${this.description} is already closed`, { side: 'destination' });
    if (this.busy) throw new FerryError('INTERNAL', `${this.description} takes one entry at a time`, { side: 'destination' });
    if (this.broken) throw this.broken;
    this.busy = true;
    const start = this.pos;
    const p = pack();
    p.on('error', () => {}); // failures reach us through the entry's callback and the drain loop
    let written = 0;
    // The pack's output, header to end-of-archive marker, goes to the file at `start`.
    const drained = (async () => {
      for await (const piece of p as AsyncIterable<Buffer>) {
        await this.writeAt(piece, start + written);
        written += piece.byteLength;
      }
    })();
    drained.catch(() => {}); // observed below; never an unhandled rejection meanwhile
    try {
      await new Promise<void>((resolve, reject) => {
        let failed = false;
        const sink = p.entry({ ...header, size, mtime: EPOCH, uid: 0, gid: 0 }, (err) => {
          if (err) {
            failed = true;
            reject(err);
          } else resolve();
        });
        sink.on('error', () => {}); // reported through the callback above
        feed(sink, chunks, size, () => failed, signal, this.description).then(
          () => sink.end(null),
          (e: unknown) => {
            failed = true;
            reject(e);
            sink.destroy(e instanceof Error ? e : new Error(String(e)));
          },
        );
      });
      p.finalize();
      await drained;
      // The entry plus its end-of-archive marker is on disk; the next entry starts at the marker.
      this.pos = start + written - END_OF_ARCHIVE.byteLength;
    } catch (e) {
      p.destroy(null);
      // A failed write to the file is the real cause of whatever the entry reported.
      const writeFailure = await drained.then(
        () => undefined,
        (x: unknown) => (x instanceof FerryError ? x : undefined),
      );
      try {
        await this.rollback(start);
      } catch (rollbackError) {
        this.broken = writeError(rollbackError, this.description);
      }
      throw writeFailure ?? e;
    } finally {
      this.busy = false;
    }
  }

  private async rollback(start: number): Promise<void> {
    if (!this.fh) return;
    await this.fh.truncate(start);
    await this.writeAt(END_OF_ARCHIVE, start);
    this.pos = start;
  }

  private async writeAt(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.byteLength) {
        const { bytesWritten } = await this.fh!.write(buf, done, buf.byteLength - done, position + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw writeError(e, this.description);
    }
  }

  /** End the archive (its marker is already there), flush it to disk and rename it into place. */
  async finish(): Promise<void> {
    if (this.closed || !this.fh) throw new FerryError('INTERNAL', `${this.description} is already closed`, { side: 'destination' });
    if (this.busy) throw new FerryError('INTERNAL', `${this.description} still has an entry in progress`, { side: 'destination' });
    if (this.broken) throw this.broken;
    this.closed = true;
    const fh = this.fh;
    this.fh = undefined;
    try {
      await fh.truncate(this.pos + END_OF_ARCHIVE.byteLength);
      await fh.sync();
      await fh.close();
      await rename(this.tempPath, this.target);
    } catch (e) {
      await fh.close().catch(() => {});
      await unlink(this.tempPath).catch(() => {});
      throw writeError(e, this.description);
    }
    await syncDirectory(dirname(this.target));
  }

  /** Throw the archive away. Safe to call at any time, more than once. */
  async discard(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close().catch(() => {});
    await unlink(this.tempPath).catch(() => {});
  }
}

interface EntrySink {
  write(chunk: Buffer): boolean;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  off(event: string, listener: (...args: unknown[]) => void): unknown;
  destroyed?: boolean;
}

async function feed(
  sink: EntrySink,
  chunks: AsyncIterable<Buffer>,
  size: number,
  failed: () => boolean,
  signal: AbortSignal | undefined,
  description: string,
): Promise<void> {
  let n = 0;
  for await (const chunk of chunks) {
    if (failed()) throw new FerryError('INTERNAL', `${description}: the archive entry failed`, { side: 'destination' });
    if (signal?.aborted) throw new AbortedError();
    n += chunk.byteLength;
    if (n > size) throw new FerryError('DIGEST_MISMATCH', `${description}: a blob delivered more than its declared ${size} bytes`, { side: 'source' });
    if (chunk.byteLength > 0 && !sink.write(chunk)) await drain(sink);
  }
  if (n !== size) throw new FerryError('DIGEST_MISMATCH', `${description}: a blob delivered ${n} of its declared ${size} bytes`, { side: 'source' });
}

/** Wait for room in the entry, or for its end (an error or a close: the entry is gone). */
function drain(sink: EntrySink): Promise<void> {
  if (sink.destroyed) return Promise.reject(new Error('archive entry closed'));
  return new Promise((resolve, reject) => {
    const done = (err?: unknown) => {
      sink.off('drain', onDrain);
      sink.off('error', onError);
      sink.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onError = (e: unknown) => done(e ?? new Error('archive entry failed'));
    const onClose = () => done(new Error('archive entry closed'));
    sink.on('drain', onDrain);
    sink.on('error', onError);
    sink.on('close', onClose);
  });
}

async function* emptyChunks(): AsyncGenerator<Buffer> {}
async function* oneChunk(b: Buffer): AsyncGenerator<Buffer> {
  if (b.byteLength > 0) yield b;
}

export function writeError(e: unknown, description: string): FerryError {
  if (e instanceof FerryError) return e;
  return new FerryError('DESTINATION_REJECTED', `cannot write ${description}: ${(e as Error).message}`, { side: 'destination', cause: e });
}

/** fsync a directory so a rename in it survives a crash (best effort: not every filesystem allows it). */
export async function syncDirectory(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // EISDIR/EINVAL on some platforms: nothing more we can do.
  } finally {
    await fh?.close().catch(() => {});
  }
}
