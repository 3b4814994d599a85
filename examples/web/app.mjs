// The page: load a refdiff generator file with onnxruntime-web, draw the images of a seed.
// docs/web.md says how to build and serve it (`make web`) and what the tests check.
//
// Query parameters fill the form: ?model=models/x.onnx&seed=7&count=16&backend=wasm, and
// &run=1 generates at once. window.refdiffPage holds the state and the last result, for tests.

import {
  GeneratorFileError,
  RefdiffGenerator,
  parseCount,
  parseSeed,
  stepFileName,
} from './refdiff-generator.mjs';

/** The most images one click may ask for: the work runs in this tab. */
const MAX_COUNT = 64;
const MAKE_GENERATOR = 'refdiff export MODEL --out gen.onnx --sampler NAME --steps N';

const $ = (id) => document.getElementById(id);
const form = $('controls');
const fields = { model: $('model'), seed: $('seed'), count: $('count'), backend: $('backend') };
// pending counts the tasks (load, generate) queued or running: they run one at a time
const page = { state: 'loading', error: null, note: null, model: null, result: null, backend: null, pending: 0 };
window.refdiffPage = page;

let loaded = null; // { key, generator }
let ortModule = null;

function setState(state) {
  page.state = state;
  document.body.dataset.state = state;
  $('generate').disabled = state === 'loading' || state === 'running';
}

function showError(message) {
  page.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
  $('progress').hidden = true;
  $('status').textContent = '';
  $('images').replaceChildren(); // the images of an earlier run would read as this one's
  $('timing').textContent = '';
  page.result = null;
  setState('error');
}

function clearError() {
  page.error = null;
  $('error').hidden = true;
}

function showNote(message) {
  page.note = message;
  $('note').textContent = message ?? '';
  $('note').hidden = !message;
}

const pause = () => new Promise((resolve) => setTimeout(resolve, 0)); // lets the page repaint

/**
 * onnxruntime-web: the WebAssembly build, or the one with WebGPU (and the same WebAssembly kernels
 * for the nodes WebGPU lacks). Not ort.webgpu.min.mjs: its WebAssembly kernels lack a Cast of
 * refdiff's in-graph noise (onnxruntime-web 1.30: "Could not find an implementation for Cast(13)").
 */
async function loadOrt(kind) {
  const url = kind === 'webgpu' ? './ort/ort.min.mjs' : './ort/ort.wasm.min.mjs';
  let ort;
  try {
    ort = await import(url);
  } catch (err) {
    throw new Error(`onnxruntime-web (${url}) could not be loaded (${err.message}): build the page with \`make web\` or examples/web/build.mjs`);
  }
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.logLevel = 'error';
  return ort;
}

