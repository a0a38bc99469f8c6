//! Export a [burn](https://burn.dev) model to a `.wedge` package: the way a model trained or
//! defined in burn reaches wedge's runtimes (the browser, `wedge serve`, an embedding app)
//! quantized to INT8 or INT4.
//!
//! A sentence encoder made of burn's standard `nn` pieces maps onto wedge's encoder family:
//!
//! - a token [`Embedding`], optional position and token-type [`Embedding`]s (summed, as BERT
//!   does; a missing one is a table of zeros);
//! - an optional [`LayerNorm`] or [`RmsNorm`] of the summed embeddings;
//! - a [`TransformerEncoder`] (post-norm or `norm_first`; its attention, feed-forward with
//!   GELU (exact or tanh), ReLU or no activation, and norms; biases optional);
//! - an optional norm of the last layer's output;
//! - masked mean pooling of the last states, optionally L2-normalized.
//!
//! ```no_run
//! # fn demo(tokens: &burn::nn::Embedding, positions: &burn::nn::Embedding,
//! #         encoder: &burn::nn::transformer::TransformerEncoder) -> Result<(), wedge_burn::ExportError> {
//! use wedge_burn::{EncoderExport, Quant};
//! let tokenizer = std::fs::read("tokenizer.json").unwrap();
//! let package = EncoderExport::new(tokens, encoder)
//!     .positions(positions)
//!     .normalize(true)
//!     .tokenizer_json(tokenizer)
//!     .package(&Quant::parse("q8").unwrap())?;
//! let (bytes, _digest) = package.to_bytes(3)?;
//! std::fs::write("model.wedge", bytes).unwrap();
//! # Ok(()) }
//! ```
//!
//! The weights are read through burn-store's snapshots ([`ModuleSnapshot::collect`] with its
//! PyTorch adapter, so linears come out `[out, in]` and norms as `weight`/`bias`, whatever
//! the module's layout); the hyperparameters from the modules' public fields (and a
//! `LayerNorm`'s epsilon from its display content, the one place burn shows it). Anything that
//! does not map (an activation wedge has no kernel for, quiet softmax, a tensor the exporter
//! does not know, shapes that disagree, two epsilons) is an [`ExportError::Unsupported`] naming
//! the module's path (`encoder.layers.1.pwff.activation`) and what is supported.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Content, DisplaySettings, ModuleDisplay};
use burn::nn::activation::Activation as BurnActivation;
use burn::nn::transformer::TransformerEncoder;
use burn::nn::{Embedding, LayerNorm, RmsNorm};
use burn::store::burn_pack::DType;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use wedge_core::graph::Activation;
use wedge_core::models::{ENCODER, EncoderConfig, NormKind, Pooling};
use wedge_core::{Format, Package};
use wedge_import::{Budget, F32Tensor, ImportOptions};

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A module, hyperparameter or tensor wedge's encoder family has no place for.
    #[error("{path}: {what}")]
    Unsupported {
        /// Where in the model (`encoder.layers.0.mha`).
        path: String,
        /// What it is, and what is supported.
        what: String,
    },
    /// Building the graph or the package failed.
    #[error(transparent)]
    Core(#[from] wedge_core::Error),
    /// Quantizing failed.
    #[error(transparent)]
    Import(#[from] wedge_import::ImportError),
    /// Running the model for `auto` failed.
    #[error(transparent)]
    Runtime(#[from] wedge::Error),
}

type Result<T> = std::result::Result<T, ExportError>;

fn unsupported(path: impl Into<String>, what: impl Into<String>) -> ExportError {
    ExportError::Unsupported { path: path.into(), what: what.into() }
}

/// A norm burn defines.
#[derive(Clone, Copy, Debug)]
pub enum Norm<'a> {
    /// `LayerNorm` (with or without its bias).
    Layer(&'a LayerNorm),
    /// `RmsNorm`.
    Rms(&'a RmsNorm),
}

impl<'a> From<&'a LayerNorm> for Norm<'a> {
    fn from(n: &'a LayerNorm) -> Norm<'a> {
        Norm::Layer(n)
    }
}

impl<'a> From<&'a RmsNorm> for Norm<'a> {
    fn from(n: &'a RmsNorm) -> Norm<'a> {
        Norm::Rms(n)
    }
}

impl Norm<'_> {
    fn kind(self) -> NormKind {
        match self {
            Norm::Layer(_) => NormKind::Layer,
            Norm::Rms(_) => NormKind::Rms,
        }
    }

    fn epsilon(self, path: &str) -> Result<f64> {
        match self {
            Norm::Layer(n) => layer_norm_epsilon(n, path),
            Norm::Rms(n) => Ok(n.epsilon),
        }
    }

    fn weights(self, path: &str) -> Result<BTreeMap<String, F32Tensor>> {
        match self {
            Norm::Layer(n) => snapshot(n, path),
            Norm::Rms(n) => snapshot(n, path),
        }
    }
}

/// How to store the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quant {
    /// Every linear in one format (embedding tables in f32, or f16 with f16), as
    /// `wedge convert --quant FORMAT` does.
    Uniform(Format),
    /// A format per tensor, chosen by measured sensitivity (`wedge convert --quant auto`): the
    /// smallest package whose pooled outputs keep `budget`'s cosine to the f32 model's on the
    /// calibration inputs (the calibration texts when a tokenizer is attached, else token
    /// sequences drawn from the vocabulary).
    Auto {
        /// Group size of the 4-bit formats.
        group: u32,
        /// The quality to keep.
        budget: Budget,
    },
}

impl Quant {
    /// `f32`, `f16`, `q8`, `q8a8`, `q4`, `q4_1` (groups of 32) or `auto` (mean cosine 0.997,
    /// minimum 0.99, as `wedge convert`).
    pub fn parse(s: &str) -> Option<Quant> {
        if s == "auto" {
            return Some(Quant::Auto { group: 32, budget: Budget { mean: 0.997, min: 0.99 } });
        }
        Format::parse(s, 32).map(Quant::Uniform)
    }
}

/// A sentence encoder made of burn modules, to export. See the crate's documentation.
#[derive(Clone, Debug)]
pub struct EncoderExport<'a> {
    tokens: &'a Embedding,
    encoder: &'a TransformerEncoder,
    positions: Option<&'a Embedding>,
    token_types: Option<&'a Embedding>,
    embedding_norm: Option<Norm<'a>>,
    final_norm: Option<Norm<'a>>,
    normalize: bool,
    max_seq_length: Option<usize>,
    tokenizer: Option<Vec<u8>>,
    source: String,
}

