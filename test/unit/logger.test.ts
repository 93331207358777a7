import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger, registerSecret, scrubSecrets, type Logger } from '../../src/log/logger.ts';
import { duplicateKeys } from '../harness/log-lines.ts';

/** A logger writing into an array of lines, one per log call. */
function capture(level = 'trace'): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(line);
      cb();
    },
  });
  return { log: createLogger({ level, destination, name: 'test' }), lines };
}

/** Every form a secret could take in a JSON line: as is, JSON-escaped. */
function forms(secret: string): string[] {
  return [...new Set([secret, JSON.stringify(secret).slice(1, -1)])];
}

function assertClean(lines: string[], secrets: string[]): void {
  assert.ok(lines.length > 0, 'no lines were written');
  for (const line of lines) {
    for (const s of secrets) {
      for (const f of forms(s)) assert.ok(!line.includes(f), `line leaks ${JSON.stringify(s)}: ${line}`);
    }
    // Every line is still valid JSON after scrubbing, and the parsed values are clean too.
    const parsed: unknown = JSON.parse(line);
    const text = JSON.stringify(parsed);
    for (const s of secrets) assert.ok(!walkStrings(parsed).some((v) => v.includes(s)), `parsed line leaks ${JSON.stringify(s)}: ${text}`);
  }
}

function walkStrings(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v)) return v.flatMap(walkStrings);
  if (typeof v === 'object' && v !== null) return Object.entries(v).flatMap(([k, x]) => [k, ...walkStrings(x)]);
  return [];
}

describe('createLogger', () => {
  it('writes pino JSON lines with name, level and msg', () => {
    const { log, lines } = capture('info');
    log.debug('dropped');
    log.info({ n: 1 }, 'hello %s', 'world');
    assert.equal(lines.length, 1);
    const o = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(o.msg, 'hello world');
    assert.equal(o.name, 'test');
    assert.equal(o.level, 30);
    assert.equal(o.n, 1);
    assert.equal(o.pid, process.pid);
  });
});

describe('registered secrets never reach a line', () => {
  const plain = 'plain-secret-value-1';
  const quoted = 'we"ird\\pa$$(word)*+?[x]{2}|^.';
  const control = 'tab\there\nnewline-\u0001-secret';
  const unicode = 'pässwörd-ünïcödé-🔑';
  registerSecret(plain);
  registerSecret(quoted);
  registerSecret(control);
  registerSecret(unicode);
  const all = [plain, quoted, control, unicode];

  it('in the message', () => {
    const { log, lines } = capture();
    for (const s of all) {
      log.info(`connecting with ${s} now`);
      log.warn('format %s here', s);
      log.error(s);
    }
    assertClean(lines, all);
    assert.ok(lines.every((l) => l.includes('[REDACTED]')));
    assert.equal((JSON.parse(lines[0]!) as { msg: string }).msg, 'connecting with [REDACTED] now');
  });

  it('in nested objects, arrays and keys, under field names that are not redacted by path', () => {
    const { log, lines } = capture();
    for (const s of all) {
      log.info({ a: { b: { c: [1, 'x', { deep: `prefix:${s}:suffix` }] } }, list: [s, s] }, 'nested');
      log.info({ [s]: 'as a key' }, 'key');
      log.info({ config: { auths: { 'r.example': { secretish: s } } } }, 'config');
    }
    assertClean(lines, all);
  });

  it('in bindings of child loggers', () => {
    const { log, lines } = capture();
    for (const s of all) log.child({ session: s }).info({ more: s }, 'child');
    assertClean(lines, all);
  });

  it('in errors: message and stack', () => {
    const { log, lines } = capture();
    for (const s of all) {
      const err = new Error(`login failed for user:${s}`);
      log.error({ err }, 'failed');
      log.error(err);
      log.error({ err: new Error('outer', { cause: new Error(`inner ${s}`) }) }, 'with cause');
    }
    assertClean(lines, all);
  });

  it('secrets registered after the logger was created are scrubbed too', () => {
    const { log, lines } = capture();
    const late = 'registered-later-secret';
    log.info(`before: ${late}`);
    registerSecret(late);
    log.info(`after: ${late}`);
    assert.ok(lines[0]!.includes(late), 'nothing could scrub a secret not yet known');
    assertClean(lines.slice(1), [late]);
  });

  it('a secret that contains another is scrubbed whole', () => {
    registerSecret('outer-inner-xyz');
    registerSecret('inner-xyz');
    registerSecret('outer-inner-xyz-longest');
    assert.equal(scrubSecrets('a outer-inner-xyz-longest b outer-inner-xyz c inner-xyz d'), 'a [REDACTED] b [REDACTED] c [REDACTED] d');
  });

  it('regular-expression characters in a secret are literal', () => {
    assert.equal(scrubSecrets('we"ird\\pa$$(word)*+?[x]{2}|^.'), '[REDACTED]');
    // `.` in the secret must not match any character
    assert.equal(scrubSecrets('weXird\\pa$$(word)*+?[x]{2}|^Z'), 'weXird\\pa$$(word)*+?[x]{2}|^Z');
    assert.equal(scrubSecrets('unrelated text'), 'unrelated text');
  });

  it('values shorter than 6 characters are not registered (too common to scrub)', () => {
    registerSecret('abc');
    registerSecret('');
    registerSecret(undefined);
    assert.equal(scrubSecrets('abc abcabc'), 'abc abcabc');
  });

  it('the base64 user:pass form is scrubbed once registered', () => {
    const b64 = Buffer.from('user:plain-secret-value-1').toString('base64');
    registerSecret(b64);
    const { log, lines } = capture();
    log.info({ headers: { 'x-auth': `Basic ${b64}` } }, 'request');
    assertClean(lines, [b64]);
  });
});

