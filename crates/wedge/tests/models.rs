//! End to end on small random models: a BERT-style encoder and a llama-style
//! decoder, in several weight formats, GPU against CPU; a batch of N equals N
//! single runs; a package written and read back runs the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rand::Rng;
use wedge::{
    Activation, DecoderConfig, Device, EncoderConfig, Format, HostTensor, LanguageModel, LmOptions, Model, NormKind,
    Pooling, RopeMode, RopeScaling, Session, Weight,
};

fn encoder_config() -> EncoderConfig {
    EncoderConfig {
        vocab_size: 120,
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 160,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::GeluErf,
        pooling: Pooling::Mean,
        normalize: true,
        norm: Default::default(),
        norm_first: false,
        embedding_norm: Default::default(),
        final_norm: NormKind::None,
    }
}

fn decoder_config() -> DecoderConfig {
    DecoderConfig {
        vocab_size: 90,
        hidden_size: 48,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_mode: RopeMode::Interleaved,
        // (Llama 3's kind of scaling: the low frequencies stretched most)
        rope_scaling: RopeScaling::Factors(vec![1.0, 1.5, 4.0, 8.0]),
        tie_word_embeddings: true,
        qkv_bias: false,
        context_length: 0,
    }
}

/// Random weights for a model graph: matrices in `format`, vectors in f32 (norm scales near 1).
fn random_weights(mg: &wedge::ModelGraph, format: Format, seed: u64) -> Vec<Weight> {
    let mut r = rng(seed);
    mg.graph
        .weights
        .iter()
        .zip(&mg.weight_shapes)
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            if shape.len() == 1 {
                let base = if name.contains("LayerNorm.weight") || name.contains("norm.weight") { 1.0 } else { 0.0 };
                let v: Vec<f32> = (0..n).map(|_| base + r.random_range(-0.1..0.1)).collect();
                Weight::from_f32(name, shape, &v).unwrap()
            } else {
                let scale = 1.0 / (shape[1] as f32).sqrt() * 1.5;
                Weight::quantize(name, shape, &rand_vec(&mut r, n, scale), format).unwrap()
            }
        })
        .collect()
}

/// Encoder inputs for sequences of the given lengths, padded to the longest.
fn encoder_inputs(lens: &[usize], seed: u64) -> Vec<HostTensor> {
    let mut r = rng(seed);
    let (b, s) = (lens.len(), *lens.iter().max().unwrap());
    let mut ids = vec![0u32; b * s];
    let mut mask = vec![0u32; b * s];
    for (i, &l) in lens.iter().enumerate() {
        for j in 0..l {
            ids[i * s + j] = r.random_range(1..120);
            mask[i * s + j] = 1;
        }
    }
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    vec![
        HostTensor::u32(&[b, s], &ids),
        HostTensor::u32(&[b, s], &vec![0; b * s]),
        HostTensor::u32(&[b, s], &pos),
        HostTensor::u32(&[b, s], &mask),
    ]
}

#[test]
fn encoder_gpu_matches_cpu_in_every_format() {
    let mg = encoder_config().build().unwrap();
    let inputs = encoder_inputs(&[5, 17, 1, 9], 11);
    for (i, &format) in
        [Format::F32, Format::F16, Format::Q8, Format::Q4 { group: 32 }, Format::Q4_1 { group: 64 }].iter().enumerate()
    {
        let weights = random_weights(&mg, format, 100 + i as u64);
        let (cpu, gpu) = both(&mg.graph, &weights, &inputs);
        // outputs: last_hidden_state, embedding
        assert_eq!(cpu[1].shape, vec![4, 64]);
        let emb = cpu[1].to_f32();
        for row in emb.chunks(64) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
        }
        if let Some(gpu) = gpu {
            assert_close(&format!("encoder embedding {format}"), "encoder", &gpu[1].to_f32(), &emb);
            // padded positions hold garbage by design; compare the real tokens only
            let (c, g) = (cpu[0].to_f32(), gpu[0].to_f32());
            let mask = &inputs[3].data;
            for (t, &m) in mask.iter().enumerate() {
                if m == 1 {
                    assert_close(
                        &format!("encoder hidden {format} token {t}"),
                        "encoder",
                        &g[t * 64..(t + 1) * 64],
                        &c[t * 64..(t + 1) * 64],
                    );
                }
            }
        }
    }
}

