// Reading a tar archive without extracting it: one pass over the headers with positional reads
// (data is skipped, never read) builds a map of entry name → byte range, and entries are then
// read with ranged file streams. Memory stays flat whatever the archive's size, and nothing is
// ever written to disk, so a hostile name cannot land anywhere.
//
// The archive is untrusted. Everything odd is refused with SOURCE_INVALID: absolute names, `..`
// components, links that leave the archive (absolute or climbing above its root), dangling or
// looping links, duplicate names, device and other special entries, sparse files, truncation
// (a header or data running past the end of the file, no end-of-archive block), bad header
// checksums, more than `maxEntries` entries and names longer than MAX_ENTRY_NAME bytes. Relative
// links that stay inside (the ones `docker save` writes for a repeated layer) are resolved.
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { FerryError } from '../errors.ts';

export const MAX_TAR_ENTRIES = 100_000;
export const MAX_ENTRY_NAME = 4096;
/** pax extended headers and GNU long names: far above anything real, far below harm. */
const MAX_EXTENSION_BYTES = 1024 * 1024;
const MAX_LINK_HOPS = 32;
const BLOCK = 512;

/** A regular file inside the archive. */
export interface TarFile {
  /** The entry holding the bytes (a link's target). */
  name: string;
  /** Where its data starts in the archive file. */
  offset: number;
  size: number;
}

type Kind = 'file' | 'directory' | 'symlink' | 'hardlink';

interface Entry {
  name: string;
  kind: Kind;
  offset: number;
  size: number;
  link?: string;
}

export interface TarIndexOptions {
  /** Names the archive in messages, e.g. `oci-archive:/x.tar`. */
  description?: string;
  maxEntries?: number;
}

export class TarIndex {
  readonly path: string;
  readonly description: string;
  /** Size of the archive file when it was indexed. */
  readonly fileSize: number;
  private readonly files: Map<string, TarFile>;

  private constructor(path: string, description: string, fileSize: number, files: Map<string, TarFile>) {
    this.path = path;
    this.description = description;
    this.fileSize = fileSize;
    this.files = files;
  }

  /** Index an archive. A missing file is SOURCE_NOT_FOUND; anything malformed SOURCE_INVALID. */
  static async open(path: string, opts: TarIndexOptions = {}): Promise<TarIndex> {
    const description = opts.description ?? path;
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw openError(e, description);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new FerryError('USAGE', `${description} is not a regular file`, { side: 'source' });
      const entries = await readHeaders(fh, st.size, description, opts.maxEntries ?? MAX_TAR_ENTRIES);
      return new TarIndex(path, description, st.size, resolveLinks(entries, description));
    } finally {
      await fh.close();
    }
  }

  /** The regular file an entry name leads to (following links inside the archive), if any. */
  file(name: string): TarFile | undefined {
    return this.files.get(name);
  }

  /** Every name that leads to a regular file. */
  names(): IterableIterator<string> {
    return this.files.keys();
  }

  /** A whole (small) file; more than `max` bytes is SOURCE_INVALID. */
  async read(file: TarFile, max: number, what: string): Promise<Buffer> {
    if (file.size > max) {
      throw new FerryError('SOURCE_INVALID', `${this.description}: ${what} is ${file.size} bytes, more than the ${max}-byte limit`, { side: 'source' });
    }
    const buf = Buffer.alloc(file.size);
    if (file.size === 0) return buf;
    let fh: FileHandle;
    try {
      fh = await open(this.path, 'r');
    } catch (e) {
      throw openError(e, this.description);
    }
    try {
      await readExact(fh, buf, file.offset, this.description);
    } finally {
      await fh.close();
    }
    return buf;
  }

  /** A file's bytes from `from` to its end, read in 1 MiB pieces. */
  stream(file: TarFile, from: number, signal?: AbortSignal): AsyncIterable<Buffer> {
    if (from >= file.size) return emptyStream();
    return createReadStream(this.path, {
      start: file.offset + from,
      end: file.offset + file.size - 1,
      highWaterMark: 1024 * 1024,
      ...(signal ? { signal } : {}),
    });
  }
}

