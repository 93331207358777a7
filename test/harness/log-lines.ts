// Checks on ferry's JSON log lines that JSON.parse cannot make: JSON.parse keeps the last of
// two equal keys without a word, and a log pipeline (Loki, CloudWatch, jq) may keep either one.

/** The keys that appear twice in one object of this JSON text (at any depth), as "path.key". */
export function duplicateKeys(json: string): string[] {
  let i = 0;
  const dups: string[] = [];
  const ws = () => {
    while (i < json.length && ' \t\r\n'.includes(json[i]!)) i++;
  };
  const fail = (what: string): never => {
    throw new Error(`not JSON at ${i}: ${what} in ${json.slice(0, 200)}`);
  };
  const str = (): string => {
    if (json[i] !== '"') fail('expected a string');
    const start = i++;
    while (i < json.length && json[i] !== '"') i += json[i] === '\\' ? 2 : 1;
    if (i >= json.length) fail('unterminated string');
    i++;
    return JSON.parse(json.slice(start, i)) as string;
  };
  const value = (path: string): void => {
    ws();
    const c = json[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      ws();
      if (json[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        const k = str();
        if (seen.has(k)) dups.push(path ? `${path}.${k}` : k);
        seen.add(k);
        ws();
        if (json[i++] !== ':') fail('expected ":"');
        value(path ? `${path}.${k}` : k);
        ws();
        const sep = json[i++];
        if (sep === '}') return;
        if (sep !== ',') fail('expected "," or "}"');
      }
    } else if (c === '[') {
      i++;
      ws();
      if (json[i] === ']') {
        i++;
        return;
      }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`);
        ws();
        const sep = json[i++];
        if (sep === ']') return;
        if (sep !== ',') fail('expected "," or "]"');
      }
    } else if (c === '"') {
      str();
    } else {
      const m = /^(-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null)/.exec(json.slice(i));
      if (!m) fail('unexpected character');
      i += m![0].length;
    }
  };
  value('');
  ws();
  if (i !== json.length) fail('text after the value');
  return dups;
}

/** Every JSON log line (lines starting with "{") whose objects repeat a key: "key (msg)" each. */
export function linesWithDuplicateKeys(logs: string): string[] {
  const out: string[] = [];
  for (const line of logs.split('\n')) {
    if (!line.startsWith('{')) continue;
    const dups = duplicateKeys(line);
    if (dups.length) out.push(`${dups.join(', ')} in: ${line.slice(0, 300)}`);
  }
  return out;
}
