//! CPU kernels: the plain f32 definitions every GPU kernel is tested against.

use wedge_core::graph::{Activation, BinaryOp, RopeMode, RopeScaling};
use wedge_core::plan::rope_inv_freq;
use wedge_core::quant::Weight;

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// GELU with the exact error function.
pub fn gelu_erf(v: f32) -> f32 {
    0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh approximation.
pub fn gelu_tanh(v: f32) -> f32 {
    let u = 0.797_884_6 * (v + 0.044715 * v * v * v);
    0.5 * v * (1.0 + u.tanh())
}

/// SiLU.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

#[inline(always)]
pub(crate) fn act1(act: Activation, v: f32) -> f32 {
    match act {
        Activation::None => v,
        Activation::GeluErf => gelu_erf(v),
        Activation::GeluTanh => gelu_tanh(v),
        Activation::Silu => silu(v),
        Activation::Relu => v.max(0.0),
    }
}

/// `v` (less than 2²² in magnitude) rounded half to even, as a float and as an integer, in
/// float and bit arithmetic only so that loops over it vectorize (a float-to-int cast does
/// not: LLVM turns its saturation into one conversion per lane). Adding 1.5 · 2²³, where the
/// float spacing is 1, rounds `v` and puts its integer in the low bits of the sum.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> (f32, i32) {
    const MAGIC: f32 = 12_582_912.0;
    let shifted = v + MAGIC;
    (shifted - MAGIC, shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32)
}

/// The larger of `a` and `b` by one comparison (`a` when `b` is NaN), so that loops over it
/// vectorize on wasm too: `f32::max` is IEEE `maxNum`, which wasm lacks and LLVM calls libm's
/// `fmaxf` for, one lane at a time. The same value as `a.max(b)` whenever `a` is not NaN, as
/// in a running maximum that starts from a number.
#[inline(always)]
pub(crate) fn max_of(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// `e^x` from arithmetic and bit operations only, so loops over it vectorize: `x = n·ln2 + r`
/// with `|r| ≤ ln2/2`, a degree-6 polynomial for `e^r` (relative error about 2e-7), and
/// `2^n` built in the exponent bits. Exactly 0 below -87 (so masked scores vanish), saturates
/// at `e^88` above the range, and NaN for NaN. (Comparisons rather than `f32::min`, which
/// wasm runs as a libm call per lane.)
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    if x < -87.0 {
        return 0.0;
    }
    let x = if x > 88.0 { 88.0 } else { x };
    let (n, ni) = round_even(x * std::f32::consts::LOG2_E);
    // Cody-Waite: ln2 = C1 + C2 with C1 short enough that n·C1 is exact without FMA
    // (plain multiply-adds throughout: wasm32 without SIMD has no fast fused multiply-add)
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = r * (1.0 / 720.0) + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // (|n| ≤ 127 here, so the exponent field stays in 1..=254)
    f32::from_bits(((ni + 127) as u32) << 23) * p
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the form the WGSL kernels use.
#[inline(always)]
pub(crate) fn erf_approx(v: f32) -> f32 {
    let a = v.abs();
    let t = 1.0 / (a * 0.327_591_1 + 1.0);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    (1.0 - poly * exp_approx(-a * a)).copysign(v)
}

/// Applies `act` to every element, in loops the compiler vectorizes (no libm calls).
#[inline(always)]
pub(crate) fn activate_slice(act: Activation, x: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::GeluErf => {
            x.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + erf_approx(*v * std::f32::consts::FRAC_1_SQRT_2)))
        }
        Activation::GeluTanh => x.iter_mut().for_each(|v| {
            let u = (0.797_884_6 * (*v + 0.044715 * *v * *v * *v)).clamp(-15.0, 15.0);
            let tanh = 1.0 - 2.0 / (exp_approx(2.0 * u) + 1.0);
            *v = 0.5 * *v * (1.0 + tanh);
        }),
        Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + exp_approx(-*v)),
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// [`activate_slice`] compiled for the CPU's vector unit.
pub(crate) fn activate(act: Activation, x: &mut [f32]) {
    struct Op<'a>(Activation, &'a mut [f32]);
    impl pulp::WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            activate_slice(self.0, self.1);
        }
    }
    if act != Activation::None {
        pulp::Arch::new().dispatch(Op(act, x));
    }
}

/// Dot product with eight independent accumulators, so the compiler vectorizes it.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

