#!/usr/bin/env node
// A static file server for the page, on this machine only: node serve.mjs DIR [--port 8000]
//
// It sends the headers that let onnxruntime-web use threads (cross-origin isolation: COOP and
// COEP), the right types for .mjs and .wasm, and no caching (a rebuilt model is picked up).

import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
  '.png': 'image/png',
};

/** Serve `dir` on http://host:port/ (port 0: any free port); resolves to { server, url }. */
export function serve(dir, { port = 8000, host = '127.0.0.1' } = {}) {
  const root = resolve(dir);
  const server = createServer((req, res) => {
    const headers = {
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cache-Control': 'no-store',
    };
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400, headers).end('bad request');
      return;
    }
    let file = resolve(join(root, path));
    if (file !== root && !file.startsWith(root + sep)) {
      res.writeHead(403, headers).end('forbidden');
      return;
    }
    try {
      if (statSync(file).isDirectory()) file = join(file, 'index.html');
      const size = statSync(file).size;
      res.writeHead(200, { ...headers, 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Content-Length': size });
      if (req.method === 'HEAD') res.end();
      else createReadStream(file).pipe(res);
    } catch {
      res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' }).end(`not found: ${path}`);
    }
  });
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: bound } = server.address();
      resolvePromise({ server, url: `http://${host}:${bound}/` });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { port: { type: 'string', default: '8000' }, host: { type: 'string', default: '127.0.0.1' } },
  });
  if (positionals.length !== 1) {
    process.stderr.write('usage: node serve.mjs DIR [--port 8000] [--host 127.0.0.1]\n');
    process.exit(2);
  }
  try {
    if (!statSync(positionals[0]).isDirectory()) throw new Error('not a folder');
  } catch {
    process.stderr.write(`serve.mjs: error: ${positionals[0]} is not a folder: build the page first (make web)\n`);
    process.exit(1);
  }
  serve(positionals[0], { port: Number(values.port), host: values.host }).then(
    ({ url }) => console.log(`serving ${positionals[0]} at ${url} (Ctrl-C stops)`),
    (err) => {
      process.stderr.write(`serve.mjs: error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
