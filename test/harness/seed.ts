// Everything random in the test suite comes from one seed, so a failing run can be replayed
// exactly: `FERRY_TEST_SEED=<seed> npm test` (scripts/test.mjs prints the seed it used).
import { createCipheriv, createHash } from 'node:crypto';
import { Readable } from 'node:stream';

/** The suite seed: `FERRY_TEST_SEED`, or "1" when unset so a bare `node --test` run is reproducible too. */
export const SUITE_SEED: string = process.env.FERRY_TEST_SEED?.trim() || '1';

/** A seed string for one named use, mixed with the suite seed (e.g. `seedFor('layer/app:v1/0')`). */
export function seedFor(label: string): string {
  return `${SUITE_SEED}/${label}`;
}

export interface Rng {
  /** An integer in [0, n). */
  int(n: number): number;
  /** A float in [0, 1). */
  float(): number;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
}

/** mulberry32: tiny, fast and good enough to pick sizes, orders and fault points in tests. */
export function createRng(seed: string | number = SUITE_SEED): Rng {
  let state = typeof seed === 'number' ? seed >>> 0 : createHash('sha256').update(seed).digest().readUInt32LE(0);
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int(n) {
      if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`rng.int(n) needs a positive integer, got ${n}`);
      return Math.floor(next() * n);
    },
    float: next,
    pick(items) {
      if (items.length === 0) throw new RangeError('rng.pick() on an empty array');
      return items[Math.floor(next() * items.length)] as (typeof items)[number];
    },
  };
}

// AES-256-CTR keystream: deterministic, incompressible and ~GB/s, so layers of hundreds of MiB
// cost little. The key is sha256(seed); the IV is fixed because the key already differs per seed.
function keystream(seed: string) {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
}

/** `size` pseudo-random bytes determined by `seed` alone. Same bytes as `seededStream(seed, size)`. */
export function seededBytes(seed: string, size: number): Buffer {
  checkSize(size);
  return keystream(seed).update(Buffer.alloc(size));
}

const PIECE = 1024 * 1024;

/**
 * The same bytes as `seededBytes(seed, size)`, produced lazily in 1 MiB pieces so multi-hundred-MiB
 * layers never sit in memory. Each call returns a fresh stream starting at byte 0.
 */
export function seededStream(seed: string, size: number): Readable {
  checkSize(size);
  const cipher = keystream(seed);
  const zeros = Buffer.alloc(Math.min(PIECE, Math.max(size, 1)));
  let left = size;
  return new Readable({
    read() {
      if (left === 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, zeros.length);
      left -= n;
      this.push(cipher.update(n === zeros.length ? zeros : zeros.subarray(0, n)));
    },
  });
}

/** sha256 digest and size of `seededStream(seed, size)`, computed without holding the bytes. */
export async function seededDigest(seed: string, size: number): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  for await (const chunk of seededStream(seed, size)) hash.update(chunk as Buffer);
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid byte count ${size}`);
}
