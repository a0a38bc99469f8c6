//! `q8a8` matmuls (w8a8): the activations rounded to 8 bits in blocks of
//! [`A8_BLOCK`] along the reduction, each block's products summed exactly in integers, as
//! `wedge_core::quant` defines and as the GPU computes with `dot4I8Packed`. This is the
//! twin the GPU kernels are tested against; it keeps to plain loops that compilers
//! vectorize (sign-extended 8-bit products summed in `i32`).

use wedge_core::graph::Activation;
use wedge_core::quant::{A8_BLOCK, Weight};

use crate::gemm::run_tasks;

/// Rounds each row of `x` (`rows × k`) in blocks of [`A8_BLOCK`]: returns the integers
/// (`rows × blocks · A8_BLOCK`, zeros past `k`) and one scale per block (`rows × blocks`).
/// A block holding a NaN or an infinity gets a NaN scale, which spoils its row's outputs.
/// (Inlined, so that a caller compiled for a vector unit rounds a vector at a time.)
#[inline(always)]
pub fn quantize_rows(x: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let blocks = k.div_ceil(A8_BLOCK);
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut q = vec![0i8; rows * blocks * A8_BLOCK];
    let mut scales = vec![0f32; rows * blocks];
    quantize_rows_into(x, k, &mut q, &mut scales);
    (q, scales)
}

/// [`quantize_rows`] into `q` and `scales` (zeroed, of those lengths).
#[inline(always)]
pub(crate) fn quantize_rows_into(x: &[f32], k: usize, q: &mut [i8], scales: &mut [f32]) {
    let blocks = k.div_ceil(A8_BLOCK);
    for ((src, dst), sc) in
        x.chunks_exact(k.max(1)).zip(q.chunks_exact_mut(blocks * A8_BLOCK)).zip(scales.chunks_exact_mut(blocks))
    {
        for ((chunk, d), s) in src.chunks(A8_BLOCK).zip(dst.chunks_exact_mut(A8_BLOCK)).zip(sc) {
            *s = quantize_block_into(chunk, d);
        }
    }
}

/// One block: integers in `[-127, 127]` (round half to even of `x · 127 / max|x|`) and the
/// scale `max|x| / 127`; an all-zero block has scale 0.
#[inline(always)]
pub fn quantize_block(chunk: &[f32]) -> ([i8; A8_BLOCK], f32) {
    let mut q = [0i8; A8_BLOCK];
    let scale = quantize_block_into(chunk, &mut q);
    (q, scale)
}

/// [`quantize_block`] into `q` (zeros, at least as long as `chunk`); returns the scale.
#[inline(always)]
fn quantize_block_into(chunk: &[f32], q: &mut [i8]) -> f32 {
    let Some(amax) = crate::kernels::finite_amax(chunk) else {
        return f32::NAN;
    };
    if amax == 0.0 {
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (d, v) in q.iter_mut().zip(chunk) {
        // (the magic-add rounding: a float-to-int cast per lane would not vectorize)
        *d = crate::kernels::round_even((v * inv).clamp(-127.0, 127.0)).1 as i8;
    }
    amax / 127.0
}

/// The 8-bit values of weight row `row` (`k` of them), zeros up to whole blocks.
fn weight_row(w: &Weight, row: usize, k: usize, out: &mut [i8]) {
    let wpr = w.format.words_per_row(k);
    for (i, d) in out[..k].iter_mut().enumerate() {
        *d = (w.words[row * wpr + i / 4] >> (8 * (i % 4))) as u8 as i8;
    }
    out[k..].fill(0);
}

/// Σ a·b over one block, exact in `i32` (|sum| ≤ 32 · 127 · 127).
#[inline(always)]
fn block_dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| i32::from(i16::from(*x) * i16::from(*y))).sum()
}

