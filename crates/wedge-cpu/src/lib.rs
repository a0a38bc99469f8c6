//! wedge-cpu: the CPU backend. It executes a [`Plan`] step by step over the same
//! liveness-planned slots the GPU uses, multithreaded with rayon on native targets
//! and single-threaded on wasm32. It is the fallback when no GPU adapter exists
//! and the reference the kernel tests compare against.
//!
//! It depends only on wedge-core: no GPU API, no I/O.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

pub mod a8;
mod cache;
mod gemm;
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
mod gemv;
mod kernels;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod vnni_groups;

use thiserror::Error;
use wedge_core::graph::{Activation, Graph, Op, op_weights};
use wedge_core::plan::{HostTensor, Plan, StepKind};
use wedge_core::quant::{Format, Weight};

pub use cache::{CachedAttentionDims, cache_write, cached_attention, select_rows};
pub use gemm::{Packed, integer_kernels, matmul};
pub use kernels::{
    AttentionDims, attention, gelu_erf, gelu_tanh, layernorm, matmul_f16_reference, matmul_reference, silu,
};

/// Errors from the CPU backend.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CpuError {
    /// A core error (bad inputs, plan mismatch).
    #[error(transparent)]
    Core(#[from] wedge_core::Error),
    /// The weights given do not fit the plan.
    #[error("weight {index} (`{name}`): {msg}")]
    Weight {
        /// Index in the graph's weight list.
        index: usize,
        /// Weight name.
        name: String,
        /// The problem.
        msg: String,
    },
}

/// Weights prepared for the CPU: the packed weights, f32 copies of the small vectors
/// (biases, norm scales) that every step reads whole, and the matrices a faster kernel
/// wants in its own layout ([`Packed`]: `q8`, `q8a8`, `q4` and `q4_1` on AVX2, in place of the f32 panels).
///
/// They also keep the value slots of the last run, so the next run of any plan over them
/// reuses that memory (zeroed again) rather than faulting in fresh pages, which for a batch
/// of 32 × 128 MiniLM tokens costs more than the layer norms and residual adds together.
#[derive(Debug)]
pub struct CpuWeights {
    weights: Vec<Weight>,
    vectors: Vec<Option<Vec<f32>>>,
    packed: Vec<Option<Packed>>,
    slots: std::sync::Mutex<Vec<Vec<u32>>>,
}

impl CpuWeights {
    /// Takes the weights of a graph, in the order of `graph.weights`.
    pub fn new(weights: Vec<Weight>) -> CpuWeights {
        let vectors = weights.iter().map(vector).collect();
        let packed = weights.iter().map(Packed::new).collect();
        CpuWeights { weights, vectors, packed, slots: Default::default() }
    }

    /// Takes the weights of `graph`, in the order of `graph.weights`, laying out for its
    /// kernel only the matrices the graph multiplies by. A matrix nothing else reads (no
    /// gather from the same table) then keeps only that layout, not its packed words too:
    /// its [`Weight`] here has a shape, a format and no `words`.
    pub fn for_graph(graph: &Graph, weights: Vec<Weight>) -> CpuWeights {
        CpuWeights::for_graph_with(graph, weights, true)
    }

    /// [`CpuWeights::for_graph`], with the integer kernels (activations rounded to 16 bits)
    /// only when `integer` is set: without, every matmul dequantizes to f32 panels.
    pub fn for_graph_with(graph: &Graph, mut weights: Vec<Weight>, integer: bool) -> CpuWeights {
        let mut by_matmul = vec![false; weights.len()];
        let mut by_other = vec![false; weights.len()];
        for node in &graph.nodes {
            let is_matmul = matches!(node.op, Op::MatMul { .. });
            for (j, id) in op_weights(&node.op).into_iter().enumerate() {
                let i = id.0 as usize;
                // a matmul's second weight is its bias
                let seen = if is_matmul && j == 0 { &mut by_matmul } else { &mut by_other };
                if let Some(s) = seen.get_mut(i) {
                    *s = true;
                }
            }
        }
        let vectors = weights.iter().map(vector).collect();
        let packed: Vec<Option<Packed>> =
            weights.iter().zip(&by_matmul).map(|(w, m)| if *m && integer { Packed::new(w) } else { None }).collect();
        for ((w, p), other) in weights.iter_mut().zip(&packed).zip(&by_other) {
            if p.is_some() && !other {
                w.words = Vec::new();
            }
        }
        CpuWeights { weights, vectors, packed, slots: Default::default() }
    }