async function* emptyStream(): AsyncGenerator<Buffer> {}

function invalid(description: string, what: string): FerryError {
  return new FerryError('SOURCE_INVALID', `${description}: ${what}`, { side: 'source' });
}

export function openError(e: unknown, description: string): FerryError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new FerryError('SOURCE_NOT_FOUND', `${description} does not exist`, { side: 'source', cause: e });
  return new FerryError('USAGE', `cannot read ${description}: ${(e as Error).message}`, { side: 'source', cause: e });
}

async function readExact(fh: FileHandle, buf: Buffer, position: number, description: string): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, done, buf.byteLength - done, position + done);
    if (bytesRead === 0) throw invalid(description, `truncated: the file ends at byte ${position + done}, inside data that should reach ${position + buf.byteLength}`);
    done += bytesRead;
  }
}

const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

interface Extension {
  path?: string;
  linkpath?: string;
  size?: number;
}

async function readHeaders(fh: FileHandle, fileSize: number, description: string, maxEntries: number): Promise<Entry[]> {
  const entries: Entry[] = [];
  const seen = new Set<string>();
  const blocks = new BlockReader(fh, description);
  let pos = 0;
  let ext: Extension = {};
  let pendingExtension = false;
  for (;;) {
    if (pos + BLOCK > fileSize) {
      throw invalid(description, pos === fileSize ? `truncated: no end-of-archive block after byte ${pos}` : `truncated: a header at byte ${pos} runs past the end of the file (${fileSize} bytes)`);
    }
    const header = await blocks.at(pos);
    if (isZeroBlock(header)) {
      if (pendingExtension) throw invalid(description, `an extended header at the end of the archive describes no entry`);
      return entries;
    }
    checkChecksum(header, pos, description);
    const typeByte = header[156]!;
    const type = typeByte === 0 ? '0' : String.fromCharCode(typeByte);
    let size = sizeField(header, pos, description);
    const dataOffset = pos + BLOCK;
    const end = dataOffset + padded(size);

    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') {
      if (size > MAX_EXTENSION_BYTES) throw invalid(description, `an extended header at byte ${pos} is ${size} bytes (limit ${MAX_EXTENSION_BYTES})`);
      if (end > fileSize) throw invalid(description, `truncated: the extended header at byte ${pos} runs past the end of the file`);
      const data = Buffer.alloc(size);
      await readExact(fh, data, dataOffset, description);
      if (type === 'x') {
        Object.assign(ext, parsePax(data, pos, description));
        pendingExtension = true;
      } else if (type === 'g') {
        parsePax(data, pos, description); // validated, then ignored: it sets no names or sizes we use
      } else {
        const value = cString(data, 0, data.byteLength);
        if (type === 'L') ext.path ??= value;
        else ext.linkpath ??= value;
        pendingExtension = true;
      }
      pos = end;
      continue;
    }

    if (ext.size !== undefined) size = ext.size;
    const realEnd = dataOffset + padded(size);
    const rawName = ext.path ?? ustarName(header);
    const rawLink = ext.linkpath ?? cString(header, 157, 257);
    ext = {};
    pendingExtension = false;

    let kind: Kind;
    switch (type) {
      case '0':
      case '7':
        kind = 'file';
        break;
      case '1':
        kind = 'hardlink';
        break;
      case '2':
        kind = 'symlink';
        break;
      case '5':
        kind = 'directory';
        break;
      default:
        throw invalid(description, `entry "${printable(rawName)}" has unsupported type '${printable(type)}' (only files, directories and links are allowed)`);
    }
    if (realEnd > fileSize) {
      throw invalid(description, `truncated or lying: entry "${printable(rawName)}" declares ${size} bytes from byte ${dataOffset}, past the end of the file (${fileSize} bytes)`);
    }
    const name = normalizeEntryName(rawName, description);
    pos = realEnd;
    if (name === '') {
      if (kind === 'directory') continue; // "./": the archive's root
      throw invalid(description, `an entry has an empty name`);
    }
    if (seen.has(name)) throw invalid(description, `duplicate entry "${name}"`);
    seen.add(name);
    if (entries.length >= maxEntries) throw invalid(description, `more than ${maxEntries} entries`);
    const entry: Entry = { name, kind, offset: dataOffset, size: kind === 'file' ? size : 0 };
    if (kind === 'symlink' || kind === 'hardlink') {
      if (rawLink === '') throw invalid(description, `link "${name}" has no target`);
      if (Buffer.byteLength(rawLink) > MAX_ENTRY_NAME) throw invalid(description, `link "${name}" has a target longer than ${MAX_ENTRY_NAME} bytes`);
      entry.link = rawLink;
    }
    entries.push(entry);
  }
}

