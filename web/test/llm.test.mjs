// Language models in headless Chromium: SmolLM2's GGUF file (WEDGE_SMOLLM2_GGUF) greedy on the
// wasm CPU backend and on WebGPU (SwiftShader) against the native CPU backend's tokens (the
// `wedge generate` binary), the OpenAI chat stream, interrupt(), a Web Worker, the Cache
// Storage second load, damaged files and the chat demo.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openTestPage } from './chromium.mjs';
import { GGUF_URL, startServer } from './server.mjs';
import { skip } from './skip.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const gguf = process.env.WEDGE_SMOLLM2_GGUF;
const available = !!gguf && existsSync(gguf);
if (!available) {
  const why = gguf ? `WEDGE_SMOLLM2_GGUF=${gguf} is not a file` : 'WEDGE_SMOLLM2_GGUF is not set (models/fetch.sh smollm2)';
  if (process.env.WEDGE_REQUIRE_MODEL === '1') throw new Error(`the browser language-model tests need SmolLM2: ${why}`);
  skip('the browser language-model tests', why);
}
const maybe = available ? test : test.skip;

// Reference prompts: two chats rendered by llama.cpp's template, and a plain story opening.
const PROMPTS = [
  ...readFileSync(join(root, 'tests', 'data', 'smollm2', 'llamacpp_greedy.jsonl'), 'utf8')
    .trim().split('\n').map((l) => JSON.parse(l)).map((r) => ({ name: r.name, prompt: r.prompt })),
  { name: 'story', prompt: 'Once upon a time, in a small village,' },
];
const TOKENS = 24;
const QUESTION = [{ role: 'user', content: 'What is the capital of France?' }];

let server;
const browsers = [];

// Greedy token ids of the native CPU backend for `prompt`, from `wedge generate --json`: the
// binary at WEDGE_BIN (`cargo xtask test` gives the one its Rust tests built), else cargo's.
function nativeGreedy(prompt, tokens) {
  const args = ['generate', '--model', gguf, '--device', 'cpu', '--temperature', '0', '--max-tokens', String(tokens),
    '--ignore-eos', '--prompt', prompt, '--json'];
  const [cmd, full] = process.env.WEDGE_BIN ? [process.env.WEDGE_BIN, args] : ['cargo', ['run', '-q', '-p', 'wedge-cli', '--', ...args]];
  const out = execFileSync(cmd, full, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return out.trim().split('\n').map((l) => JSON.parse(l)).filter((t) => 'id' in t).map((t) => t.id);
}

const openPage = (webgpu) => openTestPage(browsers, server.origin, webgpu);

// Greedy ids for each prompt in the page, through generate() with onToken.
function browserGreedy(page, device, prompts, tokens) {
  return page.evaluate(async ({ url, device, prompts, tokens }) => {
    const llm = await window.wedge.load(url, { device, cache: false });
    const out = { device: llm.device, info: llm.info, runs: [] };
    for (const prompt of prompts) {
      await llm.resetChat();
      const ids = [];
      const t0 = performance.now();
      const text = await llm.generate(prompt, { maxTokens: tokens, temperature: 0, ignoreEos: true, onToken: (_, t) => ids.push(t.id) });
      out.runs.push({ ids, text, seconds: (performance.now() - t0) / 1000 });
    }
    llm.dispose();
    return out;
  }, { url: GGUF_URL, device, prompts, tokens });
}

before(async () => {
  server = await startServer(root, 0, { gguf: available ? gguf : null });
});

after(async () => {
  for (const b of browsers) await b.close();
  await server?.close();
});

maybe('wasm CPU: greedy tokens of the reference prompts equal the native CPU backend\'s', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await browserGreedy(page, 'auto', PROMPTS.map((p) => p.prompt), TOKENS);
  assert.equal(out.device, 'cpu');
  assert.equal(out.info.architecture, 'llama');
  assert.ok(out.info.formats['q4_1/g32'] > 0, JSON.stringify(out.info));
  PROMPTS.forEach((p, i) => {
    const want = nativeGreedy(p.prompt, TOKENS);
    const got = out.runs[i];
    console.log(`cpu ${p.name}: ${got.ids.length} tokens in ${got.seconds.toFixed(1)} s: ${JSON.stringify(got.text.slice(0, 60))}`);
    assert.deepEqual(got.ids, want, `${p.name}: the browser's greedy tokens differ from the native CPU backend's`);
  });
});

// SwiftShader runs the kernels on the CPU, about 1.7 s a token here (and 20 s of pipelines
// first): a short run of one prompt.
maybe('WebGPU (SwiftShader): the same greedy tokens, a short run', { timeout: 600_000 }, async () => {
  const page = await openPage(true);
  const prompt = PROMPTS.at(-1);
  const out = await browserGreedy(page, 'webgpu', [prompt.prompt], 4);
  assert.equal(out.device, 'webgpu');
  assert.deepEqual(out.runs[0].ids, nativeGreedy(prompt.prompt, 4));
});

