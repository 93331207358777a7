// Agent configuration from three places, highest first: command-line flags, FERRY_*
// environment variables, an optional JSON config file (`--config`, keys are the flag names),
// then defaults. AGENT_OPTIONS is the one source for the CLI (yargsOptions()) and the docs
// (optionsMarkdown()). loadAgentConfig() checks everything at start and throws one UsageError
// listing every problem, each naming the setting as the user wrote it (flag, variable or file key).
//
// The runner token is never a flag value or a config-file value: it comes from --token-file
// (preferred: a mounted secret) or FERRY_RUNNER_TOKEN.
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { UsageError } from '../errors.ts';
import { registerSecret, type Logger } from '../log/logger.ts';
import type { Credential } from '../auth/credentials.ts';
import { ID_PATTERN } from './contract.ts';
import { checkControlPlaneUrl } from './control-plane-client.ts';
import { parseLocalRegistry, type LocalRegistry } from './plan.ts';
import { DEFAULT_STATE_DIR } from './state.ts';
import { checkToken, FileTokenSource, StaticTokenSource, type TokenSource } from './token-source.ts';
import { isPlainObject } from './validate.ts';
import { DEFAULT_UPLOAD_TUNING } from '../ends/registry/blob-upload.ts';
import { transferTuning, type TransferTuning } from '../ends/registry/tuning.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface AgentOptionSpec {
  /** The flag, without dashes; also the config-file key. */
  flag: string;
  env: string;
  type: 'string' | 'number' | 'boolean' | 'list';
  describe: string;
  default?: string | number | boolean;
  choices?: readonly string[];
  required?: boolean;
  group: string;
}

const G_CP = 'Control plane:';
const G_REG = 'Local registry:';
const G_RUN = 'Running:';
/**
 * Blob transfers at once in an agent without --concurrency. Over HTTP/2 a transfer is a stream,
 * so one registry may take all of them; over HTTP/1.1 each is a connection, and the transport
 * keeps a registry at 8. Measured in the WAN lab (fleet: 20 copies through one agent, RTT 50 ms):
 * 8 transfers 3.56-3.73 s, 16 2.73-3.12, 24 2.76-2.95, 32 2.89-2.97, peak RSS 132, 134-141,
 * 141-145, 153 MiB. 24 fits the heap cap and the deploy files' memory limits (src/agent/memory.ts).
 */
export const AGENT_CONCURRENCY = 24;

