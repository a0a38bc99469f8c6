//! `q8` weights against activations rounded to 16-bit integers on wasm simd128: the browser's
//! twin of the AVX2 `int16` tiles of [`crate::gemm`], with the same numbers.
//!
//! Each activation row gets its own scale `max|x| / qmax`, `qmax` the largest value (at most
//! 32767) for which a row's `k` products of at most `qmax · 128` fit an `i32`, so the integer
//! sums are exact and a row's result does not depend on the rest of its batch; the rounding
//! error of an output is at most `max|x| / (2 qmax) · Σ_k |w|`, as on x86.
//!
//! `i32x4.dot_i16x8_s` (wasm's `pmaddwd`) multiplies eight pairs of 16-bit values and adds
//! neighbours into four `i32` lanes. The weight is laid out once per group of eight rows
//! (output columns): per pair of values along `k`, the eight rows' pairs in 16 bytes, widened
//! to two `i16x8` vectors of four columns each. Each activation pair is broadcast to every lane,
//! so each lane owns one output column and no horizontal sums are needed.
//!
//! Single-threaded, like the rest of the wasm backend; safe code (`core::arch::wasm32`'s
//! operations are safe with `+simd128` enabled for the whole crate).

use core::arch::wasm32::{
    f32x4, f32x4_convert_i32x4, f32x4_extract_lane, f32x4_mul, i16x8_extend_high_i8x16, i16x8_extend_low_i8x16,
    i32x4_add, i32x4_dot_i16x8, i32x4_splat, u8x16, v128,
};
use wedge_core::graph::Activation;
use wedge_core::quant::{Format, Weight};

/// Output columns per group (a group's pair of values is one 16-byte vector).
const COLS: usize = 8;
/// Activation rows per micro-tile: 4 rows × 2 vectors of sums, plus two weight vectors and a
/// broadcast, in the 16 vector registers engines give wasm on x86.
const ROWS: usize = 4;
/// Activation rows per block: their rounded pairs (`k / 2` words a row) stay in cache while
/// every column group passes over them.
const BLOCK: usize = 64;

/// A `q8` weight laid out for the tiles (see the module docs).
#[derive(Debug)]
pub(crate) struct Packed {
    n: usize,
    k: usize,
    pairs: usize,
    /// Per group of eight rows, per pair of values: the eight rows' pairs, 16 bytes.
    data: Vec<[u8; 16]>,
    /// One scale per row, zeros past `n` up to whole groups.
    scales: Vec<f32>,
}

impl Packed {
    /// Lays out a two-dimensional `q8` weight; `None` for any other.
    pub(crate) fn new(w: &Weight) -> Option<Packed> {
        if w.format != Format::Q8 || w.shape.len() != 2 || w.shape[1] == 0 {
            return None;
        }
        let (n, k) = w.rows_cols();
        let (pairs, groups) = (k.div_ceil(2), n.div_ceil(COLS));
        let wpr = w.format.words_per_row(k);
        let mut data = vec![[0u8; 16]; groups * pairs];
        let mut scales = vec![0f32; groups * COLS];
        for (r, scale) in scales.iter_mut().enumerate().take(n) {
            *scale = w.word_affine(r, 0).0;
            // byte j of a word is value j (little endian): a row is a run of i8, padded with
            // zeros to whole words
            let row: &[u8] = bytemuck::cast_slice(&w.words[r * wpr..(r + 1) * wpr]);
            let (g, c) = (r / COLS, r % COLS);
            for (p, two) in row.chunks_exact(2).take(pairs).enumerate() {
                data[g * pairs + p][2 * c..2 * c + 2].copy_from_slice(two);
            }
        }
        Some(Packed { n, k, pairs, data, scales })
    }
}

/// The largest activation magnitude for a reduction of `k` values (see the module docs).
fn qmax(k: usize) -> f32 {
    (i32::MAX as usize / (k.max(1) * 128)).min(32767) as f32
}

/// Rounds each row of `x` (`m × k`) to integers in `[-qmax, qmax]`, as pairs of `i16` in one
/// `u32` (a zero after an odd last value); returns them and each row's scale (NaN for a row
/// with a NaN or an infinity, which spoils its outputs as it would in f32).
fn quantize_rows(x: &[f32], k: usize, qmax: f32) -> (Vec<u32>, Vec<f32>) {
    let pairs = k.div_ceil(2);
    let rows = x.len() / k;
    let mut q = vec![0u32; rows * pairs];
    let mut scales = vec![0f32; rows];
    for ((src, dst), scale) in x.chunks_exact(k).zip(q.chunks_exact_mut(pairs)).zip(&mut scales) {
        match crate::kernels::finite_amax(src) {
            None => *scale = f32::NAN,
            // (a row so small that `qmax / amax` overflows counts as zeros, as an all-zero row)
            Some(amax) if (qmax / amax).is_finite() => {
                let inv = qmax / amax;
                let round = |v: &f32| crate::kernels::round_even((v * inv).clamp(-qmax, qmax)).1 as i16 as u16;
                for (d, two) in dst.iter_mut().zip(src.chunks(2)) {
                    let lo = round(&two[0]);
                    let hi = two.get(1).map_or(0, round);
                    *d = u32::from(lo) | (u32::from(hi) << 16);
                }
                *scale = amax / qmax;
            }
            Some(_) => {}
        }
    }
    (q, scales)
}