maybe('chat streams OpenAI chunks in order, as the whole answer, with usage and cached tokens', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await page.evaluate(async ({ url, messages }) => {
    const llm = await window.wedge.load(url, { device: 'cpu', cache: false });
    const request = { messages, max_tokens: 12, temperature: 0 };
    const whole = await llm.chat.completions.create(request);
    const chunks = [];
    const stream = await llm.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 2 });
    for await (const c of stream) chunks.push(c);
    const errors = [];
    for (const bad of [{ messages: [] }, { messages, temperature: 7 }, { messages, n: 2 }, { messages, stop: 3 }]) {
      errors.push(await llm.chat.completions.create(bad).then(() => 'answered', (e) => `${e.constructor.name}: ${e.message}`));
    }
    const count = await llm.countTokens(messages);
    llm.dispose();
    return { whole, chunks, errors, count };
  }, { url: GGUF_URL, messages: QUESTION });
  const { whole, chunks } = out;
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(whole.choices[0].finish_reason));
  assert.equal(whole.usage.prompt_tokens, out.count);
  assert.match(whole.choices[0].message.content, /Paris/);
  // the stream: the role first, the text in order, finish_reason last, then the usage chunk
  const usage = chunks.at(-1);
  assert.deepEqual(usage.choices, []);
  const last = chunks.at(-2);
  assert.equal(last.choices[0].finish_reason, whole.choices[0].finish_reason);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  for (const c of chunks.slice(0, -2)) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.id, chunks[0].id);
    assert.equal(c.choices[0].finish_reason, null);
    assert.equal(c.choices[0].logprobs.content[0].top_logprobs.length, 2);
  }
  const streamed = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  assert.equal(streamed, whole.choices[0].message.content);
  assert.equal(usage.usage.completion_tokens, whole.usage.completion_tokens);
  // the same conversation again: its prompt comes from the cache
  assert.ok(usage.usage.prompt_tokens_details.cached_tokens >= out.count - 1, JSON.stringify(usage.usage));
  const want = [/`messages` is empty/, /`temperature` is 7/, /`n` is 2/, /`stop` must be/];
  out.errors.forEach((e, i) => assert.match(e, want[i]));
  for (const e of out.errors) assert.match(e, /^Error/);
});

// The integer kernels (16-bit activations): not the exact path's numbers, so no token-for-token
// check here (the kernels are checked bit for bit against their scalar twin in the wasm unit
// tests); the answer must still be right.
maybe('fast mode (the CPU integer kernels) answers too', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await page.evaluate(async ({ url, messages }) => {
    const llm = await window.wedge.load(url, { device: 'cpu', cache: false, fast: true });
    const r = await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
    const info = llm.info;
    llm.dispose();
    return { fast: info.fast, text: r.choices[0].message.content };
  }, { url: GGUF_URL, messages: QUESTION });
  assert.equal(out.fast, true);
  assert.match(out.text, /Paris/);
});

maybe('interrupt() stops within one step, and the model answers afterwards', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await page.evaluate(async ({ url, messages }) => {
    const llm = await window.wedge.load(url, { device: 'cpu', cache: false });
    const stream = await llm.chat.completions.create({ messages, max_tokens: 64, temperature: 0, ignore_eos: true, stream: true });
    let tokens = 0, after = 0, interrupted = false, finish = null;
    for await (const c of stream) {
      if (c.choices[0].finish_reason) { finish = c.choices[0].finish_reason; continue; }
      tokens += 1;
      if (interrupted) after += 1;
      if (tokens === 3) { llm.interrupt(); interrupted = true; }
    }
    // generate() with an AbortSignal, aborted from a token callback
    const ctrl = new AbortController();
    let seen = 0;
    const text = await llm.generate('Once upon a time, in a small village,', { maxTokens: 64, temperature: 0, signal: ctrl.signal, onToken: () => { seen += 1; if (seen === 2) ctrl.abort(); } });
    await llm.resetChat();
    const again = await llm.chat.completions.create({ messages, max_tokens: 4, temperature: 0 });
    llm.dispose();
    return { tokens, after, finish, seen, text, again: again.choices[0].message.content, cached: again.usage.prompt_tokens_details.cached_tokens };
  }, { url: GGUF_URL, messages: QUESTION });
  assert.ok(out.after <= 1, `${out.after} tokens came after interrupt()`);
  assert.equal(out.finish, 'abort');
  assert.ok(out.seen <= 3, `${out.seen} tokens with the signal aborted after 2`);
  assert.ok(out.again.length > 0);
  assert.equal(out.cached, 0, 'resetChat() kept the conversation');
});

