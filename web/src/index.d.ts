/** Where a model runs. */
export type Device = 'webgpu' | 'cpu';

export interface LoadOptions {
  /** 'auto' (default): a hardware WebGPU adapter, else the CPU. 'webgpu': any adapter,
   *  software ones included; an error without one. 'cpu': the wasm CPU backend. */
  device?: 'auto' | 'webgpu' | 'cpu';
  /** Download progress in bytes; `total` is 0 when the server sends no length. */
  onProgress?: (loaded: number, total: number) => void;
  /** Keep the package in Cache Storage and reuse it (default true). */
  cache?: boolean;
  /** The package digest expected at the URL (hex SHA-256 of its header). */
  digest?: string;
  /** Cancels the download. */
  signal?: AbortSignal;
}

/** A loaded sentence-embedding model. */
export class Model {
  private constructor();
  /** 'webgpu' or 'cpu'. */
  readonly device: Device;
  /** The WebGPU adapter, or why the CPU backend was chosen. */
  readonly deviceInfo: string;
  /** Embedding size. */
  readonly dim: number;
  /** Hex SHA-256 of the package header. */
  readonly digest: string;
  /** One vector per text, in input order. */
  embed(texts: string | string[]): Promise<Float32Array[]>;
  /** Tokens per text as the model sees them (special tokens included, after truncation). */
  countTokens(texts: string | string[]): number[];
  /** Frees the model, GPU buffers included. */
  dispose(): void;
}

/** Loads a .wedge package from a URL (streamed, kept in Cache Storage) or from bytes. */
export function load(source: string | URL | ArrayBuffer | Uint8Array, options?: LoadOptions): Promise<Model>;

/** Whether the browser exposes WebGPU at all (load() still decides per adapter). */
export function hasWebGPU(): boolean;
