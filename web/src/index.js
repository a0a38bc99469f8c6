// wedge in the browser: load a .wedge sentence-embedding package and embed texts, or a GGUF
// language model and chat with it, on WebGPU, or on the wasm CPU backend when there is no
// (hardware) WebGPU adapter.
//
//   import { load } from './dist/index.js';
//   const model = await load('/models/minilm.wedge', { onProgress: (loaded, total) => {} });
//   const [a, b] = await model.embed(['hello world', 'edge inference']);   // Float32Array each
//   const llm = await load('/models/SmolLM2-135M-Instruct.Q4_1.gguf');
//   for await (const c of await llm.chat.completions.create({ messages, stream: true })) { ... }
//   model.dispose();
//
// Works on the main thread and in Web Workers (it uses fetch, Cache Storage and navigator.gpu,
// never the DOM).
import init, { isLanguageModel, loadLanguageModel as loadWasmLanguageModel, loadModel } from './pkg/wedge_web.js';
import { modelBytes } from './fetch.js';
import { LanguageModel } from './llm.js';
import { loadInWorker } from './proxy.js';

export { LanguageModel };

let ready = null;
let wasmMemory = null;

function initOnce() {
  if (!ready) {
    ready = init({ module_or_path: new URL('./pkg/wedge_web_bg.wasm', import.meta.url) }).then((exports) => {
      wasmMemory = exports.memory;
      return exports;
    }, (e) => {
      ready = null; // let a later load() try again (a network error is not forever)
      throw new Error(`loading the wedge wasm module: ${e?.message ?? e}`);
    });
  }
  return ready;
}

/** A loaded model. */
export class Model {
  #inner;
  /** @param {any} inner */
  constructor(inner) {
    this.#inner = inner;
  }
  /** 'embedding' (a `LanguageModel` says 'language'). */
  get kind() { return 'embedding'; }
  /** 'webgpu' or 'cpu' */
  get device() { return this.#alive().device; }
  /** The WebGPU adapter, or why the CPU was chosen. */
  get deviceInfo() { return this.#alive().deviceInfo; }
  /** Embedding size. */
  get dim() { return this.#alive().dim; }
  /** Hex SHA-256 of the package header. */
  get digest() { return this.#alive().digest; }
  /** One Float32Array per text, in order. */
  async embed(texts) {
    if (typeof texts === 'string') texts = [texts];
    if (!Array.isArray(texts) || texts.some((t) => typeof t !== 'string')) {
      throw new TypeError('embed() takes a string or an array of strings');
    }
    return this.#alive().embed(texts);
  }
  /** Tokens per text as the model sees them (special tokens included, after truncation). */
  countTokens(texts) {
    if (typeof texts === 'string') texts = [texts];
    if (!Array.isArray(texts) || texts.some((t) => typeof t !== 'string')) {
      throw new TypeError('countTokens() takes a string or an array of strings');
    }
    return Array.from(this.#alive().countTokens(texts));
  }
  /** Frees the model's memory (GPU buffers included). */
  dispose() {
    if (this.#inner) {
      this.#inner.free();
      this.#inner = null;
    }
  }
  #alive() {
    if (!this.#inner) throw new Error('the model was disposed');
    return this.#inner;
  }
}

const KINDS = { embedding: 'a sentence-embedding package', language: 'a language model (GGUF or decoder package)' };

function checkKind(kind, expect) {
  if (expect && kind !== expect) throw new Error(`the file holds ${KINDS[kind]}, not ${KINDS[expect]}`);
}

// load(), and with `expect` the kind the caller wants, checked from the file's header before
// anything is loaded (in a worker, once the worker has it).
async function loadAs(source, options, expect) {
  if (options.worker) {
    const model = await loadInWorker(source, options);
    try {
      checkKind(model.kind, expect);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  }
  await initOnce();
  const device = options.device ?? 'auto';
  const file = await modelBytes(source, options);
  const language = isLanguageModel(file.bytes);
  checkKind(language ? 'language' : 'embedding', expect);
  let model;
  if (language) {
    const ctx = options.ctx ?? 0;
    if (!Number.isInteger(ctx) || ctx < 0) throw new TypeError('`ctx` must be a whole number of positions');
    model = new LanguageModel(await loadWasmLanguageModel(file.bytes, device, ctx, options.fast === true), file.digest, file.name);
  } else {
    model = new Model(await loadModel(file.bytes, device));
  }
  await file.keep();
  return model;
}

/**
 * Loads a model from a URL or from bytes: a .wedge sentence-embedding package gives a `Model`,
 * a GGUF file or a decoder .wedge package a `LanguageModel`. With `{ worker: true }` the model
 * lives in a Web Worker and the page gets a proxy with the same API.
 * @param {string | URL | ArrayBuffer | Uint8Array} source
 * @param {{ device?: 'auto' | 'webgpu' | 'cpu', onProgress?: (loaded: number, total: number) => void,
 *           cache?: boolean, digest?: string, signal?: AbortSignal, ctx?: number, fast?: boolean,
 *           worker?: boolean | Worker }} [options]
 */
export function load(source, options = {}) {
  return loadAs(source, options, null);
}

/** load() of a sentence-embedding package (an error for any other model). */
export function loadEmbedder(source, options = {}) {
  return loadAs(source, options, 'embedding');
}

/** load() of a language model: a GGUF file or a decoder package (an error for any other). */
export function loadLanguageModel(source, options = {}) {
  return loadAs(source, options, 'language');
}

/** Bytes of the wasm heap (it grows and never shrinks: its high-water mark), 0 before the
 *  first load() in this thread. */
export function wasmHeapBytes() {
  return wasmMemory?.buffer.byteLength ?? 0;
}

/** Whether load() may find a hardware WebGPU adapter here. */
export function hasWebGPU() {
  return typeof navigator !== 'undefined' && !!navigator.gpu;
}
