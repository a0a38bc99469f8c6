//! Language models: a decoder on a device, a [`DecodeState`] of key/value caches that the
//! caller owns (a scheduler steps many sequences in it at once), and batched steps that
//! return logits only where asked.

use wedge_core::gguf::Gguf;
use wedge_core::graph::StateElem;
use wedge_core::models::llama::{self, DecoderConfig};
use wedge_core::plan::HostTensor;

use crate::{Device, Error, Result, Session, SessionOptions, State, Vocab};

/// How a key/value cache stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// f32: exact.
    #[default]
    F32,
    /// f16: half the memory, logits within about 0.1.
    F16,
}

impl KvType {
    fn elem(self) -> StateElem {
        match self {
            KvType::F32 => StateElem::F32,
            KvType::F16 => StateElem::F16,
        }
    }

    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// `f32` or `f16`.
    pub fn parse(s: &str) -> Option<KvType> {
        match s {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            _ => None,
        }
    }
}

/// How a language model is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LmOptions {
    /// Storage of the key/value caches.
    pub kv: KvType,
    /// On the CPU backend, the integer matmul kernels: faster, and SmolLM2's logits within 0.01
    /// of an exact evaluation (AVX-512 VNNI: grouped weights against activations rounded twice
    /// to 8 bits per block of 32) or 0.05 (AVX2: activations rounded to 16 bits a row) instead
    /// of 1e-3.
    pub fast_cpu: bool,
}

/// The index of a sequence in a [`DecodeState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub usize);

/// A decoder language model on a device, with its vocabulary and chat template.
pub struct LanguageModel {
    session: Session,
    config: DecoderConfig,
    vocab: Vocab,
    options: LmOptions,
    weight_bytes: u64,
    architecture: String,
    formats: Vec<(String, usize)>,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel").field("config", &self.config).finish_non_exhaustive()
    }
}

fn config_err(msg: String) -> Error {
    Error::Core(wedge_core::Error::Config(msg))
}

/// Refuses a package whose architecture is not the decoder family.
fn is_decoder(architecture: &str) -> Result<()> {
    if architecture == wedge_core::models::DECODER {
        return Ok(());
    }
    Err(config_err(format!(
        "the package holds a `{architecture}` model, not a language model ({})",
        wedge_core::models::DECODER
    )))
}

impl LanguageModel {
    /// Loads a GGUF file (architecture `llama` or `qwen2`) onto `device`. Each tensor keeps
    /// its file's format and size (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
    pub fn from_gguf(bytes: &[u8], device: &Device, options: LmOptions) -> Result<LanguageModel> {
        let g = Gguf::parse(bytes)?;
        let config = DecoderConfig::from_gguf(&g)?;
        let vocab = Vocab::from_gguf(&g)?;
        let weights = llama::weights_from_gguf(&g)?;
        let architecture = g.str("general.architecture")?.to_string();
        LanguageModel::assemble(config, vocab, weights, architecture, device, options)
    }

    /// Loads a `.wedge` decoder package (from `wedge convert`), which carries its vocabulary as
    /// a metadata-only GGUF asset (from a GGUF file) or as `tokenizer.json` and
    /// `tokenizer_config.json` (from a Hugging Face folder).
    pub fn from_wedge(bytes: &[u8], device: &Device, options: LmOptions) -> Result<LanguageModel> {
        // a package of another kind is refused from its header, before its sections inflate
        let limits = wedge_core::package::PackageLimits::default();
        let head = wedge_core::package::read_header(bytes, &limits)?;
        is_decoder(&head.header.architecture)?;
        let (pkg, _digest) = wedge_core::Package::from_parsed(bytes, head)?;
        LanguageModel::from_package(pkg, device, options)
    }

    /// [`LanguageModel::from_wedge`] of a package already in memory (such as one imported from
    /// a Hugging Face folder).
    pub fn from_package(pkg: wedge_core::Package, device: &Device, options: LmOptions) -> Result<LanguageModel> {
        is_decoder(&pkg.architecture)?;
        let config: DecoderConfig = serde_json::from_value(pkg.config.clone())
            .map_err(|e| config_err(format!("{} config: {e}", pkg.architecture)))?;
        let (vocab, architecture) = if let Some(asset) = pkg.assets.get(llama::VOCAB_ASSET) {
            let g = Gguf::parse(asset)?;
            (Vocab::from_gguf(&g)?, g.str("general.architecture").unwrap_or("llama").to_string())
        } else if let Some(tokenizer) = pkg.assets.get(llama::TOKENIZER_ASSET) {
            let vocab = Vocab::from_hf(tokenizer, pkg.assets.get(llama::TOKENIZER_CONFIG_ASSET).map(Vec::as_slice))?;
            (vocab, pkg.metadata.get("model_type").cloned().unwrap_or_else(|| "llama".to_string()))
        } else {
            return Err(config_err(format!(
                "the package carries no vocabulary ({} or {})",
                llama::VOCAB_ASSET,
                llama::TOKENIZER_ASSET
            )));
        };
        LanguageModel::assemble(config, vocab, pkg.tensors, architecture, device, options)
    }

