// The language-model benchmark page: the same GGUF file on each engine named in `engines`,
// measured the same way, into window.llmBench = { rows: [...] } (or { error }).
import { load } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const MODEL = new URL(q.get('model') ?? '/models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href).href;
const engines = (q.get('engines') ?? 'wedge-cpu,wllama-cpu').split(',');
const TOKENS = Number(q.get('tokens') ?? 64);
const PROMPT_TOKENS = Number(q.get('prompt_tokens') ?? 128);
const RUNS = Number(q.get('runs') ?? 2);
const CHAT = [{ role: 'user', content: 'What is the capital of France?' }];
const STORY = 'Once upon a time, in a small village at the edge of a great forest, there lived';

// A long prompt, different per run so that no engine reuses a cached prefix.
function longPrompt(run) {
  const words = 'the quick brown fox jumps over a lazy dog while seven wizards quietly judge every move'.split(' ');
  const out = [`Story ${run + 1}:`];
  for (let i = 0; out.length < PROMPT_TOKENS * 0.8; i++) out.push(words[(i * 7 + run) % words.length]);
  return out.join(' ');
}

// Runs `stream(prompt, maxTokens, onPiece)` and returns the first piece's latency and the
// decode rate after it.
async function timed(stream, prompt, maxTokens) {
  const t0 = performance.now();
  let first = 0, last = 0, n = 0;
  await stream(prompt, maxTokens, () => {
    const now = performance.now();
    if (!first) first = now;
    last = now;
    n += 1;
  });
  return { ttftMs: first - t0, decodeTokS: n > 1 ? (n - 1) / ((last - first) / 1000) : 0, tokens: n };
}

async function wedgeEngine(device, fast) {
  const t0 = performance.now();
  const llm = await load(MODEL, { device, ctx: 1024, fast });
  const loadS = (performance.now() - t0) / 1000;
  return {
    name: `wedge ${llm.device}${fast ? ' (fast)' : ''}`, loadS,
    async prefill(prompt) {
      await llm.resetChat();
      const t0 = performance.now();
      await llm.generate(prompt, { maxTokens: 1, temperature: 0, ignoreEos: true });
      return { ms: performance.now() - t0, n: await llm.countTokens(prompt) };
    },
    async stream(prompt, maxTokens, onPiece) {
      await llm.resetChat();
      await llm.generate(prompt, { maxTokens, temperature: 0, ignoreEos: true, onToken: onPiece });
    },
    async chat(onPiece) {
      await llm.resetChat();
      for await (const c of await llm.chat.completions.create({ messages: CHAT, max_tokens: 2, temperature: 0, stream: true })) {
        if (c.choices[0]?.delta.content) onPiece();
      }
    },
    dispose: () => llm.dispose(),
  };
}

async function wllamaEngine() {
  const { Wllama } = await import('./peers/node_modules/@wllama/wllama/esm/index.js');
  const wllama = new Wllama({ default: new URL('./peers/node_modules/@wllama/wllama/esm/wasm/wllama.wasm', import.meta.url).href },
    { suppressNativeLog: true, allowOffline: false });
  const t0 = performance.now();
  await wllama.loadModelFromUrl(MODEL, { n_threads: 1, n_gpu_layers: 0, n_ctx: 1024, n_batch: 512 });
  const loadS = (performance.now() - t0) / 1000;
  return {
    name: 'wllama cpu (1 thread)', loadS,
    async prefill(prompt) {
      const t0 = performance.now();
      const r = await wllama.createCompletion({ prompt, max_tokens: 1, temperature: 0, ignore_eos: true, cache_prompt: false });
      return { ms: performance.now() - t0, n: r.usage.prompt_tokens };
    },
    async stream(prompt, maxTokens, onPiece) {
      const s = await wllama.createCompletion({ prompt, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true, cache_prompt: false });
      for await (const c of s) if (c.choices?.[0]?.text) onPiece();
    },
    async chat(onPiece) {
      const s = await wllama.createChatCompletion({ messages: CHAT, max_tokens: 2, temperature: 0, stream: true, cache_prompt: false });
      for await (const c of s) if (c.choices?.[0]?.delta?.content) onPiece();
    },
    dispose: () => wllama.exit(),
  };
}

async function measure(engine) {
  const best = { promptTokS: 0, decodeTokS: 0, chatTtftMs: Infinity, tokens: 0 };
  for (let run = 0; run < RUNS; run++) {
    const p = await engine.prefill(longPrompt(run));
    best.promptTokS = Math.max(best.promptTokS, p.n / (p.ms / 1000));
    const d = await timed(engine.stream, STORY, TOKENS);
    best.decodeTokS = Math.max(best.decodeTokS, d.decodeTokS);
    best.tokens = d.tokens;
    const c = await timed((_, __, on) => engine.chat(on), null, 0);
    best.chatTtftMs = Math.min(best.chatTtftMs, c.ttftMs);
  }
  return best;
}

async function main() {
  const rows = [];
  for (const e of engines) {
    $('status').textContent = `running ${e}…`;
    const engine = e === 'wllama-cpu' ? await wllamaEngine() : await wedgeEngine(e.replace(/^wedge-|-fast$/g, ''), e.endsWith('-fast'));
    const m = await measure(engine);
    await engine.dispose();
    const row = { engine: engine.name, loadS: engine.loadS, ...m };
    rows.push(row);
    const tr = document.createElement('tr');
    for (const v of [row.engine, row.loadS.toFixed(2), row.promptTokS.toFixed(1), row.decodeTokS.toFixed(1), row.chatTtftMs.toFixed(0), row.tokens]) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.append(td);
    }
    $('rows').append(tr);
  }
  $('status').textContent = 'done';
  window.llmBench = { rows, model: MODEL, tokens: TOKENS, promptTokens: PROMPT_TOKENS, userAgent: navigator.userAgent };
}

main().catch((e) => {
  $('error').textContent = String(e?.stack ?? e);
  window.llmBench = { error: String(e?.message ?? e) };
});
