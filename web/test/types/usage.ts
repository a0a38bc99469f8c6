// Checked by `tsc --noEmit -p test/types` in `npm test`: the package's declarations
// (src/index.d.ts) describe the API as its users write it, for both kinds of model.
import { hasWebGPU, load, loadEmbedder, loadLanguageModel } from '../../src/index.js';
import type { ChatCompletion, ChatCompletionChunk, LanguageModel, Model } from '../../src/index.js';

export async function embeddings(): Promise<number> {
  const model = await load('/models/all-MiniLM-L6-v2.wedge', { onProgress: (loaded: number, total: number) => void [loaded, total] });
  const [a] = await model.embed(['hello world']);
  const counts: number[] = model.countTokens('hello');
  const also: Model = await loadEmbedder(new ArrayBuffer(8), { device: 'cpu', cache: false });
  model.dispose();
  return a.length + counts[0] + also.dim + (hasWebGPU() ? 1 : 0);
}

export async function chat(out: { textContent: string | null }): Promise<string> {
  const llm: LanguageModel = await load('/models/SmolLM2-135M-Instruct.Q4_1.gguf', { device: 'auto', ctx: 1024, fast: false });
  const messages = [{ role: 'user' as const, content: 'Hello!' }];
  const stream = await llm.chat.completions.create({ messages, stream: true, max_tokens: 64, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    out.textContent += c.choices[0]?.delta.content ?? '';
    if (c.usage) out.textContent += String(c.usage.prompt_tokens_details.cached_tokens);
  }
  const whole: ChatCompletion = await llm.chat.completions.create({ messages, temperature: 0, seed: 1, stop: ['\n'] });
  const reason: 'stop' | 'length' | 'abort' = whole.choices[0].finish_reason;
  const text = await llm.generate('Once upon a time, in a small village,', {
    maxTokens: 32, temperature: 0, onToken: (piece: string, token: { id: number; logprob: number }) => void [piece, token],
  });
  const n: number = await llm.countTokens(messages);
  llm.interrupt();
  // @ts-expect-error a language model does not embed
  await llm.embed(['x']);
  await llm.resetChat();
  const worker = await loadLanguageModel(new Uint8Array(4), { worker: true, signal: new AbortController().signal });
  const arch: string = worker.info.architecture + worker.kind + llm.device + Object.keys(llm.info.formats).join() + String(llm.info.fast);
  worker.dispose();
  llm.dispose();
  return whole.choices[0].message.content + reason + text + n + arch;
}

export async function either(bytes: ArrayBuffer): Promise<string> {
  const m = await load<Model | LanguageModel>(bytes);
  return m.kind === 'language' ? m.info.architecture : String(m.dim);
}
