// How the AWS SDK's clients reach AWS. The SDK's HTTP handler makes its own agents, which ignore
// HTTPS_PROXY / HTTP_PROXY / NO_PROXY; ferry's registry traffic honours them, and a runner in a
// customer's VPC may have no way out but that proxy. So when a proxy is configured, the SDK's
// clients (ECR, STS, and the STS clients of the credential chain) get agents that use it, with
// NO_PROXY applied by Node (https.Agent `proxyEnv`). The chain's instance and container metadata
// requests are the SDK's own and stay direct, as they must (link-local addresses).
import http from 'node:http';
import https from 'node:https';
import { proxyConfigured } from '../../transport/proxy-env.ts';

export interface AwsRequestHandlerConfig {
  /** The SDK builds its Node HTTP handler from these options. */
  requestHandler?: { httpAgent: http.Agent; httpsAgent: https.Agent };
}

/**
 * SDK client options that send its requests through the environment's proxy, if there is one;
 * `{}` if not. A fresh pair of agents per client, as the SDK makes by default: destroying a
 * client destroys its agents, which must not cut another client's requests.
 */
export function awsRequestHandler(env: NodeJS.ProcessEnv = process.env): AwsRequestHandlerConfig {
  if (!proxyConfigured(env)) return {};
  const proxyEnv = { ...env };
  return {
    requestHandler: {
      httpAgent: new http.Agent({ keepAlive: true, proxyEnv }),
      httpsAgent: new https.Agent({ keepAlive: true, proxyEnv }),
    },
  };
}