const N_BLOCK: usize = 32;

/// `out[m, n] = act(Σ_k x[m, k] · W[n, k] + bias[n])` with `W` in any format: the plain
/// definition, through [`Weight::dequantize_row`], that the fast [`crate::matmul`] is tested
/// against. Weight rows are dequantized a block at a time and reused for every row of `x`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_reference(
    x: &[f32],
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_rows(x, w, bias, act, (m, k, n), out, dot);
}

/// Reduction chunk of the f16 GEMM (`BK` in `qweight_f16.wgsl`).
const F16_CHUNK: usize = 16;

/// The twin of the GPU's f16 GEMM (`gemm_h`): [`matmul_reference`] with x and the
/// dequantized weights rounded to f16, and each 16-long chunk (`F16_CHUNK`) of the reduction
/// (from k = 0) summed in f16, each product and each add rounded to f16; the chunk sums
/// are added in f32, then bias and activation as usual.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f16_reference(
    x: &[f32],
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_rows(x, w, bias, act, (m, k, n), out, dot_f16_chunks);
}

fn dot_f16_chunks(a: &[f32], b: &[f32]) -> f32 {
    use half::f16;
    let mut acc = 0f32;
    for (ca, cb) in a.chunks(F16_CHUNK).zip(b.chunks(F16_CHUNK)) {
        let mut h = f16::ZERO;
        for (x, y) in ca.iter().zip(cb) {
            let p = f16::from_f32(f16::from_f32(*x).to_f32() * f16::from_f32(*y).to_f32());
            h = f16::from_f32(h.to_f32() + p.to_f32());
        }
        acc += h.to_f32();
    }
    acc
}

/// The row loop of the reference matmuls, each output's sum taken by `dot`.
fn matmul_rows(
    x: &[f32],
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    (m, k, n): (usize, usize, usize),
    out: &mut [f32],
    dot: fn(&[f32], &[f32]) -> f32,
) {
    let blocks = n.div_ceil(N_BLOCK);
    let block = |bi: usize| -> Vec<f32> {
        let n0 = bi * N_BLOCK;
        let nb = N_BLOCK.min(n - n0);
        let mut wt = vec![0f32; nb * k];
        for j in 0..nb {
            w.dequantize_row(n0 + j, &mut wt[j * k..(j + 1) * k]);
        }
        let mut res = vec![0f32; m * nb];
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            for j in 0..nb {
                let b = bias.map_or(0.0, |b| b[n0 + j]);
                res[r * nb + j] = act1(act, dot(xr, &wt[j * k..(j + 1) * k]) + b);
            }
        }
        res
    };
    #[cfg(not(target_arch = "wasm32"))]
    let results: Vec<Vec<f32>> = (0..blocks).into_par_iter().map(block).collect();
    #[cfg(target_arch = "wasm32")]
    let results: Vec<Vec<f32>> = (0..blocks).map(block).collect();
    for (bi, res) in results.iter().enumerate() {
        let n0 = bi * N_BLOCK;
        let nb = N_BLOCK.min(n - n0);
        for r in 0..m {
            out[r * n + n0..r * n + n0 + nb].copy_from_slice(&res[r * nb..(r + 1) * nb]);
        }
    }
}

pub(crate) fn binary(op: BinaryOp, a: &[f32], b: &[f32], bn: usize, out: &mut [f32]) {
    match op {
        BinaryOp::Add => binary_with(|a, b| a + b, a, b, bn, out),
        BinaryOp::Mul => binary_with(|a, b| a * b, a, b, bn, out),
    }
}

