//! Weight upload and plan execution: each step checks its sizes, builds its
//! [`KernelKey`], fetches the cached pipeline and records one dispatch.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use wedge_core::WeightId;
use wedge_core::graph::{BinaryOp, RopeMode};
use wedge_core::plan::{HostTensor, Plan, StepKind, rope_inv_freq};
use wedge_core::quant::{Format, Weight};
use wedge_shaders::{Family, KernelKey};

use crate::GpuError;
use crate::context::GpuContext;

/// Rows of `x` up to which a matmul takes the GEMV path (the kernel's `MAXM`).
const GEMV_MAX_ROWS: usize = 4;
/// GEMM tile: threads per side × outputs per thread (the kernel's `TS × MICRO`).
const MICRO: usize = 4;
/// Output columns per workgroup of the subgroup GEMV (its `NC`).
const SG_COLUMNS: usize = 4;
/// Output columns per workgroup of the `q8a8` GEMV.
const A8_COLUMNS: usize = 4;

struct Packed {
    words: wgpu::Buffer,
    scales: Option<wgpu::Buffer>,
}

/// Weights uploaded to the device: packed for matmuls and gathers, f32 for vectors.
pub struct GpuWeights {
    packed: Vec<Option<Packed>>,
    vectors: Vec<Option<wgpu::Buffer>>,
    names: Vec<String>,
    bytes: u64,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWeights").field("count", &self.names.len()).field("bytes", &self.bytes).finish()
    }
}

fn check_size(ctx: &GpuContext, what: &str, bytes: u64) -> Result<(), GpuError> {
    let limit = ctx.summary.max_storage_binding;
    if bytes > limit {
        return Err(GpuError::TooLarge { what: what.to_string(), bytes, limit });
    }
    Ok(())
}

fn init_buffer(ctx: &GpuContext, label: &str, words: &[u32]) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(words),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

impl GpuWeights {
    /// Uploads the weights of a graph (in the order of `graph.weights`).
    pub fn upload(ctx: &GpuContext, weights: &[Weight]) -> Result<GpuWeights, GpuError> {
        let mut packed = Vec::with_capacity(weights.len());
        let mut vectors = Vec::with_capacity(weights.len());
        let mut bytes = 0u64;
        for w in weights {
            w.validate()?;
            let label = format!("wedge.weight.{}", w.name);
            if w.shape.len() == 1 && matches!(w.format, Format::F32 | Format::F16 | Format::Bf16) {
                let v = w.to_f32();
                check_size(ctx, &label, 4 * v.len() as u64)?;
                let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                vectors.push(Some(init_buffer(ctx, &label, &bits)));
                packed.push(None);
                bytes += 4 * v.len() as u64;
            } else {
                check_size(ctx, &label, 4 * w.words.len() as u64)?;
                check_size(ctx, &label, 4 * w.scales.len() as u64)?;
                let words = init_buffer(ctx, &label, if w.words.is_empty() { &[0] } else { &w.words });
                let scales = (!w.scales.is_empty()).then(|| init_buffer(ctx, &format!("{label}.scales"), &w.scales));
                packed.push(Some(Packed { words, scales }));
                vectors.push(None);
                bytes += w.packed_bytes() as u64;
            }
        }
        Ok(GpuWeights { packed, vectors, names: weights.iter().map(|w| w.name.clone()).collect(), bytes })
    }

    /// Bytes of weights on the device.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn packed(&self, id: WeightId) -> Result<&Packed, GpuError> {
        let i = id.0 as usize;
        self.packed.get(i).and_then(|p| p.as_ref()).ok_or_else(|| self.err(i, "is not a packed 2-D weight"))
    }

    fn vector(&self, id: WeightId) -> Result<&wgpu::Buffer, GpuError> {
        let i = id.0 as usize;
        self.vectors.get(i).and_then(|p| p.as_ref()).ok_or_else(|| self.err(i, "is not a 1-D f32/f16 vector"))
    }

    fn err(&self, i: usize, msg: &str) -> GpuError {
        GpuError::Weight { name: self.names.get(i).cloned().unwrap_or_else(|| format!("#{i}")), msg: msg.into() }
    }
}