    /// `out = act(x · Wᵀ + bias)` with weight `index` (`n × k`) and `x` (`m × k`), on the
    /// kernel the backend uses for it.
    ///
    /// # Panics
    /// If `index` is out of range or the slices are shorter than the shapes say.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        index: usize,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        (m, k, n): (usize, usize, usize),
        out: &mut [f32],
    ) {
        gemm::matmul_with(x, &self.weights[index], self.packed[index].as_ref(), bias, act, m, k, n, out);
    }

    /// The weights.
    pub fn weights(&self) -> &[Weight] {
        &self.weights
    }

    fn vector(&self, id: wedge_core::WeightId) -> Result<&[f32], CpuError> {
        let i = id.0 as usize;
        self.vectors.get(i).and_then(|v| v.as_deref()).ok_or_else(|| CpuError::Weight {
            index: i,
            name: self.weights.get(i).map(|w| w.name.clone()).unwrap_or_default(),
            msg: "must be a 1-D f32 or f16 vector".into(),
        })
    }

    fn weight(&self, id: wedge_core::WeightId) -> &Weight {
        &self.weights[id.0 as usize]
    }

    /// Zeroed slots of `words` words each, in the memory of an earlier run where there is
    /// one (a run going on at the same time gets fresh memory). Every step writes the whole
    /// of its output, so the zeroing only guards against a kernel that would not: nothing of
    /// one request can then show up in the next, which may be another user's.
    fn take_slots(&self, words: &[usize]) -> Vec<Vec<u32>> {
        let mut slots = self.slots.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        slots.resize_with(words.len(), Vec::new);
        for (s, &w) in slots.iter_mut().zip(words) {
            s.clear();
            s.resize(w, 0);
        }
        slots
    }

    /// Keeps a run's slots for the next run.
    fn keep_slots(&self, slots: Vec<Vec<u32>>) {
        if let Ok(mut s) = self.slots.lock() {
            *s = slots;
        }
    }
}

/// An f32 copy of a 1-D f32 or f16 weight (a bias, a norm scale).
fn vector(w: &Weight) -> Option<Vec<f32>> {
    (w.shape.len() == 1 && matches!(w.format, Format::F32 | Format::F16 | Format::Bf16)).then(|| w.to_f32())
}

fn f32s(words: &[u32]) -> &[f32] {
    bytemuck::cast_slice(words)
}

fn f32s_mut(words: &mut [u32]) -> &mut [f32] {
    bytemuck::cast_slice_mut(words)
}

/// Threads the CPU backend runs on (rayon's pool: `RAYON_NUM_THREADS`, else every core;
/// one on wasm32).
pub fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(target_arch = "wasm32")]
    return 1;
}

