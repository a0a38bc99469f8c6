//! The plan compiler: binds a graph's symbolic shapes, checks every shape,
//! fuses what the kernels can do in one pass, and assigns activation buffers
//! ("slots") by liveness so that values whose lifetimes do not overlap share
//! memory. Every backend executes the same [`Plan`].

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{
    Activation, BinaryOp, Dim, Elem, Graph, Op, RopeMode, RopeScaling, StateElem, StateId, ValueId, WeightId,
};
use crate::quant::{Format, Weight};

/// Largest head size the fused attention kernel supports.
pub const MAX_HEAD_DIM: usize = 256;

/// Inverse rotary frequencies `base^(-2i/d)` for `i < d/2`, divided as `scaling` says,
/// computed in f64 and rounded once, so every backend rotates by the same f32 angles.
pub fn rope_inv_freq(head_dim: usize, base: f32, scaling: &RopeScaling) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = (f64::from(base)).powf(-((2 * i) as f64) / head_dim as f64);
            let div = match scaling {
                RopeScaling::None => 1.0,
                RopeScaling::Linear { factor } => f64::from(*factor),
                RopeScaling::Factors(v) => v.get(i).map_or(1.0, |x| f64::from(*x)),
            };
            (f / div) as f32
        })
        .collect()
}

/// Shape and format of a weight, which is all the planner needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightInfo {
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Storage format.
    pub format: Format,
}

impl From<&Weight> for WeightInfo {
    fn from(w: &Weight) -> Self {
        WeightInfo { shape: w.shape.clone(), format: w.format }
    }
}

/// A tensor on the host: shape, element type and raw 32-bit words (f32 stored as bits).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub elem: Elem,
    /// One word per element.
    pub data: Vec<u32>,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: &[usize], values: &[f32]) -> HostTensor {
        HostTensor { shape: shape.to_vec(), elem: Elem::F32, data: values.iter().map(|v| v.to_bits()).collect() }
    }

    /// A u32 tensor.
    pub fn u32(shape: &[usize], values: &[u32]) -> HostTensor {
        HostTensor { shape: shape.to_vec(), elem: Elem::U32, data: values.to_vec() }
    }

    /// The values as f32 (meaningful for [`Elem::F32`]).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|b| f32::from_bits(*b)).collect()
    }
}

/// What a value is and where it lives.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub elem: Elem,
    /// The slot (activation buffer) holding it.
    pub slot: usize,
}

