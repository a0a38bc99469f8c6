// wedge in the browser: load a .wedge sentence-embedding package and embed texts on WebGPU,
// or on the wasm CPU backend when there is no (hardware) WebGPU adapter.
//
//   import { load } from './dist/index.js';
//   const model = await load('/models/minilm.wedge', { onProgress: (loaded, total) => {} });
//   const [a, b] = await model.embed(['hello world', 'edge inference']);   // Float32Array each
//   model.dispose();
//
// Works on the main thread and in Web Workers (it uses fetch, Cache Storage and navigator.gpu,
// never the DOM).
import init, { loadModel, packageDigest } from './pkg/wedge_web.js';

const CACHE = 'wedge-models-v1';
let ready = null;

function initOnce() {
  if (!ready) {
    ready = init({ module_or_path: new URL('./pkg/wedge_web_bg.wasm', import.meta.url) }).catch((e) => {
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

async function download(url, onProgress, signal) {
  const resp = await fetch(url, { signal });
  if (!resp.ok) throw new Error(`fetching ${url}: HTTP ${resp.status}`);
  const total = Number(resp.headers.get('content-length')) || 0;
  if (!resp.body) {
    const buf = new Uint8Array(await resp.arrayBuffer());
    onProgress?.(buf.length, total || buf.length);
    return buf;
  }
  const reader = resp.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onProgress?.(loaded, total);
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function cacheStorage() {
  try {
    return globalThis.caches ?? null;
  } catch {
    return null; // opaque origins throw
  }
}

// Cache Storage holds the package under its digest, plus the digest last seen for each URL, so a
// second load of the same URL reads no network at all. Pass { cache: false } to skip it, or
// { digest } to pin the package expected at the URL.
async function fromCache(url, digest) {
  const storage = cacheStorage();
  if (!storage) return null;
  const cache = await storage.open(CACHE);
  if (!digest) {
    const pointer = await cache.match(`/wedge-url/${encodeURIComponent(url)}`);
    if (!pointer) return null;
    digest = (await pointer.text()).trim();
  }
  const hit = await cache.match(`/wedge-digest/${digest}`);
  if (!hit) return null;
  const bytes = new Uint8Array(await hit.arrayBuffer());
  let actual = '';
  try {
    actual = packageDigest(bytes);
  } catch {
    actual = '';
  }
  if (actual !== digest) {
    await cache.delete(`/wedge-digest/${digest}`); // damaged: fetch again
    return null;
  }
  return bytes;
}

async function toCache(url, bytes, digest) {
  const storage = cacheStorage();
  if (!storage) return;
  try {
    const cache = await storage.open(CACHE);
    await cache.put(`/wedge-digest/${digest}`, new Response(bytes));
    if (url) await cache.put(`/wedge-url/${encodeURIComponent(url)}`, new Response(digest));
  } catch (e) {
    console.warn(`wedge: could not keep the model in Cache Storage: ${e}`);
  }
}

/**
 * Loads a .wedge package from a URL or from bytes.
 * @param {string | URL | ArrayBuffer | Uint8Array} source
 * @param {{ device?: 'auto' | 'webgpu' | 'cpu', onProgress?: (loaded: number, total: number) => void,
 *           cache?: boolean, digest?: string, signal?: AbortSignal }} [options]
 */
export async function load(source, options = {}) {
  await initOnce();
  const device = options.device ?? 'auto';
  let bytes;
  if (source instanceof ArrayBuffer) {
    bytes = new Uint8Array(source);
  } else if (ArrayBuffer.isView(source)) {
    bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  } else if (typeof source === 'string' || source instanceof URL) {
    const url = new URL(source, globalThis.location?.href).href;
    const useCache = options.cache !== false;
    bytes = useCache ? await fromCache(url, options.digest) : null;
    if (bytes) {
      options.onProgress?.(bytes.length, bytes.length);
    } else {
      bytes = await download(url, options.onProgress, options.signal);
      const digest = packageDigest(bytes); // throws a clear error for a file that is not a package
      if (options.digest && options.digest !== digest) {
        throw new Error(`${url}: package digest ${digest}, expected ${options.digest}`);
      }
      if (useCache) await toCache(url, bytes, digest);
    }
  } else {
    throw new TypeError('load() takes a URL or an ArrayBuffer');
  }
  return new Model(await loadModel(bytes, device));
}

/** Whether load() may find a hardware WebGPU adapter here. */
export function hasWebGPU() {
  return typeof navigator !== 'undefined' && !!navigator.gpu;
}
