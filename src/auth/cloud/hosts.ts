// Which cloud registry a host belongs to. Pure functions: no network, no environment.
//
// AWS ECR private registries:
//   <account>.dkr.ecr.<region>.amazonaws.com          (IPv4)
//   <account>.dkr.ecr-fips.<region>.amazonaws.com     (FIPS endpoints, US and GovCloud regions)
//   <account>.dkr.ecr.<region>.amazonaws.com.cn       (China regions)
//   <account>.dkr-ecr.<region>.on.aws                 (dual-stack IPv4/IPv6)
// Google Artifact Registry and Container Registry:
//   <location>-docker.pkg.dev   (location: a region such as europe-west4, or a multi-region: us, europe, asia)
//   gcr.io, us.gcr.io, eu.gcr.io, asia.gcr.io (and any other *.gcr.io)

export interface EcrHost {
  /** The host as given, lower-cased, without a default :443 port. */
  host: string;
  /** 12-digit AWS account id (the ECR registry id). */
  account: string;
  region: string;
  /** The host is a FIPS endpoint: use the FIPS ECR API endpoint too. */
  fips: boolean;
  /** The host is a dual-stack endpoint: use the dual-stack ECR API endpoint too. */
  dualStack: boolean;
  partition: 'aws' | 'aws-cn' | 'aws-us-gov';
}

export interface GarHost {
  host: string;
  /** `artifact-registry` for *-docker.pkg.dev, `gcr` for gcr.io and its regional hosts. */
  kind: 'artifact-registry' | 'gcr';
  /** The region or multi-region (us, europe, asia…); `global` for plain gcr.io. */
  location: string;
}

// AWS region names: two-letter area, optional qualifiers, a direction word, a number (us-east-1,
// us-gov-west-1, cn-northwest-1, ap-southeast-5, eu-central-2, us-isob-east-1, mx-central-1).
const AWS_REGION = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;
const ECR_CLASSIC = /^(\d{12})\.dkr\.(ecr|ecr-fips)\.([a-z0-9-]+)\.(amazonaws\.com|amazonaws\.com\.cn)$/;
const ECR_DUALSTACK = /^(\d{12})\.dkr-ecr\.([a-z0-9-]+)\.on\.aws$/;

/** Lower-case a registry host and drop an explicit default HTTPS port. */
export function normalizeHost(registry: string): string {
  const h = registry.trim().toLowerCase().replace(/\.$/, '');
  return h.endsWith(':443') ? h.slice(0, -4) : h;
}

/** The ECR registry a host names, or undefined if it is not an ECR private registry host. */
export function parseEcrHost(registry: string): EcrHost | undefined {
  const host = normalizeHost(registry);
  const classic = ECR_CLASSIC.exec(host);
  if (classic) {
    const [, account, service, region, domain] = classic as unknown as [string, string, string, string, string];
    if (!AWS_REGION.test(region)) return undefined;
    const china = domain === 'amazonaws.com.cn';
    // China regions live only under .com.cn, and .com.cn hosts only China regions.
    if (china !== region.startsWith('cn-')) return undefined;
    return {
      host,
      account,
      region,
      fips: service === 'ecr-fips',
      dualStack: false,
      partition: china ? 'aws-cn' : region.startsWith('us-gov-') ? 'aws-us-gov' : 'aws',
    };
  }
  const dual = ECR_DUALSTACK.exec(host);
  if (dual) {
    const [, account, region] = dual as unknown as [string, string, string];
    if (!AWS_REGION.test(region) || region.startsWith('cn-')) return undefined;
    return {
      host,
      account,
      region,
      fips: false,
      dualStack: true,
      partition: region.startsWith('us-gov-') ? 'aws-us-gov' : 'aws',
    };
  }
  return undefined;
}

export function isEcrHost(registry: string): boolean {
  return parseEcrHost(registry) !== undefined;
}

const GAR = /^([a-z][a-z0-9-]*[a-z0-9])-docker\.pkg\.dev$/;
const GCR_SUBDOMAIN = /^([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)\.gcr\.io$/;

/** The Artifact Registry / Container Registry a host names, or undefined. */
export function parseGarHost(registry: string): GarHost | undefined {
  const host = normalizeHost(registry);
  const gar = GAR.exec(host);
  if (gar) return { host, kind: 'artifact-registry', location: gar[1] as string };
  if (host === 'gcr.io') return { host, kind: 'gcr', location: 'global' };
  const gcr = GCR_SUBDOMAIN.exec(host);
  if (gcr) return { host, kind: 'gcr', location: gcr[1] as string };
  return undefined;
}

export function isGarHost(registry: string): boolean {
  return parseGarHost(registry) !== undefined;
}
