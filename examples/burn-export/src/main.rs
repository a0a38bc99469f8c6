//! A sentence encoder defined in burn (embeddings, a LayerNorm, a `TransformerEncoder`, mean
//! pooling), exported with `wedge-burn` to a quantized `.wedge` package with the bundled
//! model's WordPiece tokenizer, then loaded by wedge and used to embed text, as the browser
//! package, `wedge serve` or a desktop app would. It prints how close wedge's embeddings are
//! to burn's own for the same sentences.
//!
//! `cargo run --release -p burn-export -- [OUT.wedge] [f32|q8|q4|auto]`
//!
//! The weights are burn's random initialization, or a record saved by burn-store
//! (`SafetensorsStore`) when `WEIGHTS=file.safetensors` is set: a trained model exports the
//! same way.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use wedge_burn::{EncoderExport, Quant};

/// The model, as a burn user writes one.
#[derive(Module, Debug)]
struct SentenceEncoder {
    tokens: Embedding,
    positions: Embedding,
    norm: LayerNorm,
    transformer: TransformerEncoder,
}

impl SentenceEncoder {
    fn new(vocab: usize, device: &Device) -> SentenceEncoder {
        SentenceEncoder {
            tokens: EmbeddingConfig::new(vocab, 64).init(device),
            positions: EmbeddingConfig::new(128, 64).init(device),
            norm: LayerNormConfig::new(64).init(device),
            transformer: TransformerEncoderConfig::new(64, 256, 4, 2).with_dropout(0.0).init(device),
        }
    }

    /// Mean-pooled, L2-normalized embeddings of token id sequences.
    fn embed(&self, sequences: &[Vec<u32>], device: &Device) -> Vec<Vec<f32>> {
        sequences
            .iter()
            .map(|ids| {
                let s = ids.len();
                let ids = Tensor::<2, Int>::from_data(
                    TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [1, s]),
                    device,
                );
                let pos = Tensor::<2, Int>::from_data(TensorData::new((0..s as i64).collect(), [1, s]), device);
                let x = self.norm.forward(self.tokens.forward(ids) + self.positions.forward(pos));
                let pad = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; s], [1, s]), device);
                let h = self.transformer.forward(TransformerEncoderInput::new(x).mask_pad(pad));
                let pooled = h.mean_dim(1);
                let norm = pooled.clone().powi_scalar(2).sum_dim(2).sqrt();
                (pooled / norm).into_data().try_to_vec::<f32>().unwrap_or_default()
            })
            .collect()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().map_or("burn-encoder.wedge", String::as_str);
    let quant_name = args.get(1).map_or("q8", String::as_str);
    let quant = Quant::parse(quant_name).with_context(|| format!("unknown quantization `{quant_name}`"))?;

    // the bundled model's tokenizer: its vocabulary sizes the token table
    let bundled = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2.wedge"))?;
    let (package, _) = wedge_core::Package::from_bytes(&bundled)?;
    let tokenizer = package.assets.get("tokenizer.json").context("the bundled model has no tokenizer")?.clone();
    let vocab = package.config["vocab_size"].as_u64().context("the bundled model has no vocab_size")? as usize;

    let device = Device::default();
    let mut model = SentenceEncoder::new(vocab, &device);
    if let Ok(weights) = std::env::var("WEIGHTS") {
        let mut store = SafetensorsStore::from_file(&weights);
        model.load_from(&mut store).map_err(|e| anyhow::anyhow!("{weights}: {e}"))?;
        println!("weights: {weights}");
    } else {
        println!("weights: burn's random initialization (WEIGHTS=file.safetensors for a trained record)");
    }

    let exported = EncoderExport::new(&model.tokens, &model.transformer)
        .positions(&model.positions)
        .embedding_norm(&model.norm)
        .normalize(true)
        .tokenizer_json(tokenizer)
        .source("burn-export example")
        .package(&quant)?;
    let (bytes, digest) = exported.to_bytes(3)?;
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {out}"))?;
    println!(
        "wrote {out}: {:.2} MB, {quant_name} ({}), digest {}",
        bytes.len() as f64 / 1e6,
        exported.metadata.get("mixed_precision").map_or("uniform", String::as_str),
        &digest[..16]
    );

    // wedge loads the file as any package: here on the CPU (a GPU with Device::auto())
    let embedder = wedge::Embedder::from_bytes(&std::fs::read(out)?, &wedge::Device::cpu())?;
    let texts = ["Refunds go back to the original payment method.", "The edge node answers from its cache."];
    let from_wedge = embedder.embed(&texts)?;
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| Ok(embedder.tokenize(t)?.ids)).collect::<Result<_>>()?;
    let from_burn = model.embed(&ids, &device);
    for ((text, w), b) in texts.iter().zip(&from_wedge).zip(&from_burn) {
        let cosine: f32 = w.iter().zip(b).map(|(x, y)| x * y).sum();
        println!("{text:<52} dim {}  cosine(wedge, burn) {cosine:.5}", w.len());
    }
    Ok(())
}
