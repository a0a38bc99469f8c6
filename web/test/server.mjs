// A static server on 127.0.0.1 for the browser tests: /web/, /models/ and /tests/data/ from the
// repository, plus damaged packages under /bad/. Counts requests per path.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.jsonl': 'application/json',
  '.wedge': 'application/octet-stream', '.css': 'text/css', '.png': 'image/png', '.txt': 'text/plain',
};
const ROOTS = ['/web/', '/models/', '/tests/data/'];

export async function startServer(root, port = 0) {
  const counts = new Map();
  const model = await readFile(join(root, 'models', 'all-MiniLM-L6-v2.wedge'));
  const bad = {
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
    const file = normalize(join(root, path));
    if (!ROOTS.some((r) => path.startsWith(r)) || !file.startsWith(resolve(root))) {
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