/// Positions a package without a position table accepts, unless told otherwise.
const DEFAULT_MAX_SEQ: usize = 512;

impl<'a> EncoderExport<'a> {
    /// The token embedding table and the transformer stack.
    pub fn new(tokens: &'a Embedding, encoder: &'a TransformerEncoder) -> EncoderExport<'a> {
        EncoderExport {
            tokens,
            encoder,
            positions: None,
            token_types: None,
            embedding_norm: None,
            final_norm: None,
            normalize: false,
            max_seq_length: None,
            tokenizer: None,
            source: "burn".into(),
        }
    }

    /// Learned positions, added to the token embeddings (position `i` of a sequence is row `i`).
    pub fn positions(mut self, table: &'a Embedding) -> Self {
        self.positions = Some(table);
        self
    }

    /// Token types (segment ids; wedge feeds type 0), added to the token embeddings.
    pub fn token_types(mut self, table: &'a Embedding) -> Self {
        self.token_types = Some(table);
        self
    }

    /// A norm of the summed embeddings, before the first layer.
    pub fn embedding_norm(mut self, norm: impl Into<Norm<'a>>) -> Self {
        self.embedding_norm = Some(norm.into());
        self
    }

    /// A norm of the last layer's output, before pooling.
    pub fn final_norm(mut self, norm: impl Into<Norm<'a>>) -> Self {
        self.final_norm = Some(norm.into());
        self
    }

    /// L2-normalize the pooled embedding.
    pub fn normalize(mut self, yes: bool) -> Self {
        self.normalize = yes;
        self
    }

    /// Longest input in tokens (default: the position table's length, else 512).
    pub fn max_seq_length(mut self, n: usize) -> Self {
        self.max_seq_length = Some(n);
        self
    }

    /// The Hugging Face `tokenizer.json` that makes the model's token ids: the package then
    /// embeds text (`wedge embed`, `wedge serve`, the browser).
    pub fn tokenizer_json(mut self, json: Vec<u8>) -> Self {
        self.tokenizer = Some(json);
        self
    }

    /// The name recorded as the package's source (default `burn`).
    pub fn source(mut self, name: &str) -> Self {
        self.source = name.to_string();
        self
    }

    /// The encoder family's config of this model, its hyperparameters checked.
    pub fn config(&self) -> Result<EncoderConfig> {
        let e = self.encoder;
        let [vocab_size, hidden] = self.tokens.weight.shape().dims();
        if hidden != e.d_model {
            return Err(unsupported(
                "tokens",
                format!("embeds into {hidden} dimensions, the encoder's d_model is {}", e.d_model),
            ));
        }
        if e.layers.is_empty() {
            return Err(unsupported("encoder.layers", "no layers"));
        }
        let (mut activation, mut eps) = (None, None);
        let mut same_eps = |value: f64, path: &str| -> Result<()> {
            match eps {
                None => eps = Some((value, path.to_string())),
                Some((first, ref at)) if (first - value).abs() > first.abs() * 1e-6 => {
                    return Err(unsupported(
                        path,
                        format!("epsilon {value} differs from {first} of {at}: wedge's encoder family has one epsilon"),
                    ));
                }
                Some(_) => {}
            }
            Ok(())
        };
        for (l, layer) in e.layers.iter().enumerate() {
            let at = format!("encoder.layers.{l}");
            let mha = &layer.mha;
            if mha.quiet_softmax {
                return Err(unsupported(
                    format!("{at}.mha"),
                    "quiet_softmax is not supported (the standard softmax is)",
                ));
            }
            if mha.n_heads != e.n_heads || mha.d_k * mha.n_heads != hidden || mha.d_model != hidden {
                return Err(unsupported(
                    format!("{at}.mha"),
                    format!(
                        "{} heads of {} over d_model {}: the layers must all have the encoder's {} heads over {hidden}",
                        mha.n_heads, mha.d_k, mha.d_model, e.n_heads
                    ),
                ));
            }
            if layer.norm_first != e.norm_first {
                return Err(unsupported(&at, "norm_first differs from the encoder's"));
            }
            let act = activation_of(&layer.pwff.activation, &format!("{at}.pwff.activation"))?;
            match activation {
                None => activation = Some(act),
                Some(a) if a != act => {
                    return Err(unsupported(
                        format!("{at}.pwff.activation"),
                        format!("{act:?} differs from the first layer's {a:?}: the layers must share one"),
                    ));
                }
                Some(_) => {}
            }
            for (name, norm) in [("norm_1", &layer.norm_1), ("norm_2", &layer.norm_2)] {
                let path = format!("{at}.{name}");
                same_eps(layer_norm_epsilon(norm, &path)?, &path)?;
            }
        }
        for (role, norm) in [("embedding_norm", self.embedding_norm), ("final_norm", self.final_norm)] {
            if let Some(n) = norm {
                same_eps(n.epsilon(role)?, role)?;
            }
        }
        let max_position_embeddings =
            table_rows(self.positions, "positions", hidden)?.unwrap_or(self.max_seq_length.unwrap_or(DEFAULT_MAX_SEQ));
        let type_vocab_size = table_rows(self.token_types, "token_types", hidden)?.unwrap_or(1);
        let eps = eps.map_or(1e-5, |(v, _)| v);
        Ok(EncoderConfig {
            vocab_size,
            hidden_size: hidden,
            num_layers: e.layers.len(),
            num_heads: e.n_heads,
            intermediate_size: e.d_ff,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps: eps as f32,
            activation: activation.unwrap_or(Activation::GeluErf),
            pooling: Pooling::Mean,
            normalize: self.normalize,
            norm: NormKind::Layer,
            norm_first: e.norm_first,
            embedding_norm: self.embedding_norm.map_or(NormKind::None, Norm::kind),
            final_norm: self.final_norm.map_or(NormKind::None, Norm::kind),
        })
    }

    /// The f32 weights under the encoder family's names, in its graph's order (a missing bias
    /// or table is zeros).
    pub fn weights(&self, config: &EncoderConfig) -> Result<Vec<F32Tensor>> {
        let mut named: HashMap<String, F32Tensor> = HashMap::new();
        let mut put = |wedge: String, t: F32Tensor| {
            named.insert(wedge.clone(), (wedge, t.1, t.2));
        };
        let table = |module: &Embedding, role: &str| -> Result<F32Tensor> {
            let mut s = snapshot(module, role)?;
            s.remove("weight").ok_or_else(|| unsupported(role, "an embedding without its `weight`"))
        };
        put("embeddings.word_embeddings.weight".into(), table(self.tokens, "tokens")?);
        if let Some(p) = self.positions {
            put("embeddings.position_embeddings.weight".into(), table(p, "positions")?);
        }
        if let Some(t) = self.token_types {
            put("embeddings.token_type_embeddings.weight".into(), table(t, "token_types")?);
        }
        for (role, norm, wedge) in [
            ("embedding_norm", self.embedding_norm, "embeddings.LayerNorm"),
            ("final_norm", self.final_norm, "encoder.final_norm"),
        ] {
            if let Some(n) = norm {
                for (name, t) in n.weights(role)? {
                    put(format!("{wedge}.{name}"), t);
                }
            }
        }
        for (burn_name, t) in snapshot(self.encoder, "encoder")? {
            let wedge = encoder_name(&burn_name, self.encoder.norm_first).ok_or_else(|| {
                unsupported(format!("encoder.{burn_name}"), "a tensor wedge's encoder family has no place for")
            })?;
            put(wedge, t);
        }
        let mg = config.build()?;
        mg.graph
            .weights
            .iter()
            .zip(&mg.weight_shapes)
            .map(|(name, shape)| match named.remove(name) {
                Some((_, got, values)) if &got == shape => Ok((name.clone(), got, values)),
                Some((_, got, _)) => {
                    Err(unsupported(name.clone(), format!("shape {got:?}, the encoder family needs {shape:?} here")))
                }
                // zeros are what a missing bias, position table or type table adds
                None if zero_default(name) => Ok((name.clone(), shape.clone(), vec![0.0; shape.iter().product()])),
                None => Err(unsupported(name.clone(), "missing from the model")),
            })
            .collect()
    }

    /// The package, its weights stored as `quant` asks.
    pub fn package(&self, quant: &Quant) -> Result<Package> {
        let config = self.config()?;
        let weights = self.weights(&config)?;
        let max_seq_length =
            self.max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        let opts = match quant {
            Quant::Uniform(f) => {
                f.validate().map_err(|m| unsupported("quant", m))?;
                ImportOptions::uniform(*f)
            }
            Quant::Auto { group, budget } => self.auto(&config, &weights, max_seq_length, *group, *budget)?,
        };
        let tensors = wedge_import::quantize(&weights, &opts, &mut |_, _, _| {})?;
        let mut json = serde_json::to_value(&config).map_err(|e| unsupported("config", e.to_string()))?;
        if let Some(obj) = json.as_object_mut() {
            obj.insert("max_seq_length".into(), max_seq_length.into());
        }
        let converter = format!("wedge-burn {} (burn 0.22)", env!("CARGO_PKG_VERSION"));
        let metadata = wedge_import::precision_metadata(&self.source, &converter, &opts);
        let assets = self.tokenizer.iter().map(|t| ("tokenizer.json".to_string(), t.clone())).collect();
        Ok(Package { architecture: ENCODER.to_string(), config: json, metadata, tensors, assets })
    }

    /// `auto`: the formats `wedge_import::auto_select` picks, the model run on wedge's CPU
    /// backend over the calibration inputs.
    fn auto(
        &self,
        config: &EncoderConfig,
        weights: &[F32Tensor],
        max_seq_length: usize,
        group: u32,
        budget: Budget,
    ) -> Result<ImportOptions> {
        let graph = config.build()?.graph;
        let cpu = wedge::Device::cpu();
        let f32_weights = weights
            .iter()
            .map(|(n, s, v)| wedge_core::Weight::from_f32(n, s, v))
            .collect::<wedge_core::Result<Vec<_>>>()?;
        let batches = self.calibration(&graph, &f32_weights, config, max_seq_length, &cpu)?;
        let run = |ws: Vec<wedge_core::Weight>| -> wedge::Result<Vec<Vec<f32>>> {
            let session = wedge::Session::new(&cpu, graph.clone(), ws)?;
            let mut pooled = Vec::new();
            for inputs in &batches {
                let out = session.run(inputs)?;
                let dim = config.hidden_size;
                pooled.extend(out[1].to_f32().chunks(dim).map(<[f32]>::to_vec));
            }
            Ok(pooled)
        };
        let reference = run(f32_weights)?;
        let mut eval =
            |ws: &[wedge_core::Weight]| -> std::result::Result<wedge_import::Scores, wedge_import::ImportError> {
                let got = run(ws.to_vec()).map_err(|e| wedge_import::ImportError::Unsupported(e.to_string()))?;
                Ok(wedge_import::scores(&got, &reference))
            };
        Ok(wedge_import::auto_select(weights, budget, group, &mut eval, &mut |_| {})?.options)
    }

    /// Calibration batches: the calibration texts tokenized when a tokenizer is attached,
    /// else 32 sequences of 4 to 64 ids drawn evenly from the vocabulary.
    fn calibration(
        &self,
        graph: &wedge_core::Graph,
        weights: &[wedge_core::Weight],
        config: &EncoderConfig,
        max_seq_length: usize,
        cpu: &wedge::Device,
    ) -> Result<Vec<Vec<wedge_core::HostTensor>>> {
        if let Some(tok) = &self.tokenizer {
            let model = wedge::Model::from_graph(graph.clone(), weights.to_vec())?;
            let e = wedge::Embedder::new(&model, tok, max_seq_length, cpu)?;
            let tokens =
                wedge_import::calibration_texts().iter().map(|t| e.tokenize(t)).collect::<wedge::Result<Vec<_>>>()?;
            return Ok(tokens.chunks(16).map(|b| e.inputs(b)).collect::<wedge::Result<_>>()?);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % n as u64) as u32
        };
        let longest = max_seq_length.clamp(1, 64);
        Ok((0..2)
            .map(|_| {
                let lens: Vec<usize> =
                    (0..16).map(|_| 4.min(longest) + next(longest + 1 - 4.min(longest)) as usize).collect();
                let s = *lens.iter().max().unwrap_or(&1);
                let (mut ids, mut mask) = (vec![0u32; 16 * s], vec![0u32; 16 * s]);
                for (i, &l) in lens.iter().enumerate() {
                    for j in 0..l {
                        ids[i * s + j] = next(config.vocab_size);
                        mask[i * s + j] = 1;
                    }
                }
                let pos: Vec<u32> = (0..16 * s).map(|i| (i % s) as u32).collect();
                vec![
                    wedge_core::HostTensor::u32(&[16, s], &ids),
                    wedge_core::HostTensor::u32(&[16, s], &vec![0; 16 * s]),
                    wedge_core::HostTensor::u32(&[16, s], &pos),
                    wedge_core::HostTensor::u32(&[16, s], &mask),
                ]
            })
            .collect())
    }
}

