// Reading response bodies from untrusted servers: always bounded.
import { AbortedError, FerryError, NetworkError, type Side } from '../errors.ts';

/**
 * Read a whole body, failing as soon as it grows past `limit` bytes. A body that breaks off (the
 * connection closed or reset in the middle, a chunked body cut short or malformed) is a
 * retryable NetworkError: the answer can be asked for again.
 */
export async function readBounded(body: AsyncIterable<Uint8Array>, limit: number, what: string, side: Side): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      total += chunk.byteLength;
      if (total > limit) {
        // Stop reading; destroying the stream frees the connection.
        (body as { destroy?: () => void }).destroy?.();
        throw new FerryError(side === 'source' ? 'SOURCE_INVALID' : 'DESTINATION_REJECTED', `${what} is larger than the ${limit}-byte limit`, { side });
      }
      parts.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }
  } catch (e) {
    throw bodyError(e, what, side);
  }
  return Buffer.concat(parts, total);
}

/** Why reading a body failed, as a FerryError: a cancel stays a cancel, anything else from the connection is a network failure. */
export function bodyError(e: unknown, what: string, side: Side | undefined): FerryError {
  if (e instanceof FerryError) return e;
  const err = e as Error & { code?: string };
  if (err?.name === 'AbortError' || err?.code === 'UND_ERR_ABORTED') return new AbortedError(`reading ${what} was cancelled`, { cause: e });
  // undici: UND_ERR_SOCKET ("other side closed"), HTTPParserError (a malformed chunk size), …
  const why = err?.code && !err.message?.includes(err.code) ? `${err.code}: ${err.message}` : (err?.message ?? String(e));
  return new NetworkError(`${what} broke off or was malformed (${why})`, { side, cause: e });
}

/** Discard a body we do not need, so the connection can be reused. */
export async function drain(body: { dump?: () => Promise<void> } & AsyncIterable<Uint8Array>): Promise<void> {
  try {
    if (body.dump) await body.dump();
    else for await (const _ of body);
  } catch {
    // The connection is closed anyway.
  }
}

interface RegistryErrorBody {
  errors?: Array<{ code?: unknown; message?: unknown; detail?: unknown }>;
}

/** Parse a registry's JSON error body into codes and a readable message. */
export function parseRegistryErrors(text: string): { codes: string[]; message: string } {
  try {
    const doc = JSON.parse(text) as RegistryErrorBody;
    if (Array.isArray(doc.errors)) {
      const codes = doc.errors.map((e) => String(e.code ?? '')).filter(Boolean);
      // A string detail says what happened (distribution: "write …/data: no space left on device").
      const message = doc.errors
        .map((e) => [e.code, e.message].filter((x) => typeof x === 'string' && x).join(': ') + (typeof e.detail === 'string' && e.detail && e.detail !== e.message ? ` (${e.detail})` : ''))
        .filter(Boolean)
        .join('; ');
      return { codes, message: message.slice(0, 500) };
    }
  } catch {
    // not JSON
  }
  return { codes: [], message: text.replace(/\s+/g, ' ').trim().slice(0, 200) };
}
