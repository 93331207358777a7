// Shared by the end-to-end cloud copy tests: the environment the ferry CLI runs in (no ambient
// cloud identity from the machine, the stand-ins' endpoints, the HTTPS proxy) and checks that
// no secret reached a log line or a file.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir } from '../harness/process.ts';
import { CLOUD_ENV_PREFIXES } from '../harness/aws-standin.ts';
import { runFerry, type FerryRun } from '../e2e/ferry-cli.ts';

const PROXY_VARS = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy', 'ALL_PROXY', 'all_proxy', 'NODE_EXTRA_CA_CERTS'];

/** A fresh HOME and state dir for one ferry run (where anything ferry wrote to disk would be); removed at exit. */
export function freshHome(): { home: string; state: string } {
  const home = makeTempDir('cloud-home').path;
  return { home, state: join(home, 'state') };
}

/**
 * Run the ferry CLI with only the given environment for cloud identity and proxies: every
 * AWS_*, GOOGLE_*, metadata and proxy variable of this process is removed first.
 */
export function runFerryIsolated(args: string[], env: Record<string, string | undefined>, home: { home: string; state: string }): Promise<FerryRun> {
  return runFerry(args, { env: isolatedEnv(env, home), timeoutMs: 120_000 });
}

/**
 * The environment runFerryIsolated gives the CLI, for other ferry processes (the agent): this
 * process's AWS_*, GOOGLE_*, metadata and proxy variables cleared (undefined: spawn leaves them
 * out), HOME / XDG / cloud config locations in `home`, then `env`.
 */
export function isolatedEnv(env: Record<string, string | undefined>, home: { home: string; state: string }): Record<string, string | undefined> {
  const cleared: Record<string, undefined> = {};
  for (const k of Object.keys(process.env)) {
    if (CLOUD_ENV_PREFIXES.some((p) => k.startsWith(p)) || PROXY_VARS.includes(k)) cleared[k] = undefined;
  }
  return {
    ...cleared,
    HOME: home.home,
    XDG_STATE_HOME: home.state,
    XDG_CONFIG_HOME: join(home.home, '.config'),
    CLOUDSDK_CONFIG: join(home.home, 'gcloud'),
    AWS_CONFIG_FILE: join(home.home, 'no-aws-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(home.home, 'no-aws-credentials'),
    ...env,
  };
}

/** The proxy settings for a run: registries through the CONNECT proxy, stand-ins on loopback directly. */
export function proxyEnv(proxyUrl: string): Record<string, string> {
  return { HTTPS_PROXY: proxyUrl, NO_PROXY: '127.0.0.1,localhost' };
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = join(dir, n);
    const st = statSync(p);
    if (st.isDirectory()) out.push(...filesUnder(p));
    else if (st.isFile()) out.push(p);
  }
  return out;
}

/** No secret appears in the run's output, nor in any file under `dirs`. */
export function assertNoSecrets(run: FerryRun, secrets: Array<string | undefined>, dirs: string[]): void {
  const list = [...new Set(secrets.filter((s): s is string => typeof s === 'string' && s.length >= 8))];
  assert.ok(list.length > 0, 'no secrets to look for');
  for (const s of list) {
    assert.ok(!run.stderr.includes(s), `a secret (${s.slice(0, 4)}…) appears on stderr`);
    assert.ok(!run.stdout.includes(s), `a secret (${s.slice(0, 4)}…) appears on stdout`);
  }
  for (const f of dirs.flatMap(filesUnder)) {
    const text = readFileSync(f).toString('latin1');
    for (const s of list) assert.ok(!text.includes(s), `a secret (${s.slice(0, 4)}…) was written to ${f}`);
  }
}

/** Decode `Basic base64(user:pass)`. */
export function basicPassword(header: string | undefined): string | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const text = Buffer.from(m[1] as string, 'base64').toString('utf8');
  return text.slice(text.indexOf(':') + 1);
}