/// [`binary`] with the op `f`, inlined into its loops.
fn binary_with(f: impl Fn(f32, f32) -> f32 + Sync, a: &[f32], b: &[f32], bn: usize, out: &mut [f32]) {
    if bn == 0 || out.is_empty() {
        return;
    }
    // `b` repeats every `bn` values. The work goes out in pieces of about 16k values: whole
    // repeats of `b`, or, where `b` is as long as `a` (a residual add), matching pieces of both.
    let whole = bn >= out.len();
    let piece = if whole { 1 << 14 } else { bn * (1usize << 14).div_ceil(bn) };
    let one = |(i, oc): (usize, &mut [f32])| {
        let at = i * piece;
        let ac = &a[at..at + oc.len()];
        if whole {
            for ((o, x), y) in oc.iter_mut().zip(ac).zip(&b[at..]) {
                *o = f(*x, *y);
            }
        } else {
            for (or, ar) in oc.chunks_mut(bn).zip(ac.chunks(bn)) {
                for ((o, x), y) in or.iter_mut().zip(ar).zip(b) {
                    *o = f(*x, *y);
                }
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    out.par_chunks_mut(piece).enumerate().for_each(one);
    #[cfg(target_arch = "wasm32")]
    out.chunks_mut(piece).enumerate().for_each(one);
}

/// `max |v|` over `x`, or `None` when `x` holds a NaN or an infinity. On the bit patterns
/// with the sign cleared, so one integer maximum that vectorizes (`f32::max` passes over NaN
/// and does not): finite magnitudes order as their bits do, and every infinity or NaN lies
/// above the largest finite value.
#[inline(always)]
pub(crate) fn finite_amax(x: &[f32]) -> Option<f32> {
    let bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    (bits < f32::INFINITY.to_bits()).then(|| f32::from_bits(bits))
}

/// `Σ f(v)` over `x` in eight running sums (so it vectorizes), then the tail.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| f(*v)).sum::<f32>()
}

/// Runs `f(row of x, row of out)` over rows of `cols`, in parallel on native targets.
fn rows(x: &[f32], cols: usize, out: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync + Send) {
    if cols == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    x.par_chunks_exact(cols).zip(out.par_chunks_exact_mut(cols)).with_min_len(16).for_each(|(xr, or)| f(xr, or));
    #[cfg(target_arch = "wasm32")]
    x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).for_each(|(xr, or)| f(xr, or));
}

/// LayerNorm over rows of `cols`.
pub fn layernorm(x: &[f32], g: &[f32], b: &[f32], eps: f32, cols: usize, out: &mut [f32]) {
    rows(x, cols, out, |xr, or| {
        let mean = lane_sum(xr, |v| v) / cols as f32;
        let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), g), b) in or.iter_mut().zip(xr).zip(g).zip(b) {
            *o = (v - mean) * inv * g + b;
        }
    });
}

pub(crate) fn rmsnorm(x: &[f32], g: &[f32], eps: f32, cols: usize, out: &mut [f32]) {
    rows(x, cols, out, |xr, or| {
        let ms = lane_sum(xr, |v| v * v) / cols as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(g) {
            *o = v * inv * g;
        }
    });
}

pub(crate) fn softmax(x: &[f32], cols: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let m = xr.iter().fold(f32::NEG_INFINITY, |a, v| max_of(a, *v));
        let mut sum = 0.0;
        for (o, v) in or.iter_mut().zip(xr) {
            *o = (v - m).exp();
            sum += *o;
        }
        or.iter_mut().for_each(|o| *o /= sum);
    }
}

pub(crate) fn l2_normalize(x: &[f32], cols: usize, eps: f32, out: &mut [f32]) {
    rows(x, cols, out, |xr, or| {
        let norm = lane_sum(xr, |v| v * v).sqrt().max(eps);
        for (o, v) in or.iter_mut().zip(xr) {
            *o = v / norm;
        }
    });
}

/// Sizes of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    /// Batch.
    pub batch: usize,
    /// Query length.
    pub q_len: usize,
    /// Key length.
    pub kv_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Causal mask with offset `kv_len − q_len`.
    pub causal: bool,
    /// Score scale.
    pub scale: f32,
}

/// Keys per row of the transposed keys are padded to a multiple of this: the widest vector
/// of f32 there is (AVX-512's 16 lanes), so score loops have no scalar tails on any unit.
const KEY_PAD: usize = 16;

/// Sums of vectors computed a few at a time in registers: block `V` vectors from vector `v0`.
trait VectorSums<S: pulp::Simd> {
    fn block<const V: usize>(&self, v0: usize) -> [S::f32s; V];
}

/// Fills `out` with `sums`' vectors in blocks of four (fewer at the end). A sum that stays in
/// registers through its whole loop does not wait on its own store and reload at every step,
/// as one kept in memory does.
#[inline(always)]
fn fill_in_blocks<S: pulp::Simd, B: VectorSums<S>>(sums: &B, out: &mut [S::f32s]) {
    let mut v0 = 0;
    while v0 < out.len() {
        let w = (out.len() - v0).min(4);
        match w {
            4 => out[v0..v0 + 4].copy_from_slice(&sums.block::<4>(v0)),
            3 => out[v0..v0 + 3].copy_from_slice(&sums.block::<3>(v0)),
            2 => out[v0..v0 + 2].copy_from_slice(&sums.block::<2>(v0)),
            _ => out[v0..v0 + 1].copy_from_slice(&sums.block::<1>(v0)),
        }
        v0 += w;
    }
}

