// The page side of `load(source, { worker: true })`: the model lives in a module Web Worker
// (worker.js) and these proxies give the page the same API, so a long prompt or a slow CPU step
// never blocks the page. Bytes given to load() are transferred to the worker, not copied.

class Connection {
  #worker;
  #pending = new Map();
  #next = 0;

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => {
      const call = this.#pending.get(e.data.id);
      if (!call) return;
      const m = e.data;
      if (m.progress) call.onProgress?.(...m.progress);
      else if (m.started) call.onStarted?.();
      else if ('item' in m) call.onItem?.(m.item);
      else {
        this.#pending.delete(m.id);
        if (m.error) {
          const err = m.error.name === 'TypeError' ? new TypeError(m.error.message) : new Error(m.error.message);
          call.reject(err);
        } else {
          call.resolve(m.value);
        }
      }
    };
    worker.onerror = (e) => this.#failAll(new Error(`the wedge worker failed: ${e.message ?? 'unknown error'}`));
  }

  #failAll(err) {
    for (const call of this.#pending.values()) call.reject(err);
    this.#pending.clear();
  }

  /** Sends `op`; resolves with its value. `hooks`: onProgress, onStarted, onItem. */
  call(op, payload = {}, hooks = {}, transfer = []) {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...hooks });
      this.#worker.postMessage({ id, op, ...payload }, transfer);
    });
  }

  /** Sends `op` without waiting for an answer. */
  post(op) {
    this.#worker.postMessage({ id: ++this.#next, op });
  }

  terminate() {
    this.#worker.terminate();
    this.#failAll(new Error('the model was disposed'));
  }
}

/** Streams the items of a call as an async iterator, once it has started; `onStop` (also on
 *  `signal`'s abort) asks the worker to stop early. */
async function streamed(conn, op, payload, onStop, signal) {
  const items = [];
  let wake = null;
  let finished = false;
  let failure = null;
  let started;
  const begun = new Promise((resolve) => { started = resolve; });
  const done = conn.call(op, payload, {
    onStarted: () => started(),
    onItem: (item) => { items.push(item); wake?.(); },
  }).then(() => { finished = true; wake?.(); started(); }, (e) => { failure = e; finished = true; wake?.(); started(); });
  signal?.addEventListener('abort', onStop);
  await begun;
  if (failure && items.length === 0) {
    signal?.removeEventListener('abort', onStop);
    throw failure;
  }
  return (async function* stream() {
    try {
      for (;;) {
        if (items.length) {
          yield items.shift();
        } else if (finished) {
          if (failure) throw failure;
          return;
        } else {
          await new Promise((resolve) => { wake = resolve; });
          wake = null;
        }
      }
    } finally {
      signal?.removeEventListener('abort', onStop);
      if (!finished) {
        onStop();
        await done;
      }
    }
  })();
}

// Each proxy's connection to its worker, until dispose(): one place for both kinds of model.
const connections = new WeakMap();

function alive(proxy) {
  const conn = connections.get(proxy);
  if (!conn) throw new Error('the model was disposed');
  return conn;
}

function release(proxy) {
  connections.get(proxy)?.terminate();
  connections.delete(proxy);
}

/** A language model in a Web Worker: the API of `LanguageModel`. */
export class WorkerLanguageModel {
  #props;

  constructor(conn, props) {
    connections.set(this, conn);
    this.#props = props;
    this.chat = {
      completions: {
        create: (request) => {
          const { signal, ...rest } = request ?? {};
          if (!rest.stream) return this.#withSignal(signal, alive(this).call('chat', { request: rest }));
          return streamed(alive(this), 'chat', { request: rest }, () => this.interrupt(), signal);
        },
      },
    };
  }

  get kind() { return 'language'; }
  get device() { return this.#props.device; }
  get deviceInfo() { return this.#props.deviceInfo; }
  get info() { return { ...this.#props.info, formats: { ...this.#props.info.formats } }; }
  get digest() { return this.#props.digest; }
  get model() { return this.#props.model; }

  countTokens(input) { return alive(this).call('countTokens', { input }); }

  generate(prompt, options = {}) {
    const { onToken, signal, ...rest } = options;
    const hooks = { onItem: (t) => onToken?.(t.text, { id: t.id, logprob: t.logprob }) };
    return this.#withSignal(signal, alive(this).call('generate', { prompt, options: rest }, hooks));
  }

  interrupt() { connections.get(this)?.post('interrupt'); }
  resetChat() { return alive(this).call('resetChat'); }
  dispose() { release(this); }

  #withSignal(signal, promise) {
    if (!signal) return promise;
    const stop = () => this.interrupt();
    signal.addEventListener('abort', stop);
    return promise.finally(() => signal.removeEventListener('abort', stop));
  }
}

/** A sentence-embedding model in a Web Worker: the API of `Model` (`countTokens` answers with
 *  a promise there). */
export class WorkerModel {
  #props;

  constructor(conn, props) {
    connections.set(this, conn);
    this.#props = props;
  }

  get kind() { return 'embedding'; }
  get device() { return this.#props.device; }
  get deviceInfo() { return this.#props.deviceInfo; }
  get dim() { return this.#props.dim; }
  get digest() { return this.#props.digest; }
  embed(texts) { return alive(this).call('embed', { texts: typeof texts === 'string' ? [texts] : texts }); }
  countTokens(texts) { return alive(this).call('countTokens', { input: typeof texts === 'string' ? [texts] : texts }); }
  dispose() { release(this); }
}

/** load() with `{ worker }`: `true` starts a module worker running worker.js; a `Worker` given
 *  must run it (for bundlers that place it themselves). */
export async function loadInWorker(source, options) {
  const { worker, onProgress, signal, ...rest } = options;
  const w = worker instanceof Worker ? worker : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const conn = new Connection(w);
  let transfer = [];
  if (source instanceof ArrayBuffer) {
    transfer = [source];
  } else if (ArrayBuffer.isView(source)) {
    source = source.slice().buffer; // (a view's buffer may hold more than the model)
    transfer = [source];
  } else if (typeof source === 'string' || source instanceof URL) {
    source = new URL(source, globalThis.location?.href).href;
  } else {
    throw new TypeError('load() takes a URL or an ArrayBuffer');
  }
  const abort = () => conn.terminate();
  signal?.addEventListener('abort', abort);
  try {
    const props = await conn.call('load', { source, options: rest }, { onProgress }, transfer);
    return props.kind === 'llm' ? new WorkerLanguageModel(conn, props) : new WorkerModel(conn, props);
  } catch (e) {
    conn.terminate();
    throw e;
  } finally {
    signal?.removeEventListener('abort', abort);
  }
}
