// Unit tests of the shared module: node --test examples/shared/test/
// (tests/test_examples_js.py runs them; the pixels against Python are tested there).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  GeneratorFileError,
  InputError,
  SEED_LIMIT,
  makeGrid,
  parseCount,
  parseSeed,
  readMetadataProps,
  readRefdiffMetadata,
  rint,
  stepFileName,
  toUint8,
} from '../refdiff-generator.mjs';

// -- a protobuf writer, just enough for ModelProto fields -----------------------------------------
const varint = (n) => {
  const out = [];
  while (n >= 128) {
    out.push((n % 128) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
};
const bytesOf = (s) => [...new TextEncoder().encode(s)];
const field = (number, payload) => [...varint(number * 8 + 2), ...varint(payload.length), ...payload];
const entry = (key, value) => field(14, [...field(1, bytesOf(key)), ...field(2, bytesOf(value))]);
const model = (...parts) => Uint8Array.from([8, 9, ...field(7, bytesOf('graph')), ...parts.flat()]);
const GENERATOR = {
  format: 1,
  kind: 'generator',
  diffusion: { image_shape: [1, 8, 8], data_range: [-1, 1] },
  sampler: { sampler: 'ddim', steps: 4, spacing: 'even', options: { eta: 0 } },
  plan: { d_coef: [[1], [1], [1], [1]] },
  denoiser: { dtype: 'float32' },
  graph: 'loop',
};

test('metadata_props are read from the protobuf, other fields skipped', () => {
  const bytes = model(entry('a', '1'), [0x15, 1, 2, 3, 4], [0x19, 1, 2, 3, 4, 5, 6, 7, 8], entry('refdiff', '{"x": 1}'));
  assert.deepEqual([...readMetadataProps(bytes)], [['a', '1'], ['refdiff', '{"x": 1}']]);
});

test('a file that is no ONNX model is refused, whatever its bytes', () => {
  for (const bytes of [
    new Uint8Array(0), // empty: no graph
    Uint8Array.from(bytesOf('<!doctype html><html>not found</html>')),
    model().subarray(0, 5), // truncated inside the graph field
    Uint8Array.from([0x0b]), // wire type 3 (groups)
  ]) {
    assert.throws(() => readMetadataProps(bytes, 'x.onnx'), (e) => e instanceof GeneratorFileError && e.code === 'not-onnx' && e.message.startsWith('x.onnx is not an ONNX'));
  }
});

test('what a file is: foreign, denoiser, step, generator, unknown format', () => {
  const kinds = [
    [model(), 'foreign', /without refdiff metadata/],
    [model(entry('refdiff', JSON.stringify({ format: 1, diffusion: {} }))), 'denoiser', /is a refdiff denoiser .*refdiff export d\.onnx --out gen\.onnx/],
    [model(entry('refdiff', JSON.stringify({ ...GENERATOR, kind: 'step' }))), 'step', /is a refdiff step file, not a generator file/],
    [model(entry('refdiff', JSON.stringify({ ...GENERATOR, format: 2 }))), 'format', /format 2 is not supported/],
    [model(entry('refdiff', '{not json')), 'format', /not valid JSON/],
    [model(entry('refdiff', JSON.stringify({ ...GENERATOR, diffusion: { image_shape: [8, 8], data_range: [-1, 1] } }))), 'format', /image_shape \[8,8\]/],
  ];
  for (const [bytes, code, message] of kinds) {
    assert.throws(() => readRefdiffMetadata(bytes, { source: 'd.onnx', name: 'd.onnx' }), (e) => e.code === code && message.test(e.message));
  }
  const meta = readRefdiffMetadata(model(entry('refdiff', JSON.stringify(GENERATOR))));
  assert.equal(meta.sampler.sampler, 'ddim');
  assert.throws(() => readRefdiffMetadata(model(entry('refdiff', JSON.stringify(GENERATOR))), { kind: 'step' }), (e) => e.code === 'generator');
});

test('seeds: whole numbers in [0, 2**63), as BigInt', () => {
  assert.equal(parseSeed('0'), 0n);
  assert.equal(parseSeed(' 42 '), 42n);
  assert.equal(parseSeed('+7'), 7n);
  assert.equal(parseSeed('9223372036854775807'), SEED_LIMIT - 1n); // beyond 2**53: no rounding
  assert.equal(parseSeed(12), 12n);
  for (const [bad, message] of [
    ['-1', /must be >= 0, got -1/],
    ['1.5', /must be a whole number, got 1.5/],
    ['1e3', /must be a whole number, got 1e3/],
    ['abc', /must be a whole number from 0 to 9223372036854775807, got "abc"/],
    ['', /the seed is empty/],
    ['0x10', /got "0x10"/],
    ['9223372036854775808', /below 2\*\*63/],
  ]) {
    assert.throws(() => parseSeed(bad), (e) => e instanceof InputError && message.test(e.message), bad);
  }
});

test('counts: whole numbers from 1 to the limit', () => {
  assert.equal(parseCount('16', { max: 64 }), 16);
  assert.equal(parseCount('64', { max: 64 }), 64);
  for (const [bad, message] of [
    ['65', /at most 64 \(the limit\), got 65/],
    ['0', /at least 1, got 0/],
    ['-3', /at least 1, got -3/],
    ['2.5', /whole number, got 2.5/],
    ['ten', /whole number from 1 to 64, got "ten"/],
    [' ', /is empty/],
  ]) {
    assert.throws(() => parseCount(bad, { max: 64, limitReason: ' (the limit)' }), (e) => e instanceof InputError && message.test(e.message), bad);
  }
});

test('rint rounds half to even, as NumPy', () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 254.5, 1.4999999, 2.5000001].map(rint), [0, 2, 2, 0, -2, 254, 1, 3]);
});

