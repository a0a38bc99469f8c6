// Runs the benchmark page (web/bench/) in headless Chromium on the CPU path (WebGPU off) and on
// WebGPU, side by side, and prints embeddings/s per batch size with the WebGPU/CPU ratio.
//   npm --prefix web run bench [-- --devices cpu,webgpu --batches 1,8,32 --seconds 3 --json out.json]
// Speed figures only: nothing here is asserted. On a machine without a GPU, WebGPU is
// Chromium's SwiftShader (a CPU emulation), far slower than the wasm CPU path.
import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pageResult } from '../test/chromium.mjs';
import { startServer } from '../test/server.mjs';

const { values: opts } = parseArgs({
  options: {
    devices: { type: 'string', default: 'cpu,webgpu' },
    batches: { type: 'string', default: '1,8,32' },
    seconds: { type: 'string', default: '3' },
    calls: { type: 'string', default: '3' },
    json: { type: 'string' },
  },
});
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const server = await startServer(root);
const results = [];
try {
  for (const device of opts.devices.split(',')) {
    const q = new URLSearchParams({ device, batches: opts.batches, seconds: opts.seconds, calls: opts.calls });
    const out = await pageResult(`${server.origin}/web/bench/?${q}`, 'bench', { webgpu: device !== 'cpu' });
    if (out.error) throw new Error(`${device}: ${out.error}`);
    console.log(`${out.device} (${out.deviceInfo}): model loaded in ${out.loadSeconds.toFixed(2)} s`);
    for (const r of out.rows) {
      console.log(`  batch ${String(r.batch).padStart(2)}: ${r.embPerSecond.toFixed(1).padStart(8)} emb/s` +
        `  p50 ${r.p50Ms.toFixed(1)} ms  min ${r.minMs.toFixed(1)} ms  (${r.calls} calls, ${r.tokensPerText.toFixed(1)} tokens/text)`);
    }
    results.push(out);
  }
} finally {
  await server.close();
}
const cpu = results.find((r) => r.device === 'cpu');
const gpu = results.find((r) => r.device === 'webgpu');
if (cpu && gpu) {
  for (const g of gpu.rows) {
    const c = cpu.rows.find((r) => r.batch === g.batch);
    if (c) console.log(`batch ${g.batch}: WebGPU / CPU = ${(g.embPerSecond / c.embPerSecond).toFixed(3)}x`);
  }
}
if (opts.json) writeFileSync(opts.json, JSON.stringify({ chromium: process.env.CHROMIUM ?? '/usr/bin/chromium', results }, null, 2));
