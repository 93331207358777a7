// Two distribution registries, each behind its own fault proxy, and the harness's clients for
// them: the setup of the e2e suites that break requests on either side.
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';

export interface ProxiedRegistries {
  src: DistributionRegistry;
  dst: DistributionRegistry;
  srcProxy: FaultProxy;
  dstProxy: FaultProxy;
  srcC: OciClient;
  dstC: OciClient;
  stop(): Promise<void>;
}

export async function startProxiedRegistries(): Promise<ProxiedRegistries> {
  const [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
  const [srcProxy, dstProxy] = await Promise.all([startFaultProxy(src.host), startFaultProxy(dst.host)]);
  return {
    src,
    dst,
    srcProxy,
    dstProxy,
    srcC: clientFor(src),
    dstC: clientFor(dst),
    async stop() {
      await Promise.all([srcProxy.stop(), dstProxy.stop()]);
      await Promise.all([src.stop(), dst.stop()]);
    },
  };
}
