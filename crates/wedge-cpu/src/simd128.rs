//! `q8`, `q4` and `q4_1` weights against activations rounded to 16-bit integers on wasm
//! simd128: the browser's twin of the AVX2 `int16` tiles of [`crate::gemm`], with the same
//! rounding and the same integer sums.
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
//! `q4` and `q4_1` take the same layout with each 4-bit value widened to a byte (`q4`: `u - 8`,
//! `q4_1`: `u`); their integer sums run one quantization group at a time and are folded into
//! f32 with the columns' group scales and, for `q4_1`, the group's sum of rounded activations
//! times the columns' minimums (`w = u·s + m`). Their activations keep all 15 bits: a group's
//! sums are far from an `i32`'s range.
//!
//! Single-threaded, like the rest of the wasm backend; safe code (`core::arch::wasm32`'s
//! operations are safe with `+simd128` enabled for the whole crate).

use core::arch::wasm32::{
    f32x4, f32x4_add, f32x4_convert_i32x4, f32x4_extract_lane, f32x4_mul, f32x4_nearest, f32x4_pmax, f32x4_pmin,
    f32x4_splat, i16x8_extend_high_i8x16, i16x8_extend_low_i8x16, i16x8_narrow_i32x4, i32x4_add, i32x4_dot_i16x8,
    i32x4_splat, i32x4_trunc_sat_f32x4, u8x16, v128,
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

/// A `q8`, `q4` or `q4_1` weight laid out for the tiles (see the module docs).
#[derive(Debug)]
pub(crate) struct Packed {
    n: usize,
    k: usize,
    pairs: usize,
    /// Per group of eight rows, per pair of values: the eight rows' pairs, 16 bytes.
    data: Vec<[u8; 16]>,
    /// `q8`: one scale per row, zeros past `n` up to whole groups.
    scales: Vec<f32>,
    /// `q4`/`q4_1`: the quantization group along `k` (0 for `q8`).
    group: usize,
    /// Per group of eight rows, per quantization group: the eight rows' scales.
    gscales: Vec<[f32; COLS]>,
    /// The same for `q4_1`'s minimums (empty for `q4`).
    gmins: Vec<[f32; COLS]>,
}

impl Packed {
    /// Lays out a two-dimensional `q8`, `q4` or `q4_1` weight (groups of an even size); `None`
    /// for any other.
    pub(crate) fn new(w: &Weight) -> Option<Packed> {
        let grouped = match w.format {
            Format::Q8 => false,
            Format::Q4 { group } | Format::Q4_1 { group } if group % 2 == 0 => true,
            _ => return None,
        };
        if w.shape.len() != 2 || w.shape[1] == 0 {
            return None;
        }
        let (n, k) = w.rows_cols();
        let (pairs, groups) = (k.div_ceil(2), n.div_ceil(COLS));
        let wpr = w.format.words_per_row(k);
        let mut data = vec![[0u8; 16]; groups * pairs];
        if !grouped {
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
            return Some(Packed { n, k, pairs, data, scales, group: 0, gscales: Vec::new(), gmins: Vec::new() });
        }
        let group = w.format.group() as usize;
        let kgroups = k.div_ceil(group);
        let asym = matches!(w.format, Format::Q4_1 { .. });
        let offset: i8 = if asym { 0 } else { -8 };
        let mut gscales = vec![[0f32; COLS]; groups * kgroups];
        let mut gmins = vec![[0f32; COLS]; if asym { groups * kgroups } else { 0 }];
        for r in 0..n {
            let words = &w.words[r * wpr..(r + 1) * wpr];
            let (g, c) = (r / COLS, r % COLS);
            for v in 0..k {
                let u = ((words[v / 8] >> (4 * (v % 8))) & 0xf) as i8 + offset;
                data[g * pairs + v / 2][2 * c + v % 2] = u as u8;
            }
            for q in 0..kgroups {
                let (sc, mn) = w.group_affine(r * kgroups + q);
                gscales[g * kgroups + q][c] = sc;
                if asym {
                    gmins[g * kgroups + q][c] = mn;
                }
            }
        }
        Some(Packed { n, k, pairs, data, scales: Vec::new(), group, gscales, gmins })
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
                // eight values at a time: scaled, clamped, rounded half to even, narrowed to
                // `i16` (little endian: value 2j in the low half of word j)
                let (vinv, lo, hi) = (f32x4_splat(inv), f32x4_splat(-qmax), f32x4_splat(qmax));
                let ints = |v: &[f32]| {
                    let v = f32x4_mul(f32x4(v[0], v[1], v[2], v[3]), vinv);
                    i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_pmin(hi, f32x4_pmax(lo, v))))
                };
                let mut words = dst.chunks_exact_mut(4);
                let mut eights = src.chunks_exact(8);
                for (d, e) in (&mut words).zip(&mut eights) {
                    let packed: [u32; 4] = bytemuck::cast(i16x8_narrow_i32x4(ints(&e[..4]), ints(&e[4..])));
                    d.copy_from_slice(&packed);
                }
                let round = |v: &f32| crate::kernels::round_even((v * inv).clamp(-qmax, qmax)).1 as i16 as u16;
                let done = src.len() - eights.remainder().len();
                for (d, two) in dst[done / 2..].iter_mut().zip(src[done..].chunks(2)) {
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

/// `out[m, n] = act(x · Wᵀ + bias)` for a [`Packed`] weight.
pub(crate) fn matmul(x: &[f32], w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
    let (n, k, pairs) = (w.n, w.k, w.pairs);
    let (xq, xs) = quantize_rows(&x[..m * k], k, if w.group > 0 { 32767.0 } else { qmax(k) });
    // `q4_1`: each row's sum of rounded activations per quantization group
    let xsum: Vec<i32> = if w.gmins.is_empty() {
        Vec::new()
    } else {
        let gp = w.group / 2;
        xq.chunks_exact(pairs)
            .flat_map(|row| {
                row.chunks(gp)
                    .map(|ps| ps.iter().map(|&p| i32::from(p as i16) + i32::from((p >> 16) as i16)).sum::<i32>())
            })
            .collect()
    };
    let xsum = &xsum[..];
    let out = &mut out[..m * n];
    for r0 in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - r0);
        for g in 0..n.div_ceil(COLS) {
            let wg = &w.data[g * pairs..(g + 1) * pairs];
            let mut i = 0;
            while i < rows {
                let r = r0 + i;
                let x = Rows { xq: &xq, xs: &xs, xsum };
                i += match rows - i {
                    4.. => tile::<4>(x, w, wg, r, g, out),
                    3 => tile::<3>(x, w, wg, r, g, out),
                    2 => tile::<2>(x, w, wg, r, g, out),
                    _ => tile::<1>(x, w, wg, r, g, out),
                };
            }
        }
    }
    crate::gemm::epilogue(out, bias, act);
}

