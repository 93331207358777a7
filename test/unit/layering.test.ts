// The layout shows the architecture (GUIDE.md): reference → transport/auth → registry → ends →
// copy engine → agent/CLI, imports pointing one way. The copy engine speaks the end interface
// (src/ends/types.ts) and nothing else: it asks an end what it can do, never what it is, and
// each end owns its protocol (issue 21). These tests read the sources' imports and fail on a
// module that reaches past its layer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(new URL('../../', import.meta.url).pathname);

/** src-relative paths of every .ts file under src/`dir`. */
function sources(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.ts')) out.push(relative(join(root, 'src'), p));
    }
  };
  walk(join(root, 'src', dir));
  return out;
}

/** The module specifiers a source imports (static, re-exports and dynamic import()), relative ones resolved to src-relative paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(join(root, 'src', file), 'utf8');
  const found = new Set<string>();
  for (const m of text.matchAll(/\bfrom\s+'([^']+)'|\bimport\s*\(\s*'([^']+)'\s*\)|^import\s+'([^']+)'/gm)) {
    const spec = (m[1] ?? m[2] ?? m[3])!;
    found.add(spec.startsWith('.') ? relative(join(root, 'src'), resolve(join(root, 'src'), dirname(file), spec)) : spec);
  }
  return [...found];
}

/** Classes the ends export (RegistryDestination, OciLayoutSource, …). */
function endClasses(): Set<string> {
  const names = new Set<string>();
  for (const f of sources('ends')) {
    for (const m of readFileSync(join(root, 'src', f), 'utf8').matchAll(/^export\s+(?:abstract\s+)?class\s+(\w+)/gm)) names.add(m[1]!);
  }
  return names;
}

const ENGINE = sources('copy');
const BELOW_ENGINE = sources('').filter((f) => !/^(copy|agent|cli|sea)\//.test(f) && f !== 'main.ts');

test('the scanner sees the imports and classes it checks (so the checks below can fail)', () => {
  assert.ok(ENGINE.includes('copy/engine.ts'), 'src/copy/engine.ts not found');
  assert.ok(importsOf('copy/engine.ts').includes('ends/types.ts'), 'engine.ts should be seen importing ends/types.ts');
  assert.ok(importsOf('agent/job.ts').some((i) => i.startsWith('copy/')), 'agent/job.ts should be seen importing the engine');
  assert.ok(endClasses().has('RegistryDestination') && endClasses().has('RegistrySource'), 'the registry end classes should be found');
  assert.ok(BELOW_ENGINE.includes('ends/types.ts') && !BELOW_ENGINE.includes('copy/engine.ts'));
});

test('the copy engine imports no registry, transport or auth module and no end but the interface', () => {
  const reaching: string[] = [];
  for (const f of ENGINE) {
    for (const i of importsOf(f)) {
      if (/^(registry|transport|auth)\//.test(i) || (i.startsWith('ends/') && i !== 'ends/types.ts')) reaching.push(`${f} → ${i}`);
    }
  }
  assert.deepEqual(reaching, [], 'src/copy/ must speak only the end interface (src/ends/types.ts): give the end a capability instead');
});

test('the copy engine asks an end what it can do, never what it is: no instanceof of an end class', () => {
  const classes = endClasses();
  const uses: string[] = [];
  for (const f of ENGINE) {
    const text = readFileSync(join(root, 'src', f), 'utf8');
    for (const m of text.matchAll(/\binstanceof\s+([A-Za-z_$][\w$]*)/g)) if (classes.has(m[1]!)) uses.push(`${f}: instanceof ${m[1]}`);
  }
  assert.deepEqual(uses, [], 'ask the end what it can do (a capability in src/ends/types.ts), not what it is');
});

test('imports point down: nothing below the engine imports the engine, the agent or the CLI', () => {
  const upward: string[] = [];
  for (const f of BELOW_ENGINE) for (const i of importsOf(f)) if (/^(copy|agent|cli)\//.test(i)) upward.push(`${f} → ${i}`);
  assert.deepEqual(upward, []);
});

test('the end interface stands alone: src/ends/types.ts imports no registry, transport or end', () => {
  const reaching = importsOf('ends/types.ts').filter((i) => /^(registry|transport|auth|ends)\//.test(i));
  assert.deepEqual(reaching, []);
});