/// One query's scores against transposed keys: `score[t] = Σ_c q[c] · kt[c · stride + t]`
/// for the first `len` keys.
struct Scores<'a, S> {
    simd: S,
    q: &'a [f32],
    kt: &'a [f32],
    stride: usize,
    len: usize,
}

impl<S: pulp::Simd> VectorSums<S> for Scores<'_, S> {
    #[inline(always)]
    fn block<const V: usize>(&self, v0: usize) -> [S::f32s; V] {
        let simd = self.simd;
        // the sums over even and odd `c` apart, so two chains of multiply-adds run at once
        // (a short sentence's keys fill one vector: one chain would wait on every step)
        let step = |acc: &mut [S::f32s; V], c: usize| {
            let keys = &S::as_simd_f32s(&self.kt[c * self.stride..][..self.len]).0[v0..v0 + V];
            let qv = simd.splat_f32s(self.q[c]);
            for (a, k) in acc.iter_mut().zip(keys) {
                *a = simd.mul_add_e_f32s(qv, *k, *a);
            }
        };
        let (mut even, mut odd) = ([simd.splat_f32s(0.0); V], [simd.splat_f32s(0.0); V]);
        let d = self.q.len();
        for c in (0..d - d % 2).step_by(2) {
            step(&mut even, c);
            step(&mut odd, c + 1);
        }
        if d % 2 == 1 {
            step(&mut even, d - 1);
        }
        std::array::from_fn(|j| simd.add_f32s(even[j], odd[j]))
    }
}

/// One query's output for one head: `out[c] = Σ_t p[t] · scale · v_t[c]`.
struct Weighted<'a, S, F> {
    simd: S,
    p: &'a [f32],
    scale: f32,
    vrow: F,
}

impl<'a, S: pulp::Simd, F: Fn(usize) -> &'a [f32]> VectorSums<S> for Weighted<'a, S, F> {
    #[inline(always)]
    fn block<const V: usize>(&self, v0: usize) -> [S::f32s; V] {
        let simd = self.simd;
        let mut acc = [simd.splat_f32s(0.0); V];
        for (t, p) in self.p.iter().enumerate() {
            let pv = simd.splat_f32s(p * self.scale);
            let vals = &S::as_simd_f32s((self.vrow)(t)).0[v0..v0 + V];
            for (a, v) in acc.iter_mut().zip(vals) {
                *a = simd.mul_add_e_f32s(pv, *v, *a);
            }
        }
        acc
    }
}

/// [`Scores`] into `sc` (the keys' vectors, then any keys past the last whole vector).
#[inline(always)]
fn scores_of<S: pulp::Simd>(simd: S, q: &[f32], kt: &[f32], stride: usize, sc: &mut [f32]) {
    let len = sc.len();
    let (sv, tail) = S::as_mut_simd_f32s(sc);
    fill_in_blocks(&Scores { simd, q, kt, stride, len }, sv);
    let t0 = len - tail.len();
    for (i, s) in tail.iter_mut().enumerate() {
        *s = q.iter().zip(kt.chunks_exact(stride)).fold(0.0, |a, (qc, row)| a + qc * row[t0 + i]);
    }
}

/// [`Weighted`] into `out` (the head's vectors, then any values past the last whole vector).
#[inline(always)]
fn weighted_sum<'a, S: pulp::Simd>(
    simd: S,
    p: &'a [f32],
    scale: f32,
    vrow: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let d = out.len();
    let (ov, tail) = S::as_mut_simd_f32s(out);
    let c0 = d - tail.len();
    for (i, o) in tail.iter_mut().enumerate() {
        *o = p.iter().enumerate().fold(0.0, |a, (t, pt)| a + pt * scale * vrow(t)[c0 + i]);
    }
    fill_in_blocks(&Weighted { simd, p, scale, vrow }, ov);
}

