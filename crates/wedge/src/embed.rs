//! Sentence embeddings: tokenizer, padding and masks around an encoder session.

use tokenizers::{Tokenizer, TruncationParams};
use wedge_core::plan::HostTensor;

use crate::{Device, Error, Model, Result, Session};

/// Tokenized text: ids and token types, truncated to the model's maximum length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token type ids.
    pub type_ids: Vec<u32>,
}

/// Texts per run when [`Embedder::embed_async`] splits its input.
pub const DEFAULT_MAX_BATCH: usize = 32;

/// Padded tokens a run may always hold, however uneven its lengths (small runs are cheap).
const PAD_FLOOR: usize = 512;

/// Padded tokens a CPU run holds at most: a bigger batch runs in parts of this many tokens,
/// whose activations stay nearer the cores' caches. MiniLM q8 on 2 cores, 128-token texts:
/// 105 emb/s at batch 4, 8 or 16, 94 at 32 in one run.
const CPU_RUN_TOKENS: usize = 2048;

/// Splits texts of these token lengths into runs for [`Embedder::embed_batched_async`]:
/// longest first, at most `max_batch` texts a run, and a run's padded size (texts × its
/// longest) at most 1.5× its real tokens, or [`PAD_FLOOR`] tokens. One long text among
/// short ones then costs its own run rather than padding every other text to its length.
/// Returns the indices of each run; every index appears once.
pub fn length_batches(lens: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let max_batch = max_batch.max(1);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut real = 0;
    for i in order {
        let fits = runs.last().is_some_and(|run| {
            let longest = lens[run[0]].max(1);
            let padded = (run.len() + 1) * longest;
            run.len() < max_batch && (padded <= PAD_FLOOR || 2 * padded <= 3 * (real + lens[i]))
        });
        if fits {
            real += lens[i];
            if let Some(run) = runs.last_mut() {
                run.push(i);
            }
        } else {
            real = lens[i];
            runs.push(vec![i]);
        }
    }
    runs
}

/// A sentence-embedding model on a device: text in, one vector per text out.
pub struct Embedder {
    session: Session,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    dim: usize,
    digest: Option<String>,
    weight_bytes: u64,
    /// The graph pools the first token's state (it takes [`wedge_core::models::CLS_ROWS`]).
    cls: bool,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("max_seq_length", &self.max_seq_length)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

fn config_err(msg: String) -> Error {
    Error::Core(wedge_core::Error::Config(msg))
}

impl Embedder {
    /// Prepares an encoder package (with its `tokenizer.json` asset) on `device`.
    pub fn new(model: &Model, tokenizer_json: &[u8], max_seq_length: usize, device: &Device) -> Result<Embedder> {
        let mut tokenizer =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| config_err(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| config_err(format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(None);
        let dim = model
            .weights()
            .iter()
            .find(|w| w.name == "embeddings.word_embeddings.weight")
            .map(|w| w.shape[1])
            .ok_or_else(|| config_err("not an encoder: no embeddings.word_embeddings.weight".into()))?;
        Ok(Embedder {
            session: model.session(device)?,
            tokenizer,
            max_seq_length,
            dim,
            digest: model.digest().map(str::to_string),
            weight_bytes: model.weights().iter().map(|w| w.packed_bytes() as u64).sum(),
            cls: model.graph().inputs.iter().any(|i| i.name == wedge_core::models::CLS_ROWS),
        })
    }

    /// Loads a `.wedge` encoder package from bytes onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Embedder> {
        // a package of another family is refused from its header, before its sections inflate
        let limits = wedge_core::package::PackageLimits::default();
        let head = wedge_core::package::read_header(bytes, &limits)?;
        let architecture = &head.header.architecture;
        if architecture != wedge_core::models::ENCODER {
            return Err(config_err(format!(
                "the package holds a `{architecture}` model, not a sentence encoder ({})",
                wedge_core::models::ENCODER
            )));
        }
        let (model, assets, config) = Model::from_parsed(bytes, head)?;
        let tok =
            assets.get("tokenizer.json").ok_or_else(|| config_err("the package carries no tokenizer.json".into()))?;
        let max = config
            .get("max_seq_length")
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .or_else(|| config.get("max_position_embeddings").and_then(serde_json::Value::as_u64).map(|v| v as usize))
            .ok_or_else(|| config_err("the package config has no max_seq_length".into()))?;
        Embedder::new(&model, tok, max, device)
    }

    /// Bytes of packed weights (what the device holds, before any layout of its own).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens; longer texts are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The package digest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Tokenizes one text (special tokens added, truncated to `max_seq_length`).
    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| config_err(format!("tokenizer: {e}")))?;
        Ok(Tokens { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec() })
    }

    /// The encoder inputs for a batch, padded to its longest member with a padding mask.
    pub fn inputs(&self, batch: &[Tokens]) -> Result<Vec<HostTensor>> {
        self.inputs_padded(batch, 1)
    }

    /// The encoder inputs for a batch padded to at least `min_len` tokens (pad id 0, mask 0),
    /// for fixed-shape workloads; every position is computed, padding included.
    pub fn inputs_padded(&self, batch: &[Tokens], min_len: usize) -> Result<Vec<HostTensor>> {
        let b = batch.len();
        let s = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(min_len).max(1);
        if batch.iter().any(|t| t.ids.len() != t.type_ids.len()) {
            return Err(Error::Core(wedge_core::Error::Input("ids and type ids differ in length".into())));
        }
        if s > self.max_seq_length {
            return Err(Error::Core(wedge_core::Error::Input(format!(
                "{s} tokens exceed the model's maximum of {}",
                self.max_seq_length
            ))));
        }
        let (mut ids, mut types, mut mask) = (vec![0u32; b * s], vec![0u32; b * s], vec![0u32; b * s]);
        for (i, t) in batch.iter().enumerate() {
            let l = t.ids.len();
            ids[i * s..i * s + l].copy_from_slice(&t.ids);
            types[i * s..i * s + l].copy_from_slice(&t.type_ids);
            mask[i * s..i * s + l].fill(1);
        }
        let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        let mut inputs = vec![
            HostTensor::u32(&[b, s], &ids),
            HostTensor::u32(&[b, s], &types),
            HostTensor::u32(&[b, s], &pos),
            HostTensor::u32(&[b, s], &mask),
        ];
        if self.cls {
            let rows: Vec<u32> = (0..b).map(|i| (i * s) as u32).collect();
            inputs.push(HostTensor::u32(&[b], &rows));
        }
        Ok(inputs)
    }

