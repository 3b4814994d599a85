// refdiff's generator files in JavaScript: what the Node.js example and the web page share.
//
// A generator file (`refdiff export MODEL --out gen.onnx --sampler NAME --steps N`) holds a
// denoiser and a whole sampler: int64 `seed` and `sample_indices` in, `samples` (float32) and
// `images` (uint8) [B, C, H, W] out. Its step file (gen-step.onnx beside it) runs one step per call,
// for hosts that show progress. Their contract is refdiff/onnx_contract.py; docs/web.md says how
// these examples use it.
//
// This module has no dependencies and runs in Node.js and in browsers. It reads a file's refdiff
// metadata from the ONNX protobuf itself (onnxruntime's JavaScript API does not expose a model's
// metadata_props), refuses what is not a generator with a message that says what it is, checks
// seeds and counts, and runs a generator through the onnxruntime namespace it is given
// (onnxruntime-node or onnxruntime-web: the same API).

/** The metadata_props key of refdiff's JSON (refdiff.onnx_contract.METADATA_KEY). */
export const METADATA_KEY = 'refdiff';
/** The generator metadata layout this module reads (refdiff.onnx_contract.GENERATOR_FORMAT). */
export const GENERATOR_FORMAT = 1;
/** Seeds are int64 in the graph: 0 <= seed < 2**63. */
export const SEED_LIMIT = 2n ** 63n;
/** Generator inputs and outputs (refdiff.onnx_contract GENERATOR_INPUTS / OUTPUTS). */
export const GENERATOR_OUTPUTS = ['samples', 'images'];
export const STEP_INPUTS = ['seed', 'sample_indices', 'step', 'x', 'history'];
export const STEP_OUTPUTS = ['x_next', 'history_next', 'pred_x0'];

const MAKE_GENERATOR = 'refdiff export MODEL --out gen.onnx --sampler NAME --steps N';

/** A file that cannot be used as a refdiff generator; `code` says why. */
export class GeneratorFileError extends Error {
  /**
   * @param {string} message one line that names the file and the problem
   * @param {'missing'|'not-onnx'|'foreign'|'denoiser'|'step'|'generator'|'format'|'unsupported'} code
   */
  constructor(message, code) {
    super(message);
    this.name = 'GeneratorFileError';
    this.code = code;
  }
}

/** A seed, count or other argument that is out of range or of the wrong kind. */
export class InputError extends Error {
  constructor(message) {
    super(message);
    this.name = 'InputError';
  }
}

// -- the protobuf, just enough to find ModelProto.metadata_props --------------------------------

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i += 1) {
    if (pos >= bytes.length) throw new RangeError('truncated varint');
    const b = bytes[pos];
    pos += 1;
    value += (b & 0x7f) * scale; // exact below 2**53: lengths and tags always are
    scale *= 128;
    if (!(b & 0x80)) return [value, pos];
  }
  throw new RangeError('varint longer than 10 bytes');
}

/** [field number, start, end] of each length-delimited field of the message in bytes[pos:end];
 * other wire types are skipped (as refdiff.onnx_contract._fields does). */
function* fields(bytes, pos = 0, end = bytes.length) {
  while (pos < end) {
    let tag;
    [tag, pos] = readVarint(bytes, pos);
    const wire = tag % 8;
    const number = Math.floor(tag / 8);
    if (number === 0) throw new RangeError('field number 0');
    if (wire === 0) {
      [, pos] = readVarint(bytes, pos);
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let size;
      [size, pos] = readVarint(bytes, pos);
      if (pos + size > end) throw new RangeError('truncated field');
      yield [number, pos, pos + size];
      pos += size;
    } else {
      throw new RangeError(`wire type ${wire}`);
    }
    if (pos > end) throw new RangeError('truncated field');
  }
}

/**
 * The metadata_props of an ONNX file's bytes as a Map, read from the protobuf without parsing the
 * graph (the weights are skipped, not decoded).
 * @param {Uint8Array} bytes
 * @param {string} source how messages name the file
 * @returns {Map<string, string>}
 */