/// Attention over `q [b, s, h·d]`, `k`, `v [b, t, kvh·d]`, optional mask `[b, t]`.
/// A query that can see no key gets zeros, and so does a query at a masked position (query
/// `i` sits at key `i + t − s` when `t ≥ s`): padding rows cost nothing.
pub fn attention(dims: &AttentionDims, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[u32]>, out: &mut [f32]) {
    /// Query rows `[r0, r1)` (row = batch × q_len + position), compiled for the vector unit.
    struct Rows<'a> {
        dims: &'a AttentionDims,
        q: &'a [f32],
        v: &'a [f32],
        mask: Option<&'a [u32]>,
        /// per batch row: its keys up to the last unmasked one, transposed to [kv head][d][key]
        /// in rows of a multiple of [`KEY_PAD`] keys (zeros after the last)
        kt: &'a [(usize, Vec<f32>)],
        r0: usize,
        r1: usize,
    }
    impl pulp::WithSimd for Rows<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> Vec<f32> {
            let Rows { dims, q, v, mask, kt, r0, r1 } = self;
            let AttentionDims { q_len, kv_len, heads, kv_heads, head_dim: d, causal, scale, .. } = *dims;
            let group = heads / kv_heads;
            let mut res = vec![0f32; (r1 - r0) * heads * d];
            let mut scores = vec![0f32; kv_len.next_multiple_of(KEY_PAD)];
            let mut qs = vec![0f32; d];
            for (r, out_row) in (r0..r1).zip(res.chunks_exact_mut(heads * d)) {
                let (b, i) = (r / q_len, r % q_len);
                // a query at a padding position (key i + kv_len - q_len) gives zeros: nothing reads it
                if kv_len >= q_len && mask.is_some_and(|m| m[b * kv_len + i + (kv_len - q_len)] == 0) {
                    continue;
                }
                let (keys, kt) = (kt[b].0, &kt[b].1);
                let stride = keys.next_multiple_of(KEY_PAD);
                let mut t_end = if causal { kv_len.min(i + (kv_len - q_len) + 1) } else { kv_len };
                t_end = t_end.min(keys);
                if t_end == 0 {
                    continue;
                }
                // scores over whole vectors of keys (the padding's are set aside below), so a
                // short sentence's few keys take vector instructions, not scalar tails
                let t_pad = t_end.next_multiple_of(KEY_PAD);
                for h in 0..heads {
                    let kvh = h / group;
                    for (dst, &x) in qs.iter_mut().zip(&q[(r * heads + h) * d..][..d]) {
                        *dst = x * scale;
                    }
                    let sc = &mut scores[..t_pad];
                    let kh = &kt[kvh * d * stride..(kvh + 1) * d * stride];
                    scores_of(simd, &qs, kh, stride, sc);
                    sc[t_end..].fill(f32::NEG_INFINITY);
                    if let Some(m) = mask {
                        for (s, &keep) in sc[..t_end].iter_mut().zip(&m[b * kv_len..]) {
                            if keep == 0 {
                                *s = f32::NEG_INFINITY;
                            }
                        }
                    }
                    // eight running maxima and sums, so the loops vectorize
                    let mut lanes = [f32::NEG_INFINITY; 8];
                    for c in sc.chunks(8) {
                        for (l, &x) in lanes.iter_mut().zip(c) {
                            *l = max_of(*l, x);
                        }
                    }
                    let mx = lanes.iter().copied().fold(f32::NEG_INFINITY, max_of);
                    if mx == f32::NEG_INFINITY {
                        continue;
                    }
                    for s in sc.iter_mut() {
                        *s = exp_approx(*s - mx);
                    }
                    let mut sums = [0f32; 8];
                    for c in sc.chunks(8) {
                        for (l, &x) in sums.iter_mut().zip(c) {
                            *l += x;
                        }
                    }
                    let sum: f32 = sums.iter().sum();
                    let inv = 1.0 / sum;
                    let sc = &sc[..t_end];
                    let vrow = |t: usize| &v[((b * kv_len + t) * kv_heads + kvh) * d..][..d];
                    weighted_sum(simd, sc, inv, vrow, &mut out_row[h * d..(h + 1) * d]);
                }
            }
            res
        }
    }
    // Each batch row's keys transposed once, so that scores for many keys come from
    // broadcast multiply-adds along the keys with no horizontal sums; only up to the
    // last unmasked key, which bounds every query's scores too.
    let (kv_len, kv_heads, d) = (dims.kv_len, dims.kv_heads, dims.head_dim);
    let transpose = |b: usize| -> (usize, Vec<f32>) {
        let keys = match mask {
            Some(m) => m[b * kv_len..(b + 1) * kv_len].iter().rposition(|&x| x != 0).map_or(0, |t| t + 1),
            None => kv_len,
        };
        let stride = keys.next_multiple_of(KEY_PAD);
        let mut kt = vec![0f32; kv_heads * d * stride];
        for t in 0..keys {
            for kh in 0..kv_heads {
                let src = &k[((b * kv_len + t) * kv_heads + kh) * d..][..d];
                for (c, &x) in src.iter().enumerate() {
                    kt[(kh * d + c) * stride + t] = x;
                }
            }
        }
        (keys, kt)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let kt: Vec<(usize, Vec<f32>)> = (0..dims.batch).into_par_iter().map(transpose).collect();
    #[cfg(target_arch = "wasm32")]
    let kt: Vec<(usize, Vec<f32>)> = (0..dims.batch).map(transpose).collect();
    let width = dims.heads * dims.head_dim;
    let total = dims.batch * dims.q_len;
    // up to 16 query rows per task, fewer when that would leave threads idle (a short
    // sentence has few rows, each costly with many heads)
    let per_task = total.div_ceil(4 * crate::threads()).clamp(1, 16);
    let arch = pulp::Arch::new();
    let task = |t: usize| {
        let (r0, r1) = (t * per_task, ((t + 1) * per_task).min(total));
        arch.dispatch(Rows { dims, q, v, mask, kt: &kt, r0, r1 })
    };
    #[cfg(not(target_arch = "wasm32"))]
    let results: Vec<Vec<f32>> = (0..total.div_ceil(per_task)).into_par_iter().map(task).collect();
    #[cfg(target_arch = "wasm32")]
    let results: Vec<Vec<f32>> = (0..total.div_ceil(per_task)).map(task).collect();
    for (t, res) in results.into_iter().enumerate() {
        let o = t * per_task * width;
        out[o..o + res.len()].copy_from_slice(&res);
    }
}