/// The rows of an optional table added to the token embeddings, checked to be `hidden` wide.
fn table_rows(table: Option<&Embedding>, role: &str, hidden: usize) -> Result<Option<usize>> {
    let Some(t) = table else { return Ok(None) };
    let [rows, d] = t.weight.shape().dims();
    if d != hidden {
        return Err(unsupported(role, format!("{d} dimensions, the encoder has {hidden}")));
    }
    Ok(Some(rows))
}

/// The wedge name of a tensor of a `TransformerEncoder` (its path in the snapshot, norms as
/// `weight`/`bias`). burn's pre-norm layers apply `norm_2` before attention and `norm_1`
/// before the feed-forward; its post-norm layers `norm_1` after attention and `norm_2`
/// after the feed-forward.
fn encoder_name(burn: &str, norm_first: bool) -> Option<String> {
    let rest = burn.strip_prefix("layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let (attention_norm, ffn_norm) = if norm_first { ("norm_2", "norm_1") } else { ("norm_1", "norm_2") };
    let wedge = match module {
        "mha.query" => "attention.self.query",
        "mha.key" => "attention.self.key",
        "mha.value" => "attention.self.value",
        "mha.output" => "attention.output.dense",
        "pwff.linear_inner" => "intermediate.dense",
        "pwff.linear_outer" => "output.dense",
        m if m == attention_norm => "attention.output.LayerNorm",
        m if m == ffn_norm => "output.LayerNorm",
        _ => return None,
    };
    Some(format!("encoder.layer.{l}.{wedge}.{param}"))
}

/// Tensors a model may lack, whose absence means zeros: biases, the position and type tables.
fn zero_default(name: &str) -> bool {
    name.ends_with(".bias")
        || name == "embeddings.position_embeddings.weight"
        || name == "embeddings.token_type_embeddings.weight"
}

/// wedge's activation for burn's, or what is supported.
fn activation_of(act: &BurnActivation, path: &str) -> Result<Activation> {
    Ok(match act {
        BurnActivation::Gelu(g) if g.approximate => Activation::GeluTanh,
        BurnActivation::Gelu(_) => Activation::GeluErf,
        BurnActivation::Relu(_) => Activation::Relu,
        BurnActivation::Identity(_) => Activation::None,
        other => {
            let name = format!("{other:?}");
            let name = name.split(['(', ' ', '{']).next().unwrap_or("this activation").to_string();
            return Err(unsupported(
                path,
                format!("{name} is not supported (supported: Gelu, Gelu with tanh, Relu, Identity)"),
            ));
        }
    })
}

/// A `LayerNorm`'s epsilon: burn keeps the field private and shows it in the module's display
/// content.
fn layer_norm_epsilon(n: &LayerNorm, path: &str) -> Result<f64> {
    let content = n.custom_content(Content::new(DisplaySettings::new()));
    content
        .iter()
        .flat_map(|c| c.attributes.iter())
        .find(|a| a.name == "epsilon")
        .and_then(|a| a.value.trim().parse().ok())
        .ok_or_else(|| unsupported(path, "burn did not show this LayerNorm's epsilon"))
}

/// A module's tensors as f32, by their path in the module (the PyTorch adapter's names:
/// linears `[out, in]`, norms `weight`/`bias`).
fn snapshot(module: &impl ModuleSnapshot, role: &str) -> Result<BTreeMap<String, F32Tensor>> {
    let mut out = BTreeMap::new();
    for t in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false) {
        let path = format!("{role}.{}", t.name);
        let shape = t.shape.to_vec();
        let bytes = t.to_bytes().map_err(|e| unsupported(&path, format!("its data could not be read: {e}")))?;
        let values: Vec<f32> = match t.dtype {
            DType::F32 | DType::Flex32 => {
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(unsupported(path, format!("dtype {other:?} (supported: F32, F64, F16, BF16)")));
            }
        };
        if values.len() != shape.iter().product::<usize>() {
            return Err(unsupported(path, format!("{} values for shape {shape:?}", values.len())));
        }
        out.insert(t.name.clone(), (t.name, shape, values));
    }
    Ok(out)
}