/// Device memory for a plan's states (key/value caches), owned by the caller and bound by
/// every run over it; it outlives runs and their slots.
pub struct GpuState {
    buffers: Vec<wgpu::Buffer>,
    words: Vec<usize>,
}

impl std::fmt::Debug for GpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuState").field("words", &self.words).finish()
    }
}

/// Storage buffers of `words` 32-bit words each (at least 16 bytes), labelled `{label}{i}`,
/// checked against the adapter's binding limit.
fn word_buffers(ctx: &GpuContext, label: &str, words: &[usize]) -> Result<Vec<wgpu::Buffer>, GpuError> {
    words
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let bytes = (4 * w as u64).max(16).next_multiple_of(16);
            let label = format!("{label}{i}");
            check_size(ctx, &label, bytes)?;
            Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }))
        })
        .collect()
}

impl GpuState {
    /// Zeroed buffers of `words` 32-bit words each.
    pub fn new(ctx: &GpuContext, words: &[usize]) -> Result<GpuState, GpuError> {
        let buffers = word_buffers(ctx, "wedge.state", words)?;
        Ok(GpuState { buffers, words: words.to_vec() })
    }

    /// Bytes of device memory.
    pub fn bytes(&self) -> u64 {
        self.words.iter().map(|w| 4 * *w as u64).sum()
    }

    fn check(&self, plan: &Plan) -> Result<(), GpuError> {
        let want: Vec<usize> = plan.states.iter().map(|s| s.words()).collect();
        if want != self.words {
            return Err(GpuError::Core(wedge_core::Error::Input(format!(
                "the plan needs states of {want:?} words, the state has {:?}",
                self.words
            ))));
        }
        Ok(())
    }
}

struct Dispatch {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // read by `profile`, native only
    label: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

/// A plan made resident on the device: activation buffers, pipelines and bind groups
/// built once, so it can be run again and again (serving, benchmarks).
pub struct ResidentRun {
    device: wgpu::Device,
    health: Arc<crate::health::Health>,
    queue: wgpu::Queue,
    plan: Arc<Plan>,
    slots: Vec<wgpu::Buffer>,
    dispatches: Vec<Dispatch>,
    _uniforms: Option<wgpu::Buffer>,
    _tables: Vec<wgpu::Buffer>,
}

impl std::fmt::Debug for ResidentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidentRun").field("dispatches", &self.dispatches.len()).finish()
    }
}

/// One step, before buffers are bound.
struct Encoded<'b> {
    key: KernelKey,
    bindings: Vec<&'b wgpu::Buffer>,
    params: Vec<u32>,
    groups: [u32; 3],
}

