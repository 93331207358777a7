// The fast path for a blob going from a registry to a registry: the source's bytes are read on
// ferry's own connection (into one reused buffer over plain HTTP), hashed, and written straight into the
// destination's PATCH or PUT (src/transport/raw-http.ts has why). It keeps the regular path's
// guarantees: every byte is hashed before it is written, the last piece goes out only once the
// digest checks out, and a broken download continues with Range inside the same upload request.
// Blobs below `pipeMinBytes`, sources that are not registries, proxies and answers that are not
// plainly the bytes (redirect loops, refusals, chunked encoding) take the regular path.
import { FerryError, NetworkError } from '../../errors.ts';
import { parseDigest, type Digest } from '../../reference/digest.ts';
import type { BodyReader, UploadSink } from '../../transport/raw-http.ts';
import { RegistrySource } from './source.ts';
import type { ImageSource } from '../types.ts';
import type { RegistryClient } from '../../registry/client.ts';
import { checkDigest, type BlobHasher } from '../../blob/verify.ts';
import { gaveUpSlow, isSlowBody } from '../../transport/read-floor.ts';

/**
 * Blobs from this size on take the pipe: by default every one. ferry's own connections are kept
 * alive between blobs (src/transport/raw-http.ts), so a small blob no longer pays for fresh
 * connections, and the pipe's per-request work is less than the regular path's. Measured on
 * `many` (40 layers of 100–700 KiB), interleaved runs: between plain-HTTP registries 0.81 s and
 * 0.435 CPU-s against 0.91 s and 0.52; between TLS registries (the same machine, by its LAN
 * address) 0.97 s and 0.665 CPU-s against 1.035 s and 0.735 with the pipe from 32 MiB, the old
 * TLS default (docs/performance.md, eighth round). Not measured across a WAN: no such network here.
 */
export const DEFAULT_PIPE_MIN_BYTES = 0;

/** The size from which a registry-to-registry blob takes the pipe (`override`: FERRY_PIPE_MIN_BYTES). */
export function pipeMinBytes(override: number | undefined): number {
  return override ?? DEFAULT_PIPE_MIN_BYTES;
}

export interface PipeRequest {
  source: ImageSource;
  destination: RegistryClient;
  digest: Digest;
  size: number;
  pipeMinBytes: number | undefined;
  signal?: AbortSignal | undefined;
  onBytes?: ((n: number) => void) | undefined;
  onResume?: ((offset: number, error: FerryError) => void) | undefined;
  /** Consecutive broken downloads without progress before giving up. */
  maxStalls?: number;
}

/** The source side of a pipe: the blob's bytes from the hasher's offset on, hashed as they pass. */
export class PipedBlobRead {
  private reader: BodyReader | undefined;
  private readonly open: (offset: number) => Promise<BodyReader | undefined>;
  private readonly hasher: BlobHasher;
  private readonly req: PipeRequest;
  private readonly expectedHex: string;

  private constructor(req: PipeRequest, hasher: BlobHasher, first: BodyReader, open: (offset: number) => Promise<BodyReader | undefined>) {
    this.req = req;
    this.hasher = hasher;
    this.reader = first;
    this.open = open;
    this.expectedHex = parseDigest(req.digest).hex;
  }

  /** A pipe from the hasher's offset, or undefined when this blob takes the regular path. */
  static async start(req: PipeRequest, hasher: BlobHasher): Promise<PipedBlobRead | undefined> {
    const { source, size } = req;
    if (!(source instanceof RegistrySource) || !req.destination.canPipe()) return undefined;
    if (size < pipeMinBytes(req.pipeMinBytes) || hasher.offset >= size) return undefined;
    const open = (offset: number) => source.client.openBlobRaw(source.repository, req.digest, offset, size, req.signal);
    const first = await open(hasher.offset);
    return first ? new PipedBlobRead(req, hasher, first, open) : undefined;
  }

  /** Write the next `length` bytes into `sink`; a broken download is opened again from where it broke. */
  async pipeInto(sink: UploadSink, length: number, signal?: AbortSignal): Promise<void> {
    const { req } = this;
    let left = length;
    let stalls = 0;
    while (left > 0) {
      this.reader ??= await this.open(this.hasher.offset);
      if (!this.reader) throw new NetworkError(`${req.source.description} no longer serves ${req.digest} directly from byte ${this.hasher.offset}`, { side: 'source' });
      const before = sink.written;
      try {
        await this.reader.pipeInto(sink, left, (piece) => this.inspect(piece), signal);
        left -= sink.written - before;
      } catch (e) {
        left -= sink.written - before;
        this.reader = undefined;
        const err = e instanceof FerryError ? e : new NetworkError(`download of ${req.digest}: ${(e as Error).message}`, { side: 'source', cause: e });
        // Only a broken download is continued here; everything else is the caller's to judge.
        if (err.side !== 'source' || !err.retryable || signal?.aborted || sink.hasAnswer) throw err;
        // A drip under the read floor counts as no progress (src/transport/read-floor.ts).
        stalls = sink.written > before && !isSlowBody(err) ? 0 : stalls + 1;
        if (stalls >= (req.maxStalls ?? 5)) throw isSlowBody(err) ? gaveUpSlow(err, stalls) : err;
        req.onResume?.(this.hasher.offset, err);
      }
    }
  }

  /** Every piece, before it is written: hashed, and the blob's last piece only once the digest checks out. */
  private inspect(piece: Buffer): void {
    this.hasher.update(piece);
    if (this.hasher.offset === this.req.size) checkDigest(this.hasher, this.expectedHex, this.req.digest, this.req.source.description);
    this.req.onBytes?.(piece.byteLength);
  }

  close(): void {
    this.reader?.close();
    this.reader = undefined;
  }
}
