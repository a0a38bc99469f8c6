//! The graph IR: a list of ops over values, in a valid execution order.
//!
//! Values are numbered: graph inputs first, then one value per node output.
//! Shapes are symbolic at graph level (batch, sequence length); the plan
//! compiler binds them to the shapes of the inputs it is given.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Index of a value (graph input or node output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueId(pub u32);

/// Index into [`Graph::weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WeightId(pub u32);

/// Index into [`Graph::states`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateId(pub u32);

/// How a state tensor stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateElem {
    /// One f32 per word.
    F32,
    /// IEEE halves, two per word, the lower first (rows of even width).
    F16,
}

impl StateElem {
    /// 32-bit words holding `n` values.
    pub fn words(self, n: usize) -> usize {
        match self {
            StateElem::F32 => n,
            StateElem::F16 => n.div_ceil(2),
        }
    }
}

/// A tensor that outlives a run (a key/value cache): the caller owns its memory and passes it
/// to every run, where ops read and write it in place. Its shape is bound like the inputs'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDecl {
    /// Name, for messages.
    pub name: String,
    /// Storage of its values.
    pub elem: StateElem,
    /// Shape, possibly symbolic.
    pub dims: Vec<Dim>,
}

/// Element type of an activation value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Elem {
    /// 32-bit float.
    F32,
    /// 32-bit unsigned integer (token ids, positions, masks).
    U32,
}

/// One dimension of a graph input: fixed, or named and bound at plan time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size bound when the plan is compiled (`batch`, `seq`, `kv_seq`, ...).
    Var(String),
}

/// Activation functions, standalone or fused into a matmul epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Identity.
    None,
    /// `x · Φ(x)` with the exact error function (BERT).
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `x · sigmoid(x)` (llama's SwiGLU gate).
    Silu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// The `ACT` code used by the kernels.
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::GeluErf => 1,
            Activation::GeluTanh => 2,
            Activation::Silu => 3,
            Activation::Relu => 4,
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeMode {
    /// Adjacent pairs `(2i, 2i+1)` (GGUF llama, "normal" mode).
    Interleaved,
    /// Pairs `(i, i + d/2)` (GPT-NeoX and Hugging Face llama).
    Half,
}

/// How rotary frequencies are stretched for contexts longer than the training one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeScaling {
    /// The frequencies `base^(-2i/d)` as they are.
    #[default]
    None,
    /// Every frequency divided by `factor` (positions interpolated; GGUF `rope.scaling.type =
    /// linear`).
    Linear {
        /// The divisor, above 0.
        factor: f32,
    },
    /// Frequency `i` divided by `factors[i]`, one per pair of dimensions (GGUF `rope_freqs`,
    /// which llama.cpp's converter writes for Llama 3's `rope_type = llama3`).
    Factors(Vec<f32>),
}

/// Binary elementwise ops; the second operand broadcasts when its shape is a suffix of the first's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a · b`
    Mul,
}

/// The operations of the IR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `ids[..] (u32)` → `[.., cols]`: rows of an embedding table, in any weight format.
    Embedding {
        /// The table, `[vocab, hidden]`.
        table: WeightId,
    },
    /// `x[.., k]` → `[.., n]`: `act(x · Wᵀ + bias)` with `W` of shape `[n, k]` in any format.
    MatMul {
        /// Weight `[n, k]`.
        weight: WeightId,
        /// Optional bias `[n]`.
        bias: Option<WeightId>,
        /// Activation applied in the epilogue.
        act: Activation,
    },
    /// Elementwise `a op b`.
    Binary(BinaryOp),
    /// Elementwise activation.
    Act(Activation),
    /// Layer normalization over the last dimension.
    LayerNorm {
        /// Scale `[d]`.
        gamma: WeightId,
        /// Shift `[d]`.
        beta: WeightId,
        /// Epsilon.
        eps: f32,
    },
    /// RMS normalization over the last dimension.
    RmsNorm {
        /// Scale `[d]`.
        gamma: WeightId,
        /// Epsilon.
        eps: f32,
    },
    /// Softmax over the last dimension.
    Softmax,
    /// Fused attention: inputs `q [b, s, heads·d]`, `k`, `v [b, t, kv_heads·d]`, optional
    /// padding mask `[b, t]` (u32, 0 = masked). Output `[b, s, heads·d]`; a query at a masked
    /// position (query `i` is key `i + t − s` when `t ≥ s`) or seeing no key gives zeros.
    Attention {
        /// Query heads.
        heads: usize,
        /// Key/value heads (grouped-query attention when fewer than `heads`).
        kv_heads: usize,
        /// Head size.
        head_dim: usize,
        /// Causal mask: query `i` sees keys `≤ i + (t − s)`.
        causal: bool,
        /// Score scale, usually `1/√head_dim`.
        scale: f32,
    },
    /// Rotary position embedding: inputs `x [b, s, heads·d]`, positions `[b, s]` (u32).
    Rope {
        /// Heads in `x`.
        heads: usize,
        /// Head size (even).
        head_dim: usize,
        /// Frequency base.
        base: f32,
        /// Pairing of dimensions.
        mode: RopeMode,
        /// Frequency scaling.
        #[serde(default)]
        scaling: RopeScaling,
    },
    /// Masked mean over the sequence: inputs `x [b, s, h]`, mask `[b, s]` (u32). Output `[b, h]`.
    MeanPool,
    /// `x / max(‖x‖₂, eps)` over the last dimension.
    L2Normalize {
        /// Epsilon.
        eps: f32,
    },
    /// New shape with the same element count; `0` keeps the input dimension, `-1` is inferred.
    Reshape(Vec<i64>),
    /// Permutes dimensions (rank ≤ 4).
    Transpose(Vec<usize>),
    /// Writes token rows into a state `[seqs, ctx, w]`: inputs `x [.., w]`, `seq [..]` and
    /// `pos [..]` (u32, from graph inputs); row `i` of `x` goes to `(seq[i], pos[i])`. The
    /// output is `x` itself, so the ops that read the state can depend on the write.
    CacheWrite {
        /// The state written.
        state: StateId,
    },
    /// Attention over key/value states: inputs `q [.., heads·d]`, `k` and `v` (the outputs of
    /// the [`Op::CacheWrite`]s into `k_cache` and `v_cache`), `seq [..]` and `pos [..]`. Token
    /// `i` attends to rows `0..=pos[i]` of sequence `seq[i]` in the caches (causal by position).
    CachedAttention {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Head size.
        head_dim: usize,
        /// Score scale, usually `1/√head_dim`.
        scale: f32,
        /// Keys, `[seqs, ctx, kv_heads·d]`.
        k_cache: StateId,
        /// Values, shaped as the keys.
        v_cache: StateId,
    },
    /// Rows of `x [t, w]` picked by u32 indices `[r]` (a graph input) → `[r, w]`: the tokens
    /// whose logits are wanted.
    SelectRows,
}

