// The benchmark page: loads the bundled model on one device, then for each batch size embeds
// `batch` sentences of the demo corpus per call, once untimed (kernels compiled, plan built),
// then until both `seconds` and `calls` are reached. Publishes `window.bench` when done
// ({ device, deviceInfo, loadSeconds, rows }) or `window.bench = { error }`.
import { load } from '../dist/index.js';

const params = new URLSearchParams(location.search);
const device = params.get('device') ?? 'auto';
const batches = (params.get('batches') ?? '1,8,32').split(',').map(Number).filter((b) => b > 0);
const seconds = Number(params.get('seconds') ?? 3);
const minCalls = Math.max(1, Number(params.get('calls') ?? 3));
const $ = (id) => document.getElementById(id);

function cell(row, text) {
  const td = document.createElement('td');
  td.textContent = text;
  row.append(td);
}

async function main() {
  const t0 = performance.now();
  const model = await load(new URL('../../models/all-MiniLM-L6-v2.wedge', import.meta.url), { device });
  const loadSeconds = (performance.now() - t0) / 1000;
  const corpus = (await (await fetch(new URL('../demo/corpus.txt', import.meta.url))).text())
    .split('\n').map((s) => s.trim()).filter(Boolean);
  const rows = [];
  for (const batch of batches) {
    $('status').textContent = `${model.device} (${model.deviceInfo}): batch ${batch}…`;
    const texts = Array.from({ length: batch }, (_, i) => corpus[i % corpus.length]);
    await model.embed(texts);
    const times = [];
    const start = performance.now();
    while (times.length < minCalls || performance.now() - start < seconds * 1000) {
      const t = performance.now();
      const out = await model.embed(texts);
      times.push(performance.now() - t);
      if (out.length !== batch) throw new Error(`asked for ${batch} embeddings, got ${out.length}`);
    }
    const total = times.reduce((a, b) => a + b, 0) / 1000;
    const sorted = [...times].sort((a, b) => a - b);
    const row = {
      batch,
      calls: times.length,
      embPerSecond: (batch * times.length) / total,
      p50Ms: sorted[Math.floor((sorted.length - 1) / 2)],
      minMs: sorted[0],
      tokensPerText: model.countTokens(texts).reduce((a, b) => a + b, 0) / batch,
    };
    rows.push(row);
    const tr = document.createElement('tr');
    cell(tr, String(batch));
    cell(tr, String(row.calls));
    cell(tr, row.embPerSecond.toFixed(1));
    cell(tr, row.p50Ms.toFixed(1));
    cell(tr, row.minMs.toFixed(1));
    cell(tr, row.tokensPerText.toFixed(1));
    $('rows').append(tr);
  }
  $('status').textContent = `${model.device} (${model.deviceInfo}), model loaded in ${loadSeconds.toFixed(2)} s`;
  window.bench = { device: model.device, deviceInfo: model.deviceInfo, loadSeconds, rows };
  model.dispose();
}

main().catch((e) => {
  $('error').textContent = String(e?.stack ?? e);
  window.bench = { error: String(e?.message ?? e) };
});
