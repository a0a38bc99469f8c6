// A static server on 127.0.0.1 for the browser tests: /web/, /models/ and /tests/data/ from the
// repository, the SmolLM2 GGUF file (when its path is given) at /models/<its name>, plus damaged
// packages and GGUF files under /bad/. Counts requests per path.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.jsonl': 'application/json',
  '.wedge': 'application/octet-stream', '.gguf': 'application/octet-stream', '.onnx': 'application/octet-stream', '.css': 'text/css', '.png': 'image/png', '.txt': 'text/plain',
};
const ROOTS = ['/web/', '/models/', '/tests/data/'];

/** The path under /models/ where the server puts a GGUF file given to it. */
export const GGUF_URL = '/models/SmolLM2-135M-Instruct.Q4_1.gguf';

// `mounts`: more folders to serve, as { '/url-prefix/': '/absolute/folder' } (the benchmarks'
// generated files).
export async function startServer(root, port = 0, { gguf = null, mounts = {} } = {}) {
  const counts = new Map();
  const model = await readFile(join(root, 'models', 'all-MiniLM-L6-v2.wedge'));
  const lm = gguf ? await readFile(gguf) : null;
  const badGguf = lm ? {
    '/bad/truncated.gguf': lm.subarray(0, Math.floor(lm.length * 0.6)),
    // the tensor count (bytes 8..16) says 2^40: no header of that size fits the file
    '/bad/bad-header.gguf': (() => { const b = Buffer.from(lm.subarray(0, 1 << 20)); b.writeBigUInt64LE(1n << 40n, 8); return b; })(),
    '/bad/not-a-model.gguf': Buffer.from('<!doctype html><html><body>not a model, an error page</body></html>'),
  } : {};
  const bad = {
    ...badGguf,
    // a flipped byte in the tensor data: the section checksum must catch it
    '/bad/flipped.wedge': (() => { const b = Buffer.from(model); b[b.length - 1000] ^= 0x40; return b; })(),
    '/bad/truncated.wedge': model.subarray(0, model.length >> 1),
    '/bad/not-a-model.wedge': Buffer.from('<!doctype html><html><body>not a model, an error page</body></html>'),
  };
  const server = createServer(async (req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      // a malformed %-escape is the client's mistake, not a reason to drop the connection
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end('bad request path');
      return;
    }
    if (path.endsWith('/')) path += 'index.html';
    counts.set(path, (counts.get(path) ?? 0) + 1);
    if (bad[path]) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bad[path].length });
      res.end(bad[path]);
      return;
    }
    if (lm && path === GGUF_URL) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': lm.length, 'cache-control': 'no-store' });
      res.end(lm);
      return;
    }
    const mount = Object.keys(mounts).find((m) => path.startsWith(m));
    const [base, rest] = mount ? [mounts[mount], path.slice(mount.length)] : [root, path];
    const file = normalize(join(base, rest));
    if ((!mount && !ROOTS.some((r) => path.startsWith(r))) || !file.startsWith(resolve(base))) {
      res.writeHead(404).end('not found');
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'content-length': body.length,
        'cache-control': 'no-store',
      });
      res.end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise((ok) => server.listen(port, '127.0.0.1', ok));
  return { origin: `http://127.0.0.1:${server.address().port}`, counts, close: () => new Promise((ok) => server.close(ok)) };
}