    fn assemble(
        mut config: DecoderConfig,
        vocab: Vocab,
        mut weights: Vec<wedge_core::Weight>,
        architecture: String,
        device: &Device,
        options: LmOptions,
    ) -> Result<LanguageModel> {
        config.take_rope_freqs(&mut weights)?;
        let mg = config.build_cached(options.kv.elem())?;
        let weights = mg.take_weights(weights)?;
        let weight_bytes = weights.iter().map(|w| w.packed_bytes() as u64).sum();
        let mut formats = std::collections::BTreeMap::<String, usize>::new();
        for w in &weights {
            *formats.entry(w.format.to_string()).or_default() += 1;
        }
        let formats = formats.into_iter().collect();
        let session_options = SessionOptions { cpu_integer_kernels: options.fast_cpu };
        let session = Session::with_options(device, mg.graph, weights, session_options)?;
        Ok(LanguageModel { session, config, vocab, options, weight_bytes, architecture, formats })
    }

    /// Loads a GGUF file or a `.wedge` decoder package from disk. A GGUF file is read a tensor
    /// at a time (its header first, then each tensor's bytes, repacked before the next is
    /// read), so the load never holds the file and the weights at once.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>, device: &Device, options: LmOptions) -> Result<LanguageModel> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut magic = [0u8; 4];
        let got = file.by_ref().take(4).read(&mut magic).map_err(io)?;
        if got == 4 && &magic == b"GGUF" {
            let len = file.metadata().map_err(io)?.len();
            return LanguageModel::from_gguf_reader(file, len, device, options).map_err(|e| match e {
                Error::Io(e) => io(e),
                e => e,
            });
        }
        if got == 4 && magic == wedge_core::package::MAGIC[..4] {
            let bytes = std::fs::read(path).map_err(io)?;
            if bytes.starts_with(&wedge_core::package::MAGIC) {
                return LanguageModel::from_wedge(&bytes, device, options);
            }
        }
        Err(config_err(format!(
            "{}: not a GGUF file or a .wedge package (language models load from either)",
            path.display()
        )))
    }

    /// Loads a GGUF file of `len` bytes from a reader that can seek (a file, or the bytes a
    /// browser downloaded, outside the wasm heap): the header read in growing pieces until it
    /// parses (a vocabulary can take megabytes), then the tensors one by one, each repacked
    /// before the next is read, so the load never holds the file and the weights at once.
    pub fn from_gguf_reader<R: std::io::Read + std::io::Seek>(
        mut reader: R,
        len: u64,
        device: &Device,
        options: LmOptions,
    ) -> Result<LanguageModel> {
        use std::io::{Read, SeekFrom};
        let mut head = Vec::new();
        let mut want = 1u64 << 16;
        loop {
            reader.seek(SeekFrom::Start(head.len() as u64))?;
            reader.by_ref().take(want.min(len) - head.len() as u64).read_to_end(&mut head)?;
            match Gguf::parse_head(&head, len) {
                Ok(_) => break,
                // (a header longer than what was read fails the same way as a truncated one)
                Err(_) if (head.len() as u64) < len => want = want.saturating_mul(4),
                Err(e) => return Err(e.into()),
            }
        }
        let g = Gguf::parse_head(&head, len)?;
        let config = DecoderConfig::from_gguf(&g)?;
        let vocab = Vocab::from_gguf(&g)?;
        let architecture = g.str("general.architecture")?.to_string();
        let mut weights = Vec::new();
        let mut buf = Vec::new();
        for (t, name) in llama::used_tensors(&g) {
            reader.seek(SeekFrom::Start(g.file_offset(t)))?;
            buf.clear();
            reader.by_ref().take(t.size).read_to_end(&mut buf)?;
            if (buf.len() as u64) < t.size {
                return Err(config_err(format!(
                    "the GGUF file is truncated: tensor `{}` ends at byte {}, past its end ({len} bytes)",
                    t.name,
                    g.file_offset(t) + t.size
                )));
            }
            weights.push(wedge_core::Weight { name, ..Gguf::weight_from(t, &buf)? });
        }
        drop(buf);
        LanguageModel::assemble(config, vocab, weights, architecture, device, options)
    }

    /// The model's configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The vocabulary, special tokens and chat template.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The architecture named in the file (`llama`, `qwen2`).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The weights' storage formats (as `wedge inspect` names them), each with its number of
    /// tensors.
    pub fn formats(&self) -> &[(String, usize)] {
        &self.formats
    }

    /// The options it was loaded with.
    pub fn options(&self) -> LmOptions {
        self.options
    }

    /// Whether it runs on the CPU backend.
    pub fn on_cpu(&self) -> bool {
        self.session.on_cpu()
    }

    /// Bytes of key/value cache one sequence of `ctx` positions takes.
    pub fn kv_bytes(&self, ctx: usize) -> u64 {
        let c = &self.config;
        (2 * c.num_layers * ctx * c.num_kv_heads * c.head_dim * self.options.kv.bytes()) as u64
    }

    /// Key/value caches for up to `seqs` sequences of up to `ctx` positions each.
    pub fn new_state(&self, seqs: usize, ctx: usize) -> Result<DecodeState> {
        if seqs == 0 || ctx == 0 {
            return Err(config_err(format!(
                "a decode state needs at least one sequence and position, got {seqs} × {ctx}"
            )));
        }
        let width = self.config.num_kv_heads * self.config.head_dim;
        let shapes = vec![vec![seqs, ctx, width]; 2 * self.config.num_layers];
        Ok(DecodeState { state: self.session.new_state(&shapes)?, ctx, rows: vec![Rows::default(); seqs], clock: 0 })
    }

    /// One step over several sequences: each entry appends its tokens to its sequence (a
    /// chunk of a prompt, or the one token sampled last) and gets the logits after its last
    /// token. Sequences may be at any positions; the step runs as one batch.
    pub async fn step_async(&self, state: &mut DecodeState, work: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        self.run(state, work, false).await
    }

    /// Appends `tokens` to a sequence and returns the logits after each of them (teacher
    /// forcing, scoring a text, the log-probabilities of a prompt).
    pub async fn score_async(&self, state: &mut DecodeState, seq: SeqId, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.run(state, &[(seq, tokens)], true).await
    }

    /// Blocking [`LanguageModel::score_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn score(&self, state: &mut DecodeState, seq: SeqId, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.score_async(state, seq, tokens))
    }

    async fn run(&self, state: &mut DecodeState, work: &[(SeqId, &[u32])], every_row: bool) -> Result<Vec<Vec<f32>>> {
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut seqs = Vec::new();
        let mut rows = Vec::with_capacity(work.len());
        for (i, &(seq, tokens)) in work.iter().enumerate() {
            let len = state.len(seq).ok_or_else(|| config_err(format!("sequence {} is not in the state", seq.0)))?;
            if work[..i].iter().any(|(s, _)| *s == seq) {
                return Err(config_err(format!("sequence {} appears twice in one step", seq.0)));
            }
            if tokens.is_empty() {
                return Err(config_err(format!("sequence {}: a step needs at least one token", seq.0)));
            }
            if len + tokens.len() > state.ctx {
                return Err(config_err(format!(
                    "sequence {}: {} tokens after {len} exceed the context of {} positions",
                    seq.0,
                    tokens.len(),
                    state.ctx
                )));
            }
            ids.extend_from_slice(tokens);
            pos.extend((len..len + tokens.len()).map(|p| p as u32));
            seqs.extend(std::iter::repeat_n(seq.0 as u32, tokens.len()));
            if every_row {
                rows.extend((ids.len() - tokens.len()) as u32..ids.len() as u32);
            } else {
                rows.push(ids.len() as u32 - 1);
            }
        }
        let n = ids.len();
        let inputs = [
            HostTensor::u32(&[n], &ids),
            HostTensor::u32(&[n], &pos),
            HostTensor::u32(&[n], &seqs),
            HostTensor::u32(&[rows.len()], &rows),
        ];
        let out = self.session.run_with_state_async(&inputs, &mut state.state).await?;
        for &(seq, tokens) in work {
            if let Some(r) = state.rows.get_mut(seq.0) {
                r.tokens.extend_from_slice(tokens);
            }
        }
        let vocab = self.config.vocab_size;
        Ok(out[0].to_f32().chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Blocking [`LanguageModel::step_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(&self, state: &mut DecodeState, work: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.step_async(state, work))
    }
}

/// Key/value caches for a fixed number of sequences, owned by the caller: sequences are added,
/// stepped (by [`LanguageModel::step`]) and removed. A removed sequence's rows keep their
/// tokens until they are taken again, so a later sequence that starts with the same tokens (a
/// shared system prompt, the same conversation) can reuse them ([`DecodeState::add_reusing`]).
pub struct DecodeState {
    state: State,
    ctx: usize,
    rows: Vec<Rows>,
    /// Counts removals, to take the least recently freed rows first.
    clock: u64,
}

/// One sequence's rows of the cache.
#[derive(Clone, Debug, Default)]
struct Rows {
    /// The tokens whose keys and values the rows hold.
    tokens: Vec<u32>,
    /// A sequence owns them.
    busy: bool,
    /// When they were freed.
    freed: u64,
}

impl std::fmt::Debug for DecodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<Option<usize>> = self.rows.iter().map(|r| r.busy.then_some(r.tokens.len())).collect();
        f.debug_struct("DecodeState").field("ctx", &self.ctx).field("lens", &lens).finish_non_exhaustive()
    }
}

impl DecodeState {
    /// Starts an empty sequence, or `None` when every row is taken.
    pub fn add(&mut self) -> Option<SeqId> {
        let i = self.free().min_by_key(|&i| (self.rows[i].freed, i))?;
        self.rows[i] = Rows { tokens: Vec::new(), busy: true, freed: 0 };
        Some(SeqId(i))
    }

    /// Starts a sequence for `prompt` in the free rows that hold the longest prefix of it (the
    /// least recently freed on a tie), keeping that prefix (at most `prompt.len() - 1` tokens:
    /// the last one must run to give logits). Returns the sequence and how many tokens it
    /// already holds, or `None` when every row is taken.
    pub fn add_reusing(&mut self, prompt: &[u32]) -> Option<(SeqId, usize)> {
        let common = |r: &Rows| r.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let i = self.free().min_by_key(|&i| (std::cmp::Reverse(common(&self.rows[i])), self.rows[i].freed, i))?;
        self.rows[i].busy = true;
        let kept = self.reuse_prefix(SeqId(i), prompt);
        Some((SeqId(i), kept))
    }

    fn free(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows.iter().enumerate().filter(|(_, r)| !r.busy).map(|(i, _)| i)
    }

    /// Ends a sequence; its rows go to a later one (keeping their tokens for
    /// [`DecodeState::add_reusing`]).
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(r) = self.rows.get_mut(seq.0).filter(|r| r.busy) {
            self.clock += 1;
            r.busy = false;
            r.freed = self.clock;
        }
    }

    /// Forgets a sequence's tokens from `len` on (to rewind a conversation or reuse a prefix).
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        if let Some(r) = self.rows.get_mut(seq.0).filter(|r| r.busy) {
            r.tokens.truncate(len);
        }
    }

    /// The tokens a sequence holds, `None` if it is not in the state.
    pub fn tokens(&self, seq: SeqId) -> Option<&[u32]> {
        self.rows.get(seq.0).filter(|r| r.busy).map(|r| r.tokens.as_slice())
    }

    /// Keeps the longest prefix of a sequence's tokens that `tokens` starts with, but at most
    /// `tokens.len() - 1` of them (the last token must run again to give its logits): what a
    /// conversation's next turn can reuse. Returns how many are kept.
    pub fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> usize {
        let held = self.tokens(seq).unwrap_or_default();
        let keep = held.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(tokens.len().saturating_sub(1));
        self.truncate(seq, keep);
        keep
    }

    /// Tokens a sequence holds, `None` if it is not in the state.
    pub fn len(&self, seq: SeqId) -> Option<usize> {
        self.tokens(seq).map(<[u32]>::len)
    }

    /// Positions each sequence can hold.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Sequences the state can hold at once.
    pub fn capacity(&self) -> usize {
        self.rows.len()
    }

    /// Sequences in it now.
    pub fn active(&self) -> usize {
        self.rows.iter().filter(|r| r.busy).count()
    }

    /// Bytes of cache memory.
    pub fn bytes(&self) -> u64 {
        self.state.bytes()
    }
}