/// One op applied to values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// Its operands.
    pub inputs: Vec<ValueId>,
}

/// A graph input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Name callers use.
    pub name: String,
    /// Element type.
    pub elem: Elem,
    /// Shape, possibly symbolic.
    pub dims: Vec<Dim>,
}

/// A computation graph over named weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Graph inputs, values `0..inputs.len()`.
    pub inputs: Vec<Input>,
    /// Nodes in execution order; node `i` produces value `inputs.len() + i`.
    pub nodes: Vec<Node>,
    /// Named outputs.
    pub outputs: Vec<(String, ValueId)>,
    /// Names of the weights the ops refer to.
    pub weights: Vec<String>,
    /// State tensors the ops read and write ([`StateDecl`]).
    #[serde(default)]
    pub states: Vec<StateDecl>,
}

impl Graph {
    /// Adds a graph input; must be called before any node is added.
    pub fn input(&mut self, name: &str, elem: Elem, dims: Vec<Dim>) -> ValueId {
        debug_assert!(self.nodes.is_empty(), "inputs come before nodes");
        self.inputs.push(Input { name: name.to_string(), elem, dims });
        ValueId(self.inputs.len() as u32 - 1)
    }

    /// Refers to a weight by name, adding it on first use.
    pub fn weight(&mut self, name: &str) -> WeightId {
        if let Some(i) = self.weights.iter().position(|w| w == name) {
            return WeightId(i as u32);
        }
        self.weights.push(name.to_string());
        WeightId(self.weights.len() as u32 - 1)
    }

    /// Appends a node and returns its output value.
    pub fn push(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        self.nodes.push(Node { op, inputs: inputs.to_vec() });
        ValueId((self.inputs.len() + self.nodes.len() - 1) as u32)
    }

    /// Declares a state tensor.
    pub fn state(&mut self, name: &str, elem: StateElem, dims: Vec<Dim>) -> StateId {
        self.states.push(StateDecl { name: name.to_string(), elem, dims });
        StateId(self.states.len() as u32 - 1)
    }

    /// Marks a value as a named output.
    pub fn output(&mut self, name: &str, v: ValueId) {
        self.outputs.push((name.to_string(), v));
    }

    /// Number of values (inputs plus nodes).
    pub fn num_values(&self) -> usize {
        self.inputs.len() + self.nodes.len()
    }

    /// Checks that every operand refers to an earlier value and every weight id exists.
    pub fn validate(&self) -> Result<()> {
        let ni = self.inputs.len();
        for (i, node) in self.nodes.iter().enumerate() {
            for v in &node.inputs {
                if v.0 as usize >= ni + i {
                    return Err(Error::Graph(format!(
                        "node {i} ({:?}) uses value {} before it is defined",
                        node.op, v.0
                    )));
                }
            }
            for w in op_weights(&node.op) {
                if w.0 as usize >= self.weights.len() {
                    return Err(Error::Graph(format!("node {i} refers to unknown weight {}", w.0)));
                }
            }
            for st in op_states(&node.op) {
                if st.0 as usize >= self.states.len() {
                    return Err(Error::Graph(format!("node {i} refers to unknown state {}", st.0)));
                }
            }
        }
        for (name, v) in &self.outputs {
            if v.0 as usize >= self.num_values() {
                return Err(Error::Graph(format!("output `{name}` refers to unknown value {}", v.0)));
            }
        }
        Ok(())
    }

    /// How many times each value is used as an operand or output.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0usize; self.num_values()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.0 as usize] += 1;
            }
        }
        for (_, v) in &self.outputs {
            uses[v.0 as usize] += 1;
        }
        uses
    }
}

/// States an op reads or writes.
pub fn op_states(op: &Op) -> Vec<StateId> {
    match op {
        Op::CacheWrite { state } => vec![*state],
        Op::CachedAttention { k_cache, v_cache, .. } => vec![*k_cache, *v_cache],
        _ => Vec::new(),
    }
}

/// Weights an op reads.
pub fn op_weights(op: &Op) -> Vec<WeightId> {
    match op {
        Op::Embedding { table } => vec![*table],
        Op::MatMul { weight, bias, .. } => std::iter::once(*weight).chain(*bias).collect(),
        Op::LayerNorm { gamma, beta, .. } => vec![*gamma, *beta],
        Op::RmsNorm { gamma, .. } => vec![*gamma],
        _ => Vec::new(),
    }
}
