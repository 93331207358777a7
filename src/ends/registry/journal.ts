// The journal of open uploads: what a restarted ferry needs to continue a chunked blob upload
// that a crash (SIGKILL, power loss) interrupted. One file per (destination registry,
// repository, blob digest) in `<state-dir>/journal/`, rewritten atomically (temp file, fsync,
// rename) after every acknowledged chunk, removed when the blob commits or when the upload
// fails cleanly (its session is then DELETEd too).
//
// A file holds {"entry": {...}, "sha256": <hex of JSON.stringify(entry)>}: a torn or edited file
// fails the checksum (or the JSON parse, or the shape check) and is reported with a warning and
// ignored, never trusted and never fatal. The hash state of the blob is not stored: see
// docs/resume.md (the prefix is re-read from the source to rebuild it).
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../../log/logger.ts';
import { AbortedError } from '../../errors.ts';
import { TEMP_MARK, atomicWriteFile } from '../../util/atomic-file.ts';

/**
 * Abort a copy with this reason to suspend it rather than cancel it: journaled upload sessions
 * are kept (not DELETEd) for the next process to continue. The agent uses it on a hard stop,
 * `ferry copy` on a second Ctrl-C or when its grace runs out. An upload that was parked (its
 * `park` signal: stop at the next point it can be continued from) stops with it too.
 */
export const SUSPEND = new AbortedError('suspended: open uploads are kept to be resumed');

/** Whether an upload is stopping for now, keeping its journaled session: suspended, or parked. */
export function suspending(signal: AbortSignal | undefined, park: AbortSignal | undefined): boolean {
  return (signal?.aborted === true && signal.reason === SUSPEND) || park?.aborted === true;
}

export const JOURNAL_VERSION = 1;
/** A journal file is a few hundred bytes; anything much larger is not ours. */
const MAX_JOURNAL_FILE_BYTES = 64 * 1024;

export interface JournalEntry {
  version: number;
  /** Destination registry host. */
  registry: string;
  /** Destination repository. */
  repository: string;
  digest: string;
  size: number;
  /** The newest upload Location the registry returned (absolute URL); empty for an ECR layer-API upload. */
  location: string;
  /** Bytes the registry acknowledged at `location` (or under `upload_id`). */
  offset: number;
  /** ECR's layer-upload API: the uploadId (src/ends/registry/ecr-layer-upload.ts). Absent for Docker-API uploads. */
  upload_id?: string;
  /** What the copy read from (the source reference as written, normalized). */
  source: string;
  /** Who opened the upload: `copy` (ferry copy / sync), or `job <id>` (the agent). Older entries lack it. */
  owner?: string;
  started_at: string;
  updated_at: string;
}

export interface JournalKey {
  registry: string;
  repository: string;
  digest: string;
}

export class UploadJournal {
  readonly dir: string;
  private readonly logger: Logger;
  private ready: Promise<void> | undefined;
  /**
   * The journal's file names, listed once on the first get() and kept up to date with this
   * instance's own writes, so that a blob with no entry (nearly every blob) costs no failed open.
   * Entries another live process writes later are not seen: continuing another process's open
   * upload would be wrong anyway. Undefined inside: the directory could not be listed, so every
   * get() looks for its file.
   */
  private names: Promise<Set<string> | undefined> | undefined;

  /** `dir` is the journal directory itself (`<state-dir>/journal`); it is created on first write. */
  constructor(dir: string, logger: Logger) {
    this.dir = dir;
    this.logger = logger;
  }

  static inStateDir(stateDir: string, logger: Logger): UploadJournal {
    return new UploadJournal(join(stateDir, 'journal'), logger);
  }

  fileFor(key: JournalKey): string {
    const id = createHash('sha256').update(`${key.registry}\n${key.repository}\n${key.digest}`).digest('hex');
    return join(this.dir, `${id}.json`);
  }

  /** The entry for this blob, or undefined (none, or unreadable: then a warning is logged and the file removed). */
  async get(key: JournalKey): Promise<JournalEntry | undefined> {
    const path = this.fileFor(key);
    const names = await this.listNames();
    if (names && !names.has(basename(path))) return undefined;
    const entry = await this.readFile(path);
    if (!entry) return undefined;
    if (entry.registry !== key.registry || entry.repository !== key.repository || entry.digest !== key.digest) {
      this.logger.warn({ file: path }, 'journal entry does not match its file name; ignoring it');
      names?.delete(basename(path));
      await unlink(path).catch(() => undefined);
      return undefined;
    }
    return entry;
  }

