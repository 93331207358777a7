// ferry's command line. Each command maps flags to library options and prints the result:
// stdout carries only the result (text, or one JSON document with --json); logs go to stderr.
// Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad local input.
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { FerryError, UsageError, exitCodeFor, toFerryError } from '../errors.ts';
import { isVersionOnly, versionText } from '../version.ts';
import { runCopy, copyOptions } from './copy.ts';
import { runInspect } from './inspect.ts';
import { agentOptions, runAgent } from './agent.ts';
import { runSync, syncOptions } from './sync.ts';
import { globalOptions } from './options.ts';

export async function main(argv: string[] = hideBin(process.argv)): Promise<number> {
  let exitCode = 0;
  const wantsJson = argv.includes('--json');
  // src/main.ts answers these before loading the CLI; this is for callers of main() itself.
  if (isVersionOnly(argv)) {
    process.stdout.write(versionText(wantsJson));
    return 0;
  }
  const parser = yargs(argv)
    .scriptName('ferry')
    // Flags are read by their kebab-case names only; without this yargs would also add a
    // camelCase twin of each, and "Unknown arguments" would name every unknown flag twice.
    .parserConfiguration({ 'camel-case-expansion': false })
    .usage('ferry: copy container images into a registry, byte-exact, verified and resumable.\n\nUsage: $0 <command> [options]')
    .command(
      'copy <source> <destination>',
      'Copy an image (all platforms, byte-exact) from one registry to another',
      (y: Argv) =>
        y
          .positional('source', { type: 'string', describe: 'source image: [docker://]host[:port]/path[:tag][@sha256:…]' })
          .positional('destination', { type: 'string', describe: 'destination image; without a tag, the source tag is used' })
          .options(globalOptions)
          .options(copyOptions)
          .example('$0 copy docker.io/library/alpine:3.20 registry.internal/mirror/alpine:3.20', 'copy every platform of alpine')
          .example('$0 copy --platform linux/amd64 SRC DST', 'copy one platform (writes a new manifest)'),
      async (args) => {
        exitCode = await runCopy(args as never);
      },
    )
    .command(
      'inspect <reference>',
      'Describe an image: digest, media type, platforms, layers and total size',
      (y: Argv) => y.positional('reference', { type: 'string', describe: 'image reference' }).options(globalOptions).options({ creds: { type: 'string', describe: 'credentials: user:pass or env:NAME' } }),
      async (args) => {
        exitCode = await runInspect(args as never);
      },
    )
    .command(
      'sync',
      'Run a control-plane plan by hand (a debug sync): the plan\'s source is copied to its destination',
      (y: Argv) => y.options(globalOptions).options(syncOptions).example('$0 sync --plan job-42.json --dry-run', 'show what the job would copy'),
      async (args) => {
        exitCode = await runSync(args as never);
      },
    )
    .command(
      'agent',
      'Run the agent: poll the control plane for sync jobs and copy their images into the local registry',
      (y: Argv) =>
        y
          .options(agentOptions)
          .example('$0 agent --control-plane-url https://cp.example.com --runner-id r-1 --token-file /run/secrets/ferry-token --local-registry 123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789', ''),
      async (args) => {
        exitCode = await runAgent(args as Record<string, unknown>);
      },
    )
    .command(
      'version',
      'Print the version, git commit and Node.js version (also: ferry --version)',
      (y: Argv) => y.options({ json: globalOptions.json }),
      (args) => {
        process.stdout.write(versionText(args.json === true));
      },
    )
    .demandCommand(1, 'Name a command: agent, copy, sync, inspect or version (see --help).')
    .strict()
    .recommendCommands()
    .help()
    .alias('help', 'h')
    .version(false)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg: string | undefined, err: Error | undefined) => {
      if (err) throw err;
      throw new UsageError(`${msg ?? 'invalid usage'}\n\n${wantsJson ? '' : 'Run "ferry --help" for usage.'}`.trim());
    });
  skipHelpCache(parser);
  try {
    await parser.parseAsync();
    return exitCode;
  } catch (e) {
    const err = toFerryError(e);
    reportFatal(err, wantsJson);
    return exitCodeFor(err);
  }
}

/**
 * yargs renders a command's whole help text as the command starts (cacheHelpMessage), so a later
 * failure could print it. ferry's failures never do (`.fail` says "Run ferry --help"), and the
 * rendering costs ~9 ms of every start (docs/performance.md): it is skipped. `--help` renders it
 * as before. Through yargs' internal methods: if a yargs release changes them, nothing is skipped.
 */
export function skipHelpCache(parser: Argv): void {
  const internal = parser as unknown as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } };
  const usage = internal.getInternalMethods?.().getUsageInstance?.();
  if (usage && typeof usage.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => undefined;
}

function reportFatal(err: FerryError, json: boolean): void {
  if (json) process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message } })}\n`);
  process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
}