async function webgpuAdapter() {
  if (!('gpu' in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

async function fetchBytes(url, what) {
  let res;
  try {
    res = await fetch(url, { cache: 'no-store' });
  } catch (err) {
    throw new GeneratorFileError(`The ${what} ${url} could not be fetched (${err.message}).`, 'missing');
  }
  if (res.status === 404) return null;
  if (!res.ok) {
    throw new GeneratorFileError(`The ${what} ${url} could not be fetched (HTTP ${res.status} ${res.statusText}).`, 'missing');
  }
  return new Uint8Array(await res.arrayBuffer());
}

async function loadModel(url, backend) {
  if (loaded?.key === `${url}|${backend}`) return;
  setState('loading');
  clearError();
  showNote(null);
  $('model-info').textContent = `Loading ${url} …`;
  if (loaded) await loaded.generator.release();
  loaded = null;
  page.model = null;
  const bytes = await fetchBytes(url, 'model file');
  if (bytes === null) {
    throw new GeneratorFileError(
      `The model file ${url} was not found on this server (HTTP 404). Build the page with ` +
        `\`make web\`, or put a generator there: \`${MAKE_GENERATOR}\`.`,
      'missing',
    );
  }
  const notes = [];
  let kind = backend === 'wasm' ? 'wasm' : (await webgpuAdapter()) ? 'webgpu' : 'wasm';
  if (backend === 'webgpu' && kind === 'wasm') notes.push('This browser offers no WebGPU adapter: running on WebAssembly.');
  ortModule = await loadOrt(kind);
  const source = `The file ${url}`;
  const open = (providers) =>
    RefdiffGenerator.open(ortModule, bytes, {
      source,
      name: url,
      sessionOptions: { executionProviders: providers, logSeverityLevel: 3 },
    });
  let generator;
  if (kind === 'webgpu') {
    try {
      generator = await open(['webgpu', 'wasm']);
    } catch (err) {
      if (err instanceof GeneratorFileError && err.code !== 'unsupported') throw err;
      notes.push(`WebGPU could not run this file (${err.message}); running on WebAssembly.`);
      kind = 'wasm';
    }
  }
  generator ??= await open(['wasm']);
  const stepUrl = stepFileName(url);
  let stepNote = `progress per step from its step file ${stepUrl}`;
  const stepBytes = await fetchBytes(stepUrl, 'step file').catch(() => null);
  if (stepBytes === null) {
    stepNote = `no step file beside it (${stepUrl}): the ${generator.steps} steps run in one call`;
  } else {
    try {
      await generator.attachStepFile(stepBytes, `The step file ${stepUrl}`);
    } catch (err) {
      stepNote = `its step file is not usable (${err.message}); the steps run in one call`;
    }
  }
  const threads = kind === 'wasm' ? (self.crossOriginIsolated ? ortModule.env.wasm.numThreads || 'default' : 1) : null;
  page.backend = kind === 'webgpu' ? 'webgpu' : 'wasm';
  const where =
    kind === 'webgpu'
      ? 'WebGPU (WebAssembly for the nodes WebGPU lacks)'
      : `WebAssembly (${threads === 1 ? '1 thread' : `threads: ${threads}`})`;
  if (kind === 'webgpu') {
    notes.push(
      'On WebGPU the graphics card does the arithmetic, rounding otherwise than the CPU: a pixel ' +
        'may differ from refdiff sample’s by a level (docs/web.md). Choose WebAssembly for the CPU’s.',
    );
  } else if (generator.metadata.denoiser?.dtype === 'float16') {
    notes.push(
      'This file’s network is float16: WebAssembly rounds float16 arithmetic differently from ' +
        'native onnxruntime, so a pixel may differ from refdiff sample’s by a level (docs/web.md).',
    );
  }
  showNote(notes.join(' ') || null);
  const [c, h, w] = generator.imageShape;
  page.model = { url, description: generator.describe(), imageShape: generator.imageShape, steps: generator.steps, stepwise: generator.stepSession !== null };
  $('model-info').textContent =
    `${url}: refdiff generator, ${generator.describe()}; images ${c}×${h}×${w}; ${stepNote}; on ${where}.`;
  loaded = { key: `${url}|${backend}`, generator };
  setState('ready');
}

function drawImages(images, [n, c, h, w]) {
  const box = $('images');
  box.replaceChildren();
  const zoom = Math.max(1, Math.floor(64 / Math.max(h, w)));
  for (let i = 0; i < n; i += 1) {
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    canvas.style.width = `${w * zoom}px`;
    canvas.style.height = `${h * zoom}px`;
    canvas.dataset.index = String(i);
    const ctx = canvas.getContext('2d');
    const rgba = ctx.createImageData(w, h);
    for (let p = 0; p < h * w; p += 1) {
      for (let ch = 0; ch < 3; ch += 1) rgba.data[4 * p + ch] = images[(i * c + (c === 1 ? 0 : ch)) * h * w + p];
      rgba.data[4 * p + 3] = 255;
    }
    ctx.putImageData(rgba, 0, 0);
    const fig = document.createElement('figure');
    const cap = document.createElement('figcaption');
    cap.textContent = `#${i}`;
    fig.append(canvas, cap);
    box.append(fig);
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function generate() {
  clearError();
  let seed;
  let count;
  try {
    seed = parseSeed(fields.seed.value);
    count = parseCount(fields.count.value, {
      max: MAX_COUNT,
      what: 'the number of images',
      limitReason: ' (this page’s limit: the work runs in this tab; use the Node.js example or `refdiff sample` for more)',
    });
  } catch (err) {
    showError(err.message.charAt(0).toUpperCase() + err.message.slice(1));
    return;
  }
  await loadModel(fields.model.value.trim(), fields.backend.value);
  const gen = loaded.generator;
  setState('running');
  $('images').replaceChildren();
  $('timing').textContent = '';
  const bar = $('progress');
  bar.hidden = false;
  const stepwise = gen.stepSession !== null;
  if (stepwise) {
    bar.max = gen.steps;
    bar.value = 0;
  } else {
    bar.removeAttribute('value'); // indeterminate: one call runs every step
  }
  $('status').textContent = stepwise ? `drawing the noise x_T of ${count} samples …` : `running all ${gen.steps} steps in one call …`;
  await pause();
  const t0 = performance.now();
  const result = await gen.generate(seed, count, {
    batchSize: MAX_COUNT,
    onProgress: async ({ step, steps }) => {
      if (!stepwise) return;
      bar.value = step;
      $('status').textContent = `step ${step} of ${steps}`;
      await pause();
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  drawImages(result.images, result.shape);
  bar.hidden = true;
  $('status').textContent = `done: ${count} images, seed ${seed}`;
  const perStep = median(result.stepMs);
  const where = page.backend === 'webgpu' ? 'WebGPU' : 'WebAssembly';
  $('timing').textContent =
    `${count} images in ${seconds.toFixed(2)} s: ${gen.steps} steps, ${perStep.toFixed(1)} ms per step ` +
    `(${stepwise ? 'median over the steps' : 'the call divided by the steps'}) on ${where}.`;
  page.result = {
    seed: String(seed),
    count,
    shape: result.shape,
    images: Array.from(result.images),
    samples: Array.from(result.samples),
    stepMs: result.stepMs,
    stepwise,
    backend: page.backend,
    seconds,
  };
  setState('done');
}

async function guarded(task) {
  try {
    await task();
  } catch (err) {
    showError(err instanceof GeneratorFileError ? err.message : `Error: ${err?.message ?? err}`);
    if (err instanceof GeneratorFileError) $('model-info').textContent = 'No generator loaded.';
  }
}

let queue = Promise.resolve();
/** Run `task` after the tasks before it: a click while a model loads waits for it. */
function enqueue(task) {
  page.pending += 1;
  queue = queue.then(() => guarded(task)).finally(() => {
    page.pending -= 1;
  });
}

const reload = () => enqueue(() => loadModel(fields.model.value.trim(), fields.backend.value));
form.addEventListener('submit', (event) => {
  event.preventDefault();
  enqueue(generate);
});
fields.backend.addEventListener('change', reload);
fields.model.addEventListener('change', reload);

const params = new URLSearchParams(location.search);
for (const [name, input] of Object.entries(fields)) {
  if (params.has(name)) input.value = params.get(name);
}
reload();
if (params.get('run') === '1') enqueue(generate);