/// `out[m, n] = act(Σ_b s_x[b] · Σ_{k ∈ b} q_x · q_w · s_w[n] + bias[n])` for a `q8a8`
/// weight `w` (`n × k`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    x: &[f32],
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let blocks = k.div_ceil(A8_BLOCK);
    let kp = blocks * A8_BLOCK;
    let (xq, xs) = quantize_rows(&x[..m * k], k);
    run_tasks(m, n, out, (bias, act), |res| {
        let (m0, mb, n0, nb) = (res.m0, res.mb, res.n0, res.nb);
        let mut wrow = vec![0i8; kp];
        for j in 0..nb {
            weight_row(w, n0 + j, k, &mut wrow);
            let sw = w.word_affine(n0 + j, 0).0;
            for i in 0..mb {
                let r = m0 + i;
                let xr = &xq[r * kp..(r + 1) * kp];
                let sx = &xs[r * blocks..(r + 1) * blocks];
                let mut acc = 0f32;
                for ((xb, wb), s) in xr.chunks_exact(A8_BLOCK).zip(wrow.chunks_exact(A8_BLOCK)).zip(sx) {
                    acc += block_dot(xb, wb) as f32 * s;
                }
                res.row(i)[j] = acc * sw;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use wedge_core::quant::Format;

    /// The definition in f64, from the weight's packed bytes.
    fn definition(x: &[f32], w: &Weight, m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        let wf = w.to_f32();
        for r in 0..m {
            for c in 0..n {
                let sw = f64::from(w.word_affine(c, 0).0);
                let mut acc = 0f64;
                for (b, chunk) in x[r * k..(r + 1) * k].chunks(A8_BLOCK).enumerate() {
                    let (q, s) = quantize_block(chunk);
                    for (i, qv) in q[..chunk.len()].iter().enumerate() {
                        let wq = (f64::from(wf[c * k + b * A8_BLOCK + i]) / sw).round();
                        acc += f64::from(s) * f64::from(*qv) * wq;
                    }
                }
                out[r * n + c] = acc * sw;
            }
        }
        out
    }

    #[test]
    fn blocks_round_to_eight_bits() {
        let (q, s) = quantize_block(&[1.0, -2.0, 0.5, 0.0]);
        assert_eq!(&q[..4], &[64, -127, 32, 0]); // 63.5 rounds to even
        assert_eq!(s, 2.0 / 127.0);
        assert_eq!(quantize_block(&[0.0; 3]).1, 0.0);
        assert!(quantize_block(&[1.0, f32::NAN]).1.is_nan());
        assert!(quantize_block(&[f32::INFINITY]).1.is_nan());
    }

    #[test]
    fn ragged_shapes_match_the_definition() {
        let mut rng = StdRng::seed_from_u64(8);
        for &(m, k, n) in
            &[(1, 1, 1), (3, 31, 5), (2, 32, 7), (5, 33, 9), (4, 100, 50), (70, 257, 3), (7, 64, 17), (1, 1536, 384)]
        {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Weight::quantize("w", &[n, k], &wv, Format::Q8A8).unwrap();
            let want = definition(&x, &w, m, k, n);
            // this plain twin, and the backend's own path (AVX2 where the CPU has it)
            let mut plain = vec![0f32; m * n];
            matmul(&x, &w, None, Activation::None, m, k, n, &mut plain);
            let mut fast = vec![0f32; m * n];
            crate::matmul(&x, &w, None, Activation::None, m, k, n, &mut fast);
            for (what, out) in [("plain", &plain), ("backend", &fast)] {
                for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (1.0 + e.abs()) * (k as f64).sqrt();
                    assert!((f64::from(*g) - e).abs() <= tol, "{what} {m}x{k}x{n} [{i}]: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn a_nan_spoils_only_its_row() {
        let (m, k, n) = (3, 40, 4);
        let mut x = vec![0.5f32; m * k];
        x[k + 35] = f32::NAN;
        let w = Weight::quantize("w", &[n, k], &vec![0.25f32; n * k], Format::Q8A8).unwrap();
        for fast in [false, true] {
            let mut out = vec![0f32; m * n];
            if fast {
                crate::matmul(&x, &w, None, Activation::None, m, k, n, &mut out);
            } else {
                matmul(&x, &w, None, Activation::None, m, k, n, &mut out);
            }
            assert!(out[n..2 * n].iter().all(|v| v.is_nan()), "{out:?}");
            assert!(out[..n].iter().chain(&out[2 * n..]).all(|v| (v - 5.0).abs() < 1e-3), "{out:?}");
        }
    }
}