fn grid(ctx: &GpuContext, groups: usize) -> Result<[u32; 3], GpuError> {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let groups = groups.max(1);
    if groups <= max {
        return Ok([groups as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    if y > max {
        return Err(GpuError::Dispatch(format!("{groups} workgroups exceed the adapter's dispatch limits")));
    }
    Ok([max as u32, y as u32, 1])
}

fn dims3(ctx: &GpuContext, what: &str, g: [usize; 3]) -> Result<[u32; 3], GpuError> {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if g.iter().any(|&d| d > max) {
        return Err(GpuError::Dispatch(format!("{what}: dispatch {g:?} exceeds the per-dimension limit {max}")));
    }
    Ok(g.map(|d| d.max(1) as u32))
}

fn u(v: usize) -> u32 {
    v as u32
}

impl ResidentRun {
    /// Allocates the plan's slots and builds every dispatch.
    pub async fn prepare(ctx: &GpuContext, plan: Arc<Plan>, weights: &GpuWeights) -> Result<ResidentRun, GpuError> {
        ResidentRun::prepare_with_state(ctx, plan, weights, None).await
    }

    /// [`ResidentRun::prepare`] for a plan with states, bound to `state`'s buffers.
    pub async fn prepare_with_state(
        ctx: &GpuContext,
        plan: Arc<Plan>,
        weights: &GpuWeights,
        state: Option<&GpuState>,
    ) -> Result<ResidentRun, GpuError> {
        match state {
            Some(st) => st.check(&plan)?,
            None if !plan.states.is_empty() => {
                return Err(GpuError::Core(wedge_core::Error::Input("the plan has states and none was given".into())));
            }
            None => {}
        }
        let state_buf = |st: wedge_core::graph::StateId| -> Result<&wgpu::Buffer, GpuError> {
            state
                .and_then(|s| s.buffers.get(st.0 as usize))
                .ok_or_else(|| GpuError::Core(wedge_core::Error::Input(format!("the state has no tensor {}", st.0))))
        };
        let slots = word_buffers(ctx, "wedge.slot", &plan.slot_words)?;
        let t = &ctx.tuning;
        // Rope frequency tables, made first so steps can borrow them.
        let mut tables = Vec::new();
        for step in &plan.steps {
            if let StepKind::Rope { head_dim, base, scaling, .. } = &step.kind {
                let bits: Vec<u32> = rope_inv_freq(*head_dim, *base, scaling).iter().map(|f| f.to_bits()).collect();
                tables.push(init_buffer(ctx, "wedge.rope_inv_freq", &bits));
            }
        }
        // written by steps whose layout has a writable binding they do not use
        let scratch = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wedge.scratch"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let mut encoded = Vec::with_capacity(plan.steps.len());
        let mut rope_i = 0;
        for step in &plan.steps {
            let slot = |j: usize| &slots[plan.values[step.inputs[j].0 as usize].slot];
            let out = &slots[plan.values[step.output.0 as usize].slot];
            let d = &ctx.dummy;
            let e = match &step.kind {
                StepKind::MatMul { weight, format, bias, act, m, k, n } => {
                    let pw = weights.packed(*weight)?;
                    let b = bias.map(|b| weights.vector(b)).transpose()?;
                    let gemv = *m <= GEMV_MAX_ROWS || !ctx.tiled_gemm();
                    let overrides = vec![
                        ("WTYPE", f64::from(format.code())),
                        ("ACT", f64::from(act.code())),
                        ("HAS_BIAS", if b.is_some() { 1.0 } else { 0.0 }),
                    ];
                    let rows = dims3(ctx, "gemv row blocks", [1, 1, m.div_ceil(GEMV_MAX_ROWS)])?[2];
                    if *format == Format::Q8A8 && !ctx.summary.dot4 {
                        return Err(GpuError::Unsupported(format!(
                            "{} has no WGSL dot4I8Packed (packed_4x8_integer_dot_product), which q8a8 matmuls \
                             need; run this model on the CPU or convert it to q8",
                            ctx.summary
                        )));
                    }
                    let (key, groups) = if *format == Format::Q8A8 {
                        // 8-bit activations (dot4I8Packed); the weights are q8 as stored
                        let template = vec![("WG", 64), ("TS", t.gemm_ts)];
                        let g = if gemv {
                            let mut g = grid(ctx, n.div_ceil(A8_COLUMNS))?;
                            g[2] = rows;
                            g
                        } else {
                            let tile = t.gemm_ts as usize * MICRO;
                            dims3(ctx, "gemm", [n.div_ceil(tile), m.div_ceil(tile), 1])?
                        };
                        let entry = if gemv { "gemv_a8" } else { "gemm_a8" };
                        (KernelKey::new(Family::QWeightA8, entry, template, overrides), g)
                    } else if gemv && ctx.subgroups() {
                        // wide workgroups only when each column has words enough for them (and
                        // the adapter takes 256 invocations)
                        let wg = if format.words_per_row(*k) >= 1024 && t.wg >= 256 { 256 } else { 64 };
                        let mut g = grid(ctx, n.div_ceil(SG_COLUMNS))?;
                        g[2] = rows;
                        (KernelKey::new(Family::QWeightSubgroup, "gemv_sg", vec![("WG", wg)], overrides), g)
                    } else if gemv {
                        let mut g = grid(ctx, n.div_ceil((t.gemv_wg / t.gemv_tpr) as usize))?;
                        g[2] = rows;
                        (KernelKey::new(Family::QWeight, "gemv", qweight_template(t), overrides), g)
                    } else {
                        let tile = t.gemm_ts as usize * MICRO;
                        let g = dims3(ctx, "gemm", [n.div_ceil(tile), m.div_ceil(tile), 1])?;
                        let key = if ctx.f16() {
                            // f16 tiles and chunk sums (shader-f16); the same grid
                            KernelKey::new(Family::QWeightF16, "gemm_h", vec![("TS", t.gemm_ts)], overrides)
                        } else {
                            KernelKey::new(Family::QWeight, "gemm", qweight_template(t), overrides)
                        };
                        (key, g)
                    };
                    Encoded {
                        key,
                        bindings: vec![slot(0), &pw.words, pw.scales.as_ref().unwrap_or(d), b.unwrap_or(d), out, d, d],
                        params: qparams(*format, *m, *k, *n),
                        groups,
                    }
                }
                StepKind::Gather { table, format, tokens, cols, .. } => {
                    let pw = weights.packed(*table)?;
                    Encoded {
                        key: KernelKey::new(
                            Family::QWeight,
                            "gather",
                            qweight_template(t),
                            vec![("WTYPE", f64::from(format.code())), ("ACT", 0.0), ("HAS_BIAS", 0.0)],
                        ),
                        bindings: vec![d, &pw.words, pw.scales.as_ref().unwrap_or(d), d, out, d, slot(0)],
                        params: qparams(*format, *tokens, *cols, 0),
                        groups: grid(ctx, (tokens * cols).div_ceil(t.gemv_wg as usize))?,
                    }
                }
                StepKind::Binary { op, n, bn } => Encoded {
                    key: KernelKey::new(
                        Family::Elementwise,
                        "binary",
                        vec![("WG", t.wg)],
                        vec![("OP", if *op == BinaryOp::Mul { 1.0 } else { 0.0 }), ("ACT", 0.0)],
                    ),
                    bindings: vec![slot(0), slot(1), out, d],
                    params: vec![u(*n), u(*bn), 0, 0],
                    groups: grid(ctx, n.div_ceil(t.wg as usize))?,
                },
                StepKind::Act { act, n } => Encoded {
                    key: KernelKey::new(
                        Family::Elementwise,
                        "activation",
                        vec![("WG", t.wg)],
                        vec![("OP", 0.0), ("ACT", f64::from(act.code()))],
                    ),
                    bindings: vec![slot(0), d, out, d],
                    params: vec![u(*n), 1, 0, 0],
                    groups: grid(ctx, n.div_ceil(t.wg as usize))?,
                },
                StepKind::LayerNorm { gamma, beta, eps, rows, cols } => Encoded {
                    key: KernelKey::new(Family::Rows, "layernorm", vec![("WG", t.wg)], vec![]),
                    bindings: vec![slot(0), weights.vector(*gamma)?, weights.vector(*beta)?, out, d],
                    params: vec![u(*rows), u(*cols), eps.to_bits(), 0],
                    groups: grid(ctx, *rows)?,
                },
                StepKind::RmsNorm { gamma, eps, rows, cols } => Encoded {
                    key: KernelKey::new(Family::Rows, "rmsnorm", vec![("WG", t.wg)], vec![]),
                    bindings: vec![slot(0), weights.vector(*gamma)?, d, out, d],
                    params: vec![u(*rows), u(*cols), eps.to_bits(), 0],
                    groups: grid(ctx, *rows)?,
                },
                StepKind::Softmax { rows, cols } => Encoded {
                    key: KernelKey::new(Family::Rows, "softmax", vec![("WG", t.wg)], vec![]),
                    bindings: vec![slot(0), d, d, out, d],
                    params: vec![u(*rows), u(*cols), 0, 0],
                    groups: grid(ctx, *rows)?,
                },
                StepKind::L2Normalize { rows, cols, eps } => Encoded {
                    key: KernelKey::new(Family::Rows, "l2_normalize", vec![("WG", t.wg)], vec![]),
                    bindings: vec![slot(0), d, d, out, d],
                    params: vec![u(*rows), u(*cols), eps.to_bits(), 0],
                    groups: grid(ctx, *rows)?,
                },
                StepKind::Attention { batch, q_len, kv_len, heads, kv_heads, head_dim, causal, scale, masked } => {
                    let wg = t.attention_wg as usize;
                    if *head_dim > wg * 4 {
                        return Err(GpuError::Dispatch(format!(
                            "head_dim {head_dim} exceeds {} for this kernel",
                            wg * 4
                        )));
                    }
                    Encoded {
                        key: KernelKey::new(Family::Attention, "attention", vec![("WG", t.attention_wg)], vec![]),
                        bindings: vec![slot(0), slot(1), slot(2), if *masked { slot(3) } else { d }, out, d],
                        params: vec![
                            u(*batch),
                            u(*q_len),
                            u(*kv_len),
                            u(*heads),
                            u(*kv_heads),
                            u(*head_dim),
                            u32::from(*causal),
                            u32::from(*masked),
                            scale.to_bits(),
                            0,
                            0,
                            0,
                        ],
                        groups: dims3(ctx, "attention", [*q_len, *heads, *batch])?,
                    }
                }
                StepKind::Rope { tokens, heads, head_dim, mode, .. } => {
                    let table = &tables[rope_i];
                    rope_i += 1;
                    let mode = u32::from(*mode == RopeMode::Half);
                    Encoded {
                        key: KernelKey::new(Family::Misc, "rope", vec![("WG", t.wg)], vec![]),
                        bindings: vec![slot(0), slot(1), table, out, d],
                        params: vec![u(*tokens), u(*heads), u(*head_dim), mode, 0, 0, 0, 0],
                        groups: grid(ctx, (tokens * heads * head_dim / 2).div_ceil(t.wg as usize))?,
                    }
                }
                StepKind::MeanPool { batch, seq, hidden } => Encoded {
                    key: KernelKey::new(Family::Misc, "mean_pool", vec![("WG", t.wg)], vec![]),
                    bindings: vec![slot(0), slot(1), d, out, d],
                    params: vec![u(*batch), u(*seq), u(*hidden), 0, 0, 0, 0, 0],
                    groups: grid(ctx, (batch * hidden).div_ceil(t.wg as usize))?,
                },
                StepKind::Transpose { dims, perm } => {
                    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
                    let od = perm.map(|p| u(dims[p]));
                    let os = perm.map(|p| u(strides[p]));
                    let total: usize = dims.iter().product();
                    Encoded {
                        key: KernelKey::new(Family::Misc, "transpose", vec![("WG", t.wg)], vec![]),
                        bindings: vec![slot(0), d, d, out, d],
                        params: vec![od[0], od[1], od[2], od[3], os[0], os[1], os[2], os[3]],
                        groups: grid(ctx, total.div_ceil(t.wg as usize))?,
                    }
                }
                StepKind::CacheWrite { state: st, elem, tokens, width, ctx: rows } => {
                    let wg = t.attention_wg;
                    Encoded {
                        key: KernelKey::new(
                            Family::Cache,
                            "cache_write",
                            vec![("WG", wg)],
                            vec![("HALF", half(*elem))],
                        ),
                        bindings: vec![slot(0), slot(1), slot(2), state_buf(*st)?, d, &scratch, d],
                        params: vec![u(*tokens), u(*width), u(*rows), 0, 0, 0, 0, 0],
                        groups: grid(ctx, (tokens * elem.words(*width)).div_ceil(wg as usize))?,
                    }
                }
                StepKind::CachedAttention {
                    tokens,
                    heads,
                    kv_heads,
                    head_dim,
                    scale,
                    k_cache,
                    v_cache,
                    elem,
                    ctx: rows,
                } => {
                    let wg = t.attention_wg;
                    if *head_dim > wg as usize * 4 {
                        return Err(GpuError::Dispatch(format!(
                            "head_dim {head_dim} exceeds {} for this kernel",
                            wg * 4
                        )));
                    }
                    Encoded {
                        key: KernelKey::new(
                            Family::Cache,
                            "cached_attention",
                            vec![("WG", wg)],
                            vec![("HALF", half(*elem))],
                        ),
                        bindings: vec![slot(0), slot(3), slot(4), state_buf(*k_cache)?, state_buf(*v_cache)?, out, d],
                        params: vec![
                            u(*tokens),
                            u(kv_heads * head_dim),
                            u(*rows),
                            u(*heads),
                            u(*kv_heads),
                            u(*head_dim),
                            scale.to_bits(),
                            0,
                        ],
                        groups: dims3(ctx, "cached attention", [*tokens, *heads, 1])?,
                    }
                }
                StepKind::SelectRows { rows, cols } => {
                    let wg = t.attention_wg;
                    Encoded {
                        key: KernelKey::new(Family::Cache, "select_rows", vec![("WG", wg)], vec![("HALF", 0.0)]),
                        bindings: vec![slot(0), slot(1), d, &scratch, d, out, d],
                        params: vec![u(*rows), u(*cols), 0, 0, 0, 0, 0, 0],
                        groups: grid(ctx, (rows * cols).div_ceil(wg as usize))?,
                    }
                }
                other => {
                    return Err(GpuError::Core(wedge_core::Error::Graph(format!(
                        "the GPU backend cannot run {other:?}"
                    ))));
                }
            };
            encoded.push(e);
        }

        // All parameters in one uniform buffer, one aligned record per step.
        let align = ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let record = 64usize.next_multiple_of(align);
        let mut blob = vec![0u8; record * encoded.len().max(1)];
        for (i, e) in encoded.iter().enumerate() {
            let bytes: &[u8] = bytemuck::cast_slice(&e.params);
            blob[i * record..i * record + bytes.len()].copy_from_slice(bytes);
        }
        let uniforms = (!encoded.is_empty()).then(|| {
            ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wedge.params"),
                contents: &blob,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });
        let mut dispatches = Vec::with_capacity(encoded.len());
        for (i, e) in encoded.iter().enumerate() {
            let pipeline = ctx.pipeline(&e.key).await?;
            let uniform_index = e.key.family.bindings().iter().position(|b| *b == wedge_shaders::BindingKind::Uniform);
            let entries: Vec<wgpu::BindGroupEntry> = e
                .bindings
                .iter()
                .enumerate()
                .map(|(j, buf)| {
                    let resource = match (&uniforms, Some(j) == uniform_index) {
                        (Some(ub), true) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: ub,
                            offset: (i * record) as u64,
                            size: std::num::NonZeroU64::new((4 * e.params.len()) as u64),
                        }),
                        _ => buf.as_entire_binding(),
                    };
                    wgpu::BindGroupEntry { binding: j as u32, resource }
                })
                .collect();
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&e.key.label()),
                layout: ctx.bind_group_layout(e.key.family),
                entries: &entries,
            });
            dispatches.push(Dispatch { label: e.key.label(), pipeline, bind_group, groups: e.groups });
        }
        drop(encoded);
        tables.push(scratch);
        Ok(ResidentRun {
            device: ctx.device.clone(),
            health: ctx.health.clone(),
            queue: ctx.queue.clone(),
            plan,
            slots,
            dispatches,
            _uniforms: uniforms,
            _tables: tables,
        })
    }

    /// Uploads the inputs (checked against the plan).
    pub fn write_inputs(&self, inputs: &[HostTensor]) -> Result<(), GpuError> {
        self.plan.check_inputs(inputs)?;
        for (t, v) in inputs.iter().zip(&self.plan.inputs) {
            let slot = &self.slots[self.plan.values[v.0 as usize].slot];
            if !t.data.is_empty() {
                self.queue.write_buffer(slot, 0, bytemuck::cast_slice(&t.data));
            }
        }
        Ok(())
    }

    /// Records every dispatch `repeats` times into one submission and submits it.
    pub fn submit(&self, repeats: usize) {
        self.submit_dispatches((0..repeats).flat_map(|_| &self.dispatches), "wedge.plan");
    }

    /// Records `dispatches` into one compute pass and submits it.
    fn submit_dispatches<'d>(&self, dispatches: impl Iterator<Item = &'d Dispatch>, label: &str) {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wedge.run") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
            for d in dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        self.queue.submit([enc.finish()]);
    }

    /// Runs every dispatch in a submission of its own and waits for it: host-timed
    /// seconds per kernel label, summed over the plan, largest first. A profiling aid
    /// (each wait adds the submission's fixed cost), not a way to serve.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self) -> Result<Vec<(String, usize, f64)>, GpuError> {
        let mut times: Vec<(String, usize, f64)> = Vec::new();
        for d in &self.dispatches {
            let started = std::time::Instant::now();
            self.submit_dispatches(std::iter::once(d), &d.label);
            self.wait()?;
            let secs = started.elapsed().as_secs_f64();
            match times.iter_mut().find(|t| t.0 == d.label) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += secs;
                }
                None => times.push((d.label.clone(), 1, secs)),
            }
        }
        times.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(times)
    }

    /// Blocks until submitted work is done (native only; in a browser, await a readback).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| GpuError::Readback(e.to_string()))
    }

    /// Copies the outputs back to the host.
    pub async fn read_outputs(&self) -> Result<Vec<HostTensor>, GpuError> {
        let infos: Vec<_> = self.plan.outputs.iter().map(|(_, v)| &self.plan.values[v.0 as usize]).collect();
        let sizes: Vec<u64> = infos.iter().map(|i| 4 * i.numel() as u64).collect();
        let total: u64 = sizes.iter().sum::<u64>().max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wedge.readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wedge.readback") });
        let mut off = 0;
        for (info, &size) in infos.iter().zip(&sizes) {
            if size > 0 {
                enc.copy_buffer_to_buffer(&self.slots[info.slot], 0, &staging, off, size);
            }
            off += size;
        }
        self.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        rx.await
            .map_err(|_| GpuError::Readback("the device was lost before the results arrived".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        // a lost device or an error while running fails the run, rather than hand on what
        // the buffers happen to hold
        self.health.check()?;
        let mut outs = Vec::with_capacity(infos.len());
        {
            let view = staging.slice(..).get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?;
            let words: &[u32] = bytemuck::cast_slice(&view);
            let mut off = 0;
            for info in infos {
                let n = info.numel();
                outs.push(HostTensor {
                    shape: info.shape.clone(),
                    elem: info.elem,
                    data: words[off..off + n].to_vec(),
                });
                off += n;
            }
        }
        staging.unmap();
        Ok(outs)
    }
}

/// The `HALF` override of the cache kernels for a state's storage.
fn half(elem: wedge_core::graph::StateElem) -> f64 {
    if elem == wedge_core::graph::StateElem::F16 { 1.0 } else { 0.0 }
}

/// Template values of the `qweight` family for this adapter.
fn qweight_template(t: &crate::context::Tuning) -> Vec<(&'static str, u32)> {
    vec![("WG", t.gemv_wg), ("TPR", t.gemv_tpr), ("TS", t.gemm_ts)]
}

fn qparams(format: Format, m: usize, k: usize, n: usize) -> Vec<u32> {
    let group = format.group().max(1);
    vec![u(m), u(k), u(n), u(format.words_per_row(k)), group, u(format.groups_per_row(k)), 0, 0]
}

/// Runs `plan` once on the GPU and returns its outputs.
pub async fn execute(
    ctx: &GpuContext,
    plan: &Arc<Plan>,
    weights: &GpuWeights,
    inputs: &[HostTensor],
) -> Result<Vec<HostTensor>, GpuError> {
    ResidentRun::prepare(ctx, plan.clone(), weights).await?.run(inputs).await
}

impl ResidentRun {
    /// Uploads the inputs, runs every dispatch in one submission and reads the outputs back.
    pub async fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, GpuError> {
        self.write_inputs(inputs)?;
        // WEDGE_GPU_PROFILE=1: time per kernel, printed to stderr after each run
        #[cfg(not(target_arch = "wasm32"))]
        if std::env::var_os("WEDGE_GPU_PROFILE").is_some() {
            let times = self.profile()?;
            let total: f64 = times.iter().map(|t| t.2).sum();
            let parts: Vec<String> =
                times.iter().map(|(label, n, t)| format!("  {:>9.2} ms {n:>3}× {label}", t * 1e3)).collect();
            eprintln!("wedge-gpu: {:.2} ms\n{}", total * 1e3, parts.join("\n"));
            return self.read_outputs().await;
        }
        self.submit(1);
        self.read_outputs().await
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Bytes of device memory its activation slots hold.
    pub fn activation_bytes(&self) -> u64 {
        self.slots.iter().map(wgpu::Buffer::size).sum()
    }
}
