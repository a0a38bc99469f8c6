// Getting a model file's bytes: a URL streamed with progress into one buffer, or bytes given by
// the caller; Cache Storage keeps each file under its digest (a .wedge package's header digest,
// a GGUF file's SHA-256) with a pointer from the URL, so a second load of the same URL reads no
// network at all.
import { ggufDigest, packageDigest } from './pkg/wedge_web.js';

const CACHE = 'wedge-models-v1';

// The wasm heap is 32-bit: 4 GiB holds the weights of a model and everything else besides.
export const MAX_MODEL_BYTES = 3 * 1024 ** 3;

function tooBig(what, bytes) {
  const gib = (n) => (n / 1024 ** 3).toFixed(2);
  return new Error(`${what} is ${gib(bytes)} GiB; a model loaded in the browser can be at most ` +
    `${gib(MAX_MODEL_BYTES)} GiB (the wasm heap is 32-bit: 4 GiB for the weights and everything else)`);
}

/** Whether the bytes start like a GGUF file. */
function isGguf(bytes) {
  return bytes.length >= 4 && bytes[0] === 0x47 && bytes[1] === 0x47 && bytes[2] === 0x55 && bytes[3] === 0x46;
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The digest that keys a model file: SHA-256 of a whole GGUF file (WebCrypto where the page is
 *  a secure context, else the wasm module), the header digest of a .wedge package (which also
 *  checks that the file is one). */
export async function digestOf(bytes) {
  if (!isGguf(bytes)) {
    try {
      return packageDigest(bytes);
    } catch (e) {
      throw new Error(`neither a GGUF file nor a .wedge package: ${e.message}`);
    }
  }
  const subtle = globalThis.crypto?.subtle;
  if (subtle) {
    try {
      return hex(await subtle.digest('SHA-256', bytes));
    } catch {
      // (a buffer WebCrypto will not take: the wasm module hashes it)
    }
  }
  return ggufDigest(bytes);
}

export async function download(url, onProgress, signal) {
  const resp = await fetch(url, { signal });
  if (!resp.ok) throw new Error(`fetching ${url}: HTTP ${resp.status}`);
  const total = Number(resp.headers.get('content-length')) || 0;
  if (total > MAX_MODEL_BYTES) throw tooBig(url, total);
  if (!resp.body) {
    const buf = new Uint8Array(await resp.arrayBuffer());
    onProgress?.(buf.length, total || buf.length);
    return buf;
  }
  const reader = resp.body.getReader();
  // With a length, the chunks go straight into one buffer; without, they are joined at the end.
  let out = null;
  try {
    out = total ? new Uint8Array(total) : null;
  } catch (e) {
    throw new Error(`${url}: this browser could not allocate ${total} bytes in one buffer (${e.message})`);
  }
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (out && loaded + value.length <= out.length) {
      out.set(value, loaded);
    } else {
      if (out) {
        // (more bytes than the length said: keep what came and go on joining)
        chunks.push(out.subarray(0, loaded));
        out = null;
      }
      chunks.push(value);
    }
    loaded += value.length;
    if (loaded > MAX_MODEL_BYTES) {
      await reader.cancel();
      throw tooBig(url, loaded);
    }
    onProgress?.(loaded, total);
  }
  if (out) return loaded === out.length ? out : out.subarray(0, loaded);
  const joined = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    joined.set(c, at);
    at += c.length;
  }
  return joined;
}

function cacheStorage() {
  try {
    return globalThis.caches ?? null;
  } catch {
    return null; // opaque origins throw
  }
}

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
    actual = await digestOf(bytes);
  } catch {
    actual = '';
  }
  if (actual !== digest) {
    await cache.delete(`/wedge-digest/${digest}`); // damaged: fetch again
    return null;
  }
  return { bytes, digest };
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
 * The bytes of `source` and their digest, plus `keep()`, which stores a downloaded file in Cache
 * Storage: the caller keeps it only once the model loaded, so a damaged file is never cached.
 */
export async function modelBytes(source, options) {
  if (source instanceof ArrayBuffer) source = new Uint8Array(source);
  if (ArrayBuffer.isView(source)) {
    const bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    if (bytes.length > MAX_MODEL_BYTES) throw tooBig('the model', bytes.length);
    return { bytes, digest: await digestOf(bytes), keep: async () => {}, name: 'model' };
  }
  if (typeof source !== 'string' && !(source instanceof URL)) {
    throw new TypeError('load() takes a URL or an ArrayBuffer');
  }
  const url = new URL(source, globalThis.location?.href).href;
  const name = decodeURIComponent(url.split(/[?#]/)[0].split('/').pop() || 'model').replace(/\.(gguf|wedge)$/i, '');
  const useCache = options.cache !== false;
  const hit = useCache ? await fromCache(url, options.digest) : null;
  if (hit) {
    options.onProgress?.(hit.bytes.length, hit.bytes.length);
    return { ...hit, keep: async () => {}, name };
  }
  const bytes = await download(url, options.onProgress, options.signal);
  const digest = await digestOf(bytes); // a clear error for a file that is neither kind
  if (options.digest && options.digest !== digest) {
    throw new Error(`${url}: digest ${digest}, expected ${options.digest}`);
  }
  return { bytes, digest, keep: () => (useCache ? toCache(url, bytes, digest) : Promise.resolve()), name };
}
