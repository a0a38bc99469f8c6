// Browser tests in Debian's headless Chromium, driven by playwright-core (see shared BROWSER.md):
// embeddings of the public texts on WebGPU (SwiftShader) and on the wasm CPU backend against
// the PyTorch reference, a Web Worker, the Cache Storage second load, damaged files, and every
// WGSL kernel variant compiled by Chromium's own WGSL compiler (Tint).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openTestPage } from './chromium.mjs';
import { startServer } from './server.mjs';
import { skip } from './skip.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MODEL = '/models/all-MiniLM-L6-v2.wedge';
// The bundled package is `auto` mixed precision: the bounds of the native tests for it.
const BOUNDS = { min: 0.99, mean: 0.997 };

const reference = readFileSync(join(root, 'tests', 'data', 'public.jsonl'), 'utf8')
  .trim().split('\n').map((l) => JSON.parse(l));

let server;
const browsers = [];

const openPage = (webgpu) => openTestPage(browsers, server.origin, webgpu);

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

function checkAccuracy(vectors, label) {
  const cos = vectors.map((v, i) => cosine(v, reference[i].embedding));
  const min = Math.min(...cos), mean = cos.reduce((a, b) => a + b, 0) / cos.length;
  console.log(`${label}: cosine to PyTorch min ${min.toFixed(6)} mean ${mean.toFixed(6)}`);
  assert.ok(min >= BOUNDS.min && mean >= BOUNDS.mean, `${label}: min ${min}, mean ${mean}`);
}

// Embeds the first `count` public texts in one call (the package runs texts of like length
// together); reports the seconds spent embedding.
async function embedPublic(page, device, count) {
  const out = await page.evaluate(async ({ url, device, texts }) => {
    const model = await window.wedge.load(url, { device, cache: false });
    const vectors = [];
    const t0 = performance.now();
    for (const v of await model.embed(texts)) vectors.push(Array.from(v));
    const seconds = (performance.now() - t0) / 1000;
    const out = { device: model.device, info: model.deviceInfo, dim: model.dim, vectors, seconds };
    model.dispose();
    return out;
  }, { url: MODEL, device, texts: reference.slice(0, count).map((r) => r.text) });
  assert.equal(out.vectors.length, count);
  console.log(`${device}: ${count} texts in ${out.seconds.toFixed(1)} s (first calls, kernels compiled on the way)`);
  return out;
}

before(async () => {
  server = await startServer(root);
});

after(async () => {
  for (const b of browsers) await b.close();
  await server?.close();
});

// SwiftShader runs the kernels on the CPU: all 32 public texts take about a minute here (the one
// of 250 tokens runs on its own rather than padding 31 others to its length).
test('WebGPU: public texts match PyTorch', { timeout: 900_000 }, async () => {
  const page = await openPage(true);
  assert.ok(await page.evaluate(() => window.wedge.hasWebGPU()), 'no navigator.gpu with --enable-unsafe-webgpu');
  const out = await embedPublic(page, 'webgpu', Number(process.env.WEDGE_WEBGPU_TEXTS ?? reference.length));
  assert.equal(out.device, 'webgpu');
  console.log(`WebGPU adapter: ${out.info}`);
  checkAccuracy(out.vectors, 'webgpu');
});

