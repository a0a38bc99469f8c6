//! burn-wgpu against wedge's GPU path on one sentence encoder, on the same adapter.
//!
//! The model is defined in burn (token and position embeddings, a LayerNorm, a 6-layer
//! `TransformerEncoder` the size of all-MiniLM-L6-v2, mean pooling, L2 normalization) with
//! burn's random initialization. burn runs it on its wgpu backend (fusion and autotune on, as
//! a burn user gets by default), f32 and with its own weight quantization (`quantize_weights`:
//! symmetric int8 per tensor, int4 in blocks of 32); wedge runs the same weights exported by
//! `wedge-burn` at f32, q8 and q4 on `Device::gpu()`. Both take the same token ids, batch
//! 1/8/32 of `SEQ` tokens (64 by default), every input read back to the host.
//!
//! For each pair it prints the median latency of a batch, texts per second, and the cosine of
//! each side's embeddings to burn's f32 ones (the same model, so f32 against f32 is ~1).
//!
//! `cargo run --release -- [ITERS]` (benches/burn-wgpu.sh runs it; `SEQ`, `BATCHES`, `WARMUP`
//! override).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::{Module, ParamGroup, Quantizer};
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::quantization::{Calibration, QuantScheme, QuantValue, ScaleDtype};
use burn::tensor::{Device, Int, Tensor, TensorData};
use wedge_burn::{EncoderExport, Quant};

const DIM: usize = 384;
const FFN: usize = 1536;
const HEADS: usize = 12;
const LAYERS: usize = 6;
const POSITIONS: usize = 512;

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
            tokens: EmbeddingConfig::new(vocab, DIM).init(device),
            positions: EmbeddingConfig::new(POSITIONS, DIM).init(device),
            norm: LayerNormConfig::new(DIM).init(device),
            transformer: TransformerEncoderConfig::new(DIM, FFN, HEADS, LAYERS).with_dropout(0.0).init(device),
        }
    }

    /// Embeddings of `b` sequences of `s` ids (no padding), read back to the host.
    fn embed(&self, ids: &[u32], b: usize, s: usize, device: &Device) -> Vec<f32> {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [b, s]), device);
        let pos: Vec<i64> = (0..b * s).map(|i| (i % s) as i64).collect();
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, s]), device);
        let x = self.norm.forward(self.tokens.forward(ids) + self.positions.forward(pos));
        let h = self.transformer.forward(TransformerEncoderInput::new(x));
        let pooled = h.mean_dim(1);
        let norm = pooled.clone().powi_scalar(2).sum_dim(2).sqrt();
        (pooled / norm).into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    /// The same model with the weights of every linear layer quantized by burn.
    fn quantized(self, scheme: QuantScheme) -> SentenceEncoder {
        let mut q = Quantizer::new(Calibration::MinMax, scheme);
        let mut quantize = |l: Linear| l.quantize_weights_group(&mut q, ParamGroup::from_path("weight"));
        let mut transformer = self.transformer;
        transformer.layers = transformer
            .layers
            .into_iter()
            .map(|mut layer| {
                layer.mha.query = quantize(layer.mha.query);
                layer.mha.key = quantize(layer.mha.key);
                layer.mha.value = quantize(layer.mha.value);
                layer.mha.output = quantize(layer.mha.output);
                layer.pwff.linear_inner = quantize(layer.pwff.linear_inner);
                layer.pwff.linear_outer = quantize(layer.pwff.linear_outer);
                layer
            })
            .collect();
        SentenceEncoder { transformer, ..self }
    }
}

/// Median and the texts per second it makes.
fn measure(
    (warmup, iters): (usize, usize),
    batch: usize,
    mut run: impl FnMut() -> Result<Vec<f32>>,
) -> Result<(Duration, f64, Vec<f32>)> {
    let mut out = run()?; // warm-up: pipelines, autotune, uploads
    for _ in 0..warmup {
        out = run()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        out = run()?;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    Ok((median, batch as f64 / median.as_secs_f64(), out))
}

/// Lowest cosine between rows of two row-major sets of unit vectors.
fn min_cosine(a: &[f32], b: &[f32]) -> f32 {
    a.chunks(DIM).zip(b.chunks(DIM)).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>()).fold(1.0, f32::min)
}

fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| v.trim().parse().with_context(|| format!("{name}: `{v}` is not a number")))
        .collect()
}