/// The activations as the tiles read them.
#[derive(Clone, Copy)]
struct Rows<'a> {
    /// Pairs of rounded values, `k / 2` (rounded up) a row.
    xq: &'a [u32],
    /// Each row's scale.
    xs: &'a [f32],
    /// `q4_1`: each row's sum of rounded values per quantization group.
    xsum: &'a [i32],
}

/// The integer sums of rows `xr` against pairs `wp` of one column group: per row, columns 0-3
/// and 4-7.
#[inline(always)]
fn sums<const R: usize>(xr: [&[u32]; R], wp: &[[u8; 16]]) -> [[v128; 2]; R] {
    let mut acc = [[i32x4_splat(0); 2]; R];
    for (p, b) in wp.iter().enumerate() {
        let v: v128 =
            u8x16(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
        let (lo, hi) = (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v));
        for i in 0..R {
            let xb = i32x4_splat(xr[i][p] as i32);
            acc[i][0] = i32x4_add(acc[i][0], i32x4_dot_i16x8(lo, xb));
            acc[i][1] = i32x4_add(acc[i][1], i32x4_dot_i16x8(hi, xb));
        }
    }
    acc
}

/// Four `i32` lanes as f32.
#[inline(always)]
fn f32s(v: v128) -> v128 {
    f32x4_convert_i32x4(v)
}