/// CLS pooling (the sentence-transformers models whose pooling takes `pooling_mode_cls_token`,
/// as BGE's do): the embedding is each sequence's first token state, normalized, at every
/// padding, on the CPU and the GPU; through the Embedder, a text embeds alone as it does in a
/// batch, and not as the same weights pooled by mean.
#[test]
fn cls_pooling_takes_each_sequence_first_token() {
    let cfg = EncoderConfig { pooling: Pooling::Cls, vocab_size: 300, ..encoder_config() };
    let mg = cfg.build().unwrap();
    let (lens, s, h) = ([5, 17, 1, 9], 17, 64);
    let mut inputs = encoder_inputs(&lens, 13);
    inputs.push(HostTensor::u32(&[4], &[0, 17, 34, 51]));
    let weights = random_weights(&mg, Format::F32, 7);
    let (cpu, gpu) = both(&mg.graph, &weights, &inputs);
    let (hidden, emb) = (cpu[0].to_f32(), cpu[1].to_f32());
    assert_eq!(cpu[1].shape, vec![4, h]);
    for i in 0..lens.len() {
        let first = &hidden[i * s * h..(i * s + 1) * h];
        let norm = first.iter().map(|v| v * v).sum::<f32>().sqrt();
        let want: Vec<f32> = first.iter().map(|v| v / norm).collect();
        assert_close(&format!("cls embedding {i}"), "encoder", &emb[i * h..(i + 1) * h], &want);
    }
    if let Some(gpu) = gpu {
        assert_close("cls embedding on the GPU", "encoder", &gpu[1].to_f32(), &emb);
    }

    let tokenizer =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny/llama3_hf/tokenizer.json")).unwrap();
    let package = |pooling: Pooling| {
        let cfg = EncoderConfig { pooling, ..cfg.clone() };
        let pkg = wedge::Package {
            architecture: wedge_core::models::ENCODER.to_string(),
            config: serde_json::to_value(&cfg).unwrap(),
            metadata: Default::default(),
            tensors: weights.clone(),
            assets: [("tokenizer.json".to_string(), tokenizer.clone())].into(),
        };
        wedge::Embedder::from_bytes(&pkg.to_bytes(3).unwrap().0, &Device::cpu()).unwrap()
    };
    let (cls, mean) = (package(Pooling::Cls), package(Pooling::Mean));
    let texts = ["a short one", "and a much longer text, padded by nothing at all", "x"];
    let batch = cls.embed(&texts).unwrap();
    for (text, v) in texts.iter().zip(&batch) {
        assert_close(&format!("{text:?} alone"), "encoder", &cls.embed(&[text]).unwrap()[0], v);
    }
    let by_mean = mean.embed(&texts).unwrap();
    let cos: f32 = batch[1].iter().zip(&by_mean[1]).map(|(a, b)| a * b).sum();
    assert!(cos < 0.999, "cls and mean pooling gave the same vector (cosine {cos})");
}