export const AGENT_OPTIONS: readonly AgentOptionSpec[] = [
  { flag: 'config', env: 'FERRY_CONFIG', type: 'string', group: G_RUN, describe: 'JSON config file; its keys are these flag names. Flags and FERRY_* variables override it.' },
  { flag: 'control-plane-url', env: 'FERRY_CONTROL_PLANE_URL', type: 'string', required: true, group: G_CP, describe: 'Base URL of the control plane (https://; plain http only for loopback or with --insecure-control-plane).' },
  { flag: 'runner-id', env: 'FERRY_RUNNER_ID', type: 'string', required: true, group: G_CP, describe: 'This runner\'s id, as registered with the control plane.' },
  {
    flag: 'token-file',
    env: 'FERRY_TOKEN_FILE',
    type: 'string',
    group: G_CP,
    describe: 'File holding the runner token (re-read when the control plane rejects it). Without it, the token comes from FERRY_RUNNER_TOKEN.',
  },
  { flag: 'insecure-control-plane', env: 'FERRY_INSECURE_CONTROL_PLANE', type: 'boolean', default: false, group: G_CP, describe: 'Allow plain http to a non-loopback control plane (certificates are still verified for https).' },
  { flag: 'state-dir', env: 'FERRY_STATE_DIR', type: 'string', default: DEFAULT_STATE_DIR, group: G_RUN, describe: 'Directory for the instance id, journals and pending results.' },
  {
    flag: 'local-registry',
    env: 'FERRY_LOCAL_REGISTRY',
    type: 'string',
    required: true,
    group: G_REG,
    describe: 'The registry jobs copy into, HOST[:PORT][/PREFIX]. Plans whose destination lies elsewhere fail with INVALID_PLAN.',
  },
  {
    flag: 'local-registry-creds',
    env: 'FERRY_LOCAL_REGISTRY_CREDS',
    type: 'string',
    group: G_REG,
    describe: 'env:NAME: the variable NAME holds USER:PASSWORD for the local registry. Without it: ECR/Artifact Registry default credentials, or the docker config.',
  },
  { flag: 'plain-http', env: 'FERRY_PLAIN_HTTP', type: 'list', group: G_REG, describe: 'Registry hosts (HOST[:PORT]) to reach over plain http; repeat or separate with commas.' },
  { flag: 'max-jobs', env: 'FERRY_MAX_JOBS', type: 'number', default: 2, group: G_RUN, describe: 'Jobs run at the same time (1-64).' },
  {
    flag: 'concurrency',
    env: 'FERRY_CONCURRENCY',
    type: 'number',
    default: AGENT_CONCURRENCY,
    group: G_RUN,
    describe:
      'Blob transfers at the same time, shared by all jobs (1-256). Unset: 24 in all, at most 8 towards a registry reached over HTTP/1.1 (a transfer is a connection there) and 24 over HTTP/2 (a stream). Set: also the most towards any one registry. Fewer while a registry throttles.',
  },
  { flag: 'health-addr', env: 'FERRY_HEALTH_ADDR', type: 'string', group: G_RUN, describe: 'Serve /healthz, /readyz and /metrics on HOST:PORT (or :PORT for all interfaces). Off when unset.' },
  { flag: 'log-level', env: 'FERRY_LOG_LEVEL', type: 'string', default: 'info', choices: LOG_LEVELS, group: G_RUN, describe: 'Log level.' },
  { flag: 'shutdown-grace', env: 'FERRY_SHUTDOWN_GRACE', type: 'number', default: 30, group: G_RUN, describe: 'Seconds running jobs get to finish after SIGTERM; unfinished ones are left to resume (0-3600).' },
  { flag: 'exit-when-idle', env: 'FERRY_EXIT_WHEN_IDLE', type: 'boolean', default: false, group: G_RUN, describe: 'Exit once no job is running and none is available (for batch runs).' },
];

/** A yargs option (the subset ferry uses), so the CLI can pass AGENT_OPTIONS straight to yargs.options(). */
export interface YargsOptionSpec {
  /** Unset for numbers: yargs would turn "abc" into NaN, and the message could only say "got null". */
  type?: 'string' | 'boolean';
  describe: string;
  group: string;
  defaultDescription?: string;
  choices?: string[];
  requiresArg?: boolean;
}

/**
 * The options for yargs. Defaults are shown (defaultDescription) but not set, so that an
 * unset flag does not hide the environment or the config file: loadAgentConfig applies them.
 * Lists are plain strings (repeatable, comma-separated), which avoids yargs' greedy arrays.
 */
export function yargsOptions(): Record<string, YargsOptionSpec> {
  const out: Record<string, YargsOptionSpec> = {};
  for (const o of AGENT_OPTIONS) {
    const y: YargsOptionSpec = { describe: `${o.describe} [env: ${o.env}]`, group: o.group };
    if (o.type !== 'number') y.type = o.type === 'list' ? 'string' : o.type;
    if (o.default !== undefined) y.defaultDescription = JSON.stringify(o.default);
    if (o.choices) y.choices = [...o.choices];
    if (o.type !== 'boolean') y.requiresArg = true;
    out[o.flag] = y;
  }
  return out;
}

