import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../src/errors.ts';
import { formatArchiveReference, isArchiveReference, parseArchiveReference } from '../../src/ends/archive-ref.ts';

function throwsUsage(input: string, ...parts: string[]): void {
  assert.throws(
    () => parseArchiveReference(input),
    (e: unknown) => {
      assert.ok(e instanceof UsageError, `expected UsageError for ${input}, got ${String(e)}`);
      for (const p of parts) assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} should include ${JSON.stringify(p)}`);
      return true;
    },
  );
}

describe('isArchiveReference', () => {
  it('recognizes the three transports and nothing else', () => {
    for (const s of ['oci:/x', 'oci-archive:x.tar', 'docker-archive:/x.tar:app:1', ' oci:rel']) assert.equal(isArchiveReference(s), true, s);
    for (const s of ['docker://oci:5000/x', 'localhost:5000/app:1', 'alpine', 'ocidir:/x', 'dir:/x', 'oci', 'docker-archive']) {
      assert.equal(isArchiveReference(s), false, s);
    }
  });
});

describe('parseArchiveReference: oci and oci-archive', () => {
  it('path alone, path and tag', () => {
    assert.deepEqual(parseArchiveReference('oci:/data/layout'), { transport: 'oci', path: '/data/layout' });
    assert.deepEqual(parseArchiveReference('oci:/data/layout:v1.2_3-rc'), { transport: 'oci', path: '/data/layout', tag: 'v1.2_3-rc' });
    assert.deepEqual(parseArchiveReference('oci-archive:img.tar'), { transport: 'oci-archive', path: 'img.tar' });
    assert.deepEqual(parseArchiveReference('oci-archive:./out/img.tar:latest'), { transport: 'oci-archive', path: './out/img.tar', tag: 'latest' });
  });

  it('a path may contain ":" before the last one, which starts the tag', () => {
    assert.deepEqual(parseArchiveReference('oci:/mnt/c:/layout:v1'), { transport: 'oci', path: '/mnt/c:/layout', tag: 'v1' });
    assert.deepEqual(parseArchiveReference('oci-archive:/a:b/x.tar:latest'), { transport: 'oci-archive', path: '/a:b/x.tar', tag: 'latest' });
    // The last ':' is followed by a '/': no tag at all.
    assert.deepEqual(parseArchiveReference('oci:/mnt/c:/layout'), { transport: 'oci', path: '/mnt/c:/layout' });
    assert.deepEqual(parseArchiveReference('oci:/data/a:b/'), { transport: 'oci', path: '/data/a:b/' });
    // Without '/', the text after the last ':' is the tag, whatever it looks like.
    assert.deepEqual(parseArchiveReference('oci-archive:/x/a:b.tar'), { transport: 'oci-archive', path: '/x/a', tag: 'b.tar' });
  });

  it('refuses a bad tag instead of guessing it was part of the path', () => {
    throwsUsage('oci:/data/layout:-bad', '"-bad"', 'not a valid tag');
    throwsUsage('oci:/data/layout:', 'not a valid tag');
    throwsUsage(`oci-archive:/x.tar:${'a'.repeat(129)}`, 'not a valid tag');
    throwsUsage('oci:/x:has space', 'not a valid tag');
  });

  it('refuses an empty path', () => {
    throwsUsage('oci:', 'path is empty');
    throwsUsage('oci::v1', 'path is empty');
    throwsUsage('oci-archive:', 'path is empty');
  });
});

describe('parseArchiveReference: docker-archive', () => {
  it('file alone and file with NAME:TAG', () => {
    assert.deepEqual(parseArchiveReference('docker-archive:/x.tar'), { transport: 'docker-archive', path: '/x.tar' });
    assert.deepEqual(parseArchiveReference('docker-archive:/x.tar:myapp:1.0'), {
      transport: 'docker-archive',
      path: '/x.tar',
      tag: '1.0',
      dockerReference: 'myapp:1.0',
    });
  });

  it('a name with a registry port', () => {
    assert.deepEqual(parseArchiveReference('docker-archive:/x.tar:registry.example.com:5000/team/app:2'), {
      transport: 'docker-archive',
      path: '/x.tar',
      tag: '2',
      dockerReference: 'registry.example.com:5000/team/app:2',
    });
  });

  it('the path ends at the first ":" followed by a valid name:tag', () => {
    assert.deepEqual(parseArchiveReference('docker-archive:/data/v1:2/x.tar:app:1.0'), {
      transport: 'docker-archive',
      path: '/data/v1:2/x.tar',
      tag: '1.0',
      dockerReference: 'app:1.0',
    });
    // One ':' and no tag after it: all path.
    assert.deepEqual(parseArchiveReference('docker-archive:/data/a:b.tar'), { transport: 'docker-archive', path: '/data/a:b.tar' });
    assert.deepEqual(parseArchiveReference('docker-archive:/x.tar:myapp'), { transport: 'docker-archive', path: '/x.tar:myapp' });
  });

  it('refuses a name:tag that does not parse', () => {
    throwsUsage('docker-archive:/x.tar:MyApp:1.0', 'MyApp:1.0', 'not a valid name:tag');
    throwsUsage('docker-archive:/x.tar:app:-1', 'not a valid name:tag');
    throwsUsage('docker-archive::app:1', 'path is empty');
  });

  it('formats back to what was written', () => {
    for (const s of ['docker-archive:/x.tar:myapp:1.0', 'docker-archive:/x.tar', 'oci:/d:v1', 'oci-archive:/x.tar']) {
      assert.equal(formatArchiveReference(parseArchiveReference(s)), s);
    }
  });
});