export function readMetadataProps(bytes, source = 'the file') {
  const props = new Map();
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let graph = false;
  try {
    for (const [number, start, end] of fields(bytes)) {
      if (number === 7) graph = true; // ModelProto.graph
      if (number !== 14) continue; // ModelProto.metadata_props: (key = 1, value = 2) entries
      const entry = new Map();
      for (const [n, a, b] of fields(bytes, start, end)) entry.set(n, utf8.decode(bytes.subarray(a, b)));
      if (entry.has(1)) props.set(entry.get(1), entry.get(2) ?? '');
    }
  } catch (err) {
    throw new GeneratorFileError(
      `${source} is not an ONNX file (its ${bytes.length} bytes are not an ONNX protobuf: ${err.message})`,
      'not-onnx',
    );
  }
  if (!graph) {
    throw new GeneratorFileError(
      `${source} is not an ONNX model (no graph in its ${bytes.length} bytes)`,
      'not-onnx',
    );
  }
  return props;
}

// -- what a file is --------------------------------------------------------------------------------

/**
 * The refdiff metadata of an ONNX file's bytes, required to be of `kind` ("generator" or "step").
 * Every other file is a GeneratorFileError whose message says what the file is instead.
 * @returns {object} the parsed metadata JSON (kind, diffusion, sampler, plan, denoiser, graph, ...)
 */
export function readRefdiffMetadata(bytes, { source = 'the file', kind = 'generator', name = 'MODEL' } = {}) {
  const text = readMetadataProps(bytes, source).get(METADATA_KEY);
  if (text === undefined) {
    throw new GeneratorFileError(
      `${source} is an ONNX model without refdiff metadata (no "${METADATA_KEY}" entry in its ` +
        `metadata_props): not a refdiff generator; write one with \`${MAKE_GENERATOR}\``,
      'foreign',
    );
  }
  let meta;
  try {
    meta = JSON.parse(text);
  } catch (err) {
    throw new GeneratorFileError(`${source}: its refdiff metadata is not valid JSON (${err.message})`, 'format');
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) {
    throw new GeneratorFileError(`${source}: its refdiff metadata is not a JSON object`, 'format');
  }
  if (meta.kind === undefined) {
    throw new GeneratorFileError(
      `${source} is a refdiff denoiser (one network call per sampling step), not a generator: ` +
        `make a generator from it with \`${MAKE_GENERATOR.replace('MODEL', name)}\``,
      'denoiser',
    );
  }
  if (meta.kind !== kind) {
    const hint =
      meta.kind === 'step'
        ? 'give the generator file it belongs to (gen.onnx beside gen-step.onnx)'
        : 'give its step file (gen-step.onnx beside gen.onnx)';
    throw new GeneratorFileError(
      `${source} is a refdiff ${meta.kind} file, not a ${kind} file: ${hint}`,
      meta.kind === 'step' ? 'step' : 'generator',
    );
  }
  if (meta.format !== GENERATOR_FORMAT) {
    throw new GeneratorFileError(
      `${source}: refdiff generator metadata format ${JSON.stringify(meta.format)} is not ` +
        `supported (this reader knows format ${GENERATOR_FORMAT}); rebuild the file with this refdiff`,
      'format',
    );
  }
  const missing = ['diffusion', 'sampler', 'plan'].filter((k) => !(k in meta));
  if (missing.length) {
    throw new GeneratorFileError(`${source}: the generator metadata lacks ${missing.join(', ')}`, 'format');
  }
  const shape = meta.diffusion.image_shape;
  if (!Array.isArray(shape) || shape.length !== 3 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new GeneratorFileError(`${source}: image_shape ${JSON.stringify(shape)} is not [C, H, W]`, 'format');
  }
  const range = meta.diffusion.data_range;
  if (!Array.isArray(range) || range.length !== 2 || !(range[1] > range[0])) {
    throw new GeneratorFileError(`${source}: data_range ${JSON.stringify(range)} is not [lo, hi]`, 'format');
  }
  return meta;
}

/** "ddpm, 10 steps (even spacing); loop; float32 denoiser" (as GeneratorMetadata.describe). */
export function describe(meta) {
  const s = meta.sampler;
  const opts = Object.entries(s.options ?? {})
    .map(([k, v]) => `, ${k}=${v}`)
    .join('');
  const dtype = meta.denoiser?.dtype ?? 'float32';
  return `${s.sampler}, ${s.steps} steps (${s.spacing} spacing${opts}); ${meta.graph}; ${dtype} denoiser`;
}

