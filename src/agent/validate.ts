// A tiny, dependency-free shape checker for JSON that came from the network. Each check
// takes an unknown value and a JSON path ("$[0].id") and returns the typed value or throws
// ShapeError naming the path and what was expected. Checks copy only the fields they know,
// so a hostile body's extra keys (`__proto__` included) never reach the caller.

export class ShapeError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = 'ShapeError';
    this.path = path;
  }
}

export type Check<T> = (value: unknown, path: string) => T;

/** What a value is, for error messages: "a string", "null", "an array". */
export function describeJson(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string':
      return 'a string';
    case 'number':
      return 'a number';
    case 'boolean':
      return 'a boolean';
    case 'object':
      return 'an object';
    default:
      return typeof v;
  }
}

export interface StringRules {
  min?: number;
  max?: number;
  pattern?: RegExp;
  /** Said in the error when the pattern does not match, e.g. "an identifier". */
  patternName?: string;
}

export function str(rules: StringRules = {}): Check<string> {
  const min = rules.min ?? 0;
  const max = rules.max ?? 4096;
  return (v, path) => {
    if (typeof v !== 'string') throw new ShapeError(path, `expected a string, got ${describeJson(v)}`);
    if (v.length < min) throw new ShapeError(path, min === 1 ? 'must not be empty' : `must be at least ${min} characters`);
    if (v.length > max) throw new ShapeError(path, `is ${v.length} characters, more than ${max}`);
    if (rules.pattern && !rules.pattern.test(v)) throw new ShapeError(path, `is not ${rules.patternName ?? `a string matching ${rules.pattern}`}`);
    return v;
  };
}

export interface NumberRules {
  min?: number;
  max?: number;
  integer?: boolean;
}

export function num(rules: NumberRules = {}): Check<number> {
  return (v, path) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ShapeError(path, `expected a number, got ${describeJson(v)}`);
    if (rules.integer && !Number.isSafeInteger(v)) throw new ShapeError(path, `expected an integer, got ${v}`);
    if (rules.min !== undefined && v < rules.min) throw new ShapeError(path, `must be at least ${rules.min}, got ${v}`);
    if (rules.max !== undefined && v > rules.max) throw new ShapeError(path, `must be at most ${rules.max}, got ${v}`);
    return v;
  };
}

export function int(rules: Omit<NumberRules, 'integer'> = {}): Check<number> {
  return num({ ...rules, integer: true });
}

export const bool: Check<boolean> = (v, path) => {
  if (typeof v !== 'boolean') throw new ShapeError(path, `expected a boolean, got ${describeJson(v)}`);
  return v;
};

export function oneOf<const T extends string>(values: readonly T[]): Check<T> {
  return (v, path) => {
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      const got = typeof v === 'string' ? JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v) : describeJson(v);
      throw new ShapeError(path, `expected one of ${values.map((x) => JSON.stringify(x)).join(', ')}, got ${got}`);
    }
    return v as T;
  };
}

/** An RFC 3339 timestamp (as the contract's `*_at` fields are). Kept as the string sent. */
export const timestamp: Check<string> = (v, path) => {
  const s = str({ min: 1, max: 64 })(v, path);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(s) || !Number.isFinite(Date.parse(s))) {
    throw new ShapeError(path, `expected an RFC 3339 timestamp, got ${JSON.stringify(s.slice(0, 64))}`);
  }
  return s;
};

export function arrayOf<T>(item: Check<T>, rules: { max?: number } = {}): Check<T[]> {
  const max = rules.max ?? 10_000;
  return (v, path) => {
    if (!Array.isArray(v)) throw new ShapeError(path, `expected an array, got ${describeJson(v)}`);
    if (v.length > max) throw new ShapeError(path, `has ${v.length} items, more than ${max}`);
    return v.map((x, i) => item(x, `${path}[${i}]`));
  };
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function record(v: unknown, path: string): Record<string, unknown> {
  if (!isPlainObject(v)) throw new ShapeError(path, `expected an object, got ${describeJson(v)}`);
  return v;
}

type Shape = Record<string, Check<unknown>>;
type Out<S extends Shape> = { [K in keyof S]: ReturnType<S[K]> };

/**
 * An object with required and optional fields. Unknown fields are dropped. An optional field
 * that is absent or null is left out of the result.
 */
export function object<R extends Shape, O extends Shape = {}>(required: R, optional?: O): Check<Out<R> & Partial<Out<O>>> {
  return (v, path) => {
    const o = record(v, path);
    const out: Record<string, unknown> = {};
    for (const [k, check] of Object.entries(required)) {
      if (!Object.hasOwn(o, k) || o[k] === undefined) throw new ShapeError(`${path}.${k}`, 'is missing');
      out[k] = check(o[k], `${path}.${k}`);
    }
    for (const [k, check] of Object.entries(optional ?? {})) {
      if (!Object.hasOwn(o, k) || o[k] === undefined || o[k] === null) continue;
      out[k] = check(o[k], `${path}.${k}`);
    }
    return out as Out<R> & Partial<Out<O>>;
  };
}

/** Run a check, turning ShapeError into whatever error the caller wants. */
export function checkShape<T>(check: Check<T>, value: unknown, onError: (e: ShapeError) => Error): T {
  try {
    return check(value, '$');
  } catch (e) {
    if (e instanceof ShapeError) throw onError(e);
    throw e;
  }
}

/**
 * Make a server-supplied string safe to put in an error message or log: no control
 * characters, bounded length.
 */
export function sanitizeText(s: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, ' ').trim();
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}
