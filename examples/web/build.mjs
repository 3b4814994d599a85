#!/usr/bin/env node
// Assemble the static page: node build.mjs GENERATOR.onnx --out DIR
//
// DIR gets index.html, app.mjs, refdiff-generator.mjs, onnxruntime-web's module and WebAssembly
// files (ort/, from node_modules: run `npm ci` here first) and the generator as
// models/generator.onnx, with its step file (GENERATOR-step.onnx) as models/generator-step.onnx
// when there is one. Any static file server can then serve DIR; serve.mjs is one.

import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
// the WebAssembly build, and the build with WebGPU (plus the WebAssembly kernels, see app.mjs)
const ORT_FILES = [
  'ort.wasm.min.mjs',
  'ort-wasm-simd-threaded.mjs',
  'ort-wasm-simd-threaded.wasm',
  'ort.min.mjs',
  'ort-wasm-simd-threaded.jsep.mjs',
  'ort-wasm-simd-threaded.jsep.wasm',
];

function fail(message) {
  process.stderr.write(`build.mjs: error: ${message}\n`);
  process.exit(1);
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { out: { type: 'string' } } });
if (positionals.length !== 1 || !values.out) fail('usage: node build.mjs GENERATOR.onnx --out DIR');
const model = positionals[0];
if (!existsSync(model) || !statSync(model).isFile()) fail(`generator file ${JSON.stringify(model)} does not exist`);
const ortDist = join(here, 'node_modules', 'onnxruntime-web', 'dist');
if (!existsSync(ortDist)) fail(`${ortDist} is missing: run \`npm ci\` in ${here} first`);

const out = values.out;
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'ort'), { recursive: true });
mkdirSync(join(out, 'models'), { recursive: true });
copyFileSync(join(here, 'index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'app.mjs'), join(out, 'app.mjs'));
copyFileSync(join(here, '..', 'shared', 'refdiff-generator.mjs'), join(out, 'refdiff-generator.mjs'));
for (const name of ORT_FILES) copyFileSync(join(ortDist, name), join(out, 'ort', name));
copyFileSync(model, join(out, 'models', 'generator.onnx'));
const step = model.replace(/\.onnx$/i, '') + '-step.onnx';
const note = existsSync(step) ? ` and ${step}` : ' (no step file beside it: no progress per step)';
if (existsSync(step)) copyFileSync(step, join(out, 'models', 'generator-step.onnx'));
console.log(`built ${out}/ with ${model}${note}`);
