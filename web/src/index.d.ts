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
  /** Language models: positions of the conversation's key/value cache (default: the model's
   *  context, at most 2048). */
  ctx?: number;
  /** Language models on the wasm CPU backend: the integer kernels (activations rounded to 16
   *  bits a row; about twice the decode speed, logits within about 0.05 of exact, so greedy
   *  tokens can differ from the exact path's). Default false. */
  fast?: boolean;
  /** Load the model in a module Web Worker (`true`: one running `dist/worker.js`, or a Worker
   *  you started on it) and return a proxy with the same API; the page never blocks on it. */
  worker?: boolean | Worker;
}

/** A loaded sentence-embedding model. */
export class Model {
  private constructor();
  readonly kind: 'embedding';
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

/** The sampling options of a generation, as the native API names them. */
export interface GenerateOptions {
  /** Tokens to generate at most (default 512, at most to the end of the context). */
  maxTokens?: number;
  /** 0 is greedy (default 1). */
  temperature?: number;
  topP?: number;
  /** 0: all tokens. */
  topK?: number;
  minP?: number;
  seed?: number;
  /** Generation stops before the first of these strings. */
  stop?: string | string[];
  presencePenalty?: number;
  frequencyPenalty?: number;
  repetitionPenalty?: number;
  /** Token id → bias from -100 to 100. */
  logitBias?: Record<string, number>;
  /** Keep generating past the end-of-sequence token. */
  ignoreEos?: boolean;
  /** Each piece of text as it comes, with its token. */
  onToken?: (text: string, token: { id: number; logprob: number }) => void;
  /** Stops the generation (as `interrupt()`). */
  signal?: AbortSignal;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | (string & {});
  content: string | Array<{ type: 'text'; text: string }> | null;
}

/** An OpenAI chat request (fields the model does not use are ignored). */
export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  /** 1 only. */
  n?: number | null;
  user?: string;
  ignore_eos?: boolean;
  /** Stops the generation (as `interrupt()`). */
  signal?: AbortSignal;
}

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs?: Array<{ token: string; logprob: number; bytes: number[] }>;
}

/** `stop`, `length`, or `abort` after `interrupt()`. */
export type FinishReason = 'stop' | 'length' | 'abort';

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** `cached_tokens`: prompt tokens the conversation's cache already held. */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: 'assistant'; content: string };
    logprobs: { content: TokenLogprob[] } | null;
    finish_reason: FinishReason;
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** Empty in the last chunk of a stream with `include_usage`. */
  choices: Array<{
    index: number;
    delta: { role?: 'assistant'; content?: string };
    logprobs: { content: TokenLogprob[] } | null;
    finish_reason: FinishReason | null;
  }>;
  usage?: CompletionUsage;
}

export interface ChatCompletions {
  create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterableIterator<ChatCompletionChunk>>;
  create(request: ChatCompletionRequest & { stream?: false | null }): Promise<ChatCompletion>;
  create(request: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterableIterator<ChatCompletionChunk>>;
}

export interface LanguageModelInfo {
  /** `llama` or `qwen2`. */
  architecture: string;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  /** The context the model was trained for. */
  contextLength: number;
  /** Positions of this conversation's cache. */
  ctx: number;
  weightBytes: number;
  /** Weight formats (`q4_1/g32`, `f32`, ...) and their tensor counts. */
  formats: Record<string, number>;
  /** Whether it runs the CPU's integer kernels (`fast` at load). */
  fast: boolean;
}

/** A language model and its conversation. One generation runs at a time; later calls wait. */
export class LanguageModel {
  private constructor();
  readonly kind: 'language';
  /** 'webgpu' or 'cpu'. */
  readonly device: Device;
  /** The WebGPU adapter, or why the CPU backend was chosen. */
  readonly deviceInfo: string;
  readonly info: LanguageModelInfo;
  /** SHA-256 of a GGUF file; the header digest of a package. */
  readonly digest: string;
  /** The name answers carry as `model`. */
  readonly model: string;
  /** OpenAI's chat API. The conversation's cache keeps what a request shares with the last. */
  readonly chat: { completions: ChatCompletions };
  /** Continues a plain-text prompt; resolves with the text generated. */
  generate(prompt: string, options?: GenerateOptions): Promise<string>;
  /** Tokens of a text, or of a conversation under the chat template. */
  countTokens(input: string | ChatMessage[]): Promise<number>;
  /** Stops the running generation before its next step. */
  interrupt(): void;
  /** Forgets the conversation. */
  resetChat(): Promise<void>;
  /** Frees the model, GPU buffers included (and its worker, if it has one). */
  dispose(): void;
}

/** Loads a model from a URL (streamed, kept in Cache Storage) or from bytes: a .wedge
 *  sentence-embedding package gives a `Model`, a GGUF file or decoder package a
 *  `LanguageModel` (tell them apart by `kind`; `loadEmbedder` and `loadLanguageModel` check
 *  the kind for you). The type is a `LanguageModel` for a `.gguf` URL and, unless you name
 *  another, a `Model` otherwise. */
export function load(source: `${string}.gguf`, options?: LoadOptions): Promise<LanguageModel>;
export function load<M extends Model | LanguageModel = Model>(
  source: string | URL | ArrayBuffer | Uint8Array,
  options?: LoadOptions,
): Promise<M>;
/** load() of a sentence-embedding package. */
export function loadEmbedder(source: string | URL | ArrayBuffer | Uint8Array, options?: LoadOptions): Promise<Model>;
/** load() of a language model (GGUF or decoder package). */
export function loadLanguageModel(source: string | URL | ArrayBuffer | Uint8Array, options?: LoadOptions): Promise<LanguageModel>;

/** Whether the browser exposes WebGPU at all (load() still decides per adapter). */
export function hasWebGPU(): boolean;

/** Bytes of this thread's wasm heap (its high-water mark: it never shrinks); 0 before the first
 *  load() here. */
export function wasmHeapBytes(): number;
