// WWW-Authenticate parsing (RFC 7235) and Docker token scopes. No I/O.

export interface Challenge {
  /** Lower-cased scheme: `basic`, `bearer`. */
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parse a WWW-Authenticate header value, which may hold several challenges:
 * `Bearer realm="https://a/token",service="reg",scope="repository:x:pull", Basic realm="r"`.
 */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  if (header === undefined) return [];
  const values = Array.isArray(header) ? header : [header];
  const out: Challenge[] = [];
  for (const value of values) {
    let i = 0;
    const s = value;
    let current: Challenge | undefined;
    while (i < s.length) {
      while (i < s.length && (s[i] === ' ' || s[i] === ',' || s[i] === '\t')) i++;
      const tokenStart = i;
      while (i < s.length && /[!#$%&'*+.^_`|~0-9A-Za-z-]/.test(s[i]!)) i++;
      const token = s.slice(tokenStart, i);
      if (token === '') {
        i++;
        continue;
      }
      while (i < s.length && s[i] === ' ') i++;
      if (s[i] === '=') {
        i++;
        while (i < s.length && s[i] === ' ') i++;
        let val = '';
        if (s[i] === '"') {
          i++;
          while (i < s.length && s[i] !== '"') {
            if (s[i] === '\\' && i + 1 < s.length) i++;
            val += s[i];
            i++;
          }
          i++;
        } else {
          const vs = i;
          while (i < s.length && s[i] !== ',' && s[i] !== ' ') i++;
          val = s.slice(vs, i);
        }
        if (current) current.params[token.toLowerCase()] = val;
      } else {
        current = { scheme: token.toLowerCase(), params: {} };
        out.push(current);
      }
    }
  }
  return out;
}

/** `repository:<name>:<actions>` — actions joined with commas. */
export function repositoryScope(repository: string, actions: string[]): string {
  return `repository:${repository}:${actions.join(',')}`;
}

/**
 * Merge scopes so each resource appears once with the union of its actions. Resource names
 * may contain `:` (a `host:port` prefix), so the actions are what follows the LAST colon.
 */
export function mergeScopes(scopes: string[]): string[] {
  const byResource = new Map<string, Set<string>>();
  for (const scopeList of scopes) {
    for (const scope of scopeList.split(' ').filter(Boolean)) {
      const last = scope.lastIndexOf(':');
      if (last < 0) {
        byResource.set(scope, byResource.get(scope) ?? new Set());
        continue;
      }
      const resource = scope.slice(0, last);
      const actions = scope.slice(last + 1).split(',').filter(Boolean);
      const set = byResource.get(resource) ?? new Set<string>();
      for (const a of actions) set.add(a);
      byResource.set(resource, set);
    }
  }
  return [...byResource.entries()]
    .map(([resource, actions]) => (actions.size ? `${resource}:${[...actions].sort().join(',')}` : resource))
    .sort();
}
