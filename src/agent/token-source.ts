// Where the runner token comes from: `--token-file` (preferred: a mounted secret that may be
// rotated in place) or the FERRY_RUNNER_TOKEN environment variable, never a flag value. The
// file is read once and again whenever the control plane rejects the token. Every token read
// is registered with the logger's scrubber, so it cannot appear in a log line.
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.ts';
import { registerSecret, type Logger } from '../log/logger.ts';

export interface TokenSource {
  /** Where the token comes from (never the token), for logs and errors. */
  readonly description: string;
  /** The token to present now. */
  token(): Promise<string>;
  /**
   * The control plane answered 401 to `rejected`. Re-read the source; resolves true when a
   * different token is now current (it was rotated), false when nothing changed.
   */
  rejected(rejected: string): Promise<boolean>;
}

export const MAX_TOKEN_BYTES = 16 * 1024;

/** Trim a token as read from a file or variable and check it can go in a header. */
export function checkToken(raw: string, where: string): string {
  const t = raw.trim();
  if (t === '') throw new UsageError(`${where}: the runner token is empty`);
  if (t.length > MAX_TOKEN_BYTES) throw new UsageError(`${where}: the runner token is longer than ${MAX_TOKEN_BYTES} bytes`);
  // Visible ASCII only: anything else cannot travel in an Authorization header (and CR/LF would inject headers).
  if (!/^[\x21-\x7e]+$/.test(t)) throw new UsageError(`${where}: the runner token contains whitespace or non-ASCII characters`);
  return t;
}

export class FileTokenSource implements TokenSource {
  readonly path: string;
  readonly description: string;
  private readonly logger: Logger | undefined;
  private current: string | undefined;
  private reading: Promise<string> | undefined;

  constructor(path: string, logger?: Logger) {
    this.path = path;
    this.description = `token file ${path}`;
    this.logger = logger;
  }

  async token(): Promise<string> {
    if (this.current !== undefined) return this.current;
    this.current = await this.read();
    return this.current;
  }

  async rejected(rejected: string): Promise<boolean> {
    // Several requests failing at once re-read the file once.
    if (this.current !== undefined && this.current !== rejected) return true;
    try {
      const next = await this.read();
      const changed = next !== this.current;
      this.current = next;
      if (changed) this.logger?.info({ token_file: this.path }, 'runner token file changed; using the new token');
      else this.logger?.warn({ token_file: this.path }, 'control plane rejected the runner token, and the token file has not changed');
      return changed;
    } catch (e) {
      this.logger?.warn({ token_file: this.path, err: e }, 'could not re-read the runner token file; keeping the previous token');
      return false;
    }
  }

  private read(): Promise<string> {
    this.reading ??= (async () => {
      try {
        let raw: string;
        try {
          raw = await readFile(this.path, 'utf8');
        } catch (e) {
          throw new UsageError(`--token-file: cannot read ${this.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
        }
        const t = checkToken(raw, `--token-file ${this.path}`);
        registerSecret(t);
        return t;
      } finally {
        this.reading = undefined;
      }
    })();
    return this.reading;
  }
}

/** A fixed token (FERRY_RUNNER_TOKEN, or tests). Rejection cannot be cured by re-reading. */
export class StaticTokenSource implements TokenSource {
  readonly description: string;
  private readonly value: string;
  constructor(token: string, description = 'FERRY_RUNNER_TOKEN') {
    this.value = checkToken(token, description);
    this.description = description;
    registerSecret(this.value);
  }
  async token(): Promise<string> {
    return this.value;
  }
  async rejected(): Promise<boolean> {
    return false;
  }
}
