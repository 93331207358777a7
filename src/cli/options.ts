// Options shared by the copy and inspect commands (the agent has its own, src/agent/config.ts). Declared once, as data, so the README's configuration
// reference can be generated from (and checked against) the same definitions.
import type { Options } from 'yargs';
import { UsageError } from '../errors.ts';

export const globalOptions = {
  'log-level': {
    type: 'string',
    choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    describe: 'log level for the JSON logs on stderr (default: info; warn on a terminal)',
  },
  json: { type: 'boolean', describe: 'print one JSON document on stdout (on failure too)' },
  'plain-http': {
    type: 'string',
    describe: 'HOST[:PORT] to speak plain HTTP to (repeatable); a loopback registry not named is tried in HTTPS first, plain HTTP if it does not speak TLS',
  },
  'ca-file': { type: 'string', describe: 'PEM file with extra CA certificates (repeatable; NODE_EXTRA_CA_CERTS works too)' },
  authfile: { type: 'string', describe: 'docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)' },
} as const satisfies Record<string, Options>;

/**
 * A flag that takes a whole number. Declared to yargs without a type (numbers are still parsed as
 * numbers), because a `number` option turns "abc" into NaN, and the message could only say "not NaN".
 */
export function wholeNumber(flag: string, value: unknown, min: number, max: number): number {
  if (Array.isArray(value)) throw new UsageError(`--${flag} was given ${value.length} times; give it once`);
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (Number.isInteger(n) && n >= min && n <= max) return n;
  throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, not ${JSON.stringify(typeof value === 'string' ? value.slice(0, 40) : value)}`);
}

/**
 * Repeatable flags are plain strings (yargs collects repeats into an array): an `array` option
 * would swallow the positional arguments that follow it.
 */
export function repeated(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map(String);
}

/**
 * A duration as people write it: `90` or `90s`, `500ms`, `15m`, `1h30m`, `1.5h`. Milliseconds;
 * a UsageError naming `flag` for anything else.
 */
export function parseDuration(value: string, flag: string): number {
  const text = value.trim().toLowerCase();
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let ms = 0;
  if (/^\d+(\.\d+)?$/.test(text)) ms = Number(text) * 1000;
  else {
    const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
    if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) {
      throw new UsageError(`${flag} must be a duration such as 90s, 15m or 1h30m, not "${value}"`);
    }
    for (const p of parts) ms += Number(p[1]) * units[p[2]!]!;
  }
  if (!(ms >= 1) || ms > 7 * 24 * 3_600_000) throw new UsageError(`${flag} must be a duration from 1 ms to 7 days, not "${value}"`);
  return Math.round(ms);
}