  /** Every readable entry for one destination repository. */
  async list(registry: string, repository: string): Promise<JournalEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      this.logger.warn({ dir: this.dir, err: (e as Error).message }, 'cannot read the upload journal; ignoring it');
      return [];
    }
    const out: JournalEntry[] = [];
    for (const name of names) {
      if (name.includes(TEMP_MARK)) continue;
      if (!name.endsWith('.json')) continue;
      const entry = await this.readFile(join(this.dir, name));
      if (entry && entry.registry === registry && entry.repository === repository) out.push(entry);
    }
    return out;
  }

  async put(entry: JournalEntry): Promise<void> {
    this.ready ??= mkdir(this.dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    try {
      await this.ready;
    } catch (e) {
      this.ready = undefined;
      throw e;
    }
    const path = this.fileFor(entry);
    await atomicWriteFile(path, encodeEntry(entry));
    (await this.names)?.add(basename(path));
  }

  async remove(key: JournalKey): Promise<void> {
    const path = this.fileFor(key);
    (await this.names)?.delete(basename(path));
    try {
      await unlink(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.logger.warn({ digest: key.digest, err: (e as Error).message }, 'could not remove a journal entry');
    }
  }

  private listNames(): Promise<Set<string> | undefined> {
    this.names ??= readdir(this.dir).then(
      (names) => new Set(names.filter((n) => n.endsWith('.json') && !n.includes(TEMP_MARK))),
      (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? new Set<string>() : undefined),
    );
    return this.names;
  }

  private async readFile(path: string): Promise<JournalEntry | undefined> {
    let text: string;
    try {
      const buf = await readFile(path);
      if (buf.byteLength > MAX_JOURNAL_FILE_BYTES) throw new Error(`${buf.byteLength} bytes, too large`);
      text = buf.toString('utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      return this.corrupt(path, (e as Error).message);
    }
    const problem = decodeEntry(text);
    if (typeof problem === 'string') return this.corrupt(path, problem);
    return problem;
  }

  private async corrupt(path: string, problem: string): Promise<undefined> {
    // The session it named (if any) is left to the registry's expiry: we cannot trust its Location.
    this.logger.warn({ file: path, problem }, 'journal file is torn or corrupt; ignoring it (the blob upload starts over)');
    (await this.names)?.delete(basename(path));
    await unlink(path).catch(() => undefined);
    return undefined;
  }
}

export function encodeEntry(entry: JournalEntry): string {
  const json = JSON.stringify(entry);
  return `{"entry":${json},"sha256":"${createHash('sha256').update(json).digest('hex')}"}\n`;
}

/** The entry, or a description of what is wrong with the text. */
export function decodeEntry(text: string): JournalEntry | string {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return `not JSON (${(e as Error).message})`;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return 'not a JSON object';
  const { entry, sha256 } = doc as { entry?: unknown; sha256?: unknown };
  if (typeof entry !== 'object' || entry === null || typeof sha256 !== 'string') return 'missing entry or checksum';
  const actual = createHash('sha256').update(JSON.stringify(entry)).digest('hex');
  if (actual !== sha256) return 'checksum mismatch';
  const e = entry as Record<string, unknown>;
  if (e.version !== JOURNAL_VERSION) return `unknown version ${String(e.version)}`;
  for (const f of ['registry', 'repository', 'digest', 'location', 'source', 'started_at', 'updated_at'] as const) {
    if (typeof e[f] !== 'string') return `field ${f} is not a string`;
  }
  for (const f of ['size', 'offset'] as const) {
    if (!Number.isSafeInteger(e[f]) || (e[f] as number) < 0) return `field ${f} is not a non-negative integer`;
  }
  if ((e.offset as number) > (e.size as number)) return 'offset past the blob size';
  if (e.owner !== undefined && (typeof e.owner !== 'string' || e.owner.length > 200)) return 'owner is not a short string';
  if (e.upload_id !== undefined) {
    // An ECR layer upload: named by its uploadId, it has no Location.
    if (typeof e.upload_id !== 'string' || !/^[\w.:-]{1,256}$/.test(e.upload_id)) return 'upload_id is not an upload id';
    return entry as JournalEntry;
  }
  try {
    const u = new URL(e.location as string);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'location is not an http(s) URL';
  } catch {
    return 'location is not a URL';
  }
  return entry as JournalEntry;
}