pub(crate) struct Rope<'a> {
    pub heads: usize,
    pub d: usize,
    pub base: f32,
    pub mode: RopeMode,
    pub scaling: &'a RopeScaling,
}

pub(crate) fn rope(x: &[f32], pos: &[u32], r: &Rope<'_>, out: &mut [f32]) {
    let (heads, d, mode) = (r.heads, r.d, r.mode);
    let inv = rope_inv_freq(d, r.base, r.scaling);
    let half = d / 2;
    // a token's angles are the same for every head: computed once per token
    let mut sc = vec![(0f32, 0f32); inv.len()];
    for (t, &p) in pos.iter().enumerate() {
        for (v, f) in sc.iter_mut().zip(&inv) {
            *v = (p as f32 * f).sin_cos();
        }
        for h in 0..heads {
            let off = (t * heads + h) * d;
            for (i, &(s, c)) in sc.iter().enumerate() {
                let (i0, i1) = match mode {
                    RopeMode::Interleaved => (2 * i, 2 * i + 1),
                    RopeMode::Half => (i, i + half),
                };
                let (x0, x1) = (x[off + i0], x[off + i1]);
                out[off + i0] = x0 * c - x1 * s;
                out[off + i1] = x0 * s + x1 * c;
            }
        }
    }
}

pub(crate) fn mean_pool(x: &[f32], mask: &[u32], seq: usize, hidden: usize, out: &mut [f32]) {
    for (b, o) in out.chunks_exact_mut(hidden).enumerate() {
        o.fill(0.0);
        let mut cnt = 0f32;
        for s in 0..seq {
            if mask[b * seq + s] != 0 {
                cnt += 1.0;
                let xr = &x[(b * seq + s) * hidden..][..hidden];
                o.iter_mut().zip(xr).for_each(|(a, v)| *a += v);
            }
        }
        let div = cnt.max(1e-9);
        o.iter_mut().for_each(|a| *a /= div);
    }
}

