// Whether the environment names an HTTP(S) proxy: the registry transport and the cloud SDKs'
// agents (src/auth/cloud/aws-http.ts) decide on the same variables.
const PROXY_VARS = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'];

export function proxyConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  return PROXY_VARS.some((k) => env[k]);
}
