// wedge and onnxruntime-web on all-MiniLM-L6-v2 in this page, the same workloads and protocol as
// the native side-by-side (2 warm-up calls, then at least 5 calls and `seconds`; median): a batch
// of 32 texts of 128 tokens, and each public text alone (p50). Pooling and normalization are
// included, tokenization is not (ORT gets ids, wedge gets texts it tokenizes: wedge pays for it).
// Query string: `threads` (ORT's, default 1), `seconds` (default 2), `engines`.
import { load } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const THREADS = Number(q.get('threads') ?? 1);
const SECONDS = Number(q.get('seconds') ?? 2);
const engines = (q.get('engines') ?? 'wedge,ort_fp32,ort_int8').split(',');

async function median(call) {
  for (let i = 0; i < 2; i++) await call();
  const times = [];
  const t0 = performance.now();
  while (times.length < 5 || performance.now() - t0 < SECONDS * 1000) {
    const s = performance.now();
    await call();
    times.push(performance.now() - s);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

async function wedgeEngine() {
  const model = await load('/models/all-MiniLM-L6-v2.wedge', { device: 'cpu', cache: false });
  return { name: 'wedge (bundled q8/q4_1 package)', embed: (cases) => model.embed(cases.map((c) => c.text)) };
}

async function ortEngine(kind) {
  const ort = await import('./peers/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs');
  ort.env.wasm.numThreads = THREADS;
  ort.env.wasm.wasmPaths = new URL('./peers/node_modules/onnxruntime-web/dist/', import.meta.url).href;
  const session = await ort.InferenceSession.create(`/bench-data/minilm_${kind}.onnx`, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  return {
    name: `onnxruntime-web ${ort.env.versions?.web ?? ''} ${kind} (${THREADS} thread${THREADS > 1 ? 's' : ''})`,
    async embed(cases) {
      const batch = cases.length, len = Math.max(...cases.map((c) => c.ids.length));
      const ids = new BigInt64Array(batch * len), mask = new BigInt64Array(batch * len);
      cases.forEach((c, i) => c.ids.forEach((id, j) => { ids[i * len + j] = BigInt(id); mask[i * len + j] = 1n; }));
      const shape = [batch, len];
      const out = await session.run({
        input_ids: new ort.Tensor('int64', ids, shape),
        attention_mask: new ort.Tensor('int64', mask, shape),
        token_type_ids: new ort.Tensor('int64', new BigInt64Array(batch * len), shape),
      });
      const h = out.last_hidden_state.data, dim = out.last_hidden_state.dims[2];
      return cases.map((c, i) => {
        const v = new Float32Array(dim);
        for (let j = 0; j < c.ids.length; j++) for (let d = 0; d < dim; d++) v[d] += h[(i * len + j) * dim + d];
        let norm = 0;
        for (let d = 0; d < dim; d++) norm += v[d] * v[d];
        norm = Math.sqrt(norm) || 1;
        for (let d = 0; d < dim; d++) v[d] /= norm;
        return v;
      });
    },
  };
}

async function main() {
  const inputs = await (await fetch('/bench-data/inputs.json')).json();
  const long = Array.from({ length: 32 }, () => inputs.long);
  const rows = [];
  for (const name of engines) {
    $('status').textContent = `running ${name}…`;
    const engine = name === 'wedge' ? await wedgeEngine() : await ortEngine(name.replace(/^ort_/, ''));
    const vectors = [];
    for (const c of inputs.public) vectors.push((await engine.embed([c]))[0]);
    const minCos = Math.min(...vectors.map((v, i) => cosine(v, inputs.public[i].reference)));
    const batchMs = await median(() => engine.embed(long));
    let i = 0;
    const publicMs = await median(() => engine.embed([inputs.public[i++ % inputs.public.length]]));
    const row = { engine: engine.name, embPerSecond: 32 / (batchMs / 1000), publicP50Ms: publicMs, minCosine: minCos };
    rows.push(row);
    const tr = document.createElement('tr');
    for (const v of [row.engine, row.embPerSecond.toFixed(2), row.publicP50Ms.toFixed(1), row.minCosine.toFixed(4)]) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.append(td);
    }
    $('rows').append(tr);
  }
  $('status').textContent = 'done';
  window.ortBench = { rows, threads: THREADS, userAgent: navigator.userAgent };
}

main().catch((e) => {
  $('error').textContent = String(e?.stack ?? e);
  window.ortBench = { error: String(e?.message ?? e) };
});
