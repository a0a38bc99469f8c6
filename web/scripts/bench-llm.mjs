// Runs the language-model benchmark page (web/bench/llm.html) in headless Chromium: wedge on
// the wasm CPU backend (and on WebGPU with --webgpu) beside wllama (llama.cpp in wasm, one
// thread) on the same GGUF file, and prints prompt tok/s, decode tok/s and time to first token
// with the wedge/wllama ratios. Speed figures only: nothing here is asserted.
//   npm --prefix web run bench:llm [-- --engines wedge-cpu,wedge-cpu-fast,wllama-cpu --tokens 64 --runs 2 --json out.json]
// `--profile N` prints the N functions with the most self time (names: build with `-- --names`).
// The GGUF file: WEDGE_SMOLLM2_GGUF, else models/fetch.sh smollm2.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pageResult } from '../test/chromium.mjs';
import { GGUF_URL, startServer } from '../test/server.mjs';
import { ensurePeers } from './peers.mjs';

const { values: opts } = parseArgs({
  options: {
    engines: { type: 'string', default: 'wedge-cpu,wedge-cpu-fast,wllama-cpu' },
    tokens: { type: 'string', default: '64' },
    'prompt-tokens': { type: 'string', default: '128' },
    runs: { type: 'string', default: '2' },
    json: { type: 'string' },
    profile: { type: 'string' },
  },
});
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
if (opts.engines.includes('wllama')) ensurePeers();
const gguf = process.env.WEDGE_SMOLLM2_GGUF
  ?? execFileSync('bash', [resolve(root, 'models', 'fetch.sh'), 'smollm2'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
const server = await startServer(root, 0, { gguf });
const q = new URLSearchParams({ engines: opts.engines, tokens: opts.tokens, prompt_tokens: opts['prompt-tokens'], runs: opts.runs, model: GGUF_URL });
let out;
try {
  out = await pageResult(`${server.origin}/web/bench/llm.html?${q}`, 'llmBench', { webgpu: opts.engines.includes('webgpu'), profile: Number(opts.profile ?? 0) });
} finally {
  await server.close();
}
if (out.error) throw new Error(out.error);
console.log(`${out.userAgent}\n${gguf}: ${out.tokens} decode tokens, prompts of about ${out.promptTokens} tokens, best of ${opts.runs}`);
console.log('| engine | load s | prompt tok/s | decode tok/s | chat TTFT ms |');
console.log('|---|---|---|---|---|');
for (const r of out.rows) {
  console.log(`| ${r.engine} | ${r.loadS.toFixed(2)} | ${r.promptTokS.toFixed(1)} | ${r.decodeTokS.toFixed(1)} | ${r.chatTtftMs.toFixed(0)} |`);
}
const peer = out.rows.find((r) => r.engine.startsWith('wllama'));
for (const r of out.rows.filter((r) => r !== peer && peer)) {
  console.log(`${r.engine} / ${peer.engine}: prompt ${(r.promptTokS / peer.promptTokS).toFixed(2)}x, ` +
    `decode ${(r.decodeTokS / peer.decodeTokS).toFixed(2)}x, chat TTFT ${(peer.chatTtftMs / r.chatTtftMs).toFixed(2)}x faster`);
}
if (opts.json) writeFileSync(opts.json, JSON.stringify({ gguf, ...out }, null, 2));