/// `out[m, n] = act(x · Wᵀ + bias)` for a [`Packed`] `q8` weight.
pub(crate) fn matmul(x: &[f32], w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
    let (n, k, pairs) = (w.n, w.k, w.pairs);
    let (xq, xs) = quantize_rows(&x[..m * k], k, qmax(k));
    let out = &mut out[..m * n];
    for r0 in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - r0);
        for g in 0..n.div_ceil(COLS) {
            let wg = &w.data[g * pairs..(g + 1) * pairs];
            let mut i = 0;
            while i < rows {
                let r = r0 + i;
                i += match rows - i {
                    4.. => tile::<4>(&xq, &xs, w, wg, r, g, out),
                    3 => tile::<3>(&xq, &xs, w, wg, r, g, out),
                    2 => tile::<2>(&xq, &xs, w, wg, r, g, out),
                    _ => tile::<1>(&xq, &xs, w, wg, r, g, out),
                };
            }
        }
    }
    crate::gemm::epilogue(out, bias, act);
}

/// Rows `r..r + R` against column group `g` (its pairs `wg`), into `out`; returns `R`.
#[inline(always)]
fn tile<const R: usize>(
    xq: &[u32],
    xs: &[f32],
    w: &Packed,
    wg: &[[u8; 16]],
    r: usize,
    g: usize,
    out: &mut [f32],
) -> usize {
    debug_assert!(R <= ROWS);
    let (n, pairs) = (w.n, w.pairs);
    // every slice cut to one length, so the loop needs no bounds checks
    let xr: [&[u32]; R] = std::array::from_fn(|i| &xq[(r + i) * pairs..(r + i + 1) * pairs]);
    let mut acc = [[i32x4_splat(0); 2]; R];
    for (p, b) in wg.iter().enumerate() {
        let v: v128 =
            u8x16(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
        let (lo, hi) = (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v));
        for i in 0..R {
            let xb = i32x4_splat(xr[i][p] as i32);
            acc[i][0] = i32x4_add(acc[i][0], i32x4_dot_i16x8(lo, xb));
            acc[i][1] = i32x4_add(acc[i][1], i32x4_dot_i16x8(hi, xb));
        }
    }
    let c0 = g * COLS;
    let sw = &w.scales[c0..c0 + COLS];
    for (i, sums) in acc.iter().enumerate() {
        let row = r + i;
        let sx = xs[row];
        let mut vals = [0f32; COLS];
        for (h, sum) in sums.iter().enumerate() {
            let s = f32x4(sx * sw[4 * h], sx * sw[4 * h + 1], sx * sw[4 * h + 2], sx * sw[4 * h + 3]);
            let v = f32x4_mul(f32x4_convert_i32x4(*sum), s);
            vals[4 * h] = f32x4_extract_lane::<0>(v);
            vals[4 * h + 1] = f32x4_extract_lane::<1>(v);
            vals[4 * h + 2] = f32x4_extract_lane::<2>(v);
            vals[4 * h + 3] = f32x4_extract_lane::<3>(v);
        }
        let cols = COLS.min(n - c0);
        out[row * n + c0..row * n + c0 + cols].copy_from_slice(&vals[..cols]);
    }
    R
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The tiles against their scalar twin, bit for bit: each row rounded as the module docs
    /// say, one exact integer sum per output, times the row's and the column's scale. Ragged
    /// shapes: odd `k`, columns that do not fill a group, rows that do not fill a tile or a
    /// block, and a row with an infinity.
    #[test]
    fn tiles_equal_their_scalar_twin() {
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..40 {
            let m = [1, 2, 3, 4, 5, 7, 63, 64, 65, 130][case % 10];
            let n = rng.random_range(1..40);
            let k = [1, 2, 3, 7, 8, 31, 33, 64, 100, 384, 1536][rng.random_range(0..11)];
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            if case % 7 == 3 {
                x[k / 2] = f32::INFINITY;
            }
            let w = Weight::quantize("w", &[n, k], &wv, Format::Q8).unwrap();
            let packed = Packed::new(&w).unwrap();
            let mut got = vec![f32::NAN; m * n];
            matmul(&x, &packed, None, Activation::None, m, &mut got);

            let qm = qmax(k);
            let wpr = w.format.words_per_row(k);
            let bytes: &[u8] = bytemuck::cast_slice(&w.words);
            let wq: Vec<i32> = (0..n * k).map(|i| i32::from(bytes[(i / k) * wpr * 4 + i % k] as i8)).collect();
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                for c in 0..n {
                    let want = if amax.is_nan() || amax.is_infinite() {
                        f32::NAN
                    } else {
                        let inv = qm / amax;
                        let sum: i64 = row
                            .iter()
                            .zip(&wq[c * k..(c + 1) * k])
                            .map(|(v, q)| i64::from((v * inv).clamp(-qm, qm).round_ties_even() as i32) * i64::from(*q))
                            .sum();
                        let sum = i32::try_from(sum).unwrap();
                        sum as f32 * ((amax / qm) * w.word_affine(c, 0).0)
                    };
                    let g = got[r * n + c];
                    assert!(
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                        "m={m} n={n} k={k} at ({r}, {c}): {g} vs {want}"
                    );
                }
            }
        }
    }
}
