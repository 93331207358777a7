// Turning AWS SDK failures into FerryErrors that say what went wrong and what to do.
import { FerryError, NetworkError, type Side } from '../../errors.ts';

/** What an AWS SDK error tells us, independent of the SDK's class hierarchy. */
export interface AwsFailure {
  /** The AWS error code (AccessDenied, AccessDeniedException, InvalidClientTokenId, …) or the JS error name. */
  code: string;
  message: string;
  status: number | undefined;
  kind: 'denied' | 'bad-credentials' | 'no-credentials' | 'unavailable' | 'not-found' | 'invalid' | 'other';
}

const DENIED = new Set(['AccessDenied', 'AccessDeniedException', 'UnauthorizedOperation', 'AuthorizationError']);
const BAD_CREDENTIALS = new Set([
  'InvalidClientTokenId',
  'UnrecognizedClientException',
  'SignatureDoesNotMatch',
  'InvalidSignatureException',
  'ExpiredToken',
  'ExpiredTokenException',
  'IncompleteSignature',
  'IncompleteSignatureException',
  'MissingAuthenticationToken',
  'MissingAuthenticationTokenException',
  'InvalidIdentityToken',
  'InvalidIdentityTokenException',
  'IDPRejectedClaim',
  'IDPRejectedClaimException',
  'IDPCommunicationError',
  'IDPCommunicationErrorException',
  'RegionDisabledException',
]);
const THROTTLED = new Set(['Throttling', 'ThrottlingException', 'TooManyRequestsException', 'RequestLimitExceeded', 'ServiceUnavailable', 'ServiceUnavailableException', 'InternalFailure', 'InternalError', 'ServerException']);
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT']);

export function classifyAwsError(err: unknown): AwsFailure {
  const e = (err ?? {}) as { name?: unknown; message?: unknown; code?: unknown; Code?: unknown; $metadata?: { httpStatusCode?: number }; $fault?: string; cause?: unknown };
  const code = typeof e.Code === 'string' ? e.Code : typeof e.name === 'string' ? e.name : 'Error';
  const message = typeof e.message === 'string' ? e.message : String(err);
  const status = e.$metadata?.httpStatusCode;
  const sysCode = typeof e.code === 'string' ? e.code : undefined;
  let kind: AwsFailure['kind'] = 'other';
  if (code === 'CredentialsProviderError' || code === 'ProviderError') kind = 'no-credentials';
  else if (DENIED.has(code)) kind = 'denied';
  else if (BAD_CREDENTIALS.has(code)) kind = 'bad-credentials';
  else if (code === 'RepositoryNotFoundException' || code === 'RegistryNotFoundException') kind = 'not-found';
  else if (code === 'ValidationError' || code === 'ValidationException' || code === 'InvalidParameterException' || code === 'InvalidParameterValue') kind = 'invalid';
  else if (
    THROTTLED.has(code) ||
    (status !== undefined && status >= 500) ||
    code === 'TimeoutError' ||
    code === 'RequestTimeout' ||
    (sysCode !== undefined && NETWORK_CODES.has(sysCode))
  ) {
    kind = 'unavailable';
  } else if (status === undefined && e.$fault === undefined && (code === 'Error' || code === 'TypeError') && /fetch failed|socket|network|connect/i.test(message)) {
    kind = 'unavailable';
  }
  return { code, message, status, kind };
}

export function authCode(side: Side): 'SOURCE_AUTH' | 'DESTINATION_AUTH' {
  return side === 'source' ? 'SOURCE_AUTH' : 'DESTINATION_AUTH';
}

/** A FerryError for a failure of an AWS call made to obtain registry credentials. */
export function awsAuthError(err: unknown, ctx: { side: Side; host: string; action: string; roleArn?: string; hint?: string }): FerryError {
  if (err instanceof FerryError) return err;
  const f = classifyAwsError(err);
  const where = `${ctx.side} registry ${ctx.host}`;
  const opts = { side: ctx.side, status: f.status, cause: err, registryCodes: [f.code] };
  switch (f.kind) {
    case 'unavailable':
      return new NetworkError(`${where}: ${ctx.action} failed, AWS did not answer (${f.code}: ${f.message}); will retry`, opts);
    case 'no-credentials':
      return new FerryError(
        authCode(ctx.side),
        `${where}: no AWS credentials found for ${ctx.action} (looked at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared config files, ` +
          `AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN (IRSA), the ECS container endpoint and EC2 instance metadata (IMDSv2)). ` +
          `Give the agent an IAM identity: an instance profile, an IRSA service account, a task role, or a profile. (${f.message})`,
        opts,
      );
    case 'denied':
      return new FerryError(
        authCode(ctx.side),
        `${where}: ${ctx.action} was denied${ctx.roleArn ? ` (role ${ctx.roleArn})` : ''}: ${f.message}. ${ctx.hint ?? `Grant ${ctx.action} to that identity.`}`,
        opts,
      );
    case 'bad-credentials':
      return new FerryError(
        authCode(ctx.side),
        `${where}: AWS rejected the credentials used for ${ctx.action} (${f.code}: ${f.message}). ` +
          (f.code.startsWith('Expired')
            ? 'The credentials or token have expired; refresh them (or the clock is wrong).'
            : f.code.startsWith('InvalidIdentityToken') || f.code.startsWith('IDP')
              ? `The identity provider's token was refused: check the OIDC provider and the role's trust policy${ctx.roleArn ? ` for ${ctx.roleArn}` : ''}.${ctx.hint ? ` ${ctx.hint}` : ''}`
              : 'Check the access key id and secret (or the session token), and that the system clock is correct.'),
        opts,
      );
    default:
      return new FerryError(authCode(ctx.side), `${where}: ${ctx.action} failed (${f.code}: ${f.message})${ctx.hint && f.kind === 'invalid' ? `. ${ctx.hint}` : ''}`, opts);
  }
}
