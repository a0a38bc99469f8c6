// The demo: load the bundled model, embed the corpus once, then rank it by cosine similarity to
// each query. `?device=cpu|webgpu|auto` picks the device (default auto).
import { load } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const MODEL = new URL('../../models/all-MiniLM-L6-v2.wedge', import.meta.url);
const device = new URLSearchParams(location.search).get('device') ?? 'auto';

async function main() {
  const t0 = performance.now();
  const model = await load(MODEL, {
    device,
    onProgress: (loaded, total) => { if (total) $('progress').value = loaded / total; },
  });
  $('load').textContent = `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  $('device').textContent = model.device;
  $('info').textContent = model.deviceInfo;

  const corpus = (await (await fetch(new URL('./corpus.txt', import.meta.url))).text())
    .split('\n').map((s) => s.trim()).filter(Boolean);
  const t1 = performance.now();
  const vectors = [];
  for (let i = 0; i < corpus.length; i += 16) {
    vectors.push(...await model.embed(corpus.slice(i, i + 16)));
    $('progress').value = vectors.length / corpus.length;
    $('index').textContent = `${vectors.length} / ${corpus.length} sentences`;
  }
  const indexSeconds = (performance.now() - t1) / 1000;
  $('index').textContent = `${corpus.length} sentences in ${indexSeconds.toFixed(1)} s ` +
    `(${(corpus.length / indexSeconds).toFixed(1)} sentences/s)`;

  // The vectors are L2-normalized by the model, so a dot product is the cosine.
  async function search(query, k = 5) {
    const start = performance.now();
    const [q] = await model.embed([query]);
    const scored = vectors.map((v, i) => {
      let dot = 0;
      for (let j = 0; j < v.length; j++) dot += v[j] * q[j];
      return { text: corpus[i], score: dot };
    });
    scored.sort((a, b) => b.score - a.score);
    const ms = performance.now() - start;
    return { results: scored.slice(0, k), ms };
  }

  $('form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const query = $('query').value.trim();
    if (!query) return;
    const { results, ms } = await search(query);
    $('latency').textContent = `${ms.toFixed(1)} ms (embed + rank ${corpus.length})`;
    $('results').replaceChildren(...results.map((r) => {
      const li = document.createElement('li');
      const score = document.createElement('span');
      score.className = 'score';
      score.textContent = r.score.toFixed(3);
      li.append(score, r.text);
      return li;
    }));
  });
  $('query').disabled = false;
  $('go').disabled = false;
  $('query').focus();
  window.demo = { ready: true, search, device: model.device };
}

main().catch((e) => {
  $('error').textContent = `Could not start: ${e.message}`;
  window.demo = { ready: false, error: e.message };
});