/// Runs `plan` on the CPU and returns its outputs in the plan's output order.
///
/// On native targets the whole run happens on a thread of rayon's pool, so each step's
/// parallel loops start from a worker (a cheap push onto its queue) rather than from the
/// caller's thread, which would hand every loop to the pool and sleep until it ends: a
/// round trip through the OS scheduler per step, dozens per run.
///
/// The pool's other threads are kept looking for the run's work until it ends ([`pool`]):
/// a thread left idle for a few microseconds between two steps goes to sleep, and waking it
/// for the next step's loop costs more than a short sentence's matmul.
pub fn execute(plan: &Plan, weights: &CpuWeights, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, CpuError> {
    execute_with_states(plan, weights, inputs, &mut [])
}

/// [`execute`] for a plan with states: `states[i]` holds state `i` (`plan.states[i].words()`
/// words), which the run reads and writes in place.
pub fn execute_with_states(
    plan: &Plan,
    weights: &CpuWeights,
    inputs: &[HostTensor],
    states: &mut [Vec<u32>],
) -> Result<Vec<HostTensor>, CpuError> {
    check_states(plan, states)?;
    #[cfg(not(target_arch = "wasm32"))]
    return pool::run_hot(|| execute_here(plan, weights, inputs, states));
    #[cfg(target_arch = "wasm32")]
    return execute_here(plan, weights, inputs, states);
}

/// Zeroed memory for each state of `plan`.
pub fn new_states(plan: &Plan) -> Vec<Vec<u32>> {
    plan.states.iter().map(|s| vec![0u32; s.words()]).collect()
}

fn check_states(plan: &Plan, states: &[Vec<u32>]) -> Result<(), CpuError> {
    let sizes_fit =
        states.len() == plan.states.len() && states.iter().zip(&plan.states).all(|(s, i)| s.len() == i.words());
    if sizes_fit {
        Ok(())
    } else {
        Err(CpuError::Core(wedge_core::Error::Input(format!(
            "the plan needs {} states of {:?} words, got {:?}",
            plan.states.len(),
            plan.states.iter().map(|s| s.words()).collect::<Vec<_>>(),
            states.iter().map(Vec::len).collect::<Vec<_>>()
        ))))
    }
}

/// Runs on rayon's pool with its threads kept busy.
#[cfg(not(target_arch = "wasm32"))]
mod pool {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    thread_local! {
        /// Whether this thread has a run or a spinner on its stack.
        static BUSY: Cell<bool> = const { Cell::new(false) };
    }

    /// How long a spinner goes on finding no work before it gives up (see [`spin`]): far
    /// longer than the serial steps between two parallel loops of a run.
    const IDLE_LIMIT: Duration = Duration::from_micros(500);

    /// Runs `f` on a thread of the pool while every other thread of it runs [`spin`]: each
    /// looks for work (this run's parallel loops, or anything else queued) until `f` ends,
    /// rather than sleeping. The spinners are not waited for: one busy with other work when
    /// `f` ends stops after it.
    pub(super) fn run_hot<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        rayon::scope(|_| {
            let done = Arc::new(AtomicBool::new(false));
            let home = rayon::current_thread_index();
            for _ in 1..rayon::current_num_threads() {
                let done = Arc::clone(&done);
                rayon::spawn(move || spin(&done, home));
            }
            // (ends the spinners and restores the flag however `f` ends, panics included)
            struct Ending<'a> {
                done: &'a AtomicBool,
                was: bool,
            }
            impl Drop for Ending<'_> {
                fn drop(&mut self) {
                    BUSY.set(self.was);
                    self.done.store(true, Ordering::Release);
                }
            }
            let _ending = Ending { done: &done, was: BUSY.replace(true) };
            f()
        })
    }

    /// Runs whatever work the pool has until `done`, on a thread that holds no other run or
    /// spinner (one that does returns at once: it would hold up what is under it, and two
    /// runs each waiting under the other's spinner would wait forever). It also gives up
    /// after [`IDLE_LIMIT`] without work: a spinner that a thread took up while it waited
    /// inside a piece of the run's own work (pool threads steal such pieces outside any
    /// spinner) holds that piece up, and the run with it, only that long.
    fn spin(done: &AtomicBool, home: Option<usize>) {
        if rayon::current_thread_index() == home || BUSY.get() {
            return;
        }
        BUSY.set(true);
        // (once every 64 idle rounds the clock is read, which costs more than a round, and the
        // core offered to any other thread the OS has waiting: a spinner never holds up, say,
        // the server's network threads for long)
        let (mut idle_since, mut idle_rounds) = (None::<Instant>, 0u32);
        while !done.load(Ordering::Acquire) {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                (idle_since, idle_rounds) = (None, 0);
                continue;
            }
            idle_rounds = idle_rounds.wrapping_add(1);
            if idle_rounds % 64 == 1 {
                if idle_since.get_or_insert_with(Instant::now).elapsed() > IDLE_LIMIT {
                    break;
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        BUSY.set(false);
    }

    #[cfg(test)]
    mod tests {
        use super::run_hot;
        use rayon::prelude::*;

        fn sum_of_squares(n: u64) -> u64 {
            (0..n).into_par_iter().map(|i| i * i).sum()
        }

        /// Runs from several threads at once, runs inside the pool's own parallel loops (a
        /// run nested in a piece of another), on pools of two and three threads: every run
        /// ends with its own result, none waits forever on another's spinner.
        #[test]
        fn concurrent_and_nested_runs_all_finish() {
            let want = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                std::thread::scope(|s| {
                    for caller in 0..3u64 {
                        let pool = &pool;
                        s.spawn(move || {
                            for i in 0..200 {
                                let n = 1000 + caller * 7 + i;
                                assert_eq!(pool.install(|| run_hot(|| sum_of_squares(n))), want(n));
                            }
                        });
                    }
                    let nested: Vec<u64> =
                        pool.install(|| (0..64u64).into_par_iter().map(|i| run_hot(|| sum_of_squares(i))).collect());
                    assert_eq!(nested, (0..64).map(want).collect::<Vec<_>>());
                });
            }
        }
    }
}