pub(crate) fn transpose(x: &[u32], dims: [usize; 4], perm: [usize; 4], out: &mut [u32]) {
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let od = perm.map(|p| dims[p]);
    let os = perm.map(|p| strides[p]);
    let mut i = 0;
    for a in 0..od[0] {
        for b in 0..od[1] {
            for c in 0..od[2] {
                for d in 0..od[3] {
                    out[i] = x[a * os[0] + b * os[1] + c * os[2] + d * os[3]];
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention against a plain f64 computation from its definition, over head sizes with
    /// and without a partial last vector, key counts on both sides of a vector and of four
    /// vectors, grouped heads, causal masks and padding masks (one batch row all padding).
    #[test]
    fn attention_matches_its_definition() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(11);
        let cases = [
            // (batch, q_len, kv_len, heads, kv_heads, head_dim, causal, masked)
            (1, 14, 14, 12, 12, 32, false, true),
            (2, 5, 5, 4, 2, 24, false, true),
            (1, 1, 1, 1, 1, 1, false, false),
            (3, 17, 17, 2, 2, 7, true, true),
            (1, 3, 70, 3, 1, 64, true, false),
            (2, 65, 65, 2, 2, 40, false, true),
        ];
        for (batch, q_len, kv_len, heads, kv_heads, d, causal, masked) in cases {
            let dims = AttentionDims {
                batch,
                q_len,
                kv_len,
                heads,
                kv_heads,
                head_dim: d,
                causal,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let q = rand(batch * q_len * heads * d);
            let k = rand(batch * kv_len * kv_heads * d);
            let v = rand(batch * kv_len * kv_heads * d);
            let mut mask = vec![1u32; batch * kv_len];
            for b in 0..batch {
                let keep = if b == 1 { 0 } else { rng.random_range(1..=kv_len) };
                mask[b * kv_len + keep..(b + 1) * kv_len].fill(0);
            }
            let mask = masked.then_some(mask.as_slice());
            let mut out = vec![f32::NAN; q.len()];
            attention(&dims, &q, &k, &v, mask, &mut out);
            for b in 0..batch {
                for i in 0..q_len {
                    let seen =
                        |t: usize| mask.is_none_or(|m| m[b * kv_len + t] != 0) && (!causal || t + q_len <= i + kv_len);
                    let padding = mask.is_some_and(|m| kv_len >= q_len && m[b * kv_len + i + kv_len - q_len] == 0);
                    for h in 0..heads {
                        let kvh = h / (heads / kv_heads);
                        let row = |x: &[f32], t: usize| x[((b * kv_len + t) * kv_heads + kvh) * d..][..d].to_vec();
                        let qr = &q[((b * q_len + i) * heads + h) * d..][..d];
                        let scores: Vec<(usize, f64)> = (0..kv_len)
                            .filter(|&t| seen(t))
                            .map(|t| {
                                let dot: f64 =
                                    qr.iter().zip(row(&k, t)).map(|(a, c)| f64::from(*a) * f64::from(c)).sum();
                                (t, dot * f64::from(dims.scale))
                            })
                            .collect();
                        let mx = scores.iter().fold(f64::NEG_INFINITY, |a, s| a.max(s.1));
                        let total: f64 = scores.iter().map(|s| (s.1 - mx).exp()).sum();
                        for c in 0..d {
                            let want: f64 = if padding {
                                0.0
                            } else {
                                scores.iter().map(|&(t, s)| (s - mx).exp() / total * f64::from(row(&v, t)[c])).sum()
                            };
                            let got = out[((b * q_len + i) * heads + h) * d + c];
                            assert!(
                                (f64::from(got) - want).abs() <= 1e-5,
                                "{dims:?} b={b} i={i} h={h} c={c}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The pieces `binary` shares out against `out[i] = a[i] ∘ b[i % bn]`, over sizes on both
    /// sides of a piece (16k values) and broadcasts that do and do not divide one.
    #[test]
    fn binary_pieces_cover_every_value_once() {
        for (len, bn) in [(1, 1), (7, 7), (16384, 16384), (50001, 50001), (40000, 384), (70 * 300, 300), (12, 3)] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 7.0).collect();
            let b: Vec<f32> = (0..bn).map(|i| 1.0 + (i % 13) as f32).collect();
            for op in [BinaryOp::Add, BinaryOp::Mul] {
                let mut out = vec![f32::NAN; len];
                binary(op, &a, &b, bn, &mut out);
                for (i, o) in out.iter().enumerate() {
                    let want = match op {
                        BinaryOp::Add => a[i] + b[i % bn],
                        BinaryOp::Mul => a[i] * b[i % bn],
                    };
                    assert_eq!(*o, want, "{op:?} len {len} bn {bn} at {i}");
                }
            }
        }
    }
}
