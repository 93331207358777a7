// The agent's state directory (default /var/lib/ferry):
//   instance-id          this process's instance id; survives a restart on the same volume
//   pending-results/     results not yet accepted by the control plane, one JSON file each
// Every file is written atomically: a temp file in the same directory, fsync, rename (or link,
// for create-only), then fsync of the directory, so a crash leaves either the old content or
// the new, never a torn file. Leftover temp files from a crash are removed when the store opens.
import { createHash, randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { UsageError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { checkResultBody, ID_PATTERN, type ResultBody } from './contract.ts';
import { isPlainObject } from './validate.ts';
import { TEMP_MARK, atomicCreateFile, atomicWriteFile, fsyncDir } from '../util/atomic-file.ts';

export { atomicCreateFile, atomicWriteFile };

export const DEFAULT_STATE_DIR = '/var/lib/ferry';
const INSTANCE_ID_FILE = 'instance-id';
const MAX_STATE_FILE_BYTES = 4 * 1024 * 1024;

/** Make sure the state directory exists (mode 0700) and is writable. Errors name `--state-dir`. */
export async function ensureStateDir(dir: string): Promise<string> {
  const abs = resolve(dir);
  try {
    await mkdir(abs, { recursive: true, mode: 0o700 });
    const st = await stat(abs);
    if (!st.isDirectory()) throw new UsageError(`--state-dir: ${abs} is not a directory`);
    await access(abs, constants.W_OK | constants.R_OK | constants.X_OK);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new UsageError(`--state-dir: cannot use ${abs} (${code}); it must be a writable directory`, { cause: e });
  }
  return abs;
}

/**
 * This process's instance id: read from `<dir>/instance-id`, created on first start. Kept
 * across restarts on the same volume; a new replica (new volume) gets a new one.
 */
export async function loadOrCreateInstanceId(dir: string, logger?: Logger): Promise<string> {
  const path = join(dir, INSTANCE_ID_FILE);
  // Twice: when another process created it first, its id is read on the second pass (one that is
  // not an id is moved aside on the first, and created afresh on the second).
  for (let pass = 0; pass < 2; pass++) {
    const existing = await readInstanceId(path, logger);
    if (existing !== undefined) return existing;
    const fresh = randomUUID();
    if (await atomicCreateFile(path, `${fresh}\n`, 0o644)) {
      logger?.info({ instance_id: fresh, path }, 'created a new instance id');
      return fresh;
    }
  }
  // Something is in its place that can neither be read nor replaced: a dangling symlink, a socket.
  throw new UsageError(
    `--state-dir: ${path} exists but cannot be read as this agent's instance id (a dangling symlink, or not a regular file): remove it and start the agent again; it then creates a new instance id, and the jobs the old one left open are attached once their lease runs out`,
  );
}

async function readInstanceId(path: string, logger?: Logger): Promise<string | undefined> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UsageError(`--state-dir: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  const id = raw.trim();
  if (ID_PATTERN.test(id)) return id;
  // Written atomically, so this is not a torn write: someone edited it. Keep it for inspection and start afresh.
  const aside = `${path}.invalid-${Date.now()}`;
  await rename(path, aside);
  logger?.warn({ path, moved_to: aside }, 'instance-id file holds no valid id; moved it aside and creating a new one');
  return undefined;
}

/**
 * A directory of small JSON documents, one file per key, each replaced atomically. Keys are
 * free text (hashed into file names); values must be JSON-serializable. Unreadable files are
 * moved aside (`*.corrupt`) with a warning rather than failing the whole store.
 */
export class JsonFileStore<T> {
  readonly dir: string;
  private readonly logger: Logger | undefined;
  private readonly validate: (v: unknown) => T;

  private constructor(dir: string, validate: (v: unknown) => T, logger?: Logger) {
    this.dir = dir;
    this.validate = validate;
    this.logger = logger;
  }

  /** Open (creating) the store's directory and remove temp files a crash left behind. */
  static async open<T>(dir: string, validate: (v: unknown) => T, logger?: Logger): Promise<JsonFileStore<T>> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(dir)) {
      if (name.includes(TEMP_MARK)) await unlink(join(dir, name)).catch(() => {});
    }
    return new JsonFileStore(dir, validate, logger);
  }

  private fileFor(key: string): string {
    return join(this.dir, `${createHash('sha256').update(key).digest('hex').slice(0, 40)}.json`);
  }

  async put(key: string, value: T): Promise<void> {
    const doc = { key, saved_at: new Date().toISOString(), value };
    await atomicWriteFile(this.fileFor(key), `${JSON.stringify(doc)}\n`);
  }

  async get(key: string): Promise<T | undefined> {
    const entry = await this.readEntry(this.fileFor(key));
    return entry && entry.key === key ? entry.value : undefined;
  }

  /** Remove a key; true if it was there. */
  async delete(key: string): Promise<boolean> {
    try {
      await unlink(this.fileFor(key));
      await fsyncDir(this.dir);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  /** Every entry, oldest saved first. */
  async list(): Promise<Array<{ key: string; value: T; saved_at: string }>> {
    const out: Array<{ key: string; value: T; saved_at: string }> = [];
    for (const name of await readdir(this.dir)) {
      if (!name.endsWith('.json') || name.includes(TEMP_MARK)) continue;
      const entry = await this.readEntry(join(this.dir, name));
      if (entry) out.push(entry);
    }
    return out.sort((a, b) => a.saved_at.localeCompare(b.saved_at));
  }

  private async readEntry(path: string): Promise<{ key: string; value: T; saved_at: string } | undefined> {
    let raw: Buffer;
    try {
      const st = await stat(path);
      if (st.size > MAX_STATE_FILE_BYTES) throw new Error(`larger than ${MAX_STATE_FILE_BYTES} bytes`);
      raw = await readFile(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return this.quarantine(path, e);
    }
    try {
      const doc: unknown = JSON.parse(raw.toString('utf8'));
      if (!isPlainObject(doc) || typeof doc.key !== 'string' || typeof doc.saved_at !== 'string') throw new Error('not a store entry');
      return { key: doc.key, saved_at: doc.saved_at, value: this.validate(doc.value) };
    } catch (e) {
      return this.quarantine(path, e);
    }
  }

  private async quarantine(path: string, e: unknown): Promise<undefined> {
    const aside = `${path}.corrupt`;
    await rename(path, aside).catch(() => {});
    this.logger?.warn({ path, moved_to: aside, problem: (e as Error).message }, 'unreadable state file moved aside');
    return undefined;
  }
}

/** A result waiting to be delivered. */
export interface PendingResult {
  job_id: string;
  exec_id: string;
  result: ResultBody;
}

function checkPendingResult(v: unknown): PendingResult {
  if (!isPlainObject(v) || typeof v.job_id !== 'string' || typeof v.exec_id !== 'string') throw new Error('not a pending result');
  if (!ID_PATTERN.test(v.job_id) || !ID_PATTERN.test(v.exec_id)) throw new Error('pending result has invalid ids');
  return { job_id: v.job_id, exec_id: v.exec_id, result: checkResultBody(v.result, '$.result') };
}

/** Results the control plane has not accepted yet, kept so that a restarted agent still delivers them. */
export class PendingResultStore {
  private readonly store: JsonFileStore<PendingResult>;
  /** The keys held, known from opening on (for the ferry_pending_results metric, without reading the directory at each scrape). */
  private readonly keys: Set<string>;
  private constructor(store: JsonFileStore<PendingResult>, keys: Set<string>) {
    this.store = store;
    this.keys = keys;
  }
  static async open(dir: string, logger?: Logger): Promise<PendingResultStore> {
    const store = await JsonFileStore.open(dir, checkPendingResult, logger);
    return new PendingResultStore(store, new Set((await store.list()).map((e) => e.key)));
  }
  /** How many results are waiting to be delivered. */
  get size(): number {
    return this.keys.size;
  }
  private static key(jobId: string, execId: string): string {
    return `${jobId}/${execId}`;
  }
  async save(p: PendingResult): Promise<void> {
    const key = PendingResultStore.key(p.job_id, p.exec_id);
    await this.store.put(key, p);
    this.keys.add(key);
  }
  async get(jobId: string, execId: string): Promise<PendingResult | undefined> {
    return this.store.get(PendingResultStore.key(jobId, execId));
  }
  async remove(jobId: string, execId: string): Promise<void> {
    const key = PendingResultStore.key(jobId, execId);
    await this.store.delete(key);
    this.keys.delete(key);
  }
  async list(): Promise<PendingResult[]> {
    return (await this.store.list()).map((e) => e.value);
  }
}

export interface AgentState {
  dir: string;
  instanceId: string;
  pendingResults: PendingResultStore;
}

/** Open the state directory: create it if needed, load or create the instance id, open the stores. */
export async function openState(dir: string, logger?: Logger): Promise<AgentState> {
  const abs = await ensureStateDir(dir);
  const instanceId = await loadOrCreateInstanceId(abs, logger);
  const pendingResults = await PendingResultStore.open(join(abs, 'pending-results'), logger);
  return { dir: abs, instanceId, pendingResults };
}