/// The most rows a matmul may have to run at the same time as its neighbours (see
/// [`matmul_group`]): one row block of the matmul kernel, a short sentence.
const GROUP_ROWS: usize = gemm::MB;

/// How many steps from `s` run together: up to four matmuls in a row of the same input with
/// at most [`GROUP_ROWS`] rows (attention's query, key and value projections), or else one.
/// Each of such small matmuls leaves a thread idle at its start and its end, and run at once
/// they share that: about 10 µs less for three 14-row 384 × 384 ones on two threads.
fn matmul_group(plan: &Plan, s: usize) -> usize {
    let steps = &plan.steps[s..];
    let small = |st: &wedge_core::plan::Step| matches!(st.kind, StepKind::MatMul { m, .. } if m <= GROUP_ROWS);
    let Some(first) = steps.first().filter(|st| small(st)) else {
        return 1;
    };
    let x = first.inputs[0];
    let slot = |v: wedge_core::ValueId| plan.values[v.0 as usize].slot;
    // (every output in a slot of its own, none the input's, or they run one by one)
    let mut taken = [slot(x); 5];
    let mut n = 0;
    for st in &steps[..steps.len().min(4)] {
        if !small(st) || st.inputs[0] != x || taken[..=n].contains(&slot(st.output)) {
            break;
        }
        n += 1;
        taken[n] = slot(st.output);
    }
    n.max(1)
}

/// Runs `steps` (matmuls of one input, into outputs in slots of their own: [`matmul_group`])
/// at the same time.
fn run_matmuls(
    plan: &Plan,
    weights: &CpuWeights,
    steps: &[wedge_core::plan::Step],
    slots: &mut [Vec<u32>],
) -> Result<(), CpuError> {
    let x_info = &plan.values[steps[0].inputs[0].0 as usize];
    let mut outs: Vec<(usize, Vec<u32>)> = steps
        .iter()
        .map(|st| {
            let slot = plan.values[st.output.0 as usize].slot;
            (slot, std::mem::take(&mut slots[slot]))
        })
        .collect();
    let x = f32s(&slots[x_info.slot][..x_info.numel()]);
    let one = |((_, out), st): (&mut (usize, Vec<u32>), &wedge_core::plan::Step)| -> Result<(), CpuError> {
        let out_n = plan.values[st.output.0 as usize].numel();
        matmul_step(weights, &st.kind, x, f32s_mut(&mut out[..out_n]))
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        outs.par_iter_mut().zip(steps).try_for_each(one)?;
    }
    #[cfg(target_arch = "wasm32")]
    outs.iter_mut().zip(steps).try_for_each(one)?;
    for (slot, out) in outs {
        slots[slot] = out;
    }
    Ok(())
}

/// A matmul step on input `x` into `out` (any other step kind: nothing).
fn matmul_step(weights: &CpuWeights, kind: &StepKind, x: &[f32], out: &mut [f32]) -> Result<(), CpuError> {
    if let StepKind::MatMul { weight, bias, act, m, k, n, .. } = kind {
        let b = bias.map(|b| weights.vector(b)).transpose()?;
        weights.matmul(weight.0 as usize, x, b, *act, (*m, *k, *n), out);
    }
    Ok(())
}

