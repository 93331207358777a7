// Logging. Library code receives a Logger and never creates one; only the CLI and the agent
// build the root logger here. Logs are pino JSON on stderr (stdout carries results), with no
// worker-thread transports so the bundle stays one file.
//
// Secrets are kept out of logs twice over: known secret-bearing fields are redacted by path,
// and every secret value ferry learns at run time (passwords, tokens) is registered here and
// scrubbed from each serialized line before it is written, wherever it appears.
import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';

export type Logger = PinoLogger;

const REDACT_PATHS = [
  'password',
  'token',
  'access_token',
  'refresh_token',
  'one_time_token',
  'authorization',
  'Authorization',
  '*.password',
  '*.token',
  '*.access_token',
  '*.one_time_token',
  '*.authorization',
  '*.Authorization',
  'headers.authorization',
  'req.headers.authorization',
];

const secrets = new Set<string>();
/** Every form a secret can take in a serialized line, longest first (so a secret containing another is scrubbed whole). */
let needles: string[] = [];

/** Remember a secret value so that no log line can ever contain it. Short values are ignored (too common to scrub safely). */
export function registerSecret(value: string | undefined): void {
  if (!value || value.length < 6 || secrets.has(value)) return;
  secrets.add(value);
  // Inside a JSON log line a value appears JSON-escaped.
  const forms = new Set<string>();
  for (const s of secrets) {
    forms.add(s);
    forms.add(JSON.stringify(s).slice(1, -1));
  }
  needles = [...forms].sort((a, b) => b.length - a.length);
}

/** Replace every registered secret in a string. Plain substring search: no regex to outgrow. */
export function scrubSecrets(line: string): string {
  let out = line;
  for (const needle of needles) {
    if (out.includes(needle)) out = out.split(needle).join('[REDACTED]');
  }
  return out;
}

export interface LoggerOptions {
  level?: string;
  /** Where lines go; default stderr. Tests pass a capturing stream. */
  destination?: DestinationStream;
  name?: string;
}

/** Each logger's bindings (from its child() calls), computed once: they do not change. */
const boundFields = new WeakMap<object, Record<string, unknown>>();

/**
 * A field given to a log call that the logger already carries as a binding, with the same value,
 * is written once. Code that receives a logger bound to a job (job_id, exec_id) often also
 * receives the ids, and logs them for callers whose logger is not bound; pino would write both
 * (its bindings are serialized ahead of the call's fields), and a line with a key twice is read
 * differently by different log pipelines. A different value is kept: that is a caller's bug the
 * log should show.
 */
function dropBoundFields(this: Logger, args: unknown[]): unknown[] {
  const fields = args[0];
  if (!fields || typeof fields !== 'object' || fields instanceof Error || Array.isArray(fields)) return args;
  let bound = boundFields.get(this);
  if (!bound) {
    bound = this.bindings();
    boundFields.set(this, bound);
  }
  let copy: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(fields)) {
    if (Object.hasOwn(bound, k) && Object.is(bound[k], v)) {
      copy ??= { ...(fields as Record<string, unknown>) };
      delete copy[k];
    }
  }
  return copy ? [copy, ...args.slice(1)] : args;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'ferry',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      hooks: {
        streamWrite: scrubSecrets,
        logMethod(args, method) {
          return method.apply(this, dropBoundFields.call(this, args) as Parameters<typeof method>);
        },
      },
      serializers: { err: pino.stdSerializers.err },
    },
    opts.destination ?? pino.destination({ fd: 2, sync: true }),
  );
}

/** A logger that drops everything: for library callers that did not pass one. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