/** A Markdown table of the agent's settings, for the docs. */
export function optionsMarkdown(): string {
  const rows = AGENT_OPTIONS.map((o) => {
    const def = o.default !== undefined ? `\`${String(o.default)}\`` : o.required ? 'required' : '';
    const choices = o.choices ? ` One of ${o.choices.map((c) => `\`${c}\``).join(', ')}.` : '';
    return `| \`--${o.flag}\` | \`${o.env}\` | ${def} | ${o.describe.replace(/\|/g, '\\|')}${choices} |`;
  });
  return ['| flag / config key | environment | default | meaning |', '|---|---|---|---|', ...rows, '| | `FERRY_RUNNER_TOKEN` | | The runner token, when no --token-file is given. |'].join('\n');
}

export interface HealthAddr {
  host: string;
  port: number;
}

export interface AgentConfig {
  controlPlaneUrl: string;
  runnerId: string;
  /** Where the runner token comes from (the token itself is not kept here). */
  token: { kind: 'file'; path: string } | { kind: 'env' };
  insecureControlPlane: boolean;
  stateDir: string;
  localRegistry: LocalRegistry;
  /** From --local-registry-creds; undefined means the ambient chain (cloud default credentials, docker config). */
  localRegistryCredential: { credential: Extract<Credential, { kind: 'basic' }>; source: string } | undefined;
  plainHttp: string[];
  maxJobs: number;
  /** Blob transfers at once in the process. */
  concurrency: number;
  /** The most towards one registry, as --concurrency gave it; undefined: by protocol (src/transport/http.ts). */
  registryConcurrency: number | undefined;
  healthAddr: HealthAddr | undefined;
  logLevel: LogLevel;
  shutdownGraceS: number;
  exitWhenIdle: boolean;
  configFile: string | undefined;
  /** FERRY_UPLOAD_CHUNK_BYTES, FERRY_READ_TIMEOUT_SECONDS, FERRY_ECR_*: as for `ferry copy` (src/ends/registry/tuning.ts). */
  transfer: TransferTuning;
  /** Things worth a warning at start (e.g. a world-readable token file). */
  warnings: string[];
}