fn execute_here(
    plan: &Plan,
    weights: &CpuWeights,
    inputs: &[HostTensor],
    states: &mut [Vec<u32>],
) -> Result<Vec<HostTensor>, CpuError> {
    plan.check_inputs(inputs)?;
    let mut slots = weights.take_slots(&plan.slot_words);
    for (t, v) in inputs.iter().zip(&plan.inputs) {
        let slot = plan.values[v.0 as usize].slot;
        slots[slot][..t.data.len()].copy_from_slice(&t.data);
    }
    // WEDGE_CPU_PROFILE=1: time per step kind, printed to stderr after each run
    let profile = std::env::var_os("WEDGE_CPU_PROFILE").is_some();
    #[cfg_attr(target_arch = "wasm32", allow(unused_mut))] // no clock to profile with there
    let mut times: Vec<(&'static str, f64)> = Vec::new();
    let mut next = 0;
    while let Some(step) = plan.steps.get(next) {
        #[cfg(not(target_arch = "wasm32"))]
        let started = profile.then(std::time::Instant::now);
        let group = matmul_group(plan, next);
        next += group;
        if let StepKind::CacheWrite { state, elem, width, ctx, .. } = step.kind {
            // (the output is the input: only the state changes)
            let inp = |j: usize| -> &[u32] {
                let info = &plan.values[step.inputs[j].0 as usize];
                &slots[info.slot][..info.numel()]
            };
            cache::cache_write(f32s(inp(0)), inp(1), inp(2), (width, ctx), elem, &mut states[state.0 as usize]);
        } else if group > 1 {
            run_matmuls(plan, weights, &plan.steps[next - group..next], &mut slots)?;
        } else {
            let out_info = &plan.values[step.output.0 as usize];
            let out_n = out_info.numel();
            let mut out = std::mem::take(&mut slots[out_info.slot]);
            {
                let inp = |j: usize| -> &[u32] {
                    let info = &plan.values[step.inputs[j].0 as usize];
                    &slots[info.slot][..info.numel()]
                };
                let o = &mut out[..out_n];
                match &step.kind {
                    StepKind::Gather { table, cols, .. } => {
                        let w = weights.weight(*table);
                        let o = f32s_mut(o);
                        for (t, &id) in inp(0).iter().enumerate() {
                            w.dequantize_row(id as usize, &mut o[t * cols..(t + 1) * cols]);
                        }
                    }
                    StepKind::MatMul { .. } => matmul_step(weights, &step.kind, f32s(inp(0)), f32s_mut(o))?,
                    StepKind::Binary { op, bn, .. } => {
                        let (a, b) = (f32s(inp(0)), f32s(inp(1)));
                        kernels::binary(*op, a, b, *bn, f32s_mut(o));
                    }
                    StepKind::Act { act, .. } => {
                        let o = f32s_mut(o);
                        o.copy_from_slice(f32s(inp(0)));
                        kernels::activate(*act, o);
                    }
                    StepKind::LayerNorm { gamma, beta, eps, cols, .. } => {
                        let (g, b) = (weights.vector(*gamma)?, weights.vector(*beta)?);
                        kernels::layernorm(f32s(inp(0)), g, b, *eps, *cols, f32s_mut(o));
                    }
                    StepKind::RmsNorm { gamma, eps, cols, .. } => {
                        kernels::rmsnorm(f32s(inp(0)), weights.vector(*gamma)?, *eps, *cols, f32s_mut(o));
                    }
                    StepKind::Softmax { cols, .. } => kernels::softmax(f32s(inp(0)), *cols, f32s_mut(o)),
                    StepKind::L2Normalize { cols, eps, .. } => {
                        kernels::l2_normalize(f32s(inp(0)), *cols, *eps, f32s_mut(o))
                    }
                    StepKind::Attention { batch, q_len, kv_len, heads, kv_heads, head_dim, causal, scale, masked } => {
                        let mask = if *masked { Some(inp(3)) } else { None };
                        let dims = kernels::AttentionDims {
                            batch: *batch,
                            q_len: *q_len,
                            kv_len: *kv_len,
                            heads: *heads,
                            kv_heads: *kv_heads,
                            head_dim: *head_dim,
                            causal: *causal,
                            scale: *scale,
                        };
                        kernels::attention(&dims, f32s(inp(0)), f32s(inp(1)), f32s(inp(2)), mask, f32s_mut(o));
                    }
                    StepKind::Rope { heads, head_dim, base, mode, scaling, .. } => {
                        let r = kernels::Rope { heads: *heads, d: *head_dim, base: *base, mode: *mode, scaling };
                        kernels::rope(f32s(inp(0)), inp(1), &r, f32s_mut(o));
                    }
                    StepKind::MeanPool { seq, hidden, .. } => {
                        kernels::mean_pool(f32s(inp(0)), inp(1), *seq, *hidden, f32s_mut(o));
                    }
                    StepKind::Transpose { dims, perm } => kernels::transpose(inp(0), *dims, *perm, o),
                    StepKind::CachedAttention {
                        heads, kv_heads, head_dim, scale, k_cache, v_cache, elem, ctx, ..
                    } => {
                        let dims = cache::CachedAttentionDims {
                            heads: *heads,
                            kv_heads: *kv_heads,
                            head_dim: *head_dim,
                            scale: *scale,
                            ctx: *ctx,
                            elem: *elem,
                        };
                        let (k, v) = (&states[k_cache.0 as usize], &states[v_cache.0 as usize]);
                        cache::cached_attention(&dims, f32s(inp(0)), inp(3), inp(4), k, v, f32s_mut(o));
                    }
                    StepKind::SelectRows { cols, .. } => cache::select_rows(f32s(inp(0)), inp(1), *cols, f32s_mut(o)),
                    other => {
                        return Err(CpuError::Core(wedge_core::Error::Graph(format!(
                            "the CPU backend cannot run {other:?}"
                        ))));
                    }
                }
            }
            slots[out_info.slot] = out;
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(t) = started {
            let name = step.kind.name();
            match times.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += t.elapsed().as_secs_f64(),
                None => times.push((name, t.elapsed().as_secs_f64())),
            }
        }
    }
    if profile {
        let total: f64 = times.iter().map(|t| t.1).sum();
        let parts: Vec<String> = times.iter().map(|(n, t)| format!("{n} {:.2} ms", t * 1e3)).collect();
        eprintln!("wedge-cpu: {:.2} ms: {}", total * 1e3, parts.join(", "));
    }
    let outputs = plan
        .outputs
        .iter()
        .map(|(_, v)| {
            let info = &plan.values[v.0 as usize];
            HostTensor { shape: info.shape.clone(), elem: info.elem, data: slots[info.slot][..info.numel()].to_vec() }
        })
        .collect();
    weights.keep_slots(slots);
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use wedge_core::graph::{BinaryOp, Dim, Elem};

    /// Matmuls of one input that run together (the query, key and value projections of a
    /// short input) give what each gives alone, bit for bit, and so does the plan at sizes
    /// where they run one by one; a matmul of another input stays apart.
    #[test]
    fn grouped_matmuls_equal_single_ones() {
        let mut rng = StdRng::seed_from_u64(12);
        let (k, n) = (40, 40);
        let mut g = Graph::default();
        let x = g.input("x", Elem::F32, vec![Dim::Var("rows".into()), Dim::Fixed(k)]);
        let formats = [Format::Q8, Format::F32, Format::Q4 { group: 32 }, Format::Q8];
        let mut weights = Vec::new();
        let mut ys = Vec::new();
        for (i, format) in formats.iter().enumerate() {
            let (w, b) = (g.weight(&format!("w{i}")), g.weight(&format!("b{i}")));
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bv: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            weights.push(Weight::quantize(&format!("w{i}"), &[n, k], &wv, *format).unwrap());
            weights.push(Weight::from_f32(&format!("b{i}"), &[n], &bv).unwrap());
            let act = if i == 1 { Activation::GeluErf } else { Activation::None };
            // the last matmul reads the sum of the first two: another input
            let input = if i == 3 { g.push(Op::Binary(BinaryOp::Add), &[ys[0], ys[1]]) } else { x };
            ys.push(g.push(Op::MatMul { weight: w, bias: Some(b), act }, &[input]));
        }
        for (i, y) in ys.iter().enumerate() {
            g.output(&format!("y{i}"), *y);
        }
        let cw = CpuWeights::for_graph(&g, weights.clone());
        let infos: Vec<_> = weights.iter().map(wedge_core::plan::WeightInfo::from).collect();
        for rows in [1, 14, 64, 65, 200] {
            let plan = Plan::compile(&g, &infos, &[vec![rows, k]]).unwrap();
            let first = plan.steps.iter().position(|st| matches!(st.kind, StepKind::MatMul { .. })).unwrap();
            assert_eq!(matmul_group(&plan, first), if rows <= GROUP_ROWS { 3 } else { 1 }, "rows {rows}");
            let xv: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let got = execute(&plan, &cw, &[HostTensor::f32(&[rows, k], &xv)]).unwrap();
            let alone = |i: usize, x: &[f32]| {
                let act = if i == 1 { Activation::GeluErf } else { Activation::None };
                let mut out = vec![0f32; rows * n];
                let b = weights[2 * i + 1].to_f32();
                matmul(x, &weights[2 * i], Some(&b), act, rows, k, n, &mut out);
                out
            };
            let want: Vec<Vec<f32>> = (0..3).map(|i| alone(i, &xv)).collect();
            let sum: Vec<f32> = want[0].iter().zip(&want[1]).map(|(a, b)| a + b).collect();
            for (i, w) in want.iter().chain([&alone(3, &sum)]).enumerate() {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(bytemuck::cast_slice(&got[i].data)), bits(w), "rows {rows} output {i}");
            }
        }
    }
}
