// The chat demo: load SmolLM2's GGUF file in a Web Worker (the page never blocks), then stream
// each answer as OpenAI chunks, with time to first token and tokens per second. The query string
// picks `device` (auto, cpu, webgpu), `model` (a GGUF URL), `max_tokens`, `fast=1` (the CPU's
// integer kernels) and `worker=0` (run on the page's own thread).
import { load } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODEL = new URL(params.get('model') ?? '../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url);
const device = params.get('device') ?? 'auto';
const maxTokens = Number(params.get('max_tokens') ?? 256);
const SYSTEM = { role: 'system', content: 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' };

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = role;
  div.textContent = text;
  $('log').append(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

async function main() {
  const t0 = performance.now();
  const llm = await load(MODEL, {
    device,
    worker: params.get('worker') !== '0',
    fast: params.get('fast') === '1',
    onProgress: (loaded, total) => { if (total) $('progress').value = loaded / total; },
  });
  $('load').textContent = `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  $('device').textContent = `${llm.device}${llm.info.fast ? ' (fast)' : ''} (${llm.info.architecture}, ${Object.keys(llm.info.formats).join(' + ')})`;
  $('info').textContent = llm.deviceInfo;
  $('progress').value = 1;
  let messages = [SYSTEM];
  const state = { ready: true, turns: 0, device: llm.device };
  window.chat = state;

  const busy = (on) => {
    $('prompt').disabled = on;
    $('send').disabled = on;
    $('reset').disabled = on;
    $('stop').disabled = !on;
  };

  $('form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = $('prompt').value.trim();
    if (!text) return;
    $('prompt').value = '';
    bubble('user', text);
    messages.push({ role: 'user', content: text });
    const out = bubble('assistant', '');
    busy(true);
    const start = performance.now();
    let first = 0;
    let answer = '';
    try {
      const stream = await llm.chat.completions.create({
        messages, stream: true, max_tokens: maxTokens, temperature: 0, stream_options: { include_usage: true },
      });
      for await (const chunk of stream) {
        const piece = chunk.choices[0]?.delta.content ?? '';
        if (piece && !first) {
          first = performance.now();
          $('ttft').textContent = `${(first - start).toFixed(0)} ms`;
        }
        answer += piece;
        out.textContent = answer;
        if (chunk.usage) {
          const decode = (performance.now() - first) / 1000;
          const n = chunk.usage.completion_tokens;
          $('speed').textContent = `${n > 1 ? ((n - 1) / decode).toFixed(1) : '–'} tokens/s ` +
            `(${n} tokens; prompt ${chunk.usage.prompt_tokens}, ${chunk.usage.prompt_tokens_details.cached_tokens} from the cache)`;
        }
      }
      messages.push({ role: 'assistant', content: answer });
      state.turns += 1;
    } catch (err) {
      $('error').textContent = err.message;
      messages.pop();
    } finally {
      busy(false);
      $('prompt').focus();
    }
  });
  $('stop').addEventListener('click', () => llm.interrupt());
  $('reset').addEventListener('click', async () => {
    await llm.resetChat();
    messages = [SYSTEM];
    $('log').replaceChildren();
  });
  busy(false);
  $('prompt').focus();
}

main().catch((e) => {
  $('error').textContent = `Could not start: ${e.message}`;
  window.chat = { ready: false, error: e.message };
});
