#!/usr/bin/env node
// Drive the page in headless Chromium: node test/drive.mjs JOB.json RESULT.json
//
// JOB.json: { "site": DIR (built by build.mjs), "chromium": "/usr/bin/chromium",
//   "pages": [ { "query": {model, backend, ...}, "software_webgpu": false, "actions": [ ACTION, ... ] } ] }
// Each page is opened from DIR, served on 127.0.0.1 (any free port); once its model is loaded or
// refused, each ACTION runs in turn and the page is recorded after it (its state, messages,
// result: images, float32 samples, time per step; the pixels of every canvas it drew):
//   { "name": N, "model": URL }                     type a model file, load it
//   { "name": N, "seed": S, "count": C, "repeats": R }  type them, press Generate R times (default 1)
//   { "name": N, "screenshot": PATH }               a screenshot of the whole page
// RESULT.json gets one record per action (and "load" per page). Each page gets its own browser,
// started with CHROMIUM_ARGS, or with SOFTWARE_WEBGPU instead of --disable-gpu where the page
// asks for "software_webgpu".
// tests/test_examples_js.py and benchmarks/web_wasm.py run it.

import { readFileSync, writeFileSync } from 'node:fs';

import { chromium } from 'playwright-core';

import { serve } from '../serve.mjs';

// the machine's network is closed: no background connections, no component updates, no GPU
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];
/** Instead of --disable-gpu: WebGPU on SwiftShader, Chromium's software Vulkan (slow, CPU only). */
const SOFTWARE_WEBGPU = ['--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--use-webgpu-adapter=swiftshader', '--use-angle=swiftshader'];

/** What the page shows now. */
function snapshot(page) {
  return page.evaluate(() => {
    const p = window.refdiffPage;
    const text = (id) => document.getElementById(id).textContent;
    const visible = (id) => !document.getElementById(id).hidden;
    // the pixels the page drew, as RGBA, one array per canvas
    const canvases = [...document.querySelectorAll('#images canvas')].map((c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return { width: c.width, height: c.height, rgba: Array.from(d) };
    });
    return {
      state: p.state,
      error: visible('error') ? text('error') : null,
      note: visible('note') ? text('note') : null,
      model_info: text('model-info'),
      status: text('status'),
      timing: text('timing'),
      model: p.model,
      result: p.state === 'done' ? p.result : null,
      backend: p.backend,
      cross_origin_isolated: self.crossOriginIsolated,
      canvases,
    };
  });
}

const [jobPath, resultPath] = process.argv.slice(2);
if (!jobPath || !resultPath) {
  process.stderr.write('usage: node test/drive.mjs JOB.json RESULT.json\n');
  process.exit(2);
}
const job = JSON.parse(readFileSync(jobPath, 'utf8'));
const { server, url } = await serve(job.site, { port: 0 });
const results = [];
let version = null;
try {
  for (const spec of job.pages) {
    const args = spec.software_webgpu
      ? [...CHROMIUM_ARGS.filter((a) => a !== '--disable-gpu'), ...SOFTWARE_WEBGPU]
      : CHROMIUM_ARGS;
    // playwright gives every launch a new, empty --user-data-dir and adds --headless
    const browser = await chromium.launch({ executablePath: job.chromium ?? '/usr/bin/chromium', args });
    version = browser.version();
    const context = await browser.newContext({ viewport: { width: 1000, height: 760 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    const log = [];
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    const timeout = (job.timeout_s ?? 120) * 1000;
    // the page queues its tasks (load, generate); an action is over when none is left
    const settled = () => page.waitForFunction(() => window.refdiffPage?.pending === 0, null, { timeout });
    const query = new URLSearchParams(spec.query ?? {}).toString();
    let name = 'load';
    try {
      await page.goto(`${url}${query ? `?${query}` : ''}`);
      await settled();
      results.push({ name, ...(await snapshot(page)), log: log.splice(0) });
      for (const action of spec.actions ?? []) {
        name = action.name;
        const record = { name, runs: [] };
        if (action.model !== undefined) {
          await page.fill('#model', action.model);
          await page.dispatchEvent('#model', 'change');
          await settled();
        }
        if (action.seed !== undefined) {
          for (let r = 0; r < (action.repeats ?? 1); r += 1) {
            await page.fill('#seed', String(action.seed));
            await page.fill('#count', String(action.count ?? 16));
            await page.click('#generate');
            await settled();
            record.runs.push(await page.evaluate(() => window.refdiffPage.result?.stepMs ?? null));
          }
        }
        if (action.screenshot) {
          await page.screenshot({ path: action.screenshot, fullPage: true });
          record.screenshot = action.screenshot;
        }
        results.push({ ...record, ...(await snapshot(page)), log: log.splice(0) });
      }
    } catch (err) {
      results.push({ name, state: 'driver-error', driver_error: String(err?.message ?? err), log });
    }
    await browser.close();
  }
} finally {
  server.close();
}
writeFileSync(resultPath, JSON.stringify({ url, chromium: version, results }));
