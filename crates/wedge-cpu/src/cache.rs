//! Kernels over state tensors (key/value caches): writing token rows into a state,
//! attention over it, and picking the rows whose logits are wanted.
//!
//! A state is `[seqs, ctx, width]`, row-major, in f32 words or in f16 pairs (the lower half
//! first), as [`wedge_core::graph::StateElem`] says. `shaders/cache.wgsl` mirrors these.

use half::f16;
use wedge_core::graph::StateElem;

/// Writes row `i` of `x` (`tokens × width`) to row `(seq[i], pos[i])` of `state`.
/// Indices were checked against the state's shape by the plan.
pub fn cache_write(
    x: &[f32],
    seq: &[u32],
    pos: &[u32],
    (width, ctx): (usize, usize),
    elem: StateElem,
    state: &mut [u32],
) {
    let row_words = elem.words(width);
    for ((row, &s), &p) in x.chunks_exact(width).zip(seq).zip(pos) {
        let at = (s as usize * ctx + p as usize) * row_words;
        let dst = &mut state[at..at + row_words];
        match elem {
            StateElem::F32 => dst.iter_mut().zip(row).for_each(|(d, v)| *d = v.to_bits()),
            StateElem::F16 => {
                for (d, pair) in dst.iter_mut().zip(row.chunks_exact(2)) {
                    let (lo, hi) = (f16::from_f32(pair[0]).to_bits(), f16::from_f32(pair[1]).to_bits());
                    *d = u32::from(lo) | (u32::from(hi) << 16);
                }
            }
        }
    }
}

/// Sizes of a [`cached_attention`].
#[derive(Clone, Copy, Debug)]
pub struct CachedAttentionDims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Score scale.
    pub scale: f32,
    /// Rows per sequence in the states.
    pub ctx: usize,
    /// Storage of the states.
    pub elem: StateElem,
}

/// Reads `n` values of a state from value offset `at` into `out` as f32.
#[inline(always)]
fn read_row(state: &[u32], elem: StateElem, at: usize, out: &mut [f32]) {
    match elem {
        StateElem::F32 => out.iter_mut().zip(&state[at..]).for_each(|(d, w)| *d = f32::from_bits(*w)),
        StateElem::F16 => {
            // (rows and heads start on even values: widths and head sizes are even)
            for (pair, w) in out.chunks_mut(2).zip(&state[at / 2..]) {
                pair[0] = f16::from_bits(*w as u16).to_f32();
                if let Some(hi) = pair.get_mut(1) {
                    *hi = f16::from_bits((*w >> 16) as u16).to_f32();
                }
            }
        }
    }
}

/// Attention of each query row `i` of `q` (`tokens × heads·d`) over rows `0..=pos[i]` of
/// sequence `seq[i]` in the key and value states; the result has `q`'s shape. Scores are
/// summed in f32 in key order, the softmax is the max-subtracted one.
pub fn cached_attention(
    dims: &CachedAttentionDims,
    q: &[f32],
    seq: &[u32],
    pos: &[u32],
    k: &[u32],
    v: &[u32],
    out: &mut [f32],
) {
    let CachedAttentionDims { heads, head_dim: d, .. } = *dims;
    let arch = pulp::Arch::new();
    let one = |(t, out): (usize, &mut [f32])| {
        arch.dispatch(HeadTask { dims, t: t / heads, h: t % heads, q, seq, pos, k, v, out })
    };
    // (a task is one query head over its keys: a few short ones are too little to share out)
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        let work: usize = pos.iter().map(|&p| p as usize + 1).sum::<usize>() * heads * d;
        if work > 1 << 14 && out.len() > d {
            out.par_chunks_exact_mut(d).enumerate().for_each(one);
            return;
        }
    }
    out.chunks_exact_mut(d).enumerate().for_each(one);
}

/// The `buf.len()` values of a state from value offset `at`: an f32 state's where they are,
/// an f16 one's widened into `buf`.
#[inline(always)]
fn head_row<'a>(state: &'a [u32], elem: StateElem, at: usize, buf: &'a mut [f32]) -> &'a [f32] {
    match elem {
        StateElem::F32 => bytemuck::cast_slice(&state[at..at + buf.len()]),
        StateElem::F16 => {
            read_row(state, elem, at, buf);
            buf
        }
    }
}

/// One query head of one token over its keys, compiled for the CPU's widest vector unit (the
/// dot products and the weighted sum vectorize).
struct HeadTask<'a> {
    dims: &'a CachedAttentionDims,
    t: usize,
    h: usize,
    q: &'a [f32],
    seq: &'a [u32],
    pos: &'a [u32],
    k: &'a [u32],
    v: &'a [u32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for HeadTask<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let HeadTask { dims, t, h, q, seq, pos, k, v, out } = self;
        let CachedAttentionDims { heads, kv_heads, head_dim: d, scale, ctx, elem } = *dims;
        let width = kv_heads * d;
        let kvh = h / (heads / kv_heads);
        let qh = &q[(t * heads + h) * d..][..d];
        let base = seq[t] as usize * ctx;
        let keys = pos[t] as usize + 1;
        let mut scores = Vec::with_capacity(keys);
        let mut buf = vec![0f32; d];
        let at = |j: usize| (base + j) * width + kvh * d;
        for j in 0..keys {
            scores.push(crate::kernels::dot(qh, head_row(k, elem, at(j), &mut buf)) * scale);
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| crate::kernels::max_of(m, s));
        let mut total = 0f32;
        for s in &mut scores {
            *s = (*s - max).exp();
            total += *s;
        }
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let w = p / total;
            out.iter_mut().zip(head_row(v, elem, at(j), &mut buf)).for_each(|(o, x)| *o += w * x);
        }
    }
}

/// Rows `idx` of `x` (rows of `cols` values) into `out`.
pub fn select_rows(x: &[f32], idx: &[u32], cols: usize, out: &mut [f32]) {
    for (dst, &i) in out.chunks_exact_mut(cols).zip(idx) {
        dst.copy_from_slice(&x[i as usize * cols..][..cols]);
    }
}