fn main() -> Result<()> {
    let iters: usize = std::env::args().nth(1).map_or(Ok(10), |v| v.parse()).context("ITERS: a number")?;
    let seq = env_list("SEQ", "64")?[0];
    let warmup = env_list("WARMUP", "2")?[0];
    let batches = env_list("BATCHES", "1,8,32")?;
    // (profiling wedge alone: ONLY_WEDGE=1 skips burn's timed runs)
    let only_wedge = std::env::var_os("ONLY_WEDGE").is_some();

    let bundled = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2.wedge"))?;
    let (package, _) = wedge_core::Package::from_bytes(&bundled)?;
    let tokenizer = package.assets.get("tokenizer.json").context("the bundled model has no tokenizer")?.clone();
    let vocab = package.config["vocab_size"].as_u64().context("no vocab_size")? as usize;

    let device = Device::default();
    let model = SentenceEncoder::new(vocab, &device);
    let gpu = wedge::Device::gpu()?;
    println!("wedge adapter: {}", gpu.describe());
    println!("burn device: {device:?}");
    println!(
        "model: {LAYERS} layers, d_model {DIM}, ffn {FFN}, {HEADS} heads, vocab {vocab}; {seq} tokens a text; \
         median of {iters} runs after {} warm-up",
        warmup + 1
    );

    // the same ids for both: [CLS] pseudo-random word pieces [SEP]
    let max_b = batches.iter().copied().max().unwrap_or(1);
    let mut state = 0x2545_f491_u32;
    let ids: Vec<u32> = (0..max_b * seq)
        .map(|i| match i % seq {
            0 => 101,
            p if p == seq - 1 => 102,
            _ => {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                1000 + state % (vocab as u32 - 1000)
            }
        })
        .collect();

    let exports: Vec<(&str, wedge::Embedder)> = ["f32", "q8", "q4"]
        .into_iter()
        .map(|name| {
            let pkg = EncoderExport::new(&model.tokens, &model.transformer)
                .positions(&model.positions)
                .embedding_norm(&model.norm)
                .normalize(true)
                .tokenizer_json(tokenizer.clone())
                .package(&Quant::parse(name).context("quant")?)?;
            let (bytes, _) = pkg.to_bytes(1)?;
            Ok((name, wedge::Embedder::from_bytes(&bytes, &gpu)?))
        })
        .collect::<Result<_>>()?;
    let burn_q8 = model.clone().quantized(QuantScheme::default().with_value(QuantValue::Q8S));
    let burn_q4 =
        model.clone().quantized(QuantScheme::default().with_value(QuantValue::Q4S).per_block([32], ScaleDtype::F32));
    let burns = [("f32", &model), ("q8", &burn_q8), ("q4", &burn_q4)];

    println!();
    println!(
        "| weights | batch | burn-wgpu ms | wedge ms | burn-wgpu texts/s | wedge texts/s | wedge / burn | cos burn | cos wedge |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &b in &batches {
        let ids = &ids[..b * seq];
        let reference = model.embed(ids, b, seq, &device);
        for ((name, burn_model), (_, embedder)) in burns.iter().zip(&exports) {
            let tokens: Vec<wedge::Tokens> =
                ids.chunks(seq).map(|c| wedge::Tokens { ids: c.to_vec(), type_ids: vec![0; seq] }).collect();
            // burn's side, or dashes when it was not run (ONLY_WEDGE): never a made-up figure
            let burn = if only_wedge {
                None
            } else {
                Some(measure((warmup, iters), b, || Ok(burn_model.embed(ids, b, seq, &device)))?)
            };
            let (wt, wrate, wout) = measure((warmup, iters), b, || {
                Ok(embedder.embed_padded(&tokens, seq)?.into_iter().flatten().collect())
            })?;
            let (bms, brate, ratio, bcos) = match &burn {
                Some((bt, brate, bout)) => (
                    format!("{:.1}", bt.as_secs_f64() * 1e3),
                    format!("{brate:.1}"),
                    format!("{:.2}x", wrate / brate),
                    format!("{:.5}", min_cosine(&reference, bout)),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "| {name} | {b} | {bms} | {:.1} | {brate} | {wrate:.1} | {ratio} | {bcos} | {:.5} |",
                wt.as_secs_f64() * 1e3,
                min_cosine(&reference, &wout),
            );
        }
    }
    Ok(())
}
