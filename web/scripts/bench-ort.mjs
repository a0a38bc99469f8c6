// wedge's wasm CPU path beside onnxruntime-web's wasm backend on all-MiniLM-L6-v2 in one headless
// Chromium (web/bench/ort.html): 32 x 128-token batches (emb/s) and single public texts (p50 ms),
// with each engine's agreement with PyTorch. Makes the fp32 and int8 ONNX graphs from the same
// safetensors with benches/ort/export_onnx.py (Python with onnx and onnxruntime from PyPI, as
// benches/side-by-side.sh), and the token ids with benches/ort/browser_inputs.py.
//   npm --prefix web run bench:ort [-- --threads 1 --seconds 2 --json out.json]
// `--profile N` prints the N functions with the most self time over the whole page (run it with
// `--engines wedge` after `npm --prefix web run build -- --names` to see wedge's own).
// Speed figures only: nothing here is asserted.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pageResult } from '../test/chromium.mjs';
import { startServer } from '../test/server.mjs';
import { ensurePeers } from './peers.mjs';

const { values: opts } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '2' },
    engines: { type: 'string', default: 'wedge,ort_fp32,ort_int8' },
    json: { type: 'string' },
    profile: { type: 'string' },
  },
});
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
const work = process.env.WEDGE_BENCH_DIR ?? join(tmpdir(), 'wedge-ort-bench');
mkdirSync(work, { recursive: true });
const src = run('bash', ['models/fetch.sh', 'minilm']).trim();
try {
  run('python3', ['-c', 'import onnxruntime, onnx, safetensors, tokenizers, numpy']);
} catch {
  run('python3', ['-m', 'pip', 'install', '-q', 'onnxruntime==1.32.0', 'onnx==1.23.2', 'safetensors', 'tokenizers', 'numpy']);
}
if (!existsSync(join(work, 'minilm_int8.onnx'))) run('python3', ['benches/ort/export_onnx.py', src, join(work, 'minilm')]);
run('python3', ['benches/ort/browser_inputs.py', src, 'tests/data/public.jsonl', join(work, 'inputs.json')]);
ensurePeers();

const server = await startServer(root, 0, { mounts: { '/bench-data/': work } });
const q = new URLSearchParams({ threads: opts.threads, seconds: opts.seconds, engines: opts.engines });
let out;
try {
  out = await pageResult(`${server.origin}/web/bench/ort.html?${q}`, 'ortBench', { profile: Number(opts.profile ?? 0) });
} finally {
  await server.close();
}
if (out.error) throw new Error(out.error);
console.log(out.userAgent);
console.log('| engine | 32×128 emb/s | public p50 ms | min cosine to PyTorch |');
console.log('|---|---|---|---|');
for (const r of out.rows) {
  console.log(`| ${r.engine} | ${r.embPerSecond.toFixed(2)} | ${r.publicP50Ms.toFixed(1)} | ${r.minCosine.toFixed(4)} |`);
}
const wedge = out.rows.find((r) => r.engine.startsWith('wedge'));
for (const r of out.rows.filter((r) => r !== wedge && wedge)) {
  console.log(`wedge / ${r.engine}: ${(wedge.embPerSecond / r.embPerSecond).toFixed(2)}x emb/s at 32x128, ` +
    `${(r.publicP50Ms / wedge.publicP50Ms).toFixed(2)}x faster per public text`);
}
if (opts.json) writeFileSync(opts.json, JSON.stringify(out, null, 2));