/** The step file's path or URL beside a generator's: gen.onnx -> gen-step.onnx. */
export function stepFileName(generatorName) {
  const cut = generatorName.search(/[?#]/);
  const [path, rest] = cut < 0 ? [generatorName, ''] : [generatorName.slice(0, cut), generatorName.slice(cut)];
  return `${path.replace(/\.onnx$/i, '')}-step.onnx${rest}`;
}

// -- arguments ---------------------------------------------------------------------------------

/**
 * A seed typed by a person: a whole number 0 <= seed < 2**63, as a BigInt (a JavaScript number
 * holds integers exactly only up to 2**53).
 * @param {string|number|bigint} value
 * @returns {bigint}
 */
export function parseSeed(value) {
  const text = String(value).trim();
  const range = `a whole number from 0 to ${SEED_LIMIT - 1n}`;
  if (text === '') throw new InputError(`the seed is empty: type ${range}`);
  if (/^-\s*\d+$/.test(text)) throw new InputError(`the seed must be >= 0, got ${text}`);
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text) && !/^\+?\d+$/.test(text)) {
    throw new InputError(`the seed must be a whole number, got ${text}`);
  }
  if (!/^\+?\d+$/.test(text)) throw new InputError(`the seed must be ${range}, got ${JSON.stringify(text)}`);
  const seed = BigInt(text.replace(/^\+/, ''));
  if (seed >= SEED_LIMIT) {
    throw new InputError(
      `the seed must be below 2**63 = ${SEED_LIMIT} (int64 in the generator), got ${seed}`,
    );
  }
  return seed;
}

/**
 * A count of images typed by a person: a whole number 1 <= count <= max.
 * @param {string|number} value
 * @param {{max?: number, what?: string, limitReason?: string}} options
 */
export function parseCount(value, { max = Number.MAX_SAFE_INTEGER, what = 'the count', limitReason = '' } = {}) {
  const text = String(value).trim();
  if (text === '') throw new InputError(`${what} is empty: type a whole number from 1 to ${max}`);
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) {
    throw new InputError(`${what} must be a whole number from 1 to ${max}, got ${JSON.stringify(text)}`);
  }
  const n = Number(text);
  if (!Number.isInteger(n)) throw new InputError(`${what} must be a whole number, got ${text}`);
  if (n < 1) throw new InputError(`${what} must be at least 1, got ${text}`);
  if (n > max) throw new InputError(`${what} must be at most ${max}${limitReason}, got ${text}`);
  return n;
}

// -- pixels ------------------------------------------------------------------------------------

/** Round half to even, as NumPy's rint. */
export function rint(y) {
  const f = Math.floor(y);
  const d = y - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * refdiff.runtime.to_uint8: rint((x - lo) * 255 / (hi - lo)) in float64, clipped to 0..255.
 * A NaN or an infinity is an error (a diverged model must not become black or white pixels).
 * @param {Float32Array} samples
 * @param {[number, number]} dataRange
 */
export function toUint8(samples, [lo, hi]) {
  const out = new Uint8Array(samples.length);
  const scale = 255 / (hi - lo);
  let bad = 0;
  for (let i = 0; i < samples.length; i += 1) {
    const x = samples[i];
    if (!Number.isFinite(x)) {
      bad += 1;
      continue;
    }
    out[i] = Math.min(255, Math.max(0, rint((x - lo) * scale)));
  }
  if (bad) throw new Error(`${bad} sample values are NaN or infinite: the model diverged`);
  return out;
}

/**
 * The PNG grid refdiff.images.make_grid draws, as rows of bytes: nearest-neighbour upscaling by
 * `scale`, `pad` pixels of grey `padValue` between and around the images, `nrow` images a row
 * (default ceil(sqrt(n))). `refdiff sample` uses scale = max(1, 32 // max(H, W)).
 * @param {Uint8Array} images [n, C, H, W], C = 1 or 3
 * @returns {{width: number, height: number, channels: number, data: Uint8Array}} [H', W', C]
 */
export function makeGrid(images, [n, c, h, w], { nrow, scale, pad = 2, padValue = 128 } = {}) {
  if (c !== 1 && c !== 3) throw new InputError(`a grid needs 1 (grey) or 3 (RGB) channels, got ${c}`);
  const cols = Math.min(nrow ?? Math.ceil(Math.sqrt(n)), n);
  const rows = Math.ceil(n / cols);
  scale = scale ?? Math.max(1, Math.floor(32 / Math.max(h, w)));
  const hs = h * scale;
  const ws = w * scale;
  const height = rows * hs + (rows + 1) * pad;
  const width = cols * ws + (cols + 1) * pad;
  const data = new Uint8Array(height * width * c).fill(padValue);
  for (let i = 0; i < n; i += 1) {
    const y0 = pad + Math.floor(i / cols) * (hs + pad);
    const x0 = pad + (i % cols) * (ws + pad);
    for (let y = 0; y < hs; y += 1) {
      for (let x = 0; x < ws; x += 1) {
        const src = (Math.floor(y / scale) * w + Math.floor(x / scale));
        const dst = ((y0 + y) * width + (x0 + x)) * c;
        for (let ch = 0; ch < c; ch += 1) data[dst + ch] = images[((i * c + ch) * h * w) + src];
      }
    }
  }
  return { width, height, channels: c, data };
}

// -- running -----------------------------------------------------------------------------------

function sameJson(a, b) {
  const canon = (v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])]))
      : Array.isArray(v) ? v.map(canon) : v;
  return JSON.stringify(canon(a)) === JSON.stringify(canon(b));
}