/// The encoder variants other trainers make (burn's pre-norm `TransformerEncoder`, RMSNorm,
/// no embedding norm, a final norm): the GPU runs them as the CPU does, and each changes the
/// output (the option is not ignored).
#[test]
fn encoder_variants_gpu_matches_cpu() {
    let inputs = encoder_inputs(&[7, 3], 5);
    let base = encoder_config();
    let bert = {
        let mg = base.build().unwrap();
        both(&mg.graph, &random_weights(&mg, Format::F32, 40), &inputs).0[1].to_f32()
    };
    let variants = [
        EncoderConfig { norm_first: true, final_norm: NormKind::Layer, ..base.clone() },
        EncoderConfig { norm: NormKind::Rms, embedding_norm: NormKind::None, ..base.clone() },
        EncoderConfig { norm: NormKind::Rms, norm_first: true, final_norm: NormKind::Rms, ..base.clone() },
        EncoderConfig { embedding_norm: NormKind::Rms, final_norm: NormKind::Layer, ..base.clone() },
    ];
    for (i, cfg) in variants.iter().enumerate() {
        let mg = cfg.build().unwrap();
        let weights = random_weights(&mg, Format::F32, 40);
        let (cpu, gpu) = both(&mg.graph, &weights, &inputs);
        let emb = cpu[1].to_f32();
        assert!(max_diff(&emb, &bert) > 1e-3, "variant {i} computes what BERT's layout does");
        if let Some(gpu) = gpu {
            assert_close(&format!("encoder variant {i}"), "encoder", &gpu[1].to_f32(), &emb);
        }
    }
}

#[test]
fn encoder_batch_equals_singles() {
    let mg = encoder_config().build().unwrap();
    let weights = random_weights(&mg, Format::Q8, 5);
    let lens = [3, 12, 7, 1, 12, 5];
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu().cloned());
    for device in devices {
        let session = Session::new(&device, mg.graph.clone(), weights.clone()).unwrap();
        let batch = session.run(&encoder_inputs(&lens, 3)).unwrap()[1].to_f32();
        let full = encoder_inputs(&lens, 3);
        let s = *lens.iter().max().unwrap();
        for (i, &l) in lens.iter().enumerate() {
            // the same tokens, alone and unpadded
            let take = |t: &HostTensor| HostTensor::u32(&[1, l], &t.data[i * s..i * s + l]);
            let single: Vec<HostTensor> = full.iter().map(take).collect();
            let one = session.run(&single).unwrap()[1].to_f32();
            let diff = one.iter().zip(&batch[i * 64..(i + 1) * 64]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{}: row {i} differs from its single run by {diff}", device.describe());
        }
    }
}

