#!/usr/bin/env node
// Images from a refdiff generator file in Node.js: no Python, onnxruntime-node does the sampling.
//
//   node generate.mjs gen.onnx --seed 7 --n 16 --out samples.png
//
// writes the PNG grid `refdiff sample gen.onnx --seed 7 --n 16 --out samples.png` writes, with the
// same pixels (docs/web.md says how closely, measured). See --help.

import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { basename, dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import {
  GeneratorFileError,
  InputError,
  RefdiffGenerator,
  makeGrid,
  parseCount,
  parseSeed,
} from '../shared/refdiff-generator.mjs';

const PROG = 'generate.mjs';
const HELP = `usage: node ${PROG} GENERATOR [--seed S] [--n N] [--out FILE.png] [--nrow R]
                            [--batch-size B] [--npy FILE.npy] [--threads T] [--quiet]

Draw N images from a refdiff generator file (written by \`refdiff export MODEL --out gen.onnx
--sampler NAME --steps N\`) with onnxruntime-node, and write them as a PNG grid: the samples
0 … N-1 of the seed, the images \`refdiff sample GENERATOR --seed S --n N\` draws in Python.

arguments:
  GENERATOR         the generator file (.onnx; its step file is not needed)
  --seed S          noise seed, a whole number from 0 to 2**63 - 1 (default: 0)
  --n N             how many images (default: 16)
  --out FILE.png    the PNG grid to write (default: samples.png); folders are created
  --nrow R          images per grid row (default: a square-ish grid)
  --batch-size B    samples per onnxruntime call; bounds memory, never changes an image
                    (default: 64)
  --npy FILE.npy    also write the float32 samples [N, C, H, W] as a NumPy .npy file
  --threads T       onnxruntime intra-op threads (default: onnxruntime's choice)
  --quiet           print nothing but errors
  -h, --help        show this help

Every image is a pure function of (seed, its index): --batch-size changes nothing but the speed.
Exit status: 0 done, 1 a file problem (missing, not a generator, unwritable), 2 bad arguments.`;

class UsageError extends Error {}

function parse(argv) {
  // `--seed -1` as `--seed=-1`, so that a negative number gets the seed's message, not parseArgs'
  const valued = new Set(['--seed', '--n', '--nrow', '--batch-size', '--threads']);
  const args = argv.flatMap((a, i) => (valued.has(argv[i - 1]) && /^-[\d.]/.test(a) ? [] : valued.has(a) && /^-[\d.]/.test(argv[i + 1] ?? '') ? [`${a}=${argv[i + 1]}`] : [a]));
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        seed: { type: 'string', default: '0' },
        n: { type: 'string', default: '16' },
        out: { type: 'string', default: 'samples.png' },
        nrow: { type: 'string' },
        'batch-size': { type: 'string', default: '64' },
        npy: { type: 'string' },
        threads: { type: 'string' },
        quiet: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new UsageError(err.message.replace(/\s*\n\s*/g, ' '));
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true };
  if (positionals.length !== 1) {
    throw new UsageError(`give one generator file, got ${positionals.length} (${positionals.join(' ') || 'none'})`);
  }
  const out = values.out;
  if (!out.toLowerCase().endsWith('.png')) throw new UsageError(`--out must end in .png, got ${out}`);
  if (values.npy !== undefined && !values.npy.toLowerCase().endsWith('.npy')) {
    throw new UsageError(`--npy must end in .npy, got ${values.npy}`);
  }
  return {
    model: positionals[0],
    seed: parseSeed(values.seed),
    n: parseCount(values.n, { what: '--n' }),
    out,
    nrow: values.nrow === undefined ? undefined : parseCount(values.nrow, { what: '--nrow' }),
    batchSize: parseCount(values['batch-size'], { what: '--batch-size' }),
    npy: values.npy,
    threads: values.threads === undefined ? undefined : parseCount(values.threads, { what: '--threads', max: 1024 }),
    quiet: values.quiet,
  };
}

function readModel(path) {
  let info;
  try {
    info = statSync(path);
  } catch (err) {
    if (err.code === 'ENOENT') throw new GeneratorFileError(`generator file ${JSON.stringify(path)} does not exist`, 'missing');
    throw new GeneratorFileError(`generator file ${JSON.stringify(path)} cannot be read: ${err.message}`, 'missing');
  }
  if (!info.isFile()) throw new GeneratorFileError(`generator file ${JSON.stringify(path)} is not a file`, 'missing');
  if (info.size === 0) throw new GeneratorFileError(`generator file ${JSON.stringify(path)} is empty`, 'not-onnx');
  return new Uint8Array(readFileSync(path));
}