async function createSession(ort, bytes, source, options) {
  try {
    return await ort.InferenceSession.create(bytes, options);
  } catch (err) {
    const why = String(err?.message ?? err).split('\n')[0];
    throw new GeneratorFileError(`${source}: onnxruntime cannot load it: ${why}`, 'unsupported');
  }
}

/** A generator file (and its step file, when given) opened in onnxruntime. */
export class RefdiffGenerator {
  /**
   * @param {object} ort the onnxruntime namespace (onnxruntime-node or onnxruntime-web)
   * @param {Uint8Array} bytes the generator file
   * @param {object} [options]
   * @param {string} [options.source] how messages name the file
   * @param {string} [options.name] its path or URL, for the hints in messages
   * @param {Uint8Array|null} [options.stepBytes] its step file, for progress step by step
   * @param {string} [options.stepSource]
   * @param {object} [options.sessionOptions] onnxruntime session options (execution providers,
   *   ...); graphOptimizationLevel defaults to 'extended' for a float16 network, else 'all'
   */
  static async open(ort, bytes, { source = 'the generator file', name, stepBytes = null, stepSource = 'the step file', sessionOptions = {} } = {}) {
    const meta = readRefdiffMetadata(bytes, { source, name, kind: 'generator' });
    // as refdiff.runtime.devices.default_session_options: onnxruntime's 'all' optimizations round
    // a float16 network differently inside a generator graph than alone, 'extended' does not
    const level = meta.denoiser?.dtype === 'float16' ? 'extended' : 'all';
    sessionOptions = { graphOptimizationLevel: level, ...sessionOptions };
    const session = await createSession(ort, bytes, source, sessionOptions);
    const outputs = [...session.outputNames];
    if (JSON.stringify(outputs) !== JSON.stringify(GENERATOR_OUTPUTS)) {
      throw new GeneratorFileError(`${source}: outputs ${outputs}, a generator has ${GENERATOR_OUTPUTS}`, 'format');
    }
    const gen = new RefdiffGenerator(ort, meta, session, source, sessionOptions);
    if (stepBytes) await gen.attachStepFile(stepBytes, stepSource);
    return gen;
  }

  /**
   * Open the generator's step file, so that generate() can run one step per call and report each.
   * A file that is not this generator's step file is a GeneratorFileError (the generator stays
   * usable without it).
   */
  async attachStepFile(stepBytes, stepSource = 'the step file') {
    const stepMeta = readRefdiffMetadata(stepBytes, { source: stepSource, kind: 'step' });
    for (const key of ['diffusion', 'sampler', 'plan']) {
      if (!sameJson(stepMeta[key], this.metadata[key])) {
        throw new GeneratorFileError(
          `${stepSource} is the step file of another generator (its ${key} differs from ${this.source}'s)`,
          'step',
        );
      }
    }
    const session = await createSession(this.ort, stepBytes, stepSource, this.sessionOptions);
    const inputs = [...session.inputNames].sort();
    if (JSON.stringify(inputs) !== JSON.stringify([...STEP_INPUTS].sort())) {
      throw new GeneratorFileError(`${stepSource}: inputs ${inputs}, a step file has ${STEP_INPUTS}`, 'format');
    }
    this.stepSession = session;
    this.stepSource = stepSource;
  }

