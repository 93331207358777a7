// The bundle's stand-in for the `string-width` package (scripts/build.mjs aliases it here), which
// yargs, cliui and wrap-ansi use to lay out --help. The package compiles a large emoji regular
// expression and sets up Intl.Segmenter when it loads, and the bundle carries two versions of it:
// ~30 ms of every ferry start (docs/packaging.md), for text that is ASCII or close to it. Columns
// are counted the way terminals do: escape sequences 0, combining and format characters 0, East
// Asian wide and emoji 2, the rest 1. Running from src/ (the tests), the real package is used.

const ESCAPE_SEQUENCE = /\u001b\[[0-?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)/g;
const ZERO_WIDTH = /^[\p{Mn}\p{Me}\p{Cf}\p{Cc}\u200b-\u200f\ufe00-\ufe0f]$/u;
const EMOJI = /^\p{Extended_Pictographic}$/u;

/** Code point ranges that terminals draw two columns wide (Unicode East Asian Width W and F). */
const WIDE: ReadonlyArray<readonly [number, number]> = [
  [0x1100, 0x115f],
  [0x231a, 0x231b],
  [0x2329, 0x232a],
  [0x2e80, 0x303e],
  [0x3041, 0x33ff],
  [0x3400, 0x4dbf],
  [0x4e00, 0x9fff],
  [0xa000, 0xa4cf],
  [0xa960, 0xa97f],
  [0xac00, 0xd7a3],
  [0xf900, 0xfaff],
  [0xfe10, 0xfe19],
  [0xfe30, 0xfe6f],
  [0xff00, 0xff60],
  [0xffe0, 0xffe6],
  [0x1f300, 0x1f64f],
  [0x1f900, 0x1f9ff],
  [0x20000, 0x3fffd],
];

export interface StringWidthOptions {
  countAnsiEscapeCodes?: boolean;
}

export default function stringWidth(text: unknown, options: StringWidthOptions = {}): number {
  if (typeof text !== 'string' || text.length === 0) return 0;
  if (/^[\x20-\x7e]*$/.test(text)) return text.length;
  const plain = options.countAnsiEscapeCodes ? text : text.replace(ESCAPE_SEQUENCE, '');
  let width = 0;
  for (const ch of plain) {
    if (ZERO_WIDTH.test(ch)) continue;
    const cp = ch.codePointAt(0) ?? 0;
    width += isWide(cp) || EMOJI.test(ch) ? 2 : 1;
  }
  return width;
}

function isWide(cp: number): boolean {
  if (cp < 0x1100) return false;
  for (const [lo, hi] of WIDE) {
    if (cp < lo) return false;
    if (cp <= hi) return true;
  }
  return false;
}
