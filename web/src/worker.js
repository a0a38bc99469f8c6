// The worker side of `load(source, { worker: true })`: this module runs in a module Web Worker,
// loads one model there and answers the page-side proxy (proxy.js). Messages from the page:
// `{ id, op, ... }`; answers: `{ id, started }` once a stream has begun, `{ id, item }` per
// streamed chunk or token, `{ id, progress }` while loading, then `{ id, done, value }` or
// `{ id, error }`. `interrupt` is handled as soon as it arrives: generation yields to the
// worker's event loop between steps.
import { load } from './index.js';

let model = null;

const ops = {
  async load({ source, options }, send) {
    if (model) throw new Error('this worker already holds a model');
    model = await load(source, { ...options, worker: false, onProgress: (loaded, total) => send({ progress: [loaded, total] }) });
    const llm = typeof model.generate === 'function';
    return llm
      ? { kind: 'llm', device: model.device, deviceInfo: model.deviceInfo, info: model.info, digest: model.digest, model: model.model }
      : { kind: 'embed', device: model.device, deviceInfo: model.deviceInfo, dim: model.dim, digest: model.digest };
  },
  async chat({ request }, send) {
    const out = await model.chat.completions.create(request);
    if (!request.stream) return out;
    send({ started: true });
    for await (const chunk of out) send({ item: chunk });
    return null;
  },
  async generate({ prompt, options }, send) {
    return model.generate(prompt, { ...options, onToken: (text, token) => send({ item: { text, ...token } }) });
  },
  countTokens: ({ input }) => model.countTokens(input),
  resetChat: () => model.resetChat(),
  embed: ({ texts }) => model.embed(texts),
  interrupt: () => model?.interrupt(),
  dispose() {
    model?.dispose();
    model = null;
  },
};

self.onmessage = async (e) => {
  const { id, op } = e.data;
  const send = (m, transfer) => self.postMessage({ id, ...m }, transfer ?? []);
  try {
    if (!ops[op]) throw new Error(`unknown operation ${op}`);
    if (!model && op !== 'load' && op !== 'dispose' && op !== 'interrupt') throw new Error('no model is loaded');
    const value = await ops[op](e.data, send);
    // vectors go back without a copy
    const transfer = op === 'embed' ? value.map((v) => v.buffer) : [];
    send({ done: true, value }, transfer);
  } catch (err) {
    send({ error: { name: err?.name ?? 'Error', message: String(err?.message ?? err) } });
  }
};
