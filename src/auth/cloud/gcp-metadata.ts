// The GCP metadata server's identity-token endpoint, for federating a GCP workload into AWS
// (sts:AssumeRoleWithWebIdentity with a Google-signed OIDC token), and whether there is a
// metadata server at all (is this GCP?). The host follows Google's own libraries:
// GCE_METADATA_IP, else GCE_METADATA_HOST, else metadata.google.internal.
import { FerryError, NetworkError, type Side } from '../../errors.ts';
import { registerSecret, type Logger } from '../../log/logger.ts';
import { authCode } from './aws-errors.ts';

export const DEFAULT_METADATA_HOST = 'metadata.google.internal';

/** Base URL of the metadata server's v1 API, honouring GCE_METADATA_IP / GCE_METADATA_HOST. */
export function metadataBaseUrl(env: NodeJS.ProcessEnv = process.env): string {
  let host = env.GCE_METADATA_IP || env.GCE_METADATA_HOST || DEFAULT_METADATA_HOST;
  if (!/^https?:\/\//.test(host)) host = `http://${host}`;
  return `${host.replace(/\/+$/, '')}/computeMetadata/v1`;
}

/**
 * Does a GCP metadata server answer here (a GCE VM, a GKE pod, Cloud Run)? One request, with
 * `Metadata-Flavor: Google`, that must come back with that header; off GCP the host does not
 * resolve and the answer comes at once. Never throws.
 */
export async function gcpMetadataServerAnswers(timeoutMs = 2000): Promise<boolean> {
  try {
    const res = await fetch(`${metadataBaseUrl()}/project/project-id`, { headers: { 'Metadata-Flavor': 'Google' }, signal: AbortSignal.timeout(timeoutMs), redirect: 'error' });
    await res.arrayBuffer();
    return res.status === 200 && res.headers.get('metadata-flavor') === 'Google';
  } catch {
    return false;
  }
}

export interface GcpIdentityTokenOptions {
  audience: string;
  logger: Logger;
  /** For error messages: which side of the copy needed the token. */
  side: Side;
  /** Service account alias on the VM; default `default`. */
  serviceAccount?: string;
  /** Per-attempt timeout, ms. Default 3000 (Google's libraries use 3 s off GCP). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Fetch an OIDC identity token (format=full) for `audience` from the metadata server.
 * The token is registered as a secret before it is returned.
 */
export async function fetchGcpIdentityToken(opts: GcpIdentityTokenOptions): Promise<string> {
  const base = metadataBaseUrl();
  const sa = encodeURIComponent(opts.serviceAccount ?? 'default');
  const url = `${base}/instance/service-accounts/${sa}/identity?audience=${encodeURIComponent(opts.audience)}&format=full`;
  const what = `GCP metadata server identity token (audience ${opts.audience})`;
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    let res: Response;
    try {
      const timeout = AbortSignal.timeout(opts.timeoutMs ?? 3000);
      res = await fetch(url, {
        headers: { 'Metadata-Flavor': 'Google' },
        signal: opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout,
        redirect: 'error',
      });
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      lastErr = e;
      const code = (e as { cause?: { code?: string } }).cause?.code;
      if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
        throw new FerryError(
          authCode(opts.side),
          `cannot fetch a ${what}: ${new URL(base).host} does not resolve, so this is not a GCP VM or GKE pod with a metadata server. ` +
            `Federating into AWS this way needs the agent to run on GCP (or GCE_METADATA_HOST pointing at a metadata server).`,
          { side: opts.side, cause: e },
        );
      }
      opts.logger.debug({ err: e, attempt }, 'metadata server request failed');
      continue;
    }
    const body = await res.text();
    if (res.status === 200) {
      if (res.headers.get('metadata-flavor') !== 'Google') {
        throw new FerryError(authCode(opts.side), `cannot fetch a ${what}: the server at ${new URL(base).host} is not a GCP metadata server (no Metadata-Flavor: Google header)`, { side: opts.side });
      }
      const token = body.trim();
      if (token.split('.').length !== 3) throw new FerryError(authCode(opts.side), `cannot fetch a ${what}: the answer is not a JWT`, { side: opts.side });
      registerSecret(token);
      return token;
    }
    if (res.status >= 500 || res.status === 429) {
      lastErr = new Error(`HTTP ${res.status}: ${body.slice(0, 200)}`);
      continue;
    }
    const hint =
      res.status === 404
        ? 'The VM or pod has no service account attached (or, on GKE, Workload Identity is not set up for its Kubernetes service account).'
        : 'Check the instance\'s service account and the metadata server configuration.';
    throw new FerryError(authCode(opts.side), `cannot fetch a ${what}: HTTP ${res.status} ${body.slice(0, 200).trim()}. ${hint}`, { side: opts.side, status: res.status });
  }
  throw new NetworkError(`cannot fetch a ${what} from ${new URL(base).host}: ${lastErr instanceof Error ? lastErr.message : String(lastErr)}`, { side: opts.side, cause: lastErr });
}