test('toUint8 is refdiff.runtime.to_uint8: scale, round half to even, clip; refuses NaN', () => {
  // (x + 1) * 127.5: -1 -> 0, 1 -> 255, and x = 1/255 - 1 -> 0.5 -> 0 (half to even)
  const x = Float32Array.of(-1, 1, -2, 2, 0, 1 / 255 - 1);
  const want = [0, 255, 0, 255, 128, Math.round(Math.fround(1 / 255 - 1) * 127.5 + 127.5)];
  assert.deepEqual([...toUint8(x, [-1, 1])], want);
  assert.deepEqual([...toUint8(Float32Array.of(0, 0.5, 1), [0, 1])], [0, 128, 255]);
  assert.throws(() => toUint8(Float32Array.of(0, NaN, Infinity), [-1, 1]), /2 sample values are NaN or infinite/);
});

test('makeGrid lays images out as refdiff.images.make_grid', () => {
  // two 1x1x2 images, scale 2, pad 1: [pad, img0 (4 px wide), pad, img1, pad]
  const grid = makeGrid(Uint8Array.of(10, 20, 30, 40), [2, 1, 1, 2], { scale: 2, pad: 1, padValue: 0 });
  assert.equal(grid.width, 11);
  assert.equal(grid.height, 4);
  assert.deepEqual([...grid.data.subarray(11, 22)], [0, 10, 10, 20, 20, 0, 30, 30, 40, 40, 0]);
  const rgb = makeGrid(Uint8Array.of(1, 2, 3), [1, 3, 1, 1], { scale: 1, pad: 0 });
  assert.deepEqual([...rgb.data], [1, 2, 3]);
  assert.throws(() => makeGrid(new Uint8Array(2), [1, 2, 1, 1]), /1 \(grey\) or 3 \(RGB\) channels/);
});

test('the step file is found beside the generator', () => {
  assert.equal(stepFileName('gen.onnx'), 'gen-step.onnx');
  assert.equal(stepFileName('models/generator.onnx?v=2'), 'models/generator-step.onnx?v=2');
  assert.equal(stepFileName('a.b/model'), 'a.b/model-step.onnx');
});