// naga validates every variant natively; browsers compile WGSL with their own compiler, which
// differs in what it accepts (uniformity, directives, language features). Each module (family x
// template set) is compiled, and each entry point built with override constants that cover every
// value of every constant, under WebGPU's default limits (256 invocations, 16 KiB of workgroup
// memory). Modules that need a feature or language extension the adapter lacks are skipped and
// reported: wedge never builds them there either.
test('every WGSL kernel variant compiles in the browser', { timeout: 600_000 }, async () => {
  const modules = JSON.parse(execFileSync('cargo', ['run', '-q', '-p', 'wedge-shaders', '--example', 'variants'],
    { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 }));
  // Per entry point of a family's first module, a few constant sets that together hold every
  // value of every constant; the family's other template sets (sizes only) build one set each.
  // (SwiftShader compiles a pipeline in about half a second.)
  const families = new Set();
  for (const m of modules) {
    const family = m.name.split('[')[0];
    const first = !families.has(family);
    families.add(family);
    for (const [entry, combos] of Object.entries(m.entries)) {
      const seen = new Set();
      m.entries[entry] = first ? combos.filter((c) => {
        const fresh = Object.entries(c).some(([k, v]) => !seen.has(`${k}=${v}`));
        for (const [k, v] of Object.entries(c)) seen.add(`${k}=${v}`);
        return fresh;
      }) : combos.slice(0, 1);
    }
  }
  const page = await openPage(true);
  const out = await page.evaluate(async (modules) => {
    const adapter = await navigator.gpu.requestAdapter();
    const wanted = new Set(modules.flatMap((m) => m.features));
    const requiredFeatures = [...wanted].filter((f) => adapter.features.has(f));
    const device = await adapter.requestDevice({ requiredFeatures });
    const dot4 = navigator.gpu.wgslLanguageFeatures?.has('packed_4x8_integer_dot_product') ?? false;
    const info = adapter.info ?? {};
    const adapterName = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed';
    const res = { pipelines: 0, modules: 0, skipped: [], errors: [], adapter: adapterName };
    for (const m of modules) {
      const lacking = m.features.filter((f) => !device.features.has(f));
      if (m.name.startsWith('qweight_a8') && !dot4) lacking.push('packed_4x8_integer_dot_product');
      if (lacking.length) { res.skipped.push({ name: m.name, lacking }); continue; }
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ label: m.name, code: m.source });
      const info = await module.getCompilationInfo();
      for (const msg of info.messages.filter((x) => x.type === 'error')) {
        res.errors.push(`${m.name}:${msg.lineNum}:${msg.linePos}: ${msg.message}`);
      }
      const scoped = await device.popErrorScope();
      if (scoped) res.errors.push(`${m.name}: ${scoped.message}`);
      res.modules++;
      for (const [entryPoint, sets] of Object.entries(m.entries)) {
        for (const constants of sets) {
          try {
            await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint, constants } });
            res.pipelines++;
          } catch (e) {
            res.errors.push(`${m.name}.${entryPoint} ${JSON.stringify(constants)}: ${e.message}`);
          }
        }
      }
    }
    device.destroy();
    return res;
  }, modules);
  console.log(`${out.modules} modules, ${out.pipelines} pipelines compiled; skipped: ` +
    (out.skipped.map((m) => `${m.name} (no ${m.lacking.join(', ')})`).join('; ') || 'none'));
  const byLack = new Map();
  for (const m of out.skipped) {
    const key = m.lacking.join(', ');
    byLack.set(key, [...(byLack.get(key) ?? []), m.name.split('[')[0]]);
  }
  for (const [lack, names] of byLack) {
    skip(`Chromium compiling the WGSL modules that need ${lack}`,
      `the adapter (${out.adapter}) has no ${lack}: ${names.length} modules of ${[...new Set(names)].join(', ')}`);
  }
  assert.deepEqual(out.errors, []);
  assert.ok(out.modules >= modules.length - out.skipped.length && out.pipelines > 40, JSON.stringify(out));
});

test('without WebGPU, auto falls back to the wasm CPU backend with the same results', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  const out = await embedPublic(page, 'auto', reference.length);
  assert.equal(out.device, 'cpu');
  checkAccuracy(out.vectors, 'cpu');
  const err = await page.evaluate(() => window.wedge.load('/models/all-MiniLM-L6-v2.wedge', { device: 'webgpu' })
    .then(() => 'loaded', (e) => String(e.message)));
  assert.match(err, /WebGPU/);
});

test('a Web Worker embeds too', { timeout: 300_000 }, async () => {
  const page = await openPage(false);
  const texts = reference.slice(0, 2).map((r) => r.text);
  const out = await page.evaluate(async ({ url, texts }) => {
    const w = new Worker('/web/test/pages/worker.js', { type: 'module' });
    const reply = await new Promise((ok) => { w.onmessage = (e) => ok(e.data); w.postMessage({ url, texts, device: 'cpu' }); });
    w.terminate();
    return reply;
  }, { url: MODEL, texts });
  assert.equal(out.error, undefined, out.error);
  assert.equal(out.device, 'cpu');
  for (let i = 0; i < texts.length; i++) assert.ok(cosine(out.vectors[i], reference[i].embedding) > 0.99);
  // the package's own worker and page-side proxy: the same API, the same vectors
  const proxied = await page.evaluate(async ({ url, texts }) => {
    const m = await window.wedge.load(url, { device: 'cpu', worker: true, cache: false });
    const vectors = (await m.embed(texts)).map((v) => Array.from(v));
    const r = { kind: m.kind, dim: m.dim, vectors, counts: await m.countTokens(texts) };
    m.dispose();
    return r;
  }, { url: MODEL, texts });
  assert.equal(proxied.kind, 'embedding');
  assert.equal(proxied.dim, 384);
  assert.deepEqual(proxied.vectors, out.vectors);
  assert.equal(proxied.counts.length, texts.length);
});