/** Headers through a 64 KiB window: an archive of many small entries costs few reads. */
class BlockReader {
  private readonly fh: FileHandle;
  private readonly description: string;
  private readonly window = Buffer.alloc(64 * 1024);
  private start = 0;
  private length = 0;

  constructor(fh: FileHandle, description: string) {
    this.fh = fh;
    this.description = description;
  }

  /** The 512-byte block at `pos` (the caller checked it lies within the file). */
  async at(pos: number): Promise<Buffer> {
    if (pos < this.start || pos + BLOCK > this.start + this.length) {
      let got = 0;
      while (got < BLOCK) {
        const { bytesRead } = await this.fh.read(this.window, got, this.window.byteLength - got, pos + got);
        if (bytesRead === 0) throw invalid(this.description, `truncated: the file ends at byte ${pos + got}, inside a header`);
        got += bytesRead;
      }
      this.start = pos;
      this.length = got;
    }
    return this.window.subarray(pos - this.start, pos - this.start + BLOCK);
  }
}

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.byteLength; i++) if (b[i] !== 0) return false;
  return true;
}

function checkChecksum(header: Buffer, pos: number, description: string): void {
  const stored = octalString(header.toString('latin1', 148, 156));
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : header[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  if (stored === undefined || (stored !== unsigned && stored !== signed)) {
    throw invalid(description, `not a tar archive, or corrupt: bad header checksum at byte ${pos}`);
  }
}

function octalString(raw: string): number | undefined {
  const s = raw.replace(/^[\0 ]+/, '').replace(/[\0 ]+$/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return undefined;
  const n = parseInt(s, 8);
  return Number.isSafeInteger(n) ? n : undefined;
}

function sizeField(header: Buffer, pos: number, description: string): number {
  const first = header[124]!;
  if (first & 0x80) {
    // GNU base-256: 0x80 then a big-endian number (0xff would be negative).
    if (first !== 0x80) throw invalid(description, `negative size in the header at byte ${pos}`);
    let n = 0;
    for (let i = 125; i < 136; i++) n = n * 256 + header[i]!;
    if (!Number.isSafeInteger(n)) throw invalid(description, `impossible size in the header at byte ${pos}`);
    return n;
  }
  const n = octalString(header.toString('latin1', 124, 136));
  if (n === undefined) throw invalid(description, `unreadable size in the header at byte ${pos}`);
  return n;
}

function cString(buf: Buffer, start: number, end: number): string {
  const nul = buf.indexOf(0, start);
  return buf.toString('utf8', start, nul >= 0 && nul < end ? nul : end);
}

function ustarName(header: Buffer): string {
  const name = cString(header, 0, 100);
  // POSIX ustar splits long names into prefix + name; GNU tar ("ustar  ") uses those bytes otherwise.
  if (header.toString('latin1', 257, 263) === 'ustar\0') {
    const prefix = cString(header, 345, 500);
    if (prefix !== '') return `${prefix}/${name}`;
  }
  return name;
}

function parsePax(data: Buffer, pos: number, description: string): Extension {
  const out: Extension = {};
  let i = 0;
  while (i < data.byteLength) {
    if (data[i] === 0) break;
    const space = data.indexOf(0x20, i);
    const lenText = space > i ? data.toString('latin1', i, space) : '';
    const len = /^[0-9]{1,8}$/.test(lenText) ? Number(lenText) : NaN;
    if (!(len > space - i + 1) || i + len > data.byteLength || data[i + len - 1] !== 0x0a) {
      throw invalid(description, `malformed pax header at byte ${pos}`);
    }
    const record = data.subarray(space + 1, i + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw invalid(description, `malformed pax record at byte ${pos}`);
    const key = record.toString('utf8', 0, eq);
    const value = record.toString('utf8', eq + 1);
    if (key === 'path') out.path = value;
    else if (key === 'linkpath') out.linkpath = value;
    else if (key === 'size') {
      if (!/^[0-9]{1,16}$/.test(value) || !Number.isSafeInteger(Number(value))) throw invalid(description, `bad pax size "${printable(value)}" at byte ${pos}`);
      out.size = Number(value);
    }
    i += len;
  }
  return out;
}

function printable(s: string): string {
  const cut = s.length > 200 ? `${s.slice(0, 200)}…` : s;
  // eslint-disable-next-line no-control-regex
  return cut.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/**
 * An archive entry name in canonical form: no leading `./`, no empty or `.` components, no
 * trailing `/`. Absolute names, `..` components, backslashes, NUL and over-long names are refused.
 */
export function normalizeEntryName(raw: string, description: string): string {
  if (Buffer.byteLength(raw) > MAX_ENTRY_NAME) throw invalid(description, `an entry name is longer than ${MAX_ENTRY_NAME} bytes`);
  if (raw.includes('\0')) throw invalid(description, `entry name "${printable(raw)}" contains a NUL character`);
  if (raw.includes('\\')) throw invalid(description, `entry name "${printable(raw)}" contains a backslash`);
  if (raw.startsWith('/')) throw invalid(description, `entry name "${printable(raw)}" is absolute`);
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw invalid(description, `entry name "${printable(raw)}" climbs out of the archive with ".."`);
  return parts.join('/');
}

/** Every entry that leads to a regular file, by name, links resolved. */
function resolveLinks(entries: Entry[], description: string): Map<string, TarFile> {
  const files = new Map<string, TarFile>();
  if (!entries.some((e) => e.kind === 'symlink' || e.kind === 'hardlink')) {
    for (const e of entries) if (e.kind === 'file') files.set(e.name, { name: e.name, offset: e.offset, size: e.size });
    return files;
  }
  const byName = new Map(entries.map((e) => [e.name, e]));
  const resolve = (start: Entry): TarFile | undefined => {
    let e = start;
    for (let hops = 0; hops <= MAX_LINK_HOPS; hops++) {
      if (e.kind === 'file') return { name: e.name, offset: e.offset, size: e.size };
      if (e.kind === 'directory') return undefined;
      const targetName = linkTarget(e, description);
      const next = byName.get(targetName);
      if (!next) throw invalid(description, `link "${start.name}" points at "${targetName}", which is not in the archive`);
      e = next;
    }
    throw invalid(description, `link "${start.name}" is part of a loop (more than ${MAX_LINK_HOPS} links)`);
  };
  for (const e of entries) {
    const f = resolve(e);
    if (f) files.set(e.name, f);
  }
  return files;
}

/** A link's target as an entry name: symlinks are relative to their directory, hard links to the archive root. */
function linkTarget(e: Entry, description: string): string {
  const link = e.link!;
  if (link.startsWith('/')) throw invalid(description, `link "${e.name}" points outside the archive (absolute target "${printable(link)}")`);
  if (link.includes('\0') || link.includes('\\')) throw invalid(description, `link "${e.name}" has an unusable target "${printable(link)}"`);
  const parts = e.kind === 'symlink' ? e.name.split('/').slice(0, -1) : [];
  for (const p of link.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') {
      if (parts.length === 0) throw invalid(description, `link "${e.name}" points outside the archive ("${printable(link)}")`);
      parts.pop();
    } else parts.push(p);
  }
  return parts.join('/');
}