impl ValueInfo {
    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One kernel launch, with every size it needs resolved.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum StepKind {
    /// Rows of `table` selected by the u32 ids in input 0.
    Gather {
        /// Table `[rows, cols]`.
        table: WeightId,
        /// Format of the table.
        format: Format,
        /// Number of ids.
        tokens: usize,
        /// Table rows (vocabulary).
        rows: usize,
        /// Table columns.
        cols: usize,
    },
    /// `out[m, n] = act(Σ_k x[m, k] · W[n, k] + bias[n])`.
    MatMul {
        /// Weight `[n, k]`.
        weight: WeightId,
        /// Its format.
        format: Format,
        /// Optional bias.
        bias: Option<WeightId>,
        /// Fused activation.
        act: Activation,
        /// Rows of x.
        m: usize,
        /// Reduction size.
        k: usize,
        /// Output columns.
        n: usize,
    },
    /// `out[i] = a[i] op b[i mod bn]`.
    Binary {
        /// The op.
        op: BinaryOp,
        /// Elements of `a`.
        n: usize,
        /// Elements of `b`.
        bn: usize,
    },
    /// Elementwise activation.
    Act {
        /// The function.
        act: Activation,
        /// Elements.
        n: usize,
    },
    /// LayerNorm over rows.
    LayerNorm {
        /// Scale.
        gamma: WeightId,
        /// Shift.
        beta: WeightId,
        /// Epsilon.
        eps: f32,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// RMSNorm over rows.
    RmsNorm {
        /// Scale.
        gamma: WeightId,
        /// Epsilon.
        eps: f32,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// Softmax over rows.
    Softmax {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// Fused attention (inputs q, k, v and, when `masked`, the padding mask).
    Attention {
        /// Batch.
        batch: usize,
        /// Query length.
        q_len: usize,
        /// Key/value length.
        kv_len: usize,
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Head size.
        head_dim: usize,
        /// Causal masking.
        causal: bool,
        /// Score scale.
        scale: f32,
        /// Whether input 3 is a padding mask.
        masked: bool,
    },
    /// Rotary embedding (inputs x and positions).
    Rope {
        /// Tokens (`batch · seq`).
        tokens: usize,
        /// Heads.
        heads: usize,
        /// Head size.
        head_dim: usize,
        /// Frequency base.
        base: f32,
        /// Pairing.
        mode: RopeMode,
        /// Frequency scaling.
        scaling: RopeScaling,
    },
    /// Masked mean over the sequence (inputs x and mask).
    MeanPool {
        /// Batch.
        batch: usize,
        /// Sequence length.
        seq: usize,
        /// Hidden size.
        hidden: usize,
    },
    /// L2 normalization over rows.
    L2Normalize {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Epsilon.
        eps: f32,
    },
    /// Permutation of a rank-4 (padded with leading 1s) tensor.
    Transpose {
        /// Input dimensions.
        dims: [usize; 4],
        /// `out` dimension `i` is input dimension `perm[i]`.
        perm: [usize; 4],
    },
    /// Rows of input 0 written into a state at `(seq, pos)` from inputs 1 and 2 (the step's
    /// output is input 0 itself).
    CacheWrite {
        /// The state.
        state: StateId,
        /// Its storage.
        elem: StateElem,
        /// Rows written.
        tokens: usize,
        /// Values per row.
        width: usize,
        /// Rows per sequence in the state.
        ctx: usize,
    },
    /// Attention of query rows (input 0) over key/value states; inputs 3 and 4 are each
    /// token's sequence and position.
    CachedAttention {
        /// Query rows.
        tokens: usize,
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Head size.
        head_dim: usize,
        /// Score scale.
        scale: f32,
        /// Keys.
        k_cache: StateId,
        /// Values.
        v_cache: StateId,
        /// Storage of both states.
        elem: StateElem,
        /// Rows per sequence in the states.
        ctx: usize,
    },
    /// Rows of input 0 picked by the indices in input 1.
    SelectRows {
        /// Rows picked.
        rows: usize,
        /// Values per row.
        cols: usize,
    },
}

impl StepKind {
    /// A short name for logs and profiles.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Gather { .. } => "gather",
            StepKind::MatMul { .. } => "matmul",
            StepKind::Binary { .. } => "binary",
            StepKind::Act { .. } => "act",
            StepKind::LayerNorm { .. } => "layernorm",
            StepKind::RmsNorm { .. } => "rmsnorm",
            StepKind::Softmax { .. } => "softmax",
            StepKind::Attention { .. } => "attention",
            StepKind::Rope { .. } => "rope",
            StepKind::MeanPool { .. } => "mean_pool",
            StepKind::L2Normalize { .. } => "l2_normalize",
            StepKind::Transpose { .. } => "transpose",
            StepKind::CacheWrite { .. } => "cache_write",
            StepKind::CachedAttention { .. } => "cached_attention",
            StepKind::SelectRows { .. } => "select_rows",
        }
    }
}

/// A kernel launch over values.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What to run.
    pub kind: StepKind,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result value.
    pub output: ValueId,
}

/// A graph compiled for concrete input shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Every value of the graph, with its shape and slot.
    pub values: Vec<ValueInfo>,
    /// Size of each slot in 32-bit words.
    pub slot_words: Vec<usize>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// Graph input values, in order.
    pub inputs: Vec<ValueId>,
    /// Named outputs.
    pub outputs: Vec<(String, ValueId)>,
    /// Sum of all slot sizes: the activation memory the plan needs at its peak.
    pub peak_activation_bytes: u64,
    /// Bytes the activations would need without slot reuse.
    pub unplanned_activation_bytes: u64,
    /// Activations fused into matmul epilogues.
    pub fused_activations: usize,
    /// For each input: the bound its values must stay below (embedding table rows, state
    /// sequences and positions, rows to select).
    pub input_bounds: Vec<Option<usize>>,
    /// Each state's concrete shape and storage.
    pub states: Vec<StateInfo>,
}

/// A state tensor's concrete shape and storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateInfo {
    /// Shape.
    pub shape: Vec<usize>,
    /// Storage.
    pub elem: StateElem,
}

impl StateInfo {
    /// 32-bit words of storage.
    pub fn words(&self) -> usize {
        self.elem.words(self.shape.iter().product())
    }
}

fn shape_err(node: usize, op: &Op, msg: String) -> Error {
    Error::Graph(format!("node {node} ({}): {msg}", op_name(op)))
}

/// A short name for an op, for messages.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Embedding { .. } => "embedding",
        Op::MatMul { .. } => "matmul",
        Op::Binary(BinaryOp::Add) => "add",
        Op::Binary(BinaryOp::Mul) => "mul",
        Op::Act(_) => "activation",
        Op::LayerNorm { .. } => "layernorm",
        Op::RmsNorm { .. } => "rmsnorm",
        Op::Softmax => "softmax",
        Op::Attention { .. } => "attention",
        Op::Rope { .. } => "rope",
        Op::MeanPool => "mean_pool",
        Op::L2Normalize { .. } => "l2_normalize",
        Op::Reshape(_) => "reshape",
        Op::Transpose(_) => "transpose",
        Op::CacheWrite { .. } => "cache_write",
        Op::CachedAttention { .. } => "cached_attention",
        Op::SelectRows => "select_rows",
    }
}

