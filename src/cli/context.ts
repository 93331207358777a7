// Turning command-line flags into the library's objects: the transport, keychains, registry
// clients, the logger. Commands stay thin: flags → options → library call → output.
import { homedir } from 'node:os';
import { join } from 'node:path';
import { UsageError, type Side } from '../errors.ts';
import { Keychain, StaticCredentials, type CredentialProvider } from '../auth/credentials.ts';
import { DockerConfigCredentials } from '../auth/docker-config.ts';
import { parseCredsFlag } from '../auth/cli-credentials.ts';
import { CloudCredentials } from '../auth/cloud/provider.ts';
import type { DestinationStream } from 'pino';
import { createLogger, type Logger } from '../log/logger.ts';
import { HttpTransport } from '../transport/http.ts';
import { RegistryClient } from '../registry/client.ts';
import { transferTuning } from '../ends/registry/tuning.ts';
import { USER_AGENT } from '../version.ts';
import { repeated } from './options.ts';

export interface GlobalFlags {
  'log-level'?: string | undefined;
  json?: boolean | undefined;
  'plain-http'?: string | string[] | undefined;
  'ca-file'?: string | string[] | undefined;
  authfile?: string | undefined;
}

/** `destination`: where lines go instead of stderr (on a terminal: readable, above the progress display). */
export function makeLogger(flags: GlobalFlags, interactive: boolean, destination?: DestinationStream): Logger {
  // On a terminal the progress display is the interface; logs only speak up for problems.
  return createLogger({ level: flags['log-level'] ?? (interactive ? 'warn' : 'info'), ...(destination ? { destination } : {}) });
}

/** The process's transport; `concurrency` (`--concurrency`) is the most transfers at once towards one registry. */
export function makeTransport(flags: GlobalFlags, env: NodeJS.ProcessEnv = process.env, opts: { concurrency?: number; logger?: Logger } = {}): HttpTransport {
  const { bodyTimeoutMs, readFloor, http2, http2Connections } = transferTuning(env);
  return new HttpTransport({
    plainHttp: repeated(flags['plain-http']),
    caFiles: repeated(flags['ca-file']),
    userAgent: USER_AGENT,
    ...(bodyTimeoutMs !== undefined ? { bodyTimeoutMs } : {}),
    ...(readFloor !== undefined ? { readFloor } : {}),
    ...(http2 !== undefined ? { http2 } : {}),
    ...(http2Connections !== undefined ? { http2Sessions: http2Connections } : {}),
    ...opts,
  });
}

/**
 * Credentials for one side: the explicit flag (`creds`: its name, for messages, and its value) first, then cloud identity for ECR / Artifact
 * Registry hosts (`cloud`, e.g. with a role to assume; default the environment's identity),
 * then the docker config.
 */
export function makeKeychain(
  side: Side,
  registry: string,
  creds: { flag: string; value: string | undefined },
  flags: GlobalFlags,
  logger: Logger,
  cloud?: CloudCredentials,
): CredentialProvider {
  const providers: CredentialProvider[] = [];
  if (creds.value !== undefined) providers.push(new StaticCredentials(parseCredsFlag(creds.value, creds.flag), registry, creds.flag));
  // ECR and Artifact Registry hosts: the cloud identity (a failure to get one is an auth error);
  // the docker config answers for every other host.
  providers.push(cloud ?? new CloudCredentials({ side, logger }));
  const dockerConfig: ConstructorParameters<typeof DockerConfigCredentials>[0] = { side, logger };
  if (flags.authfile !== undefined) dockerConfig.authFile = flags.authfile;
  providers.push(new DockerConfigCredentials(dockerConfig));
  return new Keychain(providers, `check ${creds.flag} or --authfile`);
}

export function makeClient(registry: string, side: Side, credentials: CredentialProvider, transport: HttpTransport, logger: Logger): RegistryClient {
  return new RegistryClient({ registry, side, credentials, transport, logger: logger.child({ side, registry }) });
}

/** `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  return xdg ? join(xdg, 'ferry') : join(env.HOME || homedir(), '.local', 'state', 'ferry');
}
