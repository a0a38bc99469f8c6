// Embeds in a module Web Worker: the package must not need the DOM.
import { load } from '/web/dist/index.js';

self.onmessage = async (e) => {
  try {
    const model = await load(e.data.url, { device: e.data.device, cache: false });
    const vectors = await model.embed(e.data.texts);
    self.postMessage({ device: model.device, vectors: vectors.map((v) => Array.from(v)) });
    model.dispose();
  } catch (err) {
    self.postMessage({ error: String(err?.message ?? err) });
  }
};
