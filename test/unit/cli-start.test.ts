// What ferry's command line skips at start-up (docs/performance.md): yargs' help text rendered
// as a command starts, which ferry never prints after a failure. These pin the yargs internals
// the skip relies on: if a yargs release changes them, this fails instead of the skip silently
// doing nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import yargs, { type Argv } from 'yargs';
import { skipHelpCache } from '../../src/cli/main.ts';

/** A parser with one command, and a count of the times yargs renders its help text. */
function parserCountingHelp(args: string[]): { parser: Argv; renders: () => number } {
  const parser = yargs(args)
    .command('go', 'go somewhere', (y: Argv) => y.option('far', { type: 'boolean', describe: 'how far' }), () => undefined)
    .help()
    .exitProcess(false);
  const usage = (parser as unknown as { getInternalMethods(): { getUsageInstance(): { help(): string } } }).getInternalMethods().getUsageInstance();
  let renders = 0;
  const help = usage.help.bind(usage);
  usage.help = () => {
    renders++;
    return help();
  };
  return { parser, renders: () => renders };
}

test('a command starts without yargs rendering its help text', async () => {
  const plain = parserCountingHelp(['go']);
  await plain.parser.parseAsync();
  assert.equal(plain.renders(), 1, 'yargs renders the help text as a command starts (what skipHelpCache skips)');

  const skipped = parserCountingHelp(['go']);
  skipHelpCache(skipped.parser);
  await skipped.parser.parseAsync();
  assert.equal(skipped.renders(), 0);
});

test('--help still renders it', async () => {
  const { parser, renders } = parserCountingHelp(['go', '--help']);
  skipHelpCache(parser);
  let out = '';
  await parser.parseAsync(['go', '--help'], {}, (_err: unknown, _argv: unknown, output: string) => {
    out = output;
  });
  assert.ok(renders() >= 1);
  assert.match(out, /how far/);
});
