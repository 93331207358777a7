// The bundle replaces the string-width package with src/cli/string-width.ts (scripts/build.mjs):
// it must count columns as the package does for everything ferry's --help can contain, and for
// the usual hard cases (escape sequences, CJK, combining marks, emoji, zero-width characters).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import realStringWidth from 'string-width';
import stringWidth from '../../src/cli/string-width.ts';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;

test('same widths as the string-width package on hard cases', () => {
  const cases = [
    '',
    'plain ascii, with punctuation: [string] [required]',
    '\u001b[31mred\u001b[39m and \u001b[1mbold\u001b[22m',
    '\u001b]8;;https://example.com\u0007link\u001b]8;;\u0007',
    '日本語のテキスト',
    '한국어',
    'ｆｕｌｌｗｉｄｔｈ',
    'café', // precomposed
    'cafe\u0301', // combining acute
    'zero\u200bwidth',
    'arrows → and dashes — and ellipsis …',
    'sha256:… and ×1.5 and ≤ and ≥',
    '🚢 ferry 📦',
    'tab\tand\nnewline',
    '\u00ad soft hyphen',
  ];
  for (const s of cases) assert.equal(stringWidth(s), realStringWidth(s), JSON.stringify(s));
  assert.equal(stringWidth(undefined), 0);
});

test('same widths on every line of every --help', () => {
  for (const args of [['--help'], ['copy', '--help'], ['inspect', '--help'], ['sync', '--help'], ['agent', '--help'], ['version', '--help']]) {
    const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.ok(lines.length > 5, `${args.join(' ')}: no help text`);
    for (const line of lines) {
      assert.equal(stringWidth(line), realStringWidth(line), `${args.join(' ')}: ${JSON.stringify(line)}`);
      for (const word of line.split(/\s+/)) assert.equal(stringWidth(word), realStringWidth(word), JSON.stringify(word));
    }
  }
});