/// Rows `r..r + R` against column group `g` (its pairs `wg`), into `out`; returns `R`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (rows index several arrays at once)
fn tile<const R: usize>(x: Rows, w: &Packed, wg: &[[u8; 16]], r: usize, g: usize, out: &mut [f32]) -> usize {
    debug_assert!(R <= ROWS);
    let (n, pairs) = (w.n, w.pairs);
    let xr: [&[u32]; R] = std::array::from_fn(|i| &x.xq[(r + i) * pairs..(r + i + 1) * pairs]);
    let c0 = g * COLS;
    // per row, columns 0-3 and 4-7, before the row's scale
    let mut facc = [[f32x4_splat(0.0); 2]; R];
    if w.group == 0 {
        let acc = sums::<R>(xr, wg);
        let sw = &w.scales[c0..c0 + COLS];
        for i in 0..R {
            let sx = x.xs[r + i];
            for h in 0..2 {
                let s = f32x4(sx * sw[4 * h], sx * sw[4 * h + 1], sx * sw[4 * h + 2], sx * sw[4 * h + 3]);
                facc[i][h] = f32x4_mul(f32s(acc[i][h]), s);
            }
        }
    } else {
        let (gp, kgroups) = (w.group / 2, w.k.div_ceil(w.group));
        for (q, p0) in (0..pairs).step_by(gp).enumerate() {
            let span = p0..(p0 + gp).min(pairs);
            let xs: [&[u32]; R] = std::array::from_fn(|i| &xr[i][span.clone()]);
            let acc = sums::<R>(xs, &wg[span.clone()]);
            let at = g * kgroups + q;
            let sc = &w.gscales[at];
            for i in 0..R {
                for h in 0..2 {
                    let s = f32x4(sc[4 * h], sc[4 * h + 1], sc[4 * h + 2], sc[4 * h + 3]);
                    facc[i][h] = f32x4_add(facc[i][h], f32x4_mul(f32s(acc[i][h]), s));
                }
            }
            if let Some(mn) = w.gmins.get(at) {
                for i in 0..R {
                    let xg = f32x4_splat(x.xsum[(r + i) * kgroups + q] as f32);
                    for h in 0..2 {
                        let m = f32x4(mn[4 * h], mn[4 * h + 1], mn[4 * h + 2], mn[4 * h + 3]);
                        facc[i][h] = f32x4_add(facc[i][h], f32x4_mul(xg, m));
                    }
                }
            }
        }
        for (i, f) in facc.iter_mut().enumerate() {
            let sx = f32x4_splat(x.xs[r + i]);
            for v in f.iter_mut() {
                *v = f32x4_mul(*v, sx);
            }
        }
    }
    let cols = COLS.min(n - c0);
    for (i, f) in facc.iter().enumerate() {
        let row = r + i;
        let mut vals = [0f32; COLS];
        for (h, v) in f.iter().enumerate() {
            vals[4 * h] = f32x4_extract_lane::<0>(*v);
            vals[4 * h + 1] = f32x4_extract_lane::<1>(*v);
            vals[4 * h + 2] = f32x4_extract_lane::<2>(*v);
            vals[4 * h + 3] = f32x4_extract_lane::<3>(*v);
        }
        // a whole group's columns in one fixed-size copy (two vector stores): a copy of a
        // variable length is a `memory.copy`, which engines run as a call
        if cols == COLS {
            out[row * n + c0..][..COLS].copy_from_slice(&vals);
        } else {
            out[row * n + c0..][..cols].copy_from_slice(&vals[..cols]);
        }
    }
    R
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The scalar twin of the tiles: each row rounded as the module docs say, exact integer
    /// sums (over all of `k` for `q8`, per quantization group for `q4`/`q4_1`), folded into f32
    /// in the tiles' order.
    fn twin(x: &[f32], w: &Weight, m: usize) -> Vec<f32> {
        let (n, k) = w.rows_cols();
        let wpr = w.format.words_per_row(k);
        let group = w.format.group() as usize;
        let qm = if group > 0 { 32767.0 } else { qmax(k) };
        let value = |r: usize, v: usize| -> i64 {
            let words = &w.words[r * wpr..(r + 1) * wpr];
            match w.format {
                Format::Q8 => i64::from((words[v / 4] >> (8 * (v % 4))) as u8 as i8),
                Format::Q4 { .. } => i64::from((words[v / 8] >> (4 * (v % 8))) & 0xf) - 8,
                _ => i64::from((words[v / 8] >> (4 * (v % 8))) & 0xf),
            }
        };
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let Some(amax) = crate::kernels::finite_amax(row) else {
                out[r * n..(r + 1) * n].fill(f32::NAN);
                continue;
            };
            let inv = qm / amax;
            let xq: Vec<i64> =
                row.iter().map(|v| i64::from((v * inv).clamp(-qm, qm).round_ties_even() as i32)).collect();
            let sx = amax / qm;
            for c in 0..n {
                let dot = |vs: std::ops::Range<usize>| -> i32 {
                    i32::try_from(vs.map(|v| xq[v] * value(c, v)).sum::<i64>()).unwrap()
                };
                out[r * n + c] = if group == 0 {
                    dot(0..k) as f32 * (sx * w.word_affine(c, 0).0)
                } else {
                    let kgroups = k.div_ceil(group);
                    let mut f = 0f32;
                    for q in 0..kgroups {
                        let vs = q * group..((q + 1) * group).min(k);
                        let (sc, mn) = w.group_affine(c * kgroups + q);
                        f += dot(vs.clone()) as f32 * sc;
                        if matches!(w.format, Format::Q4_1 { .. }) {
                            f += vs.map(|v| xq[v] as i32).sum::<i32>() as f32 * mn;
                        }
                    }
                    f * sx
                };
            }
        }
        out
    }

    /// The tiles against their scalar twin, bit for bit, for `q8`, `q4` and `q4_1`. Ragged
    /// shapes: odd `k`, a last quantization group cut short, columns that do not fill a group,
    /// rows that do not fill a tile or a block, and a row with an infinity.
    #[test]
    fn tiles_equal_their_scalar_twin() {
        let mut rng = StdRng::seed_from_u64(11);
        let formats = [Format::Q8, Format::Q4 { group: 32 }, Format::Q4_1 { group: 32 }, Format::Q4_1 { group: 64 }];
        for case in 0..48 {
            let format = formats[case % formats.len()];
            let m = [1, 2, 3, 4, 5, 7, 63, 64, 65, 130][case % 10];
            let n = rng.random_range(1..40);
            let k = [1, 2, 3, 7, 8, 31, 33, 64, 100, 384, 1536][rng.random_range(0..11)];
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            if case % 7 == 3 {
                x[k / 2] = f32::INFINITY;
            }
            let w = Weight::quantize("w", &[n, k], &wv, format).unwrap();
            let packed = Packed::new(&w).unwrap();
            let mut got = vec![f32::NAN; m * n];
            matmul(&x, &packed, None, Activation::None, m, &mut got);
            let want = twin(&x, &w, m);
            for (i, (g, t)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == t.to_bits() || (g.is_nan() && t.is_nan()),
                    "{format} m={m} n={n} k={k} at {i}: {g} vs {t}"
                );
            }
        }
    }
}
