import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.ts';
import {
  INDEX_MEDIA_TYPES,
  isIndexMediaType,
  MANIFEST_MEDIA_TYPES,
  MAX_MANIFEST_BYTES,
  MediaType,
  parseManifest,
  validateDescriptor,
} from '../../src/oci/manifest.ts';

const dg = (c: string): string => `sha256:${c.repeat(64)}`;
const enc = (v: unknown): Uint8Array => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

const config = { mediaType: MediaType.OciConfig, digest: dg('c'), size: 123 };
const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: dg('1'), size: 4567 };

const ociImage = { schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers: [layer] };
const dockerImage = {
  schemaVersion: 2,
  mediaType: MediaType.DockerManifest,
  config: { mediaType: MediaType.DockerConfig, digest: dg('d'), size: 1500 },
  layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: dg('e'), size: 2811 }],
};
const ociIndex = {
  schemaVersion: 2,
  mediaType: MediaType.OciIndex,
  manifests: [
    { mediaType: MediaType.OciManifest, digest: dg('a'), size: 500, platform: { os: 'linux', architecture: 'amd64' } },
    { mediaType: MediaType.OciManifest, digest: dg('b'), size: 501, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
  ],
  annotations: { 'org.opencontainers.image.ref.name': 'v1' },
};
const dockerList = {
  schemaVersion: 2,
  mediaType: MediaType.DockerList,
  manifests: [{ mediaType: MediaType.DockerManifest, digest: dg('f'), size: 528, platform: { os: 'linux', architecture: 'amd64' } }],
};

/** Assert fn throws a FerryError with the given code, side and message parts. */
function throwsFerry(fn: () => unknown, code: string, side: string, ...parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FerryError, `expected FerryError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.side, side);
    assert.equal(e.retryable, false);
    for (const p of parts) assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} should include ${JSON.stringify(p)}`);
    return true;
  });
}

