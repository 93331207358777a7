// Regenerates the generated parts of README.md from the code, so the docs cannot drift:
// the agent's configuration reference (from AGENT_OPTIONS). test/docs.test.ts fails when
// README.md is out of date; run `npm run docs` to update it.
import { readFileSync, writeFileSync } from 'node:fs';
import { optionsMarkdown } from '../src/agent/config.ts';

export const AGENT_START = '<!-- generated: agent options (npm run docs) -->';
export const AGENT_END = '<!-- end generated: agent options -->';

export function renderReadme(readme: string): string {
  const start = readme.indexOf(AGENT_START);
  const end = readme.indexOf(AGENT_END);
  if (start < 0 || end < start) throw new Error(`README.md lacks the ${AGENT_START} … ${AGENT_END} markers`);
  return `${readme.slice(0, start + AGENT_START.length)}\n${optionsMarkdown()}\n${readme.slice(end)}`;
}

if (import.meta.main) {
  const path = new URL('../README.md', import.meta.url);
  const before = readFileSync(path, 'utf8');
  const after = renderReadme(before);
  writeFileSync(path, after);
  console.log(before === after ? 'README.md already up to date' : 'README.md updated');
}
