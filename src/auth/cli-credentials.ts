// Credentials given on the command line: `--src-creds` / `--dst-creds`.
//   user:password   split at the FIRST colon, so the password may contain colons
//   env:NAME        read `user:password` from the environment variable NAME (keeps it out of `ps`)
// Messages name the flag and the variable, never the password (nor the value, which holds it).
import { UsageError } from '../errors.ts';
import { registerSecret } from '../log/logger.ts';
import type { Credential } from './credentials.ts';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function parseCredsFlag(value: string, flagName: string, env: NodeJS.ProcessEnv = process.env): Credential {
  if (value.startsWith('env:')) {
    const name = value.slice('env:'.length);
    if (!ENV_NAME.test(name)) {
      throw new UsageError(`${flagName}: "env:${name}" does not name an environment variable; expected env:NAME with NAME like FERRY_SRC_CREDS`);
    }
    const v = env[name];
    if (v === undefined) throw new UsageError(`${flagName}: environment variable ${name} is not set; it should hold user:password`);
    if (v === '') throw new UsageError(`${flagName}: environment variable ${name} is empty; it should hold user:password`);
    return split(v, `${flagName}: environment variable ${name}`);
  }
  return split(value, flagName);
}

function split(v: string, where: string): Credential {
  const colon = v.indexOf(':');
  if (colon < 0) {
    // No colon: the whole value might be a password typed without its user. Don't echo it.
    registerSecret(v);
    throw new UsageError(`${where} must be user:password (or env:NAME), but has no ':'`);
  }
  const username = v.slice(0, colon);
  const password = v.slice(colon + 1);
  // Register first: even a rejected value should never reach a log.
  registerSecret(password);
  if (username === '') throw new UsageError(`${where} has an empty user name; expected user:password`);
  if (password === '') throw new UsageError(`${where} has an empty password; expected user:password`);
  registerSecret(Buffer.from(`${username}:${password}`, 'utf8').toString('base64'));
  return { kind: 'basic', username, password };
}