impl Plan {
    /// Compiles `graph` (which has no states) for inputs of the given shapes.
    pub fn compile(graph: &Graph, weights: &[WeightInfo], input_shapes: &[Vec<usize>]) -> Result<Plan> {
        Plan::compile_with_states(graph, weights, input_shapes, &[])
    }

    /// Compiles `graph` for inputs and states of the given shapes.
    pub fn compile_with_states(
        graph: &Graph,
        weights: &[WeightInfo],
        input_shapes: &[Vec<usize>],
        state_shapes: &[Vec<usize>],
    ) -> Result<Plan> {
        graph.validate()?;
        if state_shapes.len() != graph.states.len() {
            return Err(Error::Input(format!("expected {} states, got {}", graph.states.len(), state_shapes.len())));
        }
        if weights.len() != graph.weights.len() {
            return Err(Error::Graph(format!(
                "graph refers to {} weights, {} given",
                graph.weights.len(),
                weights.len()
            )));
        }
        if input_shapes.len() != graph.inputs.len() {
            return Err(Error::Input(format!("expected {} inputs, got {}", graph.inputs.len(), input_shapes.len())));
        }
        // Bind symbolic dimensions, from the inputs and then the states.
        let mut vars: HashMap<&str, usize> = HashMap::new();
        for (inp, shape) in graph.inputs.iter().zip(input_shapes) {
            bind_dims("input", &inp.name, &inp.dims, shape, &mut vars)?;
        }
        for (st, shape) in graph.states.iter().zip(state_shapes) {
            bind_dims("state", &st.name, &st.dims, shape, &mut vars)?;
            if st.elem == StateElem::F16 && shape.last().is_some_and(|w| w % 2 != 0) {
                return Err(Error::Input(format!(
                    "state `{}` shape {shape:?}: f16 rows must be of even width",
                    st.name
                )));
            }
        }
        let states: Vec<StateInfo> = graph
            .states
            .iter()
            .zip(state_shapes)
            .map(|(st, shape)| StateInfo { shape: shape.clone(), elem: st.elem })
            .collect();
        let ni = graph.inputs.len();
        let mut shapes: Vec<Vec<usize>> = input_shapes.to_vec();
        let mut elems: Vec<Elem> = graph.inputs.iter().map(|i| i.elem).collect();
        // alias[v] = Some(u) when v shares u's buffer and needs no step.
        let mut alias: Vec<Option<ValueId>> = vec![None; ni];
        let mut kinds: Vec<Option<StepKind>> = Vec::with_capacity(graph.nodes.len());
        let uses = graph.use_counts();
        let mut fused = 0usize;
        let mut fused_into: HashMap<usize, Activation> = HashMap::new();
        let mut input_bounds: Vec<Option<usize>> = vec![None; ni];

        // Activation fusion: a standalone activation whose operand is a matmul used only by it.
        for node in &graph.nodes {
            if let Op::Act(act) = node.op {
                let src = node.inputs.first().map(|v| v.0 as usize);
                if let Some(j) = src.and_then(|s| s.checked_sub(ni))
                    && let Op::MatMul { act: Activation::None, .. } = graph.nodes[j].op
                    && uses[ni + j] == 1
                    && !graph.outputs.iter().any(|(_, v)| v.0 as usize == ni + j)
                {
                    fused_into.insert(j, act);
                }
            }
        }

        for (i, node) in graph.nodes.iter().enumerate() {
            let op = &node.op;
            let ins: Vec<&[usize]> = node.inputs.iter().map(|v| shapes[v.0 as usize].as_slice()).collect();
            let in_elems: Vec<Elem> = node.inputs.iter().map(|v| elems[v.0 as usize]).collect();
            let need = |n: usize| -> Result<()> {
                if node.inputs.len() != n {
                    return Err(shape_err(i, op, format!("takes {n} operands, got {}", node.inputs.len())));
                }
                Ok(())
            };
            let want_elem = |idx: usize, e: Elem| -> Result<()> {
                if in_elems[idx] != e {
                    return Err(shape_err(i, op, format!("operand {idx} must be {e:?}, is {:?}", in_elems[idx])));
                }
                Ok(())
            };
            let winfo = |w: WeightId| -> &WeightInfo { &weights[w.0 as usize] };
            let wname = |w: WeightId| -> &str { &graph.weights[w.0 as usize] };
            let vec_weight = |w: WeightId, len: usize| -> Result<()> {
                let info = winfo(w);
                if info.shape.iter().product::<usize>() != len || info.shape.len() != 1 {
                    return Err(shape_err(
                        i,
                        op,
                        format!("weight `{}` has shape {:?}, expected [{len}]", wname(w), info.shape),
                    ));
                }
                if !matches!(info.format, Format::F32 | Format::F16 | Format::Bf16) {
                    return Err(shape_err(i, op, format!("weight `{}` must be f32, f16 or bf16", wname(w))));
                }
                Ok(())
            };
            // values of an input that index something must stay below its size
            let bound = |bounds: &mut Vec<Option<usize>>, v: ValueId, limit: usize, what: &str| -> Result<()> {
                let root = root_of(&alias, v);
                match bounds.get_mut(root.0 as usize) {
                    Some(b) => {
                        *b = Some(b.map_or(limit, |x| x.min(limit)));
                        Ok(())
                    }
                    None => Err(shape_err(i, op, format!("{what} must come from a graph input"))),
                }
            };
            let state = |st: StateId| -> &StateInfo { &states[st.0 as usize] };
            let numel = |s: &[usize]| s.iter().product::<usize>();
            let last = |s: &[usize]| s.last().copied().unwrap_or(1);

            let mut out_elem = Elem::F32;
            let mut is_alias = false;
            let (out_shape, kind): (Vec<usize>, Option<StepKind>) = match op {
                Op::Embedding { table } => {
                    need(1)?;
                    want_elem(0, Elem::U32)?;
                    let info = winfo(*table);
                    if info.shape.len() != 2 {
                        return Err(shape_err(
                            i,
                            op,
                            format!("table `{}` must be 2-D, is {:?}", wname(*table), info.shape),
                        ));
                    }
                    let (rows, cols) = (info.shape[0], info.shape[1]);
                    bound(&mut input_bounds, node.inputs[0], rows, "ids")?;
                    let mut s = ins[0].to_vec();
                    s.push(cols);
                    let tokens = numel(ins[0]);
                    (s, Some(StepKind::Gather { table: *table, format: info.format, tokens, rows, cols }))
                }
                Op::MatMul { weight, bias, act } => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let info = winfo(*weight);
                    if info.shape.len() != 2 {
                        return Err(shape_err(
                            i,
                            op,
                            format!("weight `{}` must be 2-D, is {:?}", wname(*weight), info.shape),
                        ));
                    }
                    let (n, k) = (info.shape[0], info.shape[1]);
                    if ins[0].is_empty() || last(ins[0]) != k {
                        return Err(shape_err(
                            i,
                            op,
                            format!(
                                "x {:?} does not match weight `{}` {:?} (reduction size {k})",
                                ins[0],
                                wname(*weight),
                                info.shape
                            ),
                        ));
                    }
                    if let Some(b) = bias {
                        vec_weight(*b, n)?;
                    }
                    let mut s = ins[0].to_vec();
                    *s.last_mut().unwrap_or(&mut 0) = n;
                    let act = match fused_into.get(&i) {
                        Some(a) if *act == Activation::None => {
                            fused += 1;
                            *a
                        }
                        _ => *act,
                    };
                    let m = numel(ins[0]) / k.max(1);
                    (s, Some(StepKind::MatMul { weight: *weight, format: info.format, bias: *bias, act, m, k, n }))
                }
                Op::Binary(bop) => {
                    need(2)?;
                    want_elem(0, Elem::F32)?;
                    want_elem(1, Elem::F32)?;
                    let (a, b) = (ins[0], ins[1]);
                    if b.len() > a.len() || a[a.len() - b.len()..] != *b {
                        return Err(shape_err(i, op, format!("cannot broadcast {b:?} onto {a:?}")));
                    }
                    (a.to_vec(), Some(StepKind::Binary { op: *bop, n: numel(a), bn: numel(b) }))
                }
                Op::Act(act) => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let src = node.inputs[0].0 as usize;
                    if src >= ni && fused_into.get(&(src - ni)) == Some(act) {
                        is_alias = true;
                        (ins[0].to_vec(), None)
                    } else {
                        (ins[0].to_vec(), Some(StepKind::Act { act: *act, n: numel(ins[0]) }))
                    }
                }
                Op::LayerNorm { gamma, beta, eps } => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let cols = last(ins[0]);
                    vec_weight(*gamma, cols)?;
                    vec_weight(*beta, cols)?;
                    let rows = numel(ins[0]) / cols.max(1);
                    (ins[0].to_vec(), Some(StepKind::LayerNorm { gamma: *gamma, beta: *beta, eps: *eps, rows, cols }))
                }
                Op::RmsNorm { gamma, eps } => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let cols = last(ins[0]);
                    vec_weight(*gamma, cols)?;
                    let rows = numel(ins[0]) / cols.max(1);
                    (ins[0].to_vec(), Some(StepKind::RmsNorm { gamma: *gamma, eps: *eps, rows, cols }))
                }
                Op::Softmax => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let cols = last(ins[0]);
                    (ins[0].to_vec(), Some(StepKind::Softmax { rows: numel(ins[0]) / cols.max(1), cols }))
                }
                Op::Attention { heads, kv_heads, head_dim, causal, scale } => {
                    let masked = node.inputs.len() == 4;
                    if !(3..=4).contains(&node.inputs.len()) {
                        return Err(shape_err(i, op, format!("takes 3 or 4 operands, got {}", node.inputs.len())));
                    }
                    for j in 0..3 {
                        want_elem(j, Elem::F32)?;
                    }
                    let (h, kvh, d) = (*heads, *kv_heads, *head_dim);
                    if h == 0 || kvh == 0 || h % kvh != 0 || d == 0 || d > MAX_HEAD_DIM {
                        return Err(shape_err(
                            i,
                            op,
                            format!(
                                "heads {h}, kv_heads {kvh}, head_dim {d}: heads must be a multiple of kv_heads and head_dim in 1..={MAX_HEAD_DIM}"
                            ),
                        ));
                    }
                    let (q, k, v) = (ins[0], ins[1], ins[2]);
                    if q.len() != 3 || k.len() != 3 || k != v || q[2] != h * d || k[2] != kvh * d || q[0] != k[0] {
                        return Err(shape_err(
                            i,
                            op,
                            format!("q {q:?}, k {k:?}, v {v:?} do not fit heads {h}, kv_heads {kvh}, head_dim {d}"),
                        ));
                    }
                    if *causal && k[1] < q[1] {
                        return Err(shape_err(
                            i,
                            op,
                            format!("causal attention needs kv_len {} >= q_len {}", k[1], q[1]),
                        ));
                    }
                    if masked {
                        want_elem(3, Elem::U32)?;
                        if ins[3] != [k[0], k[1]] {
                            return Err(shape_err(i, op, format!("mask {:?} must be [{}, {}]", ins[3], k[0], k[1])));
                        }
                    }
                    (
                        q.to_vec(),
                        Some(StepKind::Attention {
                            batch: q[0],
                            q_len: q[1],
                            kv_len: k[1],
                            heads: h,
                            kv_heads: kvh,
                            head_dim: d,
                            causal: *causal,
                            scale: *scale,
                            masked,
                        }),
                    )
                }
                Op::Rope { heads, head_dim, base, mode, scaling } => {
                    need(2)?;
                    want_elem(0, Elem::F32)?;
                    want_elem(1, Elem::U32)?;
                    let (x, pos) = (ins[0], ins[1]);
                    if x.len() < 2 || head_dim % 2 != 0 || last(x) != heads * head_dim || pos != &x[..x.len() - 1] {
                        return Err(shape_err(
                            i,
                            op,
                            format!("x {x:?} and positions {pos:?} do not fit {heads} heads of (even) size {head_dim}"),
                        ));
                    }
                    let divisors_ok = match scaling {
                        RopeScaling::None => true,
                        RopeScaling::Linear { factor } => factor.is_finite() && *factor > 0.0,
                        RopeScaling::Factors(v) => {
                            v.len() == head_dim / 2 && v.iter().all(|f| f.is_finite() && *f > 0.0)
                        }
                    };
                    if !divisors_ok {
                        return Err(shape_err(
                            i,
                            op,
                            format!(
                                "RoPE scaling needs finite divisors above 0, one per pair of {head_dim} dimensions"
                            ),
                        ));
                    }
                    (
                        x.to_vec(),
                        Some(StepKind::Rope {
                            tokens: numel(pos),
                            heads: *heads,
                            head_dim: *head_dim,
                            base: *base,
                            mode: *mode,
                            scaling: scaling.clone(),
                        }),
                    )
                }
                Op::MeanPool => {
                    need(2)?;
                    want_elem(0, Elem::F32)?;
                    want_elem(1, Elem::U32)?;
                    let (x, m) = (ins[0], ins[1]);
                    if x.len() != 3 || m != [x[0], x[1]] {
                        return Err(shape_err(i, op, format!("x {x:?} must be [b, s, h] and mask {m:?} [b, s]")));
                    }
                    (vec![x[0], x[2]], Some(StepKind::MeanPool { batch: x[0], seq: x[1], hidden: x[2] }))
                }
                Op::L2Normalize { eps } => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let cols = last(ins[0]);
                    (
                        ins[0].to_vec(),
                        Some(StepKind::L2Normalize { rows: numel(ins[0]) / cols.max(1), cols, eps: *eps }),
                    )
                }
                Op::CacheWrite { state: st } => {
                    need(3)?;
                    want_elem(0, Elem::F32)?;
                    want_elem(1, Elem::U32)?;
                    want_elem(2, Elem::U32)?;
                    let (x, info) = (ins[0], state(*st));
                    let lead = &x[..x.len().saturating_sub(1)];
                    if x.is_empty()
                        || info.shape.len() != 3
                        || last(x) != info.shape[2]
                        || ins[1] != lead
                        || ins[2] != lead
                    {
                        return Err(shape_err(
                            i,
                            op,
                            format!(
                                "x {x:?}, seq {:?} and pos {:?} do not fit state `{}` {:?} ([seqs, ctx, width])",
                                ins[1], ins[2], graph.states[st.0 as usize].name, info.shape
                            ),
                        ));
                    }
                    bound(&mut input_bounds, node.inputs[1], info.shape[0], "sequence indices")?;
                    bound(&mut input_bounds, node.inputs[2], info.shape[1], "positions")?;
                    is_alias = true;
                    let (tokens, width, ctx) = (numel(lead), info.shape[2], info.shape[1]);
                    (x.to_vec(), Some(StepKind::CacheWrite { state: *st, elem: info.elem, tokens, width, ctx }))
                }
                Op::CachedAttention { heads, kv_heads, head_dim, scale, k_cache, v_cache } => {
                    need(5)?;
                    for j in 0..3 {
                        want_elem(j, Elem::F32)?;
                    }
                    want_elem(3, Elem::U32)?;
                    want_elem(4, Elem::U32)?;
                    let (h, kvh, d) = (*heads, *kv_heads, *head_dim);
                    let (ki, vi) = (state(*k_cache), state(*v_cache));
                    let q = ins[0];
                    let lead = &q[..q.len().saturating_sub(1)];
                    let fits = h > 0
                        && kvh > 0
                        && h % kvh == 0
                        && (1..=MAX_HEAD_DIM).contains(&d)
                        && !q.is_empty()
                        && last(q) == h * d
                        && ki == vi
                        && ki.shape.len() == 3
                        && ki.shape[2] == kvh * d
                        && [ins[1], ins[2]].iter().all(|kv| kv.len() == q.len() && &kv[..kv.len() - 1] == lead)
                        && ins[3] == lead
                        && ins[4] == lead;
                    if !fits {
                        return Err(shape_err(
                            i,
                            op,
                            format!(
                                "q {q:?}, k {:?}, v {:?}, seq {:?}, pos {:?} and caches {:?} / {:?} do not fit \
                                 heads {h}, kv_heads {kvh}, head_dim {d} (at most {MAX_HEAD_DIM})",
                                ins[1], ins[2], ins[3], ins[4], ki.shape, vi.shape
                            ),
                        ));
                    }
                    bound(&mut input_bounds, node.inputs[3], ki.shape[0], "sequence indices")?;
                    bound(&mut input_bounds, node.inputs[4], ki.shape[1], "positions")?;
                    (
                        q.to_vec(),
                        Some(StepKind::CachedAttention {
                            tokens: numel(lead),
                            heads: h,
                            kv_heads: kvh,
                            head_dim: d,
                            scale: *scale,
                            k_cache: *k_cache,
                            v_cache: *v_cache,
                            elem: ki.elem,
                            ctx: ki.shape[1],
                        }),
                    )
                }
                Op::SelectRows => {
                    need(2)?;
                    want_elem(0, Elem::F32)?;
                    want_elem(1, Elem::U32)?;
                    let (x, idx) = (ins[0], ins[1]);
                    if x.len() != 2 || idx.len() != 1 {
                        return Err(shape_err(i, op, format!("x {x:?} must be [t, w] and indices {idx:?} [r]")));
                    }
                    bound(&mut input_bounds, node.inputs[1], x[0], "row indices")?;
                    (vec![idx[0], x[1]], Some(StepKind::SelectRows { rows: idx[0], cols: x[1] }))
                }
                Op::Reshape(spec) => {
                    need(1)?;
                    out_elem = in_elems[0];
                    is_alias = true;
                    (reshape(ins[0], spec).map_err(|m| shape_err(i, op, m))?, None)
                }
                Op::Transpose(perm) => {
                    need(1)?;
                    want_elem(0, Elem::F32)?;
                    let x = ins[0];
                    let r = x.len();
                    let mut sorted = perm.clone();
                    sorted.sort_unstable();
                    if r > 4 || perm.len() != r || sorted != (0..r).collect::<Vec<_>>() {
                        return Err(shape_err(
                            i,
                            op,
                            format!("perm {perm:?} is not a permutation of rank {r} (at most 4)"),
                        ));
                    }
                    let pad = 4 - r;
                    let mut dims = [1usize; 4];
                    let mut p4 = [0usize, 1, 2, 3];
                    for j in 0..r {
                        dims[pad + j] = x[j];
                        p4[pad + j] = pad + perm[j];
                    }
                    (perm.iter().map(|&p| x[p]).collect(), Some(StepKind::Transpose { dims, perm: p4 }))
                }
            };
            shapes.push(out_shape);
            elems.push(out_elem);
            alias.push(if is_alias { Some(node.inputs[0]) } else { None });
            kinds.push(kind);
        }

        // Liveness over slot roots.
        let nv = graph.num_values();
        let roots: Vec<ValueId> = (0..nv).map(|v| root_of(&alias, ValueId(v as u32))).collect();
        let mut last_use = vec![0usize; nv]; // step index (node index) after which the root is dead
        for (i, node) in graph.nodes.iter().enumerate() {
            for v in &node.inputs {
                let r = roots[v.0 as usize].0 as usize;
                last_use[r] = last_use[r].max(i);
            }
        }
        for (_, v) in &graph.outputs {
            last_use[roots[v.0 as usize].0 as usize] = usize::MAX;
        }

        let words = |v: usize| shapes[v].iter().product::<usize>().max(1);
        let mut slot_words: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut slot_of = vec![usize::MAX; nv];
        let mut unplanned = 0u64;
        let alloc = |need: usize, free: &mut Vec<usize>, slot_words: &mut Vec<usize>| -> usize {
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, s)| slot_words[**s] >= need)
                .min_by_key(|(_, s)| slot_words[**s])
                .map(|(i, _)| i)
                .or_else(|| free.iter().enumerate().max_by_key(|(_, s)| slot_words[**s]).map(|(i, _)| i));
            match best {
                Some(i) => {
                    let s = free.swap_remove(i);
                    slot_words[s] = slot_words[s].max(need);
                    s
                }
                None => {
                    slot_words.push(need);
                    slot_words.len() - 1
                }
            }
        };
        for (v, slot) in slot_of.iter_mut().enumerate().take(ni) {
            *slot = alloc(words(v), &mut free, &mut slot_words);
            unplanned += 4 * words(v) as u64;
        }
        let mut steps = Vec::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let v = ni + i;
            if let Some(src) = alias[v] {
                slot_of[v] = slot_of[roots[src.0 as usize].0 as usize];
            } else {
                slot_of[v] = alloc(words(v), &mut free, &mut slot_words);
                unplanned += 4 * words(v) as u64;
            }
            if let Some(kind) = kinds[i].take() {
                steps.push(Step { kind, inputs: node.inputs.clone(), output: ValueId(v as u32) });
            }
            // Free roots whose last use is this node.
            let mut dead: Vec<usize> =
                node.inputs.iter().map(|u| roots[u.0 as usize].0 as usize).filter(|r| last_use[*r] == i).collect();
            dead.sort_unstable();
            dead.dedup();
            for r in dead {
                free.push(slot_of[r]);
            }
            // A value nobody reads is dead at once (but it still needed its own slot).
            if alias[v].is_none() && uses[v] == 0 {
                free.push(slot_of[v]);
            }
        }
        let values =
            (0..nv).map(|v| ValueInfo { shape: shapes[v].clone(), elem: elems[v], slot: slot_of[v] }).collect();
        let peak = slot_words.iter().map(|w| 4 * *w as u64).sum();
        Ok(Plan {
            values,
            slot_words,
            steps,
            inputs: (0..ni as u32).map(ValueId).collect(),
            outputs: graph.outputs.clone(),
            peak_activation_bytes: peak,
            unplanned_activation_bytes: unplanned,
            fused_activations: fused,
            input_bounds,
            states,
        })
    }

    /// Checks host inputs against the plan: shapes, element types, lengths, and that ids
    /// feeding an embedding stay inside its table.
    pub fn check_inputs(&self, inputs: &[HostTensor]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Input(format!("expected {} inputs, got {}", self.inputs.len(), inputs.len())));
        }
        for (i, (t, v)) in inputs.iter().zip(&self.inputs).enumerate() {
            let info = &self.values[v.0 as usize];
            if t.shape != info.shape || t.elem != info.elem || t.data.len() != info.numel() {
                return Err(Error::Input(format!(
                    "input {i}: got {:?} {:?} with {} values, plan expects {:?} {:?}",
                    t.elem,
                    t.shape,
                    t.data.len(),
                    info.elem,
                    info.shape
                )));
            }
            if let Some(bound) = self.input_bounds[i]
                && let Some((j, id)) = t.data.iter().enumerate().find(|(_, id)| **id as usize >= bound)
            {
                return Err(Error::Input(format!(
                    "input {i}: id {id} at position {j} is outside the embedding table of {bound} rows"
                )));
            }
        }
        Ok(())
    }
}