describe('parseManifest: well-formed manifests', () => {
  it('OCI image manifest', () => {
    const p = parseManifest(enc(ociImage), MediaType.OciManifest);
    assert.equal(p.kind, 'image');
    assert.equal(p.mediaType, MediaType.OciManifest);
    if (p.kind !== 'image') return;
    assert.deepEqual(p.manifest.config, config);
    assert.deepEqual(p.manifest.layers, [layer]);
    assert.equal(p.manifest.schemaVersion, 2);
  });

  it('Docker v2 image manifest', () => {
    const p = parseManifest(enc(dockerImage), `${MediaType.DockerManifest}; charset=utf-8`);
    assert.equal(p.kind, 'image');
    assert.equal(p.mediaType, MediaType.DockerManifest);
    if (p.kind !== 'image') return;
    assert.equal(p.manifest.config.digest, dg('d'));
    assert.equal(p.manifest.layers.length, 1);
  });

  it('OCI index, keeping platforms and annotations', () => {
    const p = parseManifest(enc(ociIndex), MediaType.OciIndex);
    assert.equal(p.kind, 'index');
    assert.equal(p.mediaType, MediaType.OciIndex);
    if (p.kind !== 'index') return;
    assert.equal(p.index.manifests.length, 2);
    assert.deepEqual(p.index.manifests[1]?.platform, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    assert.deepEqual(p.index.annotations, ociIndex.annotations);
  });

  it('Docker manifest list', () => {
    const p = parseManifest(enc(dockerList), MediaType.DockerList);
    assert.equal(p.kind, 'index');
    assert.equal(p.mediaType, MediaType.DockerList);
  });

  it('accepts a Uint8Array that is a view into a larger buffer', () => {
    const inner = enc(ociImage);
    const big = new Uint8Array(inner.byteLength + 20).fill(0x78);
    big.set(inner, 10);
    const p = parseManifest(big.subarray(10, 10 + inner.byteLength), undefined);
    assert.equal(p.kind, 'image');
  });

  it('an image manifest without layers has an empty layer list', () => {
    const { layers: _omit, ...noLayers } = ociImage;
    const p = parseManifest(enc(noLayers), undefined);
    assert.equal(p.kind, 'image');
    if (p.kind === 'image') assert.deepEqual(p.manifest.layers, []);
  });

  it('validates a subject descriptor', () => {
    const withSubject = { ...ociImage, subject: { mediaType: MediaType.OciManifest, digest: dg('9'), size: 10 } };
    const p = parseManifest(enc(withSubject), undefined);
    assert.equal(p.kind === 'image' && p.manifest.subject?.digest, dg('9'));
    throwsFerry(() => parseManifest(enc({ ...ociImage, subject: { mediaType: MediaType.OciManifest, digest: 'x', size: 1 } }), undefined), 'SOURCE_INVALID', 'source', 'subject');
    throwsFerry(() => parseManifest(enc({ ...ociIndex, subject: 'nope' }), undefined), 'SOURCE_INVALID', 'source', 'subject');
  });
});

describe('parseManifest: media type inference', () => {
  const { mediaType: _i, ...indexNoType } = ociIndex;
  const { mediaType: _m, ...imageNoType } = ociImage;
  const { mediaType: _d, ...dockerNoType } = dockerImage;

  it('infers an OCI index from a manifests array', () => {
    const p = parseManifest(enc(indexNoType), undefined);
    assert.equal(p.kind, 'index');
    assert.equal(p.mediaType, MediaType.OciIndex);
  });
  it('infers an OCI image manifest otherwise', () => {
    const p = parseManifest(enc(imageNoType), undefined);
    assert.equal(p.kind, 'image');
    assert.equal(p.mediaType, MediaType.OciManifest);
  });
  it('uses a known Content-Type when the body has no mediaType', () => {
    const p = parseManifest(enc(dockerNoType), ` ${MediaType.DockerManifest} ; charset=utf-8`);
    assert.equal(p.mediaType, MediaType.DockerManifest);
  });
  it('ignores an unknown Content-Type and infers from shape', () => {
    assert.equal(parseManifest(enc(indexNoType), 'application/json').mediaType, MediaType.OciIndex);
    assert.equal(parseManifest(enc(imageNoType), 'application/octet-stream').mediaType, MediaType.OciManifest);
  });
  it("the body's own mediaType wins over Content-Type", () => {
    assert.equal(parseManifest(enc(ociImage), 'application/json').mediaType, MediaType.OciManifest);
  });
});

describe('parseManifest: rejected input', () => {
  it(`rejects more than ${MAX_MANIFEST_BYTES} bytes with SOURCE_INVALID before parsing`, () => {
    const big = new Uint8Array(MAX_MANIFEST_BYTES + 1).fill(0x20);
    throwsFerry(() => parseManifest(big, MediaType.OciManifest), 'SOURCE_INVALID', 'source', `${MAX_MANIFEST_BYTES + 1} bytes`);
  });
  it('accepts exactly the limit', () => {
    const body = JSON.stringify(ociImage);
    const padded = body + ' '.repeat(MAX_MANIFEST_BYTES - body.length);
    assert.equal(enc(padded).byteLength, MAX_MANIFEST_BYTES);
    assert.equal(parseManifest(enc(padded), undefined).kind, 'image');
  });
  it('reports the destination side as DESTINATION_REJECTED', () => {
    throwsFerry(() => parseManifest(enc('nope'), undefined, 'destination'), 'DESTINATION_REJECTED', 'destination', 'not valid JSON');
  });

  const bad: Array<[string, Uint8Array, string]> = [
    ['non-JSON', enc('this is not json'), 'not valid JSON'],
    ['truncated JSON', enc(JSON.stringify(ociImage).slice(0, 40)), 'not valid JSON'],
    ['empty body', new Uint8Array(0), 'not valid JSON'],
    ['a JSON array', enc([ociImage]), 'not a JSON object'],
    ['JSON null', enc('null'), 'not a JSON object'],
    ['a JSON string', enc('"manifest"'), 'not a JSON object'],
    ['schemaVersion 1', enc({ ...ociImage, schemaVersion: 1 }), 'schemaVersion 1'],
    ['schemaVersion missing', enc({ mediaType: MediaType.OciManifest, config, layers: [] }), 'schemaVersion'],
    ['schemaVersion as a string', enc({ ...ociImage, schemaVersion: '2' }), 'schemaVersion "2"'],
    ['unknown media type', enc({ ...ociImage, mediaType: 'application/vnd.example+json' }), 'unknown manifest media type "application/vnd.example+json"'],
    ['schema1 media type', enc({ ...ociImage, mediaType: 'application/vnd.docker.distribution.manifest.v1+prettyjws' }), 'unknown manifest media type'],
    ['index without manifests', enc({ schemaVersion: 2, mediaType: MediaType.OciIndex }), 'no "manifests" array'],
    ['index with manifests object', enc({ schemaVersion: 2, mediaType: MediaType.DockerList, manifests: {} }), 'no "manifests" array'],
    ['index entry of unknown type', enc({ ...ociIndex, manifests: [{ mediaType: 'text/plain', digest: dg('a'), size: 1 }] }), 'unknown media type "text/plain"'],
    ['image without config', enc({ schemaVersion: 2, mediaType: MediaType.OciManifest, layers: [] }), 'no "config" descriptor'],
    ['image with null config', enc({ ...ociImage, config: null }), 'no "config" descriptor'],
    ['layers not an array', enc({ ...ociImage, layers: { 0: layer } }), '"layers" is not an array'],
    // bad descriptors
    ['layer with a bad digest', enc({ ...ociImage, layers: [{ ...layer, digest: 'sha256:xyz' }] }), 'layers[0] has an invalid digest "sha256:xyz"'],
    ['layer with uppercase digest', enc({ ...ociImage, layers: [layer, { ...layer, digest: `sha256:${'A'.repeat(64)}` }] }), 'layers[1] has an invalid digest'],
    ['config with no digest', enc({ ...ociImage, config: { mediaType: MediaType.OciConfig, size: 1 } }), 'config has an invalid digest undefined'],
    ['layer with negative size', enc({ ...ociImage, layers: [{ ...layer, size: -1 }] }), 'invalid size -1'],
    ['layer with fractional size', enc({ ...ociImage, layers: [{ ...layer, size: 1.5 }] }), 'invalid size 1.5'],
    ['layer with string size', enc({ ...ociImage, layers: [{ ...layer, size: '10' }] }), 'invalid size "10"'],
    ['layer with absurd size', enc({ ...ociImage, layers: [{ ...layer, size: 2 ** 51 }] }), 'invalid size'],
    ['layer with no size', enc({ ...ociImage, layers: [{ mediaType: layer.mediaType, digest: layer.digest }] }), 'invalid size undefined'],
    ['layer with no mediaType', enc({ ...ociImage, layers: [{ digest: layer.digest, size: 1 }] }), 'layers[0] has no valid mediaType'],
    ['layer with empty mediaType', enc({ ...ociImage, layers: [{ ...layer, mediaType: '' }] }), 'no valid mediaType'],
    ['layer that is a string', enc({ ...ociImage, layers: ['sha256:abc'] }), 'layers[0] is not a descriptor object'],
    ['index entry with a bad digest', enc({ ...ociIndex, manifests: [{ mediaType: MediaType.OciManifest, digest: 'md5:abc', size: 1 }] }), 'manifests[0] has an invalid digest'],
    ['index entry with negative size', enc({ ...ociIndex, manifests: [{ mediaType: MediaType.OciManifest, digest: dg('a'), size: -5 }] }), 'manifests[0]'],
  ];
  for (const [name, bytes, part] of bad) {
    it(`rejects ${name}`, () => throwsFerry(() => parseManifest(bytes, undefined), 'SOURCE_INVALID', 'source', part));
  }
});

describe('media type helpers and validateDescriptor', () => {
  it('classifies index media types', () => {
    assert.deepEqual([...INDEX_MEDIA_TYPES].sort(), [MediaType.DockerList, MediaType.OciIndex].sort());
    assert.ok(isIndexMediaType(MediaType.OciIndex));
    assert.ok(isIndexMediaType(MediaType.DockerList));
    assert.ok(!isIndexMediaType(MediaType.OciManifest));
    assert.ok(!isIndexMediaType(MediaType.DockerManifest));
    assert.equal(MANIFEST_MEDIA_TYPES.length, 4);
  });
  it('validateDescriptor returns the descriptor with its extra fields', () => {
    const d = { ...layer, annotations: { a: 'b' }, urls: ['https://example.com/x'] };
    assert.deepEqual(validateDescriptor(d, 'x', 'source'), d);
    assert.equal(validateDescriptor({ ...layer, size: 0 }, 'x', 'source').size, 0);
  });
  it('validateDescriptor names where and side', () => {
    throwsFerry(() => validateDescriptor(null, 'blob', 'destination'), 'DESTINATION_REJECTED', 'destination', 'blob is not a descriptor object');
    throwsFerry(() => validateDescriptor({ ...layer, mediaType: 'x'.repeat(256) }, 'blob', 'source'), 'SOURCE_INVALID', 'source', 'blob has no valid mediaType');
  });
});