/** Create the missing folders of `dir` one by one (Node 20's mkdirSync(..., { recursive: true })
 * never returns for a path under /proc, where mkdir says ENOENT). */
function makeFolders(dir) {
  const missing = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) {
    missing.push(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing.reverse()) mkdirSync(d);
  if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a folder`);
}

/** Write `bytes` to `path` whole or not at all: a temporary name beside it, then a rename. */
function writeWhole(path, bytes) {
  const full = resolve(path);
  const tmp = `${dirname(full)}/.${basename(full)}.${process.pid}.tmp`;
  try {
    makeFolders(dirname(full));
    writeFileSync(tmp, bytes);
    renameSync(tmp, full);
  } catch (err) {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // no temporary was made
    }
    throw new Error(`cannot write ${path}: ${err.message}`);
  }
}

/** A NumPy .npy file (format 1.0) of float32 `data` with `shape`. */
function npyBytes(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const unpadded = 10 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, ...new TextEncoder().encode('NUMPY'), 1, 0, header.length & 0xff, header.length >> 8]);
  head.set(new TextEncoder().encode(header), 10);
  const le = new Uint8Array(data.buffer, data.byteOffset, data.byteLength); // x86 and arm: little-endian
  return Buffer.concat([head, le]);
}

async function main(argv) {
  const args = parse(argv);
  if (args.help) {
    console.log(HELP);
    return 0;
  }
  const bytes = readModel(args.model);
  const { default: ort } = await import('onnxruntime-node');
  const sessionOptions = { logSeverityLevel: 3 }; // the optional inputs x_T, noise: a warning per load
  if (args.threads !== undefined) sessionOptions.intraOpNumThreads = args.threads;
  const gen = await RefdiffGenerator.open(ort, bytes, { source: `generator file ${JSON.stringify(args.model)}`, name: args.model, sessionOptions });
  const [c, h, w] = gen.imageShape;
  // the images, the float32 samples and the grid (images upscaled as refdiff sample does)
  const scale = Math.max(1, Math.floor(32 / Math.max(h, w)));
  const need = args.n * c * (5 * h * w + (h * scale + 2) * (w * scale + 2));
  if (need > freemem()) {
    throw new InputError(`--n ${args.n} needs about ${(need / 2 ** 30).toFixed(1)} GiB for the images, ` +
      `${(freemem() / 2 ** 30).toFixed(1)} GiB are free: draw fewer at a time (the images of a seed ` +
      'do not depend on how they are split)');
  }
  if (!args.quiet) console.log(`${args.model}: generator, ${gen.describe()}; image shape [${gen.imageShape}]`);
  const t0 = performance.now();
  const result = await gen.generate(args.seed, args.n, {
    batchSize: args.batchSize,
    onProgress: ({ done, count }) => {
      if (!args.quiet && done < count) process.stderr.write(`  ${done} of ${count} samples\r`);
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const grid = makeGrid(result.images, result.shape, { nrow: args.nrow });
  const { PNG } = (await import('pngjs')).default;
  const colorType = grid.channels === 1 ? 0 : 2;
  const png = PNG.sync.write(
    { width: grid.width, height: grid.height, data: Buffer.from(grid.data.buffer) },
    { colorType, inputColorType: colorType, inputHasAlpha: false, bitDepth: 8 },
  );
  if (args.npy) writeWhole(args.npy, npyBytes(result.samples, result.shape));
  writeWhole(args.out, png);
  if (!args.quiet) {
    const extra = args.npy ? ` and ${args.npy} (float32 samples)` : '';
    console.log(`wrote ${args.out} (grid of ${args.n}, seed ${args.seed})${extra} in ${seconds.toFixed(2)} s`);
  }
  await gen.release();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    const usage = err instanceof UsageError || err instanceof InputError;
    process.stderr.write(`${PROG}: error: ${err.message}\n`);
    if (usage) process.stderr.write(`(node ${PROG} --help for usage)\n`);
    process.exit(usage ? 2 : 1);
  },
);