test('a second load comes from Cache Storage, not the network', { timeout: 300_000 }, async () => {
  const page = await openPage(false);
  const before = server.counts.get(MODEL) ?? 0;
  const progress = await page.evaluate(async (url) => {
    const seen = [];
    const a = await window.wedge.load(url, { device: 'cpu', onProgress: (l, t) => seen.push([l, t]) });
    const digest = a.digest;
    a.dispose();
    const b = await window.wedge.load(url, { device: 'cpu' });
    const same = b.digest === digest;
    const [v] = await b.embed(['cached']);
    b.dispose();
    return { seen: seen.length, last: seen.at(-1), same, dim: v.length };
  }, MODEL);
  assert.equal((server.counts.get(MODEL) ?? 0) - before, 1, 'the package was fetched twice');
  assert.ok(progress.seen >= 1 && progress.last[0] === progress.last[1], JSON.stringify(progress));
  assert.ok(progress.same);
  assert.equal(progress.dim, 384);
});

test('damaged or wrong files give a clear error, not a hang', { timeout: 120_000 }, async () => {
  const page = await openPage(false);
  const cases = [
    ['/bad/flipped.wedge', /checksum|corrupt/i],
    ['/bad/truncated.wedge', /truncat|past the end|length/i],
    ['/bad/not-a-model.wedge', /not a \.wedge file/],
    ['/models/missing.wedge', /HTTP 404/],
  ];
  for (const [url, want] of cases) {
    const msg = await page.evaluate((url) => window.wedge.load(url, { device: 'cpu', cache: false })
      .then(() => 'loaded', (e) => `${e.constructor.name}: ${e.message}`), url);
    assert.match(msg, want, `${url}: ${msg}`);
    assert.match(msg, /^Error/, `${url}: not an Error: ${msg}`);
  }
  const bad = await page.evaluate(() => window.wedge.load(new ArrayBuffer(10), { device: 'cpu' })
    .then(() => 'loaded', (e) => e.message));
  assert.match(bad, /truncated/);
});

test('the demo page loads, indexes its corpus and answers a query', { timeout: 600_000 }, async () => {
  const page = await openPage(false);
  await page.goto(`${server.origin}/web/demo/?device=auto`);
  await page.waitForFunction(() => window.demo?.ready !== undefined, null, { timeout: 300_000 });
  assert.equal(await page.evaluate(() => window.demo.error ?? null), null);
  await page.fill('#query', 'how do I get my money back?');
  await page.click('#go');
  await page.waitForSelector('#results li');
  const top = await page.$$eval('#results li', (lis) => lis.map((li) => li.textContent));
  assert.match(top[0], /refund|return/i, top.join('\n'));
  const weather = await page.evaluate(async () => (await window.demo.search('will it rain this weekend?')).results[0].text);
  assert.match(weather, /rain|sunny|weather|storm|forecast/i, weather);
  const facts = await page.$$eval('#facts dd', (dds) => dds.map((d) => d.textContent));
  console.log(`demo: ${facts.join(' | ')}`);
  if (process.env.WEDGE_SCREENSHOT) await page.screenshot({ path: process.env.WEDGE_SCREENSHOT, fullPage: true });
});

test('the benchmark page measures every batch size it is given', { timeout: 300_000 }, async () => {
  const page = await openPage(false);
  await page.goto(`${server.origin}/web/bench/?device=cpu&batches=1,3&seconds=0&calls=2`);
  await page.waitForFunction(() => window.bench !== undefined, null, { timeout: 240_000 });
  const out = await page.evaluate(() => window.bench);
  assert.equal(out.error, undefined, out.error);
  assert.equal(out.device, 'cpu');
  assert.deepEqual(out.rows.map((r) => [r.batch, r.calls]), [[1, 2], [3, 2]]);
  for (const r of out.rows) assert.ok(r.embPerSecond > 0 && r.p50Ms > 0 && r.tokensPerText > 2, JSON.stringify(r));
  assert.equal(await page.$$eval('#rows tr', (trs) => trs.length), 2);
});
