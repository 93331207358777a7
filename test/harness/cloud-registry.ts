// Stand-ins for the registry side of AWS ECR and Google Artifact Registry, for end-to-end
// copies with the real ferry CLI. A real distribution registry (htpasswd auth) stores and serves
// the images; in front of it, a small HTTPS server plays the cloud registry's edge under its
// real host name (`111122223333.dkr.ecr.us-west-2.amazonaws.com`, `us-west1-docker.pkg.dev`):
//
//   - TLS with a certificate for those names, issued by a test CA made with the openssl CLI;
//   - reached through an HTTPS_PROXY (a CONNECT proxy here) that maps the names to loopback ports,
//     so ferry runs its real TLS, proxy and host-based cloud-auth paths;
//   - checks the registry credentials against what the AWS / GCP stand-ins issued, and answers
//     as the cloud registry does: ECR's 403 DENIED for an expired token, NAME_UNKNOWN for a
//     repository that was never created, TAG_INVALID on an immutable repository, 307 redirects
//     of blob downloads to pre-signed "S3" URLs on another host; Artifact Registry's
//     PROJECT/REPOSITORY/IMAGE names and missing repositories.
//
// Credentials reach distribution in one of two ways. With `password`, the stand-in issues that
// one password (its `ecrPassword` / `accessToken` option) and distribution's htpasswd holds it:
// the front passes the client's Authorization through and distribution decides. Without it, the
// stand-in issues fresh random tokens (needed to tell a renewed token from an expired one); the
// front checks each against the stand-in and presents the registry's own htpasswd credential.
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream, readFileSync, writeFileSync } from 'node:fs';
import { Agent as HttpAgent, createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { connect as netConnect, isIP, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { TEST_ACCOUNT, type AwsStandin } from './aws-standin.ts';
import { startDistribution, type DistributionRegistry } from './distribution.ts';
import type { GcpStandin } from './gcp-standin.ts';
import { clientFor, MANIFEST_ACCEPT, type OciClient } from './oci-client.ts';
import { makeTempDir } from './process.ts';

// ---------------------------------------------------------------------------------------------
// A test CA and one server certificate for every name the cloud stand-ins answer to.

export interface TestPki {
  /** PEM of the CA certificate: what ferry gets with --ca-file. */
  caPath: string;
  certPath: string;
  keyPath: string;
  names: string[];
  cert: Buffer;
  key: Buffer;
}

export function makeTestPki(names: string[]): TestPki {
  const dir = makeTempDir('pki').path;
  const openssl = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  };
  const p256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...p256, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=ferry test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(['req', '-new', ...p256, '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${names[0]}`]);
  writeFileSync(
    join(dir, 'server.ext'),
    `subjectAltName=${names.map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',')}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`,
  );
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext']);
  const certPath = join(dir, 'server.pem');
  const keyPath = join(dir, 'server.key');
  return { caPath: join(dir, 'ca.pem'), certPath, keyPath, names, cert: readFileSync(certPath), key: readFileSync(keyPath) };
}

// ---------------------------------------------------------------------------------------------
// The HTTPS_PROXY: CONNECT tunnels to the names it knows, 403 for anything else.

export interface ConnectProxy {
  /** `http://127.0.0.1:PORT`: the HTTPS_PROXY value. */
  url: string;
  /** Every CONNECT target asked for (`host:port`), and whether it was routed. */
  connects: Array<{ target: string; routed: boolean }>;
  /** Requests that were not CONNECT (a client sending plain HTTP through the proxy). */
  plainRequests: string[];
  /** Tunnel `name:443` to `127.0.0.1:port`. */
  route(name: string, port: number): void;
  stop(): Promise<void>;
}

export async function startConnectProxy(): Promise<ConnectProxy> {
  const routes = new Map<string, number>();
  const connects: ConnectProxy['connects'] = [];
  const plainRequests: string[] = [];
  const sockets = new Set<Socket>();
  const server = createHttpServer((req, res) => {
    plainRequests.push(`${req.method} ${req.url}`);
    res.writeHead(403, { 'content-type': 'text/plain' });
    res.end('this proxy only tunnels (CONNECT)');
  });
  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    const target = String(req.url ?? '').toLowerCase();
    const [name, port] = target.split(':');
    const to = port === '443' && name ? routes.get(name) : undefined;
    connects.push({ target, routed: to !== undefined });
    if (to === undefined) {
      client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const upstream = netConnect(to, '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    client.on('close', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    connects,
    plainRequests,
    route: (name, p) => void routes.set(name.toLowerCase(), p),
    async stop() {
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// An HTTPS front: answers itself or forwards to a plain-HTTP backend on loopback.

export interface FrontRequest {
  method: string;
  /** Path and query. */
  path: string;
  /** The Authorization header as received (what ferry sent). */
  authorization: string | undefined;
  status: number;
  /** Who answered: the front itself, or the registry behind it. */
  by: 'front' | 'registry';
  note?: string;
  /** When it arrived (epoch ms). */
  at: number;
  /** Request body bytes received. */
  bytes: number;
}

type Decision = { forward: true; authorization?: string } | { forward: false; status: number; headers?: Record<string, string>; body?: string; note?: string };

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out = { ...headers };
  for (const h of HOP_BY_HOP) delete out[h];
  return out;
}

interface Front {
  server: HttpsServer;
  port: number;
  requests: FrontRequest[];
  stop(): Promise<void>;
}

async function startFront(opts: {
  pki: TestPki;
  /** The name clients use; distribution builds its absolute URLs from it. */
  publicHost: string;
  backend: string;
  decide: (req: IncomingMessage, url: URL) => Promise<Decision> | Decision;
}): Promise<Front> {
  const requests: FrontRequest[] = [];
  const agent = new HttpAgent({ keepAlive: true });
  const [backendHost, backendPort] = opts.backend.split(':') as [string, string];
  const server = createHttpsServer({ cert: opts.pki.cert, key: opts.pki.key, requestTimeout: 0, headersTimeout: 0 }, (req, res) => {
    const entry: FrontRequest = { method: req.method ?? 'GET', path: req.url ?? '/', authorization: req.headers.authorization, status: 0, by: 'front', at: Date.now(), bytes: 0 };
    const countBytes = (c: Buffer) => void (entry.bytes += c.byteLength);
    requests.push(entry);
    const url = new URL(req.url ?? '/', `https://${opts.publicHost}`);
    Promise.resolve(opts.decide(req, url))
      .then((d) => {
        if (!d.forward) {
          if (d.note) entry.note = d.note;
          // Read what the client sends first, so it sees the answer rather than a broken pipe.
          req.on('data', countBytes);
          req.resume();
          req.on('end', () => {
            entry.status = d.status;
            res.writeHead(d.status, { 'content-type': 'application/json; charset=utf-8', ...d.headers });
            res.end(d.body ?? '');
          });
          return;
        }
        entry.by = 'registry';
        const headers: IncomingHttpHeaders = { ...forwardable(req.headers), host: opts.publicHost, 'x-forwarded-proto': 'https' };
        if (d.authorization !== undefined) headers.authorization = d.authorization;
        const upstream = httpRequest({ host: backendHost, port: Number(backendPort), method: req.method, path: req.url, headers, agent });
        upstream.on('response', (up) => {
          entry.status = up.statusCode ?? 0;
          res.writeHead(up.statusCode ?? 502, up.statusMessage, forwardable(up.headers));
          up.pipe(res);
        });
        upstream.on('error', () => {
          if (!res.headersSent) {
            entry.status = 502;
            res.writeHead(502).end();
          } else res.destroy();
        });
        res.on('close', () => {
          if (!res.writableFinished) upstream.destroy();
        });
        req.on('data', countBytes);
        req.pipe(upstream);
      })
      .catch((e: unknown) => {
        entry.status = 500;
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e instanceof Error ? e.stack : e));
      });
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    requests,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

/** `Basic base64(user:password)` → its parts. */
function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const text = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  return colon < 0 ? undefined : { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

function registryError(status: number, code: string, message: string, headers: Record<string, string> = {}, note?: string): Decision {
  return { forward: false, status, headers, body: JSON.stringify({ errors: [{ code, message, detail: null }] }), ...(note ? { note } : {}) };
}

const API_PATH = /^\/v2\/(.+?)\/(manifests|blobs|tags|referrers)\/(.*)$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** Test hooks shared by the ECR and Artifact Registry fronts. */
export interface FrontHooks {
  /** Called as each request arrives, before its credentials are checked (e.g. to expire tokens at a chosen moment); `length`: its Content-Length, if any. */
  onRequest?: (method: string, path: string, length: number | undefined) => void;
  /** Hold a request this long before answering it (to make a copy outlive short-lived tokens). */
  delayMs?: (method: string, path: string) => number;
  /** Hold a request (its credentials already checked) until the promise settles: to make a copy outlive a token by a condition, not a guess at how long it takes. */
  hold?: (method: string, path: string, authorization: string | undefined) => Promise<void> | undefined;
}

/** `decide` with the hooks around it: onRequest on arrival, credentials checked then, the delay and the hold after. */
function withHooks(hooks: FrontHooks, decide: (req: IncomingMessage, url: URL) => Promise<Decision>): (req: IncomingMessage, url: URL) => Promise<Decision> {
  return async (req, url) => {
    const length = req.headers['content-length'];
    hooks.onRequest?.(req.method ?? 'GET', url.pathname, length === undefined ? undefined : Number(length));
    const d = await decide(req, url);
    const ms = hooks.delayMs?.(req.method ?? 'GET', url.pathname) ?? 0;
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    await hooks.hold?.(req.method ?? 'GET', url.pathname, req.headers.authorization);
    return d;
  };
}

/** The registry a cloud stand-in stores images in, and how tests reach it directly. */
export interface CloudRegistry {
  /** The cloud host name, as in image references. */
  host: string;
  backend: DistributionRegistry;
  /** A client of the registry behind the front (plain HTTP, its own credential): to seed and verify. */
  client: OciClient;
  /** What reached the front, in order. */
  requests: FrontRequest[];
  stop(): Promise<void>;
}

async function startBackend(username: string, password: string): Promise<{ backend: DistributionRegistry; client: OciClient }> {
  const backend = await startDistribution({ auth: 'htpasswd', users: { [username]: password } });
  return { backend, client: clientFor(backend, { username, password }) };
}

// ---------------------------------------------------------------------------------------------
// Amazon ECR.

export const S3_LAYER_HOST = 'prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com';

export interface EcrRegistryOptions extends FrontHooks {
  aws: AwsStandin;
  pki: TestPki;
  proxy: ConnectProxy;
  account?: string;
  /** The one password the stand-in issues (its `ecrPassword`); distribution's htpasswd holds it. */
  password?: string;
  /** Answer blob downloads with a 307 to a pre-signed URL on S3_LAYER_HOST, as ECR does. */
  redirectBlobs?: boolean;
  /** Pull-through cache rule prefixes (e.g. `docker-hub`): pulling under one creates the repository. */
  pullThroughPrefixes?: string[];
}

export interface EcrRegistry extends CloudRegistry {
  /** Requests that reached the "S3" host, with the Authorization header each carried. */
  s3Requests: FrontRequest[];
}

export async function startEcrRegistry(opts: EcrRegistryOptions): Promise<EcrRegistry> {
  const { aws } = opts;
  const account = opts.account ?? TEST_ACCOUNT;
  const host = `${account}.dkr.ecr.${aws.region}.amazonaws.com`;
  const backendPassword = opts.password ?? `backend-${randomBytes(12).toString('hex')}`;
  const { backend, client } = await startBackend('AWS', backendPassword);
  const backendAuth = basic('AWS', backendPassword);
  const presignKey = randomBytes(32);
  const challenge = { 'www-authenticate': `Basic realm="https://${host}/",service="ecr.amazonaws.com"` };

  const presign = (path: string, expires: number): string => createHmac('sha256', presignKey).update(`${path}\n${expires}`).digest('hex');

  const decide = async (req: IncomingMessage, url: URL): Promise<Decision> => {
    const cred = parseBasic(req.headers.authorization);
    if (!cred || cred.username !== 'AWS') return registryError(401, 'DENIED', 'Not Authorized', challenge, 'no credentials');
    const issued = aws.issuedEcrTokens.filter((t) => t.registryId === account && t.password === cred.password);
    if (issued.length === 0) return registryError(401, 'DENIED', 'Not Authorized', challenge, 'unknown token');
    const live = issued.find((t) => t.expiresAt.getTime() > Date.now());
    if (!live) {
      // What ECR answers an expired token with: 403, no challenge.
      return registryError(403, 'DENIED', 'Your authorization token has expired. Reauthenticate and try again.', {}, 'expired token');
    }
    const authorization = opts.password !== undefined ? undefined : backendAuth;
    const m = API_PATH.exec(url.pathname);
    if (!m) return { forward: true, ...(authorization ? { authorization } : {}) };
    const [, name, kind, rest] = m as unknown as [string, string, string, string];
    // IAM, as the token's principal (aws-standin.ts: the permissions of each request, the token's region).
    const method = req.method ?? 'GET';
    const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
    const denied = (k: string) => aws.ecrRegistryDenial(live, { method, kind: k, name, hasBody });
    const denial = denied(kind === 'blobs' && rest.startsWith('uploads') ? 'uploads' : kind);
    if (denial) return registryError(403, 'DENIED', denial, {}, /expired/.test(denial) ? 'token from another region' : 'denied');
    let repo = aws.repository(name, account);
    if (!repo && (method === 'GET' || method === 'HEAD') && (opts.pullThroughPrefixes ?? []).some((p) => name.startsWith(`${p}/`))) {
      // A pull through a cache rule creates the repository (the upstream image is already cached here).
      const cacheDenial = denied('pull-through');
      if (cacheDenial) return registryError(403, 'DENIED', cacheDenial, {}, 'denied');
      repo = aws.addRepository(name, { registryId: account });
    }
    if (!repo) return registryError(404, 'NAME_UNKNOWN', `The repository with name '${name}' does not exist in the registry with id '${account}'`, {}, 'no repository');
    if (kind === 'manifests' && req.method === 'PUT' && !DIGEST.test(rest) && repo.imageTagMutability.startsWith('IMMUTABLE')) {
      const head = await fetch(`${backend.url}/v2/${name}/manifests/${rest}`, { method: 'HEAD', headers: { authorization: backendAuth, accept: MANIFEST_ACCEPT } });
      if (head.status === 200) {
        return registryError(400, 'TAG_INVALID', `The image tag '${rest}' already exists in the '${name}' repository and cannot be overwritten because the repository is immutable.`, {}, 'immutable tag');
      }
    }
    if (kind === 'blobs' && req.method === 'GET' && DIGEST.test(rest) && opts.redirectBlobs) {
      const path = `/${account}/${name}/${rest}`;
      const expires = Date.now() + 3600_000;
      const q = new URLSearchParams({
        'X-Amz-Algorithm': 'AWS4-HMAC-SHA256',
        'X-Amz-Expires': '3600',
        'X-Amz-Date': String(expires),
        'X-Amz-SignedHeaders': 'host',
        'X-Amz-Signature': presign(path, expires),
      });
      return { forward: false, status: 307, headers: { location: `https://${S3_LAYER_HOST}${path}?${q}` }, note: 'redirect to S3' };
    }
    return { forward: true, ...(authorization ? { authorization } : {}) };
  };

  const front = await startFront({ pki: opts.pki, publicHost: host, backend: backend.host, decide: withHooks(opts, decide) });
  opts.proxy.route(host, front.port);

  // ECR's layer-upload API (the AWS stand-in) stores completed layers in this registry, and
  // BatchCheckLayerAvailability looks here, so a manifest PUT through the Docker API finds them.
  aws.attachLayerStore(account, {
    stat: async (name, digest) => {
      const r = await fetch(`${backend.url}/v2/${name}/blobs/${digest}`, { method: 'HEAD', headers: { authorization: backendAuth } });
      return r.status === 200 ? Number(r.headers.get('content-length')) : undefined;
    },
    put: async (name, digest, file, size) => {
      const ref = await client.pushBlobStream(name, createReadStream(file), { chunkSize: 64 * 1024 * 1024 });
      if (ref.digest !== digest || ref.size !== size) throw new Error(`layer store: stored ${ref.digest} (${ref.size} bytes), expected ${digest} (${size})`);
    },
  });

  // The "S3" host: pre-signed URLs only. S3 refuses a request that also carries an Authorization
  // header ("Only one auth mechanism allowed"), so a leaked registry credential fails the download.
  let s3: Front | undefined;
  if (opts.redirectBlobs) {
    s3 = await startFront({
      pki: opts.pki,
      publicHost: S3_LAYER_HOST,
      backend: backend.host,
      decide: (req, url) => {
        const s3Error = (status: number, code: string, message: string): Decision => ({
          forward: false,
          status,
          headers: { 'content-type': 'application/xml' },
          body: `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`,
          note: code,
        });
        if (req.headers.authorization !== undefined) {
          return s3Error(400, 'InvalidArgument', 'Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified');
        }
        const expires = Number(url.searchParams.get('X-Amz-Date'));
        const given = Buffer.from(url.searchParams.get('X-Amz-Signature') ?? '', 'hex');
        const want = Buffer.from(presign(url.pathname, expires), 'hex');
        if (given.length !== want.length || !timingSafeEqual(given, want)) return s3Error(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.');
        if (!(expires > Date.now())) return s3Error(403, 'AccessDenied', 'Request has expired');
        const [, , ...nameAndDigest] = url.pathname.split('/');
        const digest = nameAndDigest.pop() as string;
        // Serve the layer from the registry's storage (the front's own credential, Range kept).
        req.url = `/v2/${nameAndDigest.join('/')}/blobs/${digest}`;
        return { forward: true, authorization: backendAuth };
      },
    });
    opts.proxy.route(S3_LAYER_HOST, s3.port);
  }

  return {
    host,
    backend,
    client,
    requests: front.requests,
    s3Requests: s3?.requests ?? [],
    async stop() {
      await Promise.all([front.stop(), s3?.stop()]);
      await backend.stop();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Google Artifact Registry.

export interface GarRegistryOptions extends FrontHooks {
  gcp: GcpStandin;
  pki: TestPki;
  proxy: ConnectProxy;
  /** Default us-west1: the host is `<location>-docker.pkg.dev`. */
  location?: string;
  /** The one access token distribution's htpasswd holds (the stand-in's `accessToken`). */
  password?: string;
  /** Repositories that exist, as `project/repository`. */
  repositories: string[];
}

export interface GarRegistry extends CloudRegistry {
  repositories: Set<string>;
}

export async function startGarRegistry(opts: GarRegistryOptions): Promise<GarRegistry> {
  const { gcp } = opts;
  const host = `${opts.location ?? 'us-west1'}-docker.pkg.dev`;
  const backendPassword = opts.password ?? `backend-${randomBytes(12).toString('hex')}`;
  const { backend, client } = await startBackend('oauth2accesstoken', backendPassword);
  const backendAuth = basic('oauth2accesstoken', backendPassword);
  const repositories = new Set(opts.repositories);
  const challenge = { 'www-authenticate': `Basic realm="https://${host}/"` };

  const decide = async (req: IncomingMessage, url: URL): Promise<Decision> => {
    const cred = parseBasic(req.headers.authorization);
    if (!cred || cred.username !== 'oauth2accesstoken') return registryError(401, 'UNAUTHORIZED', 'authentication failed', challenge, 'no credentials');
    const known = gcp.issued.filter((t) => t.token === cred.password);
    if (known.length === 0) return registryError(401, 'UNAUTHORIZED', 'authentication failed', challenge, 'unknown token');
    if (!known.some((t) => t.expiresAt > Date.now())) return registryError(401, 'UNAUTHORIZED', 'authentication failed: the access token has expired', challenge, 'expired token');
    const authorization = opts.password !== undefined ? undefined : backendAuth;
    const m = API_PATH.exec(url.pathname);
    if (m) {
      const parts = (m[1] as string).split('/');
      if (parts.length < 3) {
        return registryError(400, 'NAME_INVALID', `Missing image name. Pushes should be of the form docker push HOST-NAME/PROJECT-ID/REPOSITORY/IMAGE`, {}, 'bad name');
      }
      const [project, repository] = parts as [string, string];
      if (!repositories.has(`${project}/${repository}`)) return registryError(404, 'NAME_UNKNOWN', `Repository "${repository}" not found`, {}, 'no repository');
    }
    return { forward: true, ...(authorization ? { authorization } : {}) };
  };

  const front = await startFront({ pki: opts.pki, publicHost: host, backend: backend.host, decide: withHooks(opts, decide) });
  opts.proxy.route(host, front.port);
  return {
    host,
    backend,
    client,
    requests: front.requests,
    repositories,
    async stop() {
      await front.stop();
      await backend.stop();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Google's APIs under their real names (google-auth-library's default endpoints), in TLS, in
// front of the GCP stand-in: IAM Credentials (impersonation) and STS (federation).

export const GOOGLE_API_HOSTS = ['iamcredentials.googleapis.com', 'sts.googleapis.com'];

/** The AWS API names the SDK reaches without endpoint overrides, in a region. */
export function awsApiHosts(region: string): { sts: string; ecr: string } {
  return { sts: `sts.${region}.amazonaws.com`, ecr: `api.ecr.${region}.amazonaws.com` };
}

/**
 * STS and the ECR API under their real names, in front of the AWS stand-in, reached only through
 * the proxy: for runs without AWS_ENDPOINT_URL_* (the PKI must hold awsApiHosts' names). The
 * front passes the Host the SDK signed, so the stand-in's SigV4 check sees what AWS would.
 */
export async function startAwsApis(opts: { aws: AwsStandin; pki: TestPki; proxy: ConnectProxy }): Promise<{ requests: FrontRequest[]; stop(): Promise<void> }> {
  const names = awsApiHosts(opts.aws.region);
  const [sts, ecr] = await Promise.all([
    startFront({ pki: opts.pki, publicHost: names.sts, backend: opts.aws.sts.host, decide: () => ({ forward: true }) }),
    startFront({ pki: opts.pki, publicHost: names.ecr, backend: opts.aws.ecr.host, decide: () => ({ forward: true }) }),
  ]);
  opts.proxy.route(names.sts, sts.port);
  opts.proxy.route(names.ecr, ecr.port);
  return {
    get requests() {
      return [...sts.requests, ...ecr.requests];
    },
    stop: async () => void (await Promise.all([sts.stop(), ecr.stop()])),
  };
}

export async function startGoogleApis(opts: { gcp: GcpStandin; pki: TestPki; proxy: ConnectProxy }): Promise<{ requests: FrontRequest[]; stop(): Promise<void> }> {
  const front = await startFront({ pki: opts.pki, publicHost: opts.gcp.http.host, backend: opts.gcp.http.host, decide: () => ({ forward: true }) });
  for (const name of GOOGLE_API_HOSTS) opts.proxy.route(name, front.port);
  return { requests: front.requests, stop: () => front.stop() };
}