    /// Embeds tokenized texts as one batch.
    pub async fn embed_tokens_async(&self, batch: &[Tokens]) -> Result<Vec<Vec<f32>>> {
        self.embed_padded_async(batch, 1).await
    }

    /// Embeds tokenized texts as one batch padded to at least `min_len` tokens. On the CPU
    /// a batch of more than [`CPU_RUN_TOKENS`] padded tokens runs in parts (each padded to
    /// at least `min_len`); the vectors are the same, in the same order.
    pub async fn embed_padded_async(&self, batch: &[Tokens], min_len: usize) -> Result<Vec<Vec<f32>>> {
        let longest = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(min_len).max(1);
        if !self.session.on_cpu() || batch.len() * longest <= CPU_RUN_TOKENS {
            return self.embed_run(batch, min_len).await;
        }
        let mut out = Vec::with_capacity(batch.len());
        for part in batch.chunks((CPU_RUN_TOKENS / longest).max(1)) {
            out.extend(self.embed_run(part, min_len).await?);
        }
        Ok(out)
    }

    /// One run of the encoder over `batch`, padded to at least `min_len` tokens.
    async fn embed_run(&self, batch: &[Tokens], min_len: usize) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let outputs = self.session.run_async(&self.inputs_padded(batch, min_len)?).await?;
        let emb = outputs
            .iter()
            .zip(&self.session.graph().outputs)
            .find(|(_, (name, _))| name == "embedding")
            .map(|(t, _)| t.to_f32())
            .ok_or_else(|| config_err("the model has no `embedding` output".into()))?;
        Ok(emb.chunks(self.dim).map(<[f32]>::to_vec).collect())
    }

    /// Embeds tokenized texts in runs of similar length ([`length_batches`]) of at most
    /// `max_batch` texts; the vectors come back in input order.
    pub async fn embed_batched_async(&self, tokens: &[Tokens], max_batch: usize) -> Result<Vec<Vec<f32>>> {
        let lens: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
        let mut out = vec![Vec::new(); tokens.len()];
        for run in length_batches(&lens, max_batch) {
            let batch: Vec<Tokens> = run.iter().map(|&i| tokens[i].clone()).collect();
            for (&i, v) in run.iter().zip(self.embed_tokens_async(&batch).await?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Embeds texts, in runs of similar length of at most [`DEFAULT_MAX_BATCH`]; the
    /// vectors come back in input order.
    pub async fn embed_async(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>>>()?;
        self.embed_batched_async(&tokens, DEFAULT_MAX_BATCH).await
    }

    /// Blocking [`Embedder::embed_tokens_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_tokens(&self, batch: &[Tokens]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_tokens_async(batch))
    }

    /// Blocking [`Embedder::embed_padded_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_padded(&self, batch: &[Tokens], min_len: usize) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_padded_async(batch, min_len))
    }

    /// Blocking [`Embedder::embed_batched_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_batched(&self, tokens: &[Tokens], max_batch: usize) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_batched_async(tokens, max_batch))
    }

    /// Blocking [`Embedder::embed_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_async(texts))
    }
}

#[cfg(test)]
mod tests {
    use super::length_batches;

    fn check(lens: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
        let runs = length_batches(lens, max_batch);
        let mut seen: Vec<usize> = runs.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>(), "every text once");
        for run in &runs {
            assert!(!run.is_empty() && run.len() <= max_batch.max(1));
            let longest = run.iter().map(|&i| lens[i]).max().unwrap_or(0);
            let real: usize = run.iter().map(|&i| lens[i]).sum();
            assert!(run.len() * longest <= 512 || 2 * run.len() * longest <= 3 * real, "{run:?} of {lens:?}");
        }
        runs
    }

    #[test]
    fn similar_lengths_share_a_run_and_an_outlier_gets_its_own() {
        assert_eq!(check(&[12, 6, 8, 9], 32).len(), 1);
        // the public texts: one of 250 tokens, one of 141, the rest 4..25
        let public = [
            12, 6, 8, 9, 22, 20, 23, 15, 13, 10, 13, 22, 24, 4, 6, 14, 24, 11, 15, 20, 25, 141, 12, 13, 12, 22, 20, 15,
            19, 11, 17, 250,
        ];
        let runs = check(&public, 32);
        let padded: usize = runs.iter().map(|r| r.len() * r.iter().map(|&i| public[i]).max().unwrap()).sum();
        assert!(padded < 1200, "{padded} padded tokens in {runs:?}");
        assert_eq!(check(&public, 8).iter().map(Vec::len).max(), Some(8));
    }

    #[test]
    fn edge_cases() {
        assert!(check(&[], 4).is_empty());
        assert_eq!(check(&[0, 0, 0], 2), vec![vec![0, 1], vec![2]]);
        assert_eq!(check(&[3, 3, 3], 0).len(), 3);
        check(&[256; 100], 32);
        check(&[1, 256, 2, 255, 128, 64, 3], 32);
    }
}