describe('redaction by path', () => {
  it('redacts known secret-bearing fields even when the value was never registered', () => {
    const { log, lines } = capture();
    const v = 'unregistered-value-';
    log.info(
      {
        password: `${v}1`,
        token: `${v}2`,
        access_token: `${v}3`,
        refresh_token: `${v}4`,
        one_time_token: `${v}5`,
        authorization: `${v}6`,
        Authorization: `${v}7`,
        creds: { password: `${v}8`, token: `${v}9`, access_token: `${v}10`, one_time_token: `${v}11` },
        headers: { authorization: `Bearer ${v}12`, Authorization: `Bearer ${v}13`, accept: 'application/json' },
        req: { headers: { authorization: `Basic ${v}14` }, method: 'GET' },
      },
      'redacted',
    );
    assert.equal(lines.length, 1);
    assert.ok(!lines[0]!.includes(v), lines[0]);
    const o = JSON.parse(lines[0]!) as Record<string, any>;
    assert.equal(o.password, '[REDACTED]');
    assert.equal(o.token, '[REDACTED]');
    assert.equal(o.access_token, '[REDACTED]');
    assert.equal(o.refresh_token, '[REDACTED]');
    assert.equal(o.one_time_token, '[REDACTED]');
    assert.equal(o.authorization, '[REDACTED]');
    assert.equal(o.Authorization, '[REDACTED]');
    assert.deepEqual(o.creds, { password: '[REDACTED]', token: '[REDACTED]', access_token: '[REDACTED]', one_time_token: '[REDACTED]' });
    assert.deepEqual(o.headers, { authorization: '[REDACTED]', Authorization: '[REDACTED]', accept: 'application/json' });
    assert.deepEqual(o.req, { headers: { authorization: '[REDACTED]' }, method: 'GET' });
    assert.equal(o.msg, 'redacted');
  });

  it('leaves other fields alone and does not mutate the logged object', () => {
    const { log, lines } = capture();
    const obj = { user: 'alice', password: 'x', nested: { password: 'y', keep: 1 } };
    log.info(obj, 'm');
    assert.deepEqual(obj, { user: 'alice', password: 'x', nested: { password: 'y', keep: 1 } });
    const o = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(o.user, 'alice');
    assert.deepEqual(o.nested, { password: '[REDACTED]', keep: 1 });
  });
});

describe('no key twice in a line', () => {
  it('a field the logger already carries as a binding, with the same value, is written once', () => {
    const { log, lines } = capture();
    const job = log.child({ job_id: 'job-1', exec_id: 'exec-2' });
    job.info({ job_id: 'job-1', exec_id: 'exec-2', success: true }, 'result delivered');
    job.child({ side: 'source' }).warn({ side: 'source', job_id: 'job-1', n: 1 }, 'nested');
    job.info('message only');
    log.info({ job_id: 'job-1' }, 'unbound logger keeps the field');
    for (const line of lines) assert.deepEqual(duplicateKeys(line), [], line);
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.deepEqual([first.job_id, first.exec_id, first.success, first.msg], ['job-1', 'exec-2', true, 'result delivered']);
    assert.equal(JSON.parse(lines[1]!).n, 1);
    assert.equal(JSON.parse(lines[3]!).job_id, 'job-1');
    // A different value is a caller's bug, and shows: both are written.
    job.info({ job_id: 'job-9' }, 'mismatch');
    assert.deepEqual(duplicateKeys(lines[4]!), ['job_id']);
  });

  it('duplicateKeys finds repeated keys at any depth, and only those', () => {
    assert.deepEqual(duplicateKeys('{"a":1,"b":{"c":[{"d":1,"d":2}],"c2":"x"},"a":"y"}'), ['b.c[0].d', 'a']);
    assert.deepEqual(duplicateKeys('{"a":"\\"a\\":1","b":[1,2,{"a":1}],"c":{}}'), []);
    assert.throws(() => duplicateKeys('{"a":1'), /not JSON/);
  });
});