export interface LoadConfigInput {
  /** Parsed flags (yargs argv: kebab-case keys are read). */
  flags?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

interface Raw {
  value: unknown;
  /** How the user named it: `--max-jobs`, `FERRY_MAX_JOBS`, `"max-jobs" in /etc/ferry.json`, `default`. */
  from: string;
}

const MAX_CONFIG_BYTES = 256 * 1024;

/** Read, merge and check the agent's configuration. Throws one UsageError listing every problem. */
export async function loadAgentConfig(input: LoadConfigInput = {}): Promise<AgentConfig> {
  const flags = input.flags ?? {};
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const problems: string[] = [];
  const warnings: string[] = [];
  const spec = new Map(AGENT_OPTIONS.map((o) => [o.flag, o]));

  if (flags.token !== undefined || flags['runner-token'] !== undefined) {
    problems.push('--token: the runner token is never taken from a flag value; use --token-file or FERRY_RUNNER_TOKEN');
  }

  // The config file first, since it feeds everything else.
  const configRaw = pick(spec.get('config')!, flags, env, undefined, undefined);
  let configFile: string | undefined;
  let fileValues: Record<string, unknown> | undefined;
  if (configRaw) {
    if (typeof configRaw.value !== 'string' || configRaw.value === '') problems.push(`${configRaw.from}: must be a file path`);
    else {
      configFile = resolve(cwd, configRaw.value);
      try {
        fileValues = await readConfigFile(configFile, configRaw.from, spec);
      } catch (e) {
        problems.push((e as Error).message);
      }
    }
  }

  const get = (flag: string): Raw | undefined => pick(spec.get(flag)!, flags, env, fileValues, configFile);

  const controlPlaneRaw = get('control-plane-url');
  const insecure = asBoolean(get('insecure-control-plane'), problems) ?? false;
  let controlPlaneUrl = '';
  const cpUrl = asString(controlPlaneRaw, problems);
  if (controlPlaneRaw === undefined) problems.push('--control-plane-url (FERRY_CONTROL_PLANE_URL): required');
  else if (cpUrl !== undefined) {
    try {
      controlPlaneUrl = checkControlPlaneUrl(cpUrl, { insecure, what: controlPlaneRaw!.from }).toString();
    } catch (e) {
      problems.push((e as Error).message);
    }
  }

  const runnerRaw = get('runner-id');
  const runnerId = asString(runnerRaw, problems) ?? '';
  if (runnerRaw === undefined) problems.push('--runner-id (FERRY_RUNNER_ID): required');
  else if (runnerId !== '' && !ID_PATTERN.test(runnerId)) problems.push(`${runnerRaw.from}: "${runnerId.slice(0, 60)}" is not a valid runner id (letters, digits and ". _ ~ : -", at most 200 characters)`);

  let token: AgentConfig['token'] = { kind: 'env' };
  const tokenFileRaw = get('token-file');
  const tokenFile = asString(tokenFileRaw, problems);
  if (tokenFile !== undefined) {
    const path = resolve(cwd, tokenFile);
    token = { kind: 'file', path };
    try {
      const st = await stat(path);
      if (!st.isFile()) problems.push(`${tokenFileRaw!.from}: ${path} is not a file`);
      else {
        checkToken(await readFile(path, 'utf8'), `${tokenFileRaw!.from} ${path}`);
        if (process.platform !== 'win32' && (st.mode & 0o004) !== 0) warnings.push(`token file ${path} is readable by every user; consider chmod 600`);
      }
    } catch (e) {
      problems.push(e instanceof UsageError ? e.message : `${tokenFileRaw!.from}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  } else if (env.FERRY_RUNNER_TOKEN === undefined || env.FERRY_RUNNER_TOKEN === '') {
    problems.push('no runner token: set --token-file (FERRY_TOKEN_FILE) to a file holding it, or FERRY_RUNNER_TOKEN');
  } else {
    try {
      checkToken(env.FERRY_RUNNER_TOKEN, 'FERRY_RUNNER_TOKEN');
    } catch (e) {
      problems.push((e as Error).message);
    }
  }

  const stateRaw = get('state-dir');
  const stateDirValue = asString(stateRaw, problems) ?? DEFAULT_STATE_DIR;
  const stateDir = isAbsolute(stateDirValue) ? stateDirValue : resolve(cwd, stateDirValue);

  const localRaw = get('local-registry');
  let localRegistry: LocalRegistry = { host: '' };
  const localValue = asString(localRaw, problems);
  if (localRaw === undefined) problems.push('--local-registry (FERRY_LOCAL_REGISTRY): required, e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789');
  else if (localValue !== undefined) {
    try {
      localRegistry = parseLocalRegistry(localValue, localRaw.from);
    } catch (e) {
      problems.push((e as Error).message);
    }
  }

  let localRegistryCredential: AgentConfig['localRegistryCredential'];
  const credsRaw = get('local-registry-creds');
  const credsValue = asString(credsRaw, problems);
  if (credsValue !== undefined) {
    const m = /^env:([A-Za-z_][A-Za-z0-9_]*)$/.exec(credsValue);
    if (!m) problems.push(`${credsRaw!.from}: must be env:NAME, naming a variable that holds USER:PASSWORD (credentials are never given inline)`);
    else {
      const name = m[1]!;
      const v = env[name];
      const colon = v?.indexOf(':') ?? -1;
      if (v === undefined || v === '') problems.push(`${credsRaw!.from}: the variable ${name} is not set`);
      else if (colon <= 0 || colon === v.length - 1) problems.push(`${credsRaw!.from}: the variable ${name} must hold USER:PASSWORD`);
      else {
        const password = v.slice(colon + 1);
        registerSecret(password);
        localRegistryCredential = { credential: { kind: 'basic', username: v.slice(0, colon), password }, source: `env:${name}` };
      }
    }
  }

  const plainHttp: string[] = [];
  const plainRaw = get('plain-http');
  for (const h of asList(plainRaw, problems)) {
    if (!/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(h)) problems.push(`${plainRaw!.from}: "${h.slice(0, 80)}" is not a HOST[:PORT]`);
    else plainHttp.push(h.toLowerCase());
  }

  const maxJobs = asNumber(get('max-jobs'), problems, { min: 1, max: 64, integer: true }) ?? 2;
  const concurrencyRaw = get('concurrency');
  const concurrency = asNumber(concurrencyRaw, problems, { min: 1, max: 256, integer: true }) ?? AGENT_CONCURRENCY;
  // Given by the operator, it is also each registry's ceiling; by default each registry's goes by its protocol.
  const registryConcurrency = concurrencyRaw && !concurrencyRaw.from.startsWith('default') ? concurrency : undefined;
  const shutdownGraceS = asNumber(get('shutdown-grace'), problems, { min: 0, max: 3600, integer: false }) ?? 30;

  let healthAddr: HealthAddr | undefined;
  const healthRaw = get('health-addr');
  const healthValue = asString(healthRaw, problems);
  if (healthValue !== undefined) {
    try {
      healthAddr = parseHostPort(healthValue);
    } catch (e) {
      problems.push(`${healthRaw!.from}: ${(e as Error).message}`);
    }
  }

  const levelRaw = get('log-level');
  const level = asString(levelRaw, problems) ?? 'info';
  let logLevel: LogLevel = 'info';
  if ((LOG_LEVELS as readonly string[]).includes(level)) logLevel = level as LogLevel;
  else problems.push(`${levelRaw!.from}: "${level.slice(0, 40)}" is not one of ${LOG_LEVELS.join(', ')}`);

  const exitWhenIdle = asBoolean(get('exit-when-idle'), problems) ?? false;

  let transfer: TransferTuning = { upload: DEFAULT_UPLOAD_TUNING };
  try {
    transfer = transferTuning(env);
  } catch (e) {
    problems.push((e as Error).message);
  }

  if (problems.length > 0) {
    throw new UsageError(problems.length === 1 ? `invalid agent configuration: ${problems[0]}` : `invalid agent configuration:\n  ${problems.join('\n  ')}`);
  }
  return {
    controlPlaneUrl,
    runnerId,
    token,
    insecureControlPlane: insecure,
    stateDir,
    localRegistry,
    localRegistryCredential,
    plainHttp,
    maxJobs,
    concurrency,
    registryConcurrency,
    healthAddr,
    logLevel,
    shutdownGraceS,
    exitWhenIdle,
    configFile,
    transfer,
    warnings,
  };
}

/** The token source the configuration names. */
export function tokenSourceFor(config: AgentConfig, env: NodeJS.ProcessEnv = process.env, logger?: Logger): TokenSource {
  if (config.token.kind === 'file') return new FileTokenSource(config.token.path, logger);
  return new StaticTokenSource(env.FERRY_RUNNER_TOKEN ?? '', 'FERRY_RUNNER_TOKEN');
}

/** `HOST:PORT`, `:PORT` (all interfaces) or `[IPv6]:PORT`. Port 0 picks a free port. */
export function parseHostPort(value: string): HealthAddr {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/.exec(value.trim());
  if (!m) throw new Error(`"${value.slice(0, 80)}" is not HOST:PORT or :PORT`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range (0-65535)`);
  const host = m[1] ?? (m[2] === '' || m[2] === undefined ? '0.0.0.0' : m[2]);
  return { host, port };
}

// ---- helpers ----

function pick(o: AgentOptionSpec, flags: Record<string, unknown>, env: NodeJS.ProcessEnv, file: Record<string, unknown> | undefined, fileName: string | undefined): Raw | undefined {
  const f = flags[o.flag];
  if (f !== undefined) return { value: f, from: `--${o.flag}` };
  const e = env[o.env];
  if (e !== undefined && e !== '') return { value: e, from: o.env };
  if (file && Object.hasOwn(file, o.flag) && file[o.flag] !== null) return { value: file[o.flag], from: `"${o.flag}" in ${fileName}` };
  if (o.default !== undefined) return { value: o.default, from: `default of --${o.flag}` };
  return undefined;
}

async function readConfigFile(path: string, from: string, spec: Map<string, AgentOptionSpec>): Promise<Record<string, unknown>> {
  let text: string;
  try {
    const st = await stat(path);
    if (st.size > MAX_CONFIG_BYTES) throw new UsageError(`${from}: ${path} is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = await readFile(path, 'utf8');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${from}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${from}: ${path} is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(doc)) throw new UsageError(`${from}: ${path} must hold a JSON object whose keys are flag names`);
  const unknown = Object.keys(doc).filter((k) => !spec.has(k) || k === 'config');
  for (const k of unknown) {
    if (k === 'token' || k === 'runner-token') throw new UsageError(`"${k}" in ${path}: the runner token is never kept in the config file; use "token-file" or FERRY_RUNNER_TOKEN`);
  }
  if (unknown.length > 0) {
    const camel = unknown.find((k) => /[A-Z_]/.test(k));
    const hint = camel ? ` (keys are flag names, e.g. "${camel.replace(/_/g, '-').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}")` : '';
    throw new UsageError(`${from}: ${path} has unknown keys ${unknown.map((k) => `"${k.slice(0, 60)}"`).join(', ')}${hint}`);
  }
  return doc;
}

function one(raw: Raw, problems: string[]): unknown {
  if (Array.isArray(raw.value)) {
    if (raw.from.startsWith('--')) {
      problems.push(`${raw.from}: given more than once`);
      return undefined;
    }
  }
  return raw.value;
}

function asString(raw: Raw | undefined, problems: string[]): string | undefined {
  if (!raw) return undefined;
  const v = one(raw, problems);
  if (v === undefined) return undefined;
  if (typeof v === 'number') return String(v);
  if (typeof v !== 'string') {
    problems.push(`${raw.from}: must be a string`);
    return undefined;
  }
  if (v.trim() === '') {
    problems.push(`${raw.from}: must not be empty`);
    return undefined;
  }
  return v.trim();
}

function asNumber(raw: Raw | undefined, problems: string[], rules: { min: number; max: number; integer: boolean }): number | undefined {
  if (!raw) return undefined;
  const v = one(raw, problems);
  if (v === undefined) return undefined;
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(v)) n = Number(v);
  else n = NaN;
  const kind = rules.integer ? 'an integer' : 'a number';
  if (!Number.isFinite(n) || (rules.integer && !Number.isInteger(n)) || n < rules.min || n > rules.max) {
    problems.push(`${raw.from}: must be ${kind} from ${rules.min} to ${rules.max}, got ${JSON.stringify(typeof v === 'string' ? v.slice(0, 40) : v)}`);
    return undefined;
  }
  return n;
}

function asBoolean(raw: Raw | undefined, problems: string[]): boolean | undefined {
  if (!raw) return undefined;
  const v = one(raw, problems);
  if (v === undefined) return undefined;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(s)) return true;
    if (['0', 'false', 'no', 'off'].includes(s)) return false;
  }
  problems.push(`${raw.from}: must be true or false, got ${JSON.stringify(typeof v === 'string' ? v.slice(0, 40) : v)}`);
  return undefined;
}

function asList(raw: Raw | undefined, problems: string[]): string[] {
  if (!raw) return [];
  const values = Array.isArray(raw.value) ? raw.value : [raw.value];
  const out: string[] = [];
  for (const v of values) {
    if (typeof v !== 'string') {
      problems.push(`${raw.from}: must be a list of strings`);
      return [];
    }
    out.push(...v.split(/[\s,]+/).filter((s) => s !== ''));
  }
  return out;
}