  constructor(ort, meta, session, source, sessionOptions = {}) {
    this.ort = ort;
    this.sessionOptions = sessionOptions;
    this.metadata = meta;
    this.session = session;
    this.source = source;
    this.stepSession = null;
    /** [C, H, W] */
    this.imageShape = meta.diffusion.image_shape;
    this.steps = meta.sampler.steps;
    /** how many earlier predictions of x_0 the sampler keeps (the step file's history) */
    this.history = meta.plan.d_coef[0].length;
  }

  describe() {
    return describe(this.metadata);
  }

  async release() {
    await this.session.release?.();
    await this.stepSession?.release?.();
  }

  _indices(start, stop) {
    const idx = new BigInt64Array(stop - start);
    for (let i = 0; i < idx.length; i += 1) idx[i] = BigInt(start + i);
    return new this.ort.Tensor('int64', idx, [idx.length]);
  }

  _seed(seed) {
    return new this.ort.Tensor('int64', BigInt64Array.of(seed), []);
  }

  /**
   * The images of samples 0 … count-1 under `seed`: what `refdiff sample FILE --seed S --n count`
   * writes, batch by batch (a sample depends on (seed, its index) alone).
   * @param {bigint|string|number} seed checked by parseSeed
   * @param {number} count
   * @param {object} [options]
   * @param {number} [options.batchSize] samples per call (memory only, never the images)
   * @param {boolean} [options.stepwise] run the step file (default: when there is one)
   * @param {(p: {done: number, count: number, step: number, steps: number}) => (void|Promise<void>)} [options.onProgress]
   * @returns {Promise<{images: Uint8Array, samples: Float32Array, shape: number[], stepMs: number[], stepwise: boolean}>}
   */
  async generate(seed, count, { batchSize = 64, stepwise = this.stepSession !== null, onProgress } = {}) {
    seed = parseSeed(seed);
    count = parseCount(count, { what: 'the count' });
    batchSize = parseCount(batchSize, { what: 'the batch size' });
    if (stepwise && !this.stepSession) throw new InputError(`${this.source} was opened without its step file`);
    const [c, h, w] = this.imageShape;
    const per = c * h * w;
    const samples = new Float32Array(count * per);
    const images = new Uint8Array(count * per);
    const stepMs = [];
    for (let lo = 0; lo < count; lo += batchSize) {
      const hi = Math.min(lo + batchSize, count);
      const feeds = { seed: this._seed(seed), sample_indices: this._indices(lo, hi) };
      let x;
      if (stepwise) {
        x = await this._stepwise(feeds, hi - lo, stepMs, async (k) =>
          onProgress?.({ done: lo, count, step: k, steps: this.steps }));
      } else {
        const t0 = performance.now();
        const out = await this.session.run(feeds);
        stepMs.push((performance.now() - t0) / this.steps);
        x = out.samples.data;
        images.set(out.images.data, lo * per);
      }
      samples.set(x, lo * per);
      if (stepwise) images.set(toUint8(x, this.metadata.diffusion.data_range), lo * per);
      else toUint8(x, this.metadata.diffusion.data_range); // refuses NaN as the step path does
      await onProgress?.({ done: hi, count, step: this.steps, steps: this.steps });
    }
    return { images, samples, shape: [count, c, h, w], stepMs, stepwise };
  }

  async _stepwise(feeds, batch, stepMs, progress) {
    const [c, h, w] = this.imageShape;
    const { Tensor } = this.ort;
    let x = new Tensor('float32', new Float32Array(batch * c * h * w), [batch, c, h, w]);
    let history = new Tensor('float32', new Float32Array(this.history * batch * c * h * w), [this.history, batch, c, h, w]);
    for (let k = -1; k < this.steps; k += 1) {
      const t0 = performance.now();
      const out = await this.stepSession.run({ ...feeds, step: new Tensor('int64', BigInt64Array.of(BigInt(k)), []), x, history });
      if (k >= 0) stepMs.push(performance.now() - t0);
      x = out.x_next;
      history = out.history_next;
      await progress(k + 1);
    }
    return x.data;
  }
}
