// Content digests: parsing, validation and incremental hashing. No I/O.
import { createHash, type Hash } from 'node:crypto';
import { UsageError } from '../errors.ts';

export type DigestAlgorithm = 'sha256' | 'sha512';

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };

/** A validated digest string like `sha256:<64 lowercase hex>`. */
export type Digest = string;

export interface ParsedDigest {
  algorithm: DigestAlgorithm;
  hex: string;
}

const DIGEST_SHAPE = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;

/** Parse and validate a digest; throws UsageError quoting the bad part. */
export function parseDigest(value: string): ParsedDigest {
  const m = DIGEST_SHAPE.exec(value);
  if (!m) throw new UsageError(`invalid digest "${value}": expected <algorithm>:<hex>, e.g. sha256:<64 hex characters>`);
  const algorithm = m[1]!;
  const hex = m[2]!;
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new UsageError(`unsupported digest algorithm "${algorithm}" in "${value}": ferry accepts sha256 and sha512`);
  }
  const want = HEX_LENGTH[algorithm];
  if (hex.length !== want || !/^[a-f0-9]+$/.test(hex)) {
    throw new UsageError(`invalid ${algorithm} digest "${value}": the hex part "${hex}" must be ${want} lowercase hex characters`);
  }
  return { algorithm, hex };
}

export function isDigest(value: string): boolean {
  try {
    parseDigest(value);
    return true;
  } catch {
    return false;
  }
}

/** Digest of a complete buffer. */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): Digest {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/** Incremental hasher for a digest being verified as bytes stream past. */
export class DigestVerifier {
  readonly expected: Digest;
  readonly algorithm: DigestAlgorithm;
  private readonly hash: Hash;
  bytes = 0;

  constructor(expected: Digest) {
    this.expected = expected;
    this.algorithm = parseDigest(expected).algorithm;
    this.hash = createHash(this.algorithm);
  }

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.bytes += chunk.byteLength;
  }

  /** The digest of everything seen so far (finalizes the hash: call once). */
  actual(): Digest {
    return `${this.algorithm}:${this.hash.digest('hex')}`;
  }
}
