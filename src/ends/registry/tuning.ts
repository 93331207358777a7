// Transfer tuning from the environment, the same for `ferry copy`, `ferry sync` and the agent
// (README, "Transfer tuning"). Bad values are usage errors that name the variable.
import { UsageError } from '../../errors.ts';
import { DEFAULT_READ_FLOOR, type ReadFloor } from '../../transport/read-floor.ts';
import { DEFAULT_UPLOAD_TUNING, TIMED_CHUNKS, type UploadTuning } from './blob-upload.ts';
import { ecrLayerTuning } from './ecr-layer-upload.ts';

export interface TransferTuning {
  upload: UploadTuning;
  /** A response body that sends no byte for this long is stalled (undefined: the transport's default, 60 s). */
  bodyTimeoutMs?: number;
  /** A response body slower than this is stalled too (undefined: the transport's default, under 16 KiB/s for 30 s). */
  readFloor?: ReadFloor;
  /** HTTP/2 to registries that offer it (undefined: on). */
  http2?: boolean;
  /** HTTP/2 connections to one registry at most (undefined: the transport's default). */
  http2Connections?: number;
}

export function transferTuning(env: NodeJS.ProcessEnv): TransferTuning {
  const bodyTimeoutMs = readTimeoutMs(env);
  const floor = readFloor(env);
  return {
    upload: { ...uploadTuning(env), ...ecrLayerTuning(env), ...pipeTuning(env) },
    ...(bodyTimeoutMs !== undefined ? { bodyTimeoutMs } : {}),
    ...(floor !== undefined ? { readFloor: floor } : {}),
    ...http2Tuning(env),
  };
}

/**
 * FERRY_HTTP2: `off` speaks HTTP/1.1 to every registry (default `on`: HTTP/2 where a registry
 * offers it by ALPN, src/transport/h2.ts). FERRY_HTTP2_CONNECTIONS: the most HTTP/2 connections
 * to one registry (1-64; default 8).
 */
export function http2Tuning(env: NodeJS.ProcessEnv): Pick<TransferTuning, 'http2' | 'http2Connections'> {
  const out: Pick<TransferTuning, 'http2' | 'http2Connections'> = {};
  const onOff = env.FERRY_HTTP2?.trim().toLowerCase();
  if (onOff) {
    if (onOff !== 'on' && onOff !== 'off') throw new UsageError(`FERRY_HTTP2 must be on or off, not "${env.FERRY_HTTP2}"`);
    out.http2 = onOff === 'on';
  }
  const raw = env.FERRY_HTTP2_CONNECTIONS?.trim();
  if (raw) {
    const n = Number(raw);
    if (!/^\d+$/.test(raw) || n < 1 || n > 64) throw new UsageError(`FERRY_HTTP2_CONNECTIONS must be a whole number from 1 to 64, not "${raw}"`);
    out.http2Connections = n;
  }
  return out;
}

/**
 * FERRY_READ_FLOOR_BYTES_PER_SECOND and FERRY_READ_FLOOR_SECONDS: a response body that sends
 * fewer bytes a second than the floor over a whole window (time spent waiting for it) is treated
 * as stalled, like a silent one: the download resumes with Range on a new connection, and after
 * five such reads in a row the copy fails naming the host and the rate. Default: under 16 KiB/s
 * for 30 s; a floor of 0 turns it off.
 */
export function readFloor(env: NodeJS.ProcessEnv): ReadFloor | undefined {
  const rawRate = env.FERRY_READ_FLOOR_BYTES_PER_SECOND?.trim();
  const rawWindow = env.FERRY_READ_FLOOR_SECONDS?.trim();
  if (!rawRate && !rawWindow) return undefined;
  let bytesPerSecond = DEFAULT_READ_FLOOR.bytesPerSecond;
  let windowMs = DEFAULT_READ_FLOOR.windowMs;
  if (rawRate) {
    const n = Number(rawRate);
    if (!/^\d+$/.test(rawRate) || !Number.isSafeInteger(n) || n > 1024 * 1024 * 1024) {
      throw new UsageError(`FERRY_READ_FLOOR_BYTES_PER_SECOND must be a whole number of bytes a second (0 for no floor), not "${rawRate}"`);
    }
    bytesPerSecond = n;
  }
  if (rawWindow) {
    const s = Number(rawWindow);
    if (!/^\d+(\.\d+)?$/.test(rawWindow) || !(s >= 0.1 && s <= 3600)) {
      throw new UsageError(`FERRY_READ_FLOOR_SECONDS must be a number of seconds from 0.1 to 3600, not "${rawWindow}"`);
    }
    windowMs = Math.round(s * 1000);
  }
  return { bytesPerSecond, windowMs };
}

/**
 * FERRY_UPLOAD_CHUNK_BYTES sets a fixed PATCH size for chunked uploads, and blobs larger than one
 * chunk are chunked: smaller chunks bound what an interruption costs (at most one chunk re-sent
 * where the registry reports upload status) at the price of more requests. Unset: chunks sized by
 * time (TIMED_CHUNKS: 16 MiB first, then what 15 s carry, up to 64 MiB).
 */
export function uploadTuning(env: NodeJS.ProcessEnv): UploadTuning {
  const raw = env.FERRY_UPLOAD_CHUNK_BYTES?.trim();
  if (!raw) return { ...DEFAULT_UPLOAD_TUNING, ...TIMED_CHUNKS };
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1024 * 1024 || n > 1024 * 1024 * 1024) {
    throw new UsageError(`FERRY_UPLOAD_CHUNK_BYTES must be a whole number of bytes from 1 MiB to 1 GiB, not "${raw}"`);
  }
  // A blob larger than one chunk goes up in chunks.
  return { ...DEFAULT_UPLOAD_TUNING, chunkBytes: n, monolithicMaxBytes: Math.min(DEFAULT_UPLOAD_TUNING.monolithicMaxBytes, n) };
}

/**
 * FERRY_PIPE_MIN_BYTES: registry-to-registry blobs from this size on move over ferry's own
 * connections, hashed as they pass (src/ends/registry/blob-pipe.ts; default: every blob). `off` sends every
 * blob the regular way.
 */
export function pipeTuning(env: NodeJS.ProcessEnv): Pick<UploadTuning, 'pipeMinBytes'> {
  const raw = env.FERRY_PIPE_MIN_BYTES?.trim();
  if (!raw) return {};
  if (raw === 'off') return { pipeMinBytes: Number.POSITIVE_INFINITY };
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n)) throw new UsageError(`FERRY_PIPE_MIN_BYTES must be a whole number of bytes, or off, not "${raw}"`);
  return { pipeMinBytes: n };
}

/**
 * FERRY_READ_TIMEOUT_SECONDS: a response body (a blob download) that sends no byte for this long
 * is treated as stalled; the download resumes with Range from the last byte received. Default 60.
 */
export function readTimeoutMs(env: NodeJS.ProcessEnv): number | undefined {
  const raw = env.FERRY_READ_TIMEOUT_SECONDS?.trim();
  if (!raw) return undefined;
  const s = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw) || !(s >= 0.1 && s <= 3600)) {
    throw new UsageError(`FERRY_READ_TIMEOUT_SECONDS must be a number of seconds from 0.1 to 3600, not "${raw}"`);
  }
  return Math.round(s * 1000);
}
