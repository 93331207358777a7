// A small terminal screen for testing what ferry draws: text with automatic wrap at the width,
// newline (as a tty sends it: to the next row's start), carriage return, and the few control
// sequences the progress display uses: CSI n F (up n rows, to column 0), CSI n A (up n rows),
// CSI J (erase from the cursor to the end of the screen) and CSI 2K (erase the row). Anything
// else fails the test: the display must not send what this screen does not understand.
// Unbounded: no row scrolls away. resize() re-wraps the text the way reflowing terminals do
// (VTE, iTerm2, kitty, Windows Terminal, tmux).

interface Row {
  text: string;
  /** This row's text goes on in the next row (the terminal wrapped it, no newline). */
  wrapped: boolean;
}

export class Screen {
  columns: number;
  rows = 24;
  private lines: Row[] = [{ text: '', wrapped: false }];
  private row = 0;
  private col = 0;
  /** Set when the last column was written: the next character wraps first (as xterm does). */
  private pendingWrap = false;

  constructor(columns: number) {
    this.columns = columns;
  }

  write(s: string): boolean {
    for (let i = 0; i < s.length; i++) {
      const c = s[i]!;
      if (c === '\x1b') {
        const m = /^\x1b\[(\d*)([A-Za-z])/.exec(s.slice(i));
        if (!m) throw new Error(`screen: unknown escape ${JSON.stringify(s.slice(i, i + 8))}`);
        this.control(m[2]!, m[1] === '' ? undefined : Number(m[1]));
        i += m[0].length - 1;
      } else if (c === '\n') {
        this.newline(false);
      } else if (c === '\r') {
        this.col = 0;
        this.pendingWrap = false;
      } else {
        if (c < ' ') throw new Error(`screen: control character ${JSON.stringify(c)}`);
        this.put(c);
      }
    }
    return true;
  }

  /** The rows as they show, trailing spaces dropped; trailing empty rows dropped. */
  text(): string[] {
    const out = this.lines.map((r) => r.text.replace(/ +$/, ''));
    while (out.length > 0 && out[out.length - 1] === '') out.pop();
    return out;
  }

  /** Where the cursor is. */
  cursor(): { row: number; col: number } {
    return { row: this.row, col: this.col };
  }

  /** Make the terminal `columns` wide, re-wrapping its text. The cursor must be at a row's start below the text. */
  resize(columns: number): void {
    if (this.col !== 0 || this.row !== this.lines.length - 1 || this.lines[this.row]!.text !== '') {
      throw new Error('screen: resize() expects the cursor on an empty last row');
    }
    const logical: string[] = [];
    let current = '';
    for (const r of this.lines.slice(0, -1)) {
      current += r.text;
      if (!r.wrapped) {
        logical.push(current);
        current = '';
      }
    }
    if (current) logical.push(current);
    this.columns = columns;
    this.lines = [];
    for (const l of logical) {
      if (l.length === 0) this.lines.push({ text: '', wrapped: false });
      for (let at = 0; at < l.length; at += columns) this.lines.push({ text: l.slice(at, at + columns), wrapped: at + columns < l.length });
    }
    this.lines.push({ text: '', wrapped: false });
    this.row = this.lines.length - 1;
    this.col = 0;
  }

  private put(c: string): void {
    if (this.pendingWrap) {
      this.lines[this.row]!.wrapped = true;
      this.newline(true);
    }
    const r = this.lines[this.row]!;
    r.text = r.text.padEnd(this.col, ' ');
    r.text = r.text.slice(0, this.col) + c + r.text.slice(this.col + 1);
    if (this.col === this.columns - 1) this.pendingWrap = true;
    else this.col++;
  }

  private newline(soft: boolean): void {
    if (!soft) this.lines[this.row]!.wrapped = false;
    this.row++;
    this.col = 0;
    this.pendingWrap = false;
    if (this.row === this.lines.length) this.lines.push({ text: '', wrapped: false });
  }

  private control(kind: string, n: number | undefined): void {
    this.pendingWrap = false;
    switch (kind) {
      case 'F':
        this.row = Math.max(0, this.row - (n ?? 1));
        this.col = 0;
        return;
      case 'A':
        this.row = Math.max(0, this.row - (n ?? 1));
        return;
      case 'J':
        if ((n ?? 0) !== 0) throw new Error(`screen: CSI ${n}J not supported`);
        this.lines[this.row]!.text = this.lines[this.row]!.text.slice(0, this.col);
        this.lines[this.row]!.wrapped = false;
        this.lines.length = this.row + 1;
        return;
      case 'K':
        if (n !== 2) throw new Error(`screen: CSI ${n ?? ''}K not supported`);
        this.lines[this.row] = { text: '', wrapped: false };
        return;
      default:
        throw new Error(`screen: CSI ${n ?? ''}${kind} not supported`);
    }
  }
}