maybe('a Web Worker chats while the page stays responsive', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await page.evaluate(async ({ url, messages }) => {
    const llm = await window.wedge.load(url, { device: 'cpu', worker: true, cache: false });
    let ticks = 0;
    const timer = setInterval(() => { ticks += 1; }, 10);
    const t0 = performance.now();
    let text = '';
    for await (const c of await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0, stream: true })) {
      text += c.choices[0]?.delta.content ?? '';
    }
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(timer);
    const whole = await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
    const pieces = [];
    await llm.generate('Once upon a time', { maxTokens: 4, temperature: 0, onToken: (t) => pieces.push(t) });
    const err = await llm.chat.completions.create({ messages: [] }).then(() => 'answered', (e) => e.message);
    const r = { kind: llm.kind, device: llm.device, text, whole: whole.choices[0].message.content, ticks, seconds, pieces, err, n: await llm.countTokens('hello world') };
    llm.dispose();
    return r;
  }, { url: GGUF_URL, messages: QUESTION });
  assert.equal(out.kind, 'language');
  assert.equal(out.device, 'cpu');
  assert.match(out.text, /Paris/);
  assert.equal(out.text, out.whole);
  assert.equal(out.pieces.length, 4);
  assert.match(out.err, /`messages` is empty/);
  assert.equal(out.n, 2);
  // a 10 ms timer fired through the generation: the page was never blocked for long
  assert.ok(out.ticks >= out.seconds * 100 * 0.5, `${out.ticks} ticks in ${out.seconds.toFixed(2)} s`);
});

maybe('a second load of the GGUF file comes from Cache Storage, not the network', { timeout: 300_000 }, async () => {
  const page = await openPage(false);
  const before = server.counts.get(GGUF_URL) ?? 0;
  const out = await page.evaluate(async (url) => {
    let last = null;
    const a = await window.wedge.load(url, { device: 'cpu', ctx: 256, onProgress: (l, t) => { last = [l, t]; } });
    const heap = window.wedge.wasmHeapBytes();
    const weights = a.info.weightBytes;
    const digest = a.digest;
    a.dispose();
    const b = await window.wedge.load(url, { device: 'cpu' });
    const r = { digest, same: b.digest === digest, last, heap, weights, text: await b.generate('Hello', { maxTokens: 2, temperature: 0 }) };
    b.dispose();
    return r;
  }, GGUF_URL);
  assert.equal((server.counts.get(GGUF_URL) ?? 0) - before, 1, 'the GGUF file was fetched twice');
  assert.ok(out.same && out.last[0] === out.last[1], JSON.stringify(out));
  const sha = execFileSync('sha256sum', [gguf], { encoding: 'utf8' }).split(' ')[0];
  assert.equal(out.digest, sha);
  // The file is read a tensor at a time from outside the wasm heap: the heap's high-water mark
  // holds the weights, a 256-position cache (12 MB) and the load's passing buffers, never a
  // full copy of the file beside the weights (which alone would pass the bound).
  const mb = (n) => (n / 2 ** 20).toFixed(1);
  console.log(`wasm heap after load: ${mb(out.heap)} MB for ${mb(out.weights)} MB of weights`);
  assert.ok(out.heap < out.weights + readFileSync(gguf).length, `${mb(out.heap)} MB`);
});

maybe('damaged GGUF files reject with an Error naming the problem', { timeout: 120_000 }, async () => {
  const page = await openPage(false);
  const cases = [
    ['/bad/truncated.gguf', /truncated|past (its|the) end/i],
    ['/bad/bad-header.gguf', /tensor|header|truncated/i],
    ['/bad/not-a-model.gguf', /neither a GGUF file nor a \.wedge package/],
  ];
  for (const [url, want] of cases) {
    const msg = await page.evaluate((url) => window.wedge.load(url, { device: 'cpu', cache: false })
      .then(() => 'loaded', (e) => `${e.constructor.name}: ${e.message}`), url);
    console.log(`${url}: ${msg}`);
    assert.match(msg, want, `${url}: ${msg}`);
    assert.match(msg, /^Error/, `${url}: not an Error: ${msg}`);
  }
  const kind = await page.evaluate(() => window.wedge.loadLanguageModel('/models/all-MiniLM-L6-v2.wedge', { device: 'cpu', cache: false })
    .then(() => 'loaded', (e) => e.message));
  assert.match(kind, /sentence-embedding package, not a language model/);
});

maybe('the chat demo streams an answer', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  await page.goto(`${server.origin}/web/demo/chat.html?device=cpu&max_tokens=24`);
  await page.waitForFunction(() => window.chat?.ready !== undefined, null, { timeout: 300_000 });
  assert.equal(await page.evaluate(() => window.chat.error ?? null), null);
  await page.fill('#prompt', 'What is the capital of France?');
  await page.click('#send');
  await page.waitForFunction(() => window.chat.turns > 0, null, { timeout: 300_000 });
  const answer = await page.$$eval('.assistant', (els) => els.at(-1).textContent);
  assert.match(answer, /Paris/, answer);
  const facts = await page.$$eval('#facts dd', (dds) => dds.map((d) => d.textContent));
  console.log(`chat demo: ${facts.join(' | ')}`);
  assert.ok(facts.every((f) => f && f !== '…'), facts.join(' | '));
  if (process.env.WEDGE_CHAT_SCREENSHOT) await page.screenshot({ path: process.env.WEDGE_CHAT_SCREENSHOT, fullPage: true });
});