/// Checks `shape` against the declared `dims` of input or state `name` (`what`), binding each
/// symbolic dimension in `vars` or checking it against its earlier binding.
fn bind_dims<'g>(
    what: &str,
    name: &str,
    dims: &'g [Dim],
    shape: &[usize],
    vars: &mut HashMap<&'g str, usize>,
) -> Result<()> {
    if dims.len() != shape.len() {
        return Err(Error::Input(format!("{what} `{name}` has rank {}, expected {}", shape.len(), dims.len())));
    }
    for (d, &got) in dims.iter().zip(shape) {
        match d {
            Dim::Fixed(want) if *want != got => {
                return Err(Error::Input(format!("{what} `{name}` has shape {shape:?}; a dimension must be {want}")));
            }
            Dim::Var(var) => {
                if let Some(prev) = vars.insert(var, got)
                    && prev != got
                {
                    return Err(Error::Input(format!(
                        "dimension `{var}` is {prev} in one input and {got} in `{name}`"
                    )));
                }
            }
            _ => {}
        }
    }
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
        return Err(Error::Input(format!("{what} `{name}` shape {shape:?} overflows")));
    }
    Ok(())
}

fn root_of(alias: &[Option<ValueId>], mut v: ValueId) -> ValueId {
    while let Some(Some(src)) = alias.get(v.0 as usize) {
        v = *src;
    }
    v
}