/// The CPU backend keeps a run's memory for the next: runs of one session over shapes that
/// grow and shrink give what a fresh session gives, bit for bit, padding included.
#[test]
fn a_cpu_session_reused_across_shapes_equals_fresh_ones() {
    let mg = encoder_config().build().unwrap();
    let weights = random_weights(&mg, Format::Q8, 21);
    let device = Device::cpu();
    let reused = Session::new(&device, mg.graph.clone(), weights.clone()).unwrap();
    for (i, lens) in [&[30usize, 2, 17][..], &[4], &[9, 9], &[31, 1, 1, 5], &[3]].iter().enumerate() {
        let inputs = encoder_inputs(lens, 40 + i as u64);
        let fresh = Session::new(&device, mg.graph.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let again = reused.run(&inputs).unwrap();
        for (a, b) in again.iter().zip(&fresh) {
            assert_eq!(a.shape, b.shape);
            assert_eq!(a.data, b.data, "run {i} ({lens:?}) differs from a fresh session's");
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `b` rows of `s` random tokens, the second row left-padded by 3.
fn decoder_inputs(b: usize, s: usize) -> [HostTensor; 3] {
    let mut r = rng(9);
    let ids: Vec<u32> = (0..b * s).map(|_| r.random_range(0..90)).collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let mut mask = vec![1u32; b * s];
    mask[s..s + 3].fill(0);
    [HostTensor::u32(&[b, s], &ids), HostTensor::u32(&[b, s], &pos), HostTensor::u32(&[b, s], &mask)]
}

/// The f16 GEMM (shader-f16) end to end, against the CPU backend's f32 results: every
/// many-row matmul of the encoder and the decoder runs through it.
#[test]
fn encoder_and_decoder_with_the_f16_gemm_match_cpu() {
    let Some(device) = gpu_f16() else { return };
    let run = |mg: &wedge::ModelGraph, weights: &[Weight], inputs: &[HostTensor], d: &Device| {
        Session::new(d, mg.graph.clone(), weights.to_vec()).unwrap().run(inputs).unwrap()
    };
    let enc = encoder_config().build().unwrap();
    let inputs = encoder_inputs(&[5, 17, 1, 9], 11);
    let dec = decoder_config().build().unwrap();
    let dec_inputs = decoder_inputs(2, 11);
    for (i, &format) in [Format::F32, Format::Q8, Format::Q4 { group: 32 }].iter().enumerate() {
        let weights = random_weights(&enc, format, 100 + i as u64);
        let (cpu, gpu) = (run(&enc, &weights, &inputs, &Device::cpu()), run(&enc, &weights, &inputs, &device));
        eprintln!("f16 encoder {format}: max |gpu - cpu| {}", max_diff(&gpu[1].to_f32(), &cpu[1].to_f32()));
        assert_close(&format!("f16 encoder embedding {format}"), "encoder_f16", &gpu[1].to_f32(), &cpu[1].to_f32());
        let weights = random_weights(&dec, format, 200 + i as u64);
        let (cpu, gpu) = (run(&dec, &weights, &dec_inputs, &Device::cpu()), run(&dec, &weights, &dec_inputs, &device));
        eprintln!(
            "f16 decoder {format}: max |gpu - cpu| {} of max |cpu| {}",
            max_diff(&gpu[0].to_f32(), &cpu[0].to_f32()),
            cpu[0].to_f32().iter().fold(0f32, |a, v| a.max(v.abs()))
        );
        assert_close(&format!("f16 decoder logits {format}"), "decoder_f16", &gpu[0].to_f32(), &cpu[0].to_f32());
    }
}

#[test]
fn decoder_gpu_matches_cpu_with_grouped_heads() {
    let mg = decoder_config().build().unwrap();
    let (b, s) = (2, 11);
    let inputs = decoder_inputs(b, s);
    for (i, &format) in
        [Format::F32, Format::Q8, Format::Q4_1 { group: 32 }, Format::Q4 { group: 32 }].iter().enumerate()
    {
        let weights = random_weights(&mg, format, 200 + i as u64);
        let (cpu, gpu) = both(&mg.graph, &weights, &inputs);
        assert_eq!(cpu[0].shape, vec![b, s, 90]);
        if let Some(gpu) = gpu {
            let (c, g) = (cpu[0].to_f32(), gpu[0].to_f32());
            // left-padded query rows see no key: both backends give them zero attention output
            assert_close(&format!("decoder logits {format}"), "decoder", &g, &c);
        }
    }
}

#[test]
fn package_round_trip_runs_the_same() {
    let cfg = encoder_config();
    let mg = cfg.build().unwrap();
    let weights = random_weights(&mg, Format::Q4 { group: 32 }, 77);
    let pkg = wedge::Package {
        architecture: wedge_core::models::ENCODER.to_string(),
        config: serde_json::to_value(&cfg).unwrap(),
        metadata: Default::default(),
        tensors: weights.clone(),
        assets: Default::default(),
    };
    let (bytes, digest) = pkg.to_bytes(3).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.digest(), Some(digest.as_str()));
    let inputs = encoder_inputs(&[4, 6], 1);
    let direct = Session::new(&Device::cpu(), mg.graph.clone(), weights).unwrap().run(&inputs).unwrap();
    let loaded = model.session(&Device::cpu()).unwrap().run(&inputs).unwrap();
    assert_eq!(direct, loaded);
    // a package that lacks a tensor the architecture needs is refused by name
    let mut broken = pkg.clone();
    broken.tensors.retain(|t| t.name != "encoder.layer.1.output.dense.weight");
    let err = Model::from_bytes(&broken.to_bytes(3).unwrap().0).unwrap_err().to_string();
    assert!(err.contains("encoder.layer.1.output.dense.weight"), "{err}");
}

/// A package is refused for its family or its config from the header, before a section is
/// decompressed: here every section is damaged, and the error is still about what the package
/// is, not its checksums (a wrong file fails at once, whatever its size).
#[test]
fn a_package_of_the_other_family_is_refused_from_its_header() {
    let damaged = |pkg: &wedge::Package| {
        let (mut bytes, _) = pkg.to_bytes(3).unwrap();
        let head = wedge_core::package::read_header(&bytes, &Default::default()).unwrap();
        for t in &head.header.tensors {
            bytes[head.data_offset + t.offset as usize] ^= 0x55;
        }
        bytes
    };
    let cfg = encoder_config();
    let mg = cfg.build().unwrap();
    let encoder = wedge::Package {
        architecture: wedge_core::models::ENCODER.to_string(),
        config: serde_json::to_value(&cfg).unwrap(),
        metadata: Default::default(),
        tensors: random_weights(&mg, Format::Q8, 5),
        assets: Default::default(),
    };
    let err = LanguageModel::from_wedge(&damaged(&encoder), &Device::cpu(), LmOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a language model"), "{err}");
    let mut bad_config = encoder.clone();
    bad_config.config["num_heads"] = serde_json::json!(0);
    let err = Model::from_bytes(&damaged(&bad_config)).unwrap_err().to_string();
    assert!(!err.contains("checksum"), "{err}");
    // and intact, the encoder still loads (the checks cost nothing to a right file)
    Model::from_bytes(&encoder.to_bytes(3).unwrap().0).unwrap();

    let gguf = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny/qwen2_linear.gguf")).unwrap();
    let decoder = wedge_import::import_gguf(&gguf, "test", wedge_import::DecoderQuant::Keep).unwrap();
    let err = wedge::Embedder::from_bytes(&damaged(&decoder), &Device::cpu()).unwrap_err();
    assert!(err.to_string().contains("not a sentence encoder"), "{err}");
    let err = LanguageModel::from_wedge(&damaged(&decoder), &Device::cpu(), LmOptions::default()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// One step of the stateful decoder: `(seq, first position, tokens)` per entry, the logits of
/// every token back.
fn cached_step(session: &Session, state: &mut wedge::State, work: &[(u32, usize, &[u32])]) -> Vec<Vec<f32>> {
    let (mut ids, mut pos, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
    for &(seq, start, tokens) in work {
        ids.extend_from_slice(tokens);
        pos.extend((start..start + tokens.len()).map(|p| p as u32));
        seqs.extend(std::iter::repeat_n(seq, tokens.len()));
    }
    let n = ids.len();
    let rows: Vec<u32> = (0..n as u32).collect();
    let inputs = [
        HostTensor::u32(&[n], &ids),
        HostTensor::u32(&[n], &pos),
        HostTensor::u32(&[n], &seqs),
        HostTensor::u32(&[n], &rows),
    ];
    let out = session.run_with_state(&inputs, state).unwrap();
    out[0].to_f32().chunks_exact(90).map(<[f32]>::to_vec).collect()
}

/// The stateful decoder against the whole-sequence graph: two sequences prefilled in uneven
/// chunks in one step with each other, then decoded a token a step together, give each
/// token's logits as the causal graph over that sequence alone does (1e-4), with an f32 cache
/// on the CPU, within 5e-3 on the GPU, and with an f16 cache within 0.1. A removed
/// sequence's rows are reused.
#[test]
fn cached_decoder_steps_equal_whole_sequences() {
    let mut cfg = decoder_config();
    cfg.qkv_bias = true;
    let full = cfg.build().unwrap();
    let a: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 90).collect();
    let b: Vec<u32> = (0..9).map(|i| (i * 11 + 5) % 90).collect();
    // (f32 sums on the CPU, as language models run there by default)
    let exact = wedge::SessionOptions { cpu_integer_kernels: false };
    let devices: Vec<(&str, Device)> =
        std::iter::once(("cpu", Device::cpu())).chain(gpu().map(|d| ("gpu", d.clone()))).collect();
    for (i, &format) in [Format::F32, Format::Q4_1 { group: 32 }, Format::Q8_0 { group: 32 }].iter().enumerate() {
        let weights = random_weights(&full, format, 300 + i as u64);
        // the reference: each sequence alone through the whole-sequence graph, on the CPU
        let whole = |seq: &[u32]| -> Vec<Vec<f32>> {
            let s = seq.len();
            let pos: Vec<u32> = (0..s as u32).collect();
            let inputs =
                [HostTensor::u32(&[1, s], seq), HostTensor::u32(&[1, s], &pos), HostTensor::u32(&[1, s], &vec![1; s])];
            let out = Session::with_options(&Device::cpu(), full.graph.clone(), weights.clone(), exact)
                .unwrap()
                .run(&inputs)
                .unwrap();
            out[0].to_f32().chunks_exact(90).map(<[f32]>::to_vec).collect()
        };
        let (want_a, want_b) = (whole(&a), whole(&b));
        for (kv, tol) in [(wedge::StateElem::F32, 1e-4f32), (wedge::StateElem::F16, 0.1)] {
            let cached = cfg.build_cached(kv).unwrap();
            let weights = cached.take_weights(weights.clone()).unwrap();
            for (name, device) in &devices {
                let tol = if *name == "gpu" && kv == wedge::StateElem::F32 { 5e-3 } else { tol };
                let session = Session::with_options(device, cached.graph.clone(), weights.clone(), exact).unwrap();
                let shapes = vec![vec![3, 16, cfg.num_kv_heads * cfg.head_dim]; 2 * cfg.num_layers];
                let mut state = session.new_state(&shapes).unwrap();
                // sequence 2 holds a stale sequence first: its rows are reused by `a`
                cached_step(&session, &mut state, &[(2, 0, &b[..6])]);
                let mut got_a = Vec::new();
                let mut got_b = Vec::new();
                let step = cached_step(&session, &mut state, &[(2, 0, &a[..5]), (0, 0, &b[..3])]);
                got_a.extend_from_slice(&step[..5]);
                got_b.extend_from_slice(&step[5..]);
                let step = cached_step(&session, &mut state, &[(0, 3, &b[3..7]), (2, 5, &a[5..6])]);
                got_b.extend_from_slice(&step[..4]);
                got_a.extend_from_slice(&step[4..]);
                for t in 6..12 {
                    let mut work = vec![(2, t, &a[t..t + 1])];
                    if t + 1 < b.len() {
                        work.push((0, t + 1, &b[t + 1..t + 2]));
                    }
                    let step = cached_step(&session, &mut state, &work);
                    got_a.push(step[0].clone());
                    got_b.extend(step.get(1).cloned());
                }
                for (what, got, want) in [("a", &got_a, &want_a), ("b", &got_b, &want_b)] {
                    assert_eq!(got.len(), want.len());
                    for (p, (g, w)) in got.iter().zip(want).enumerate() {
                        let d = max_diff(g, w);
                        assert!(d <= tol, "{name} {format} {kv:?} sequence {what} position {p}: max |Δ| {d} > {tol}");
                    }
                }
            }
        }
    }
}

/// The tiny random GGUF decoders of `tests/data/tiny/` (written by `make_tiny.py` there with
/// llama.cpp's `gguf` package): `qwen2` with q/k/v biases, NeoX pairs, a tied head and linear
/// RoPE scaling; `llama` with Llama 3's `rope_freqs` divisors, a separate head and a different
/// tensor type for nearly every matrix (BF16, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K); and two
/// Hugging Face folders, one of them a BF16 llama with llama3 RoPE scaling. Every
/// position's logits, prefilled in uneven chunks, against the script's float64 forward pass:
/// within 1e-3 on the CPU and 5e-3 on the GPU.
#[test]
fn tiny_gguf_decoders_match_float64() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny/");
    let fixtures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}logits.json")).unwrap()).unwrap();
    let mut devices = vec![(Device::cpu(), 1e-3)];
    match Device::gpu() {
        Ok(d) => devices.push((d, 5e-3)),
        Err(e) => wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", "tiny decoders on the GPU", &e.to_string()),
    }
    // (the Hugging Face folders import in memory, their tensors kept: `qwen2_linear_hf` holds
    // `qwen2_linear`'s values in F32, `llama3_hf` a BF16 llama with llama3 RoPE scaling)
    for (name, source) in [
        ("qwen2_linear", "qwen2_linear.gguf"),
        ("llama_rope_freqs", "llama_rope_freqs.gguf"),
        ("qwen2_linear", "qwen2_linear_hf"),
        ("llama3_hf", "llama3_hf"),
    ] {
        let f = &fixtures[name];
        let ids: Vec<u32> = f["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<Vec<f64>> = f["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        for (device, bound) in &devices {
            let path = std::path::PathBuf::from(format!("{dir}{source}"));
            let lm = if path.is_dir() {
                let pkg = wedge_import::import_hf_decoder(&path, wedge_import::DecoderQuant::Keep).unwrap();
                LanguageModel::from_package(pkg, device, LmOptions::default()).unwrap()
            } else {
                LanguageModel::open(&path, device, LmOptions::default()).unwrap()
            };
            let mut state = lm.new_state(1, 32).unwrap();
            let seq = state.add().unwrap();
            let mut rows = Vec::new();
            for part in [&ids[..5], &ids[5..6], &ids[6..]] {
                rows.extend(lm.score(&mut state, seq, part).unwrap());
            }
            assert_eq!(rows.len(), want.len());
            let mut worst = 0f64;
            for (got, want) in rows.iter().zip(&want) {
                for (a, b) in got.iter().zip(want) {
                    worst = worst.max((f64::from(*a) - b).abs());
                }
            }
            eprintln!("{source} on {}: max |Δlogit| {worst:.2e}", device.describe());
            assert!(worst <= *bound, "{source} on {}: max |Δlogit| {worst:.2e} > {bound:e}", device.describe());
        }
    }
}

/// The async stream gives the iterator's tokens, texts and log-probabilities (sampled, with a
/// seed), and the same finish.
#[test]
fn generation_streams_asynchronously_as_it_iterates() {
    use futures_util::StreamExt;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny/qwen2_linear.gguf");
    let lm = LanguageModel::open(path, &Device::cpu(), LmOptions::default()).unwrap();
    let params = || wedge::GenerateParams {
        max_tokens: 20,
        sampling: wedge::SamplingParams { temperature: 0.8, seed: Some(7), ..Default::default() },
        ..Default::default()
    };
    let prompt = [100, 265, 40];
    let iterated: Vec<wedge::TokenEvent> = lm.generate(&prompt, params()).unwrap().map(|t| t.unwrap()).collect();
    let streamed: Vec<wedge::TokenEvent> =
        pollster::block_on(lm.generate(&prompt, params()).unwrap().into_stream().map(|t| t.unwrap()).collect());
    assert!(!iterated.is_empty());
    assert_eq!(iterated, streamed);
}

/// A GPU device that is lost (destroyed here, as a driver reset would) fails the runs on it
/// with an error, not a panic or the stale contents of its buffers: the serving breaker then
/// moves the model to the CPU.
#[test]
fn a_lost_device_fails_its_runs_with_an_error() {
    let device = match Device::gpu() {
        Ok(d) => d,
        Err(e) => return wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", "a lost GPU device", &e.to_string()),
    };
    let mg = encoder_config().build().unwrap();
    let session = Session::new(&device, mg.graph.clone(), random_weights(&mg, Format::Q8, 7)).unwrap();
    let inputs = encoder_inputs(&[5, 3], 4);
    session.run(&inputs).unwrap();
    device.gpu_context().unwrap().device_queue().0.destroy();
    let e = session.run(&inputs).unwrap_err();
    assert!(matches!(e, wedge::Error::Gpu(_)) && !e.is_input(), "{e:?}");
}
