// Every link between the project's Markdown files leads somewhere: the file exists and, for a
// `#fragment`, the heading does (as GitHub renders its anchor). A heading renamed without its links
// is a dead end for the operator following them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

const root = new URL('../', import.meta.url).pathname;

function markdownFiles(): string[] {
  const files = ['README.md', 'bench/README.md'];
  const walk = (dir: string) => {
    for (const name of readdirSync(join(root, dir))) {
      const path = join(dir, name);
      if (statSync(join(root, path)).isDirectory()) walk(path);
      else if (name.endsWith('.md')) files.push(path);
    }
  };
  walk('docs');
  walk('deploy');
  return files;
}

/** Lines outside fenced code blocks. */
function prose(text: string): string[] {
  let fenced = false;
  return text.split('\n').filter((line) => {
    if (/^\s*(```|~~~)/.test(line)) {
      fenced = !fenced;
      return false;
    }
    return !fenced;
  });
}

/** GitHub's heading anchors: lower case, punctuation dropped (not - or _), spaces to hyphens, repeats numbered. */
function headingAnchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  for (const line of prose(text)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = m[1]!
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

test('heading anchors are computed as GitHub does', () => {
  const anchors = headingAnchors('# A `code` heading (with parens)\n## Ctrl-C and SIGTERM during `ferry copy`\n```\n# not a heading\n```\n## Twice\n## Twice\n');
  assert.deepEqual([...anchors], ['a-code-heading-with-parens', 'ctrl-c-and-sigterm-during-ferry-copy', 'twice', 'twice-1']);
});

test('every relative link in the Markdown files leads to a file and heading that exist', () => {
  const files = markdownFiles();
  assert.ok(files.length >= 8, `only ${files.length} Markdown files found`);
  const dead: string[] = [];
  let checked = 0;
  for (const file of files) {
    const lines = prose(readFileSync(join(root, file), 'utf8'));
    for (const line of lines) {
      for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
        const [path, fragment] = target.split('#', 2) as [string, string | undefined];
        const targetFile = path ? join(dirname(file), path) : file;
        checked++;
        if (!existsSync(join(root, targetFile))) {
          dead.push(`${file}: ${target} (no file ${relative('.', targetFile)})`);
          continue;
        }
        if (fragment === undefined || !targetFile.endsWith('.md')) continue;
        if (!headingAnchors(readFileSync(join(root, targetFile), 'utf8')).has(fragment)) dead.push(`${file}: ${target} (no heading #${fragment} in ${targetFile})`);
      }
    }
  }
  assert.ok(checked >= 15, `only ${checked} links checked: is the link pattern still right?`);
  assert.deepEqual(dead, [], `dead links:\n${dead.join('\n')}`);
});