fn reshape(x: &[usize], spec: &[i64]) -> std::result::Result<Vec<usize>, String> {
    let total: usize = x.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (j, &d) in spec.iter().enumerate() {
        match d {
            0 => out.push(*x.get(j).ok_or_else(|| format!("dim {j} copies a dimension {x:?} lacks"))?),
            -1 if infer.is_none() => {
                infer = Some(j);
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            _ => return Err(format!("bad reshape spec {spec:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(j) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {x:?} to {spec:?}"));
        }
        out[j] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(format!("cannot reshape {x:?} ({total} values) to {spec:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: &[usize]) -> WeightInfo {
        WeightInfo { shape: shape.to_vec(), format: Format::F32 }
    }

    #[test]
    fn buffers_are_reused_and_activation_is_fused() {
        let mut g = Graph::default();
        let x = g.input("x", Elem::F32, vec![Dim::Var("m".into()), Dim::Fixed(8)]);
        let w1 = g.weight("w1");
        let w2 = g.weight("w2");
        let mut h = x;
        for _ in 0..4 {
            let a = g.push(Op::MatMul { weight: w1, bias: None, act: Activation::None }, &[h]);
            let b = g.push(Op::Act(Activation::GeluErf), &[a]);
            h = g.push(Op::MatMul { weight: w2, bias: None, act: Activation::None }, &[b]);
        }
        g.output("y", h);
        let p = Plan::compile(&g, &[info(&[16, 8]), info(&[8, 16])], &[vec![3, 8]]).unwrap();
        assert_eq!(p.fused_activations, 4);
        assert_eq!(p.steps.len(), 8);
        assert!(p.peak_activation_bytes < p.unplanned_activation_bytes / 2, "{p:?}");
        // No step writes a slot it reads.
        for s in &p.steps {
            let out = p.values[s.output.0 as usize].slot;
            assert!(s.inputs.iter().all(|v| p.values[v.0 as usize].slot != out));
        }
    }

    #[test]
    fn shape_errors_name_the_node() {
        let mut g = Graph::default();
        let x = g.input("x", Elem::F32, vec![Dim::Var("m".into()), Dim::Fixed(8)]);
        let w = g.weight("w");
        let y = g.push(Op::MatMul { weight: w, bias: None, act: Activation::None }, &[x]);
        g.output("y", y);
        let err = Plan::compile(&g, &[info(&[4, 7])], &[vec![2, 8]]).unwrap_err();
        assert!(err.to_string().contains("matmul"), "{err}");
        let err = Plan::compile(&g, &[info(&[4, 8])], &[vec![2, 9]]).unwrap_err();
        assert!(err.to_string().contains("must be 8"), "{err}");
    }

    #[test]
    fn reshape_rules() {
        assert_eq!(reshape(&[2, 3, 4], &[0, -1]).unwrap(), vec![2, 12]);
        assert_eq!(reshape(&[2, 12], &[2, 3, 4]).unwrap(), vec![2, 3, 4]);
        assert!(reshape(&[2, 12], &[5, -1]).is_err());
        assert!(reshape(&[2, 12], &[-1, -1]).is_err());
    }
}
