// Language models in the browser: the OpenAI / WebLLM chat API over the wasm module's one
// conversation. Generation runs a token per step and yields to the page between steps, so the
// page stays responsive, `interrupt()` takes effect before the next step, and a stream's
// consumer sees each token as it comes.

/** Resolves after the event loop had a turn (a message, not a 4 ms-clamped timer). */
function nextTurn() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

let counter = 0;
function requestId(prefix) {
  counter += 1;
  const rand = Math.random().toString(36).slice(2, 10);
  return `${prefix}-${Date.now().toString(36)}${rand}${counter}`;
}

// The native option names of `generate()` and their OpenAI request fields.
const OPTION_FIELDS = {
  maxTokens: 'max_tokens', temperature: 'temperature', topP: 'top_p', topK: 'top_k', minP: 'min_p',
  seed: 'seed', stop: 'stop', presencePenalty: 'presence_penalty', frequencyPenalty: 'frequency_penalty',
  repetitionPenalty: 'repetition_penalty', logitBias: 'logit_bias', ignoreEos: 'ignore_eos',
};

function usageOf(summary) {
  return {
    prompt_tokens: summary.prompt_tokens,
    completion_tokens: summary.completion_tokens,
    total_tokens: summary.prompt_tokens + summary.completion_tokens,
    prompt_tokens_details: { cached_tokens: summary.cached_tokens },
  };
}

/** A loaded language model and its conversation. One generation runs at a time; later calls
 *  wait for it. */
export class LanguageModel {
  #inner;
  #info;
  #digest;
  #name;
  #busy = Promise.resolve();
  #interrupted = false;

  constructor(inner, digest, name) {
    this.#inner = inner;
    this.#info = JSON.parse(inner.info());
    this.#digest = digest;
    this.#name = name;
    /** OpenAI's chat API: `await llm.chat.completions.create({ messages, stream })`. */
    this.chat = { completions: { create: (request) => this.#create(request) } };
  }

  /** 'language' (a sentence-embedding `Model` says 'embedding'). */
  get kind() { return 'language'; }
  /** 'webgpu' or 'cpu'. */
  get device() { return this.#alive().device; }
  /** The WebGPU adapter, or why the CPU was chosen. */
  get deviceInfo() { return this.#alive().deviceInfo; }
  /** Architecture, sizes, context and weight formats. */
  get info() { return { ...this.#info, formats: { ...this.#info.formats } }; }
  /** The digest of the file (SHA-256 of a GGUF file, the header digest of a package). */
  get digest() { return this.#digest; }
  /** The name answers carry as `model` (the file name without its extension). */
  get model() { return this.#name; }

  /** Tokens of a text, or of a conversation under the chat template (the assistant's turn
   *  open, as a chat request counts them). */
  async countTokens(input) {
    const inner = this.#alive();
    if (typeof input === 'string') return inner.encode(input).length;
    if (Array.isArray(input)) return inner.chatPrompt(JSON.stringify(input)).length;
    throw new TypeError('countTokens() takes a string or an array of chat messages');
  }

  /** Continues `prompt` (plain text); `onToken(text, token)` sees each piece as it comes. */
  async generate(prompt, options = {}) {
    if (typeof prompt !== 'string') throw new TypeError('generate() takes a prompt string');
    const { onToken, signal, ...rest } = options;
    const request = { prompt };
    for (const [key, value] of Object.entries(rest)) request[OPTION_FIELDS[key] ?? key] = value;
    let text = '';
    const run = await this.#start(request, false, signal);
    try {
      for await (const token of run.tokens()) {
        text += token.text;
        if (token.text) onToken?.(token.text, { id: token.id, logprob: token.logprob });
      }
    } finally {
      run.end();
    }
    return text;
  }

  /** Stops the running generation before its next step; a stream then ends with
   *  `finish_reason: 'abort'`. */
  interrupt() {
    this.#interrupted = true;
  }

  /** Forgets the conversation (after the running generation, if any, ends). */
  async resetChat() {
    const inner = this.#alive();
    const release = await this.#lock();
    try {
      inner.reset();
    } finally {
      release();
    }
  }

  /** Frees the model's memory (GPU buffers included). */
  dispose() {
    if (this.#inner) {
      this.#interrupted = true;
      this.#inner.free();
      this.#inner = null;
    }
  }

  #alive() {
    if (!this.#inner) throw new Error('the model was disposed');
    return this.#inner;
  }

  async #lock() {
    const previous = this.#busy;
    let release;
    this.#busy = new Promise((resolve) => { release = resolve; });
    await previous;
    return release;
  }

  // Waits for the model, starts a generation and returns its token stream; `end()` finishes
  // it (whether read to the end or left) and lets the next caller in.
  async #start(request, chat, signal) {
    const release = await this.#lock();
    let started;
    try {
      started = JSON.parse(this.#alive().start(JSON.stringify(request), chat));
    } catch (e) {
      release();
      throw e;
    }
    this.#interrupted = false;
    const onAbort = () => this.interrupt();
    signal?.addEventListener('abort', onAbort);
    const inner = this.#inner;
    let summary = null;
    const self = this;
    return {
      started,
      async *tokens() {
        for (;;) {
          if (self.#interrupted || signal?.aborted) return;
          const t = await inner.next();
          if (t === undefined) return;
          yield JSON.parse(t);
          await nextTurn();
        }
      },
      end() {
        if (summary) return summary;
        signal?.removeEventListener('abort', onAbort);
        summary = self.#inner ? JSON.parse(inner.finish()) : { finish_reason: null, prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0 };
        summary.finish_reason ??= 'abort';
        release();
        return summary;
      },
    };
  }

  async #create(request) {
    if (request === null || typeof request !== 'object') throw new TypeError('create() takes a request object');
    const run = await this.#start(request, true, request.signal);
    const id = requestId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = this.#name;
    if (!run.started.stream) {
      let content = '';
      const logprobs = [];
      let summary;
      try {
        for await (const t of run.tokens()) {
          content += t.text;
          if (t.logprobs) logprobs.push(...t.logprobs.content);
        }
      } finally {
        summary = run.end();
      }
      return {
        id, object: 'chat.completion', created, model,
        choices: [{
          index: 0,
          message: { role: 'assistant', content },
          logprobs: request.logprobs ? { content: logprobs } : null,
          finish_reason: summary.finish_reason,
        }],
        usage: usageOf(summary),
      };
    }
    const chunk = (delta, finish, logprobs = null) => ({
      id, object: 'chat.completion.chunk', created, model,
      choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
    });
    const includeUsage = run.started.include_usage;
    return (async function* stream() {
      let first = true;
      try {
        for await (const t of run.tokens()) {
          if (!t.text && !t.logprobs) continue; // (text held back: part of a character or a stop string)
          yield chunk(first ? { role: 'assistant', content: t.text } : { content: t.text }, null, t.logprobs);
          first = false;
        }
        const summary = run.end();
        yield chunk(first ? { role: 'assistant', content: '' } : {}, summary.finish_reason);
        if (includeUsage) yield { id, object: 'chat.completion.chunk', created, model, choices: [], usage: usageOf(summary) };
      } finally {
        run.end();
      }
    })();
  }
}
