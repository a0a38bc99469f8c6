//! Grouped weights on AVX-512 VNNI: `q4`, `q4_1`, `q4_k` (4-bit values with a scale, and a
//! minimum, per group of 32 or more) and `q8_0` (8-bit values with a scale per group), against
//! activations rounded to 8 bits per block of [`A8_BLOCK`] values as [`crate::a8`] rounds
//! them, twice: the block, then what the first rounding left (at most half a step of the first
//! scale) with a scale of its own. The two 8-bit passes hold about 15 bits of each value, more
//! than the 16-bit rows of the AVX2 kernels keep where a row has outliers: SmolLM2's logits stay
//! within 0.01 of the float64 reference (median 6e-4 to 9e-4), where one pass (the rounding
//! llama.cpp gives activations) moves them by 0.14 to 0.18 (median) and up to 1.2, for 1.4 to
//! 1.8 times the speed of batched steps.
//!
//! The layout is [`crate::vnni`]'s: per vector of 16 columns (one 32-bit lane each) and per
//! group of four values along `k`, the 16 columns' four values side by side, so one
//! `vpdpbusd` adds four products into each column's lane against one broadcast quad of
//! activations, and no horizontal sums are needed. 4-bit values stay 4-bit: the quads `2t` and
//! `2t + 1` of a block share a vector, in the low and high nibbles, and a mask and a shift
//! part them. Per block and pass, the integer sums are exact; they are scaled by the columns'
//! group scales times the row's block scale of the pass and summed in f32, and the minimums
//! add `m · Σ x̂` with the sums of the rounded activations (so that a rounding error counts
//! with the weight's value, `s · u + m`, not with `s · u` alone).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: 4-bit values (0 to 15) are the unsigned
//! side and the activations the signed one; for `q8_0` the activations are offset by 128 to
//! unsigned bytes and each block's sums start from `-128 · Σ w`, as in [`crate::vnni`].

use core::arch::x86_64::*;

use wedge_core::graph::Activation;
use wedge_core::quant::{A8_BLOCK, Format, Weight};

use crate::gemm::{Block, run_tasks};
use crate::vnni::{Vnni, tiles};

/// Columns per vector: one 32-bit lane each.
const LANES: usize = 16;

/// Quads (four values along `k`) per block.
const QUADS: usize = A8_BLOCK / 4;

/// Vectors per block and vector of columns: 4-bit values hold two quads a byte.
const NIBBLE_VECTORS: usize = QUADS / 2;

/// Activation rows per tile, at most: three rows × two vectors of columns × two passes take 12
/// integer sums, 6 f32 sums and four weight vectors of AVX-512's 32 registers.
const ROWS: usize = 3;

/// Roundings of each activation block.
const PASSES: usize = 2;

/// A grouped weight (`n × k`) laid out for [`matmul`].
#[derive(Debug)]
pub(crate) struct Groups {
    /// 4-bit values (else `q8_0`'s bytes).
    nibbles: bool,
    /// Per vector of columns, per block: [`NIBBLE_VECTORS`] vectors of two quads each (4-bit),
    /// or [`QUADS`] vectors of one (8-bit).
    data: Vec<__m512i>,
    /// Per vector of columns, per block: the columns' scales.
    scales: Vec<__m512>,
    /// Per vector of columns, per block: the columns' minimums (4-bit; empty for `q8_0`).
    mins: Vec<__m512>,
    /// Per vector of columns, per block: `-128 · Σ w` over the block (`q8_0`; empty otherwise).
    corr: Vec<__m512i>,
    n: usize,
    k: usize,
    blocks: usize,
}

impl Groups {
    /// Lays out `w`, if its format and shape fit: `q4`, `q4_1`, `q4_k` or `q8_0`, groups of a
    /// multiple of [`A8_BLOCK`], `k` a multiple of it.
    pub(crate) fn new(w: &Weight) -> Option<Groups> {
        let nibbles = match w.format {
            Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K => true,
            Format::Q8_0 { .. } => false,
            _ => return None,
        };
        let (n, k) = w.rows_cols();
        let group = w.format.group() as usize;
        if w.shape.len() != 2 || n == 0 || k == 0 || !k.is_multiple_of(A8_BLOCK) || !group.is_multiple_of(A8_BLOCK) {
            return None;
        }
        if w.words.len() < n * w.format.words_per_row(k) {
            return None;
        }
        let (blocks, vectors, gpr) = (k / A8_BLOCK, n.div_ceil(LANES), w.format.groups_per_row(k));
        let per = if nibbles { NIBBLE_VECTORS } else { QUADS };
        let mut data = vec![[0u8; 64]; vectors * blocks * per];
        let mut scales = vec![[0f32; LANES]; vectors * blocks];
        let mut mins = vec![[0f32; LANES]; if nibbles { vectors * blocks } else { 0 }];
        let mut corr = vec![[0i32; LANES]; if nibbles { 0 } else { vectors * blocks }];
        let wpr = w.format.words_per_row(k);
        for r in 0..n {
            let (v, lane) = (r / LANES, r % LANES);
            let words = &w.words[r * wpr..(r + 1) * wpr];
            let bytes: &[u8] = bytemuck::cast_slice(words);
            for b in 0..blocks {
                let vb = v * blocks + b;
                let (s, m) = w.group_affine(r * gpr + b * A8_BLOCK / group);
                scales[vb][lane] = s;
                if nibbles {
                    mins[vb][lane] = m;
                }
                for c in b * A8_BLOCK..(b + 1) * A8_BLOCK {
                    let (q, i) = ((c % A8_BLOCK) / 4, c % 4);
                    if nibbles {
                        let u = ((words[c / 8] >> (4 * (c % 8))) & 0xf) as u8;
                        data[vb * per + q / 2][4 * lane + i] |= u << (4 * (q % 2));
                    } else {
                        let value = bytes[c] as i8;
                        data[vb * per + q][4 * lane + i] = bytes[c];
                        corr[vb][lane] -= 128 * i32::from(value);
                    }
                }
            }
        }
        Some(Groups {
            nibbles,
            data: data.into_iter().map(bytemuck::cast).collect(),
            scales: scales.into_iter().map(bytemuck::cast).collect(),
            mins: mins.into_iter().map(bytemuck::cast).collect(),
            corr: corr.into_iter().map(bytemuck::cast).collect(),
            n,
            k,
            blocks,
        })
    }
}

/// The activation rows as [`tile`] reads them: per row and block, per pass, the eight quads of
/// rounded values (`q8_0`: offset to unsigned bytes) as `u32` and the pass's scale; and (4-bit)
/// the block's sum of the rounded values.
struct Rows {
    quads: Vec<[[u32; QUADS]; PASSES]>,
    scales: Vec<[f32; PASSES]>,
    sums: Vec<f32>,
}

/// Rounds `x` (rows of `k`) in two passes: `x ≈ s₀ q₀ + s₁ q₁` per block.
fn rows(simd: pulp::x86::V4, x: &[f32], k: usize, nibbles: bool) -> Rows {
    let blocks = k / A8_BLOCK;
    let m = x.len() / k;
    let (mut q0, mut q1) = (vec![0i8; m * k], vec![0i8; m * k]);
    let (mut s0, mut s1) = (vec![0f32; m * blocks], vec![0f32; m * blocks]);
    simd.vectorize(|| {
        crate::a8::quantize_rows_into(x, k, &mut q0, &mut s0);
        let mut rest = x.to_vec();
        for ((r, q), s) in rest.chunks_exact_mut(A8_BLOCK).zip(q0.chunks_exact(A8_BLOCK)).zip(&s0) {
            for (r, q) in r.iter_mut().zip(q) {
                *r -= s * f32::from(*q);
            }
        }
        crate::a8::quantize_rows_into(&rest, k, &mut q1, &mut s1);
    });
    let flip = if nibbles { 0 } else { 0x8080_8080 };
    let quads = |q: &[i8]| -> Vec<[u32; QUADS]> {
        let bytes: &[u8] = bytemuck::cast_slice(q);
        let quad = |b: &[u8; A8_BLOCK], j: usize| {
            u32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]]) ^ flip
        };
        bytes.as_chunks::<A8_BLOCK>().0.iter().map(|b| std::array::from_fn(|j| quad(b, j))).collect()
    };
    // the sums of the rounded values, not of `x`: then the minimums' term and the integer sums
    // see the same activations, and the rounding errors are weighed by the weights' values
    // (`s · u + m`) rather than by `s · u` alone (4-bit `u` from 0 to 15, not centred)
    let block_sum = |q: &[i8]| q.iter().map(|v| i32::from(*v)).sum::<i32>() as f32;
    let sums = if nibbles {
        let (b0, b1) = (q0.chunks_exact(A8_BLOCK), q1.chunks_exact(A8_BLOCK));
        b0.zip(b1).zip(s0.iter().zip(&s1)).map(|((a, b), (sa, sb))| sa * block_sum(a) + sb * block_sum(b)).collect()
    } else {
        Vec::new()
    };
    Rows {
        quads: quads(&q0).into_iter().zip(quads(&q1)).map(|(a, b)| [a, b]).collect(),
        scales: s0.into_iter().zip(s1).map(|(a, b)| [a, b]).collect(),
        sums,
    }
}

/// `out = act(x · Wᵀ + bias)`, `x` being `m × k`, `W` laid out by [`Groups::new`]: each task's
/// rows in tiles of up to [`ROWS`] rows (shared out evenly) × two vectors of columns (one at
/// a task's odd end).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    token: Vnni,
    simd: pulp::x86::V4,
    w: &Groups,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    out: &mut [f32],
) {
    let xs = rows(simd, &x[..m * w.k], w.k, w.nibbles);
    let blocks = w.blocks;
    run_tasks(m, w.n, out, (bias, act), |res| {
        let (m0, n0) = (res.m0, res.n0);
        tiles(res.mb, res.nb, ROWS, |i0, r, v, s| {
            let rows = (m0 + i0) * blocks..(m0 + i0 + r) * blocks;
            let sums = if w.nibbles { &xs.sums[rows.clone()] } else { &[][..] };
            let (quads, scales) = (&xs.quads[rows.clone()], &xs.scales[rows]);
            let at = Tile { w, quads, scales, sums, v: n0 / LANES + v, i0, c0: v * LANES };
            match (w.nibbles, r, s) {
                (true, 3, 2) => run::<3, 2, true, NIBBLE_VECTORS>(token, at, res),
                (true, 2, 2) => run::<2, 2, true, NIBBLE_VECTORS>(token, at, res),
                (true, _, 2) => run::<1, 2, true, NIBBLE_VECTORS>(token, at, res),
                (true, 3, _) => run::<3, 1, true, NIBBLE_VECTORS>(token, at, res),
                (true, 2, _) => run::<2, 1, true, NIBBLE_VECTORS>(token, at, res),
                (true, _, _) => run::<1, 1, true, NIBBLE_VECTORS>(token, at, res),
                (false, 3, 2) => run::<3, 2, false, QUADS>(token, at, res),
                (false, 2, 2) => run::<2, 2, false, QUADS>(token, at, res),
                (false, _, 2) => run::<1, 2, false, QUADS>(token, at, res),
                (false, 3, _) => run::<3, 1, false, QUADS>(token, at, res),
                (false, 2, _) => run::<2, 1, false, QUADS>(token, at, res),
                (false, _, _) => run::<1, 1, false, QUADS>(token, at, res),
            }
        });
    });
}

/// One tile of a task: its rows' activations (those rows only), the first vector of columns
/// `v` (of the whole weight), and where the tile starts in the task's block.
#[derive(Clone, Copy)]
struct Tile<'a> {
    w: &'a Groups,
    quads: &'a [[[u32; QUADS]; PASSES]],
    scales: &'a [[f32; PASSES]],
    sums: &'a [f32],
    v: usize,
    i0: usize,
    c0: usize,
}

/// Runs [`tile`] for `R` rows × `S` vectors.
#[inline(always)]
fn run<const R: usize, const S: usize, const NIB: bool, const PER: usize>(token: Vnni, at: Tile, res: &mut Block) {
    let _ = token;
    // SAFETY: `tile` needs AVX-512 F, BW and VNNI; a `Vnni` token exists only where
    // `Vnni::detect` found all three on this CPU.
    #[allow(unsafe_code)]
    unsafe {
        tile::<R, S, NIB, PER>(at, res)
    }
}

/// `R` rows × `S` vectors of 16 outputs, over every block: the block's exact integer sums of
/// each pass (`q8_0`: from the block's correction), times the columns' scales times the row's
/// block scale of the pass, plus (4-bit) the columns' minimums times the row's block sum, summed in f32 and
/// stored into the task's block (columns past it left alone).
// (plain loops only, as in `crate::vnni::tile`: a closure here would not be inlined)
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize, const S: usize, const NIB: bool, const PER: usize>(at: Tile, res: &mut Block) {
    let Tile { w, quads, scales, sums, v, i0, c0 } = at;
    let blocks = w.blocks;
    // every slice cut to its length up front, so the loop needs no bounds checks
    let mut wd: [&[[__m512i; PER]]; S] = [&[]; S];
    let mut ws: [&[__m512]; S] = [&[]; S];
    let mut wm: [&[__m512]; S] = [&[]; S];
    let mut wc: [&[__m512i]; S] = [&[]; S];
    for s in 0..S {
        let (at, to) = ((v + s) * blocks, (v + s + 1) * blocks);
        wd[s] = &w.data[at * PER..to * PER].as_chunks::<PER>().0[..blocks];
        ws[s] = &w.scales[at..to];
        if NIB {
            wm[s] = &w.mins[at..to];
        } else {
            wc[s] = &w.corr[at..to];
        }
    }
    let mut xq: [&[[[u32; QUADS]; PASSES]]; R] = [&[]; R];
    let mut xs: [&[[f32; PASSES]]; R] = [&[]; R];
    let mut xsum: [&[f32]; R] = [&[]; R];
    for i in 0..R {
        xq[i] = &quads[i * blocks..(i + 1) * blocks];
        xs[i] = &scales[i * blocks..(i + 1) * blocks];
        if NIB {
            xsum[i] = &sums[i * blocks..(i + 1) * blocks];
        }
    }
    let low = _mm512_set1_epi8(0x0f);
    let mut facc = [[_mm512_setzero_ps(); S]; R];
    for b in 0..blocks {
        let mut acc = [[[_mm512_setzero_si512(); S]; R]; PASSES];
        if !NIB {
            for s in 0..S {
                let c = wc[s][b];
                for pass in acc.iter_mut() {
                    for row in pass.iter_mut() {
                        row[s] = c;
                    }
                }
            }
        }
        for t in 0..PER {
            if NIB {
                let mut lo = [_mm512_setzero_si512(); S];
                let mut hi = [_mm512_setzero_si512(); S];
                for s in 0..S {
                    let raw = wd[s][b][t];
                    lo[s] = _mm512_and_si512(raw, low);
                    hi[s] = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low);
                }
                for p in 0..PASSES {
                    for i in 0..R {
                        let xa = _mm512_set1_epi32(xq[i][b][p][2 * t] as i32);
                        let xb = _mm512_set1_epi32(xq[i][b][p][2 * t + 1] as i32);
                        for s in 0..S {
                            acc[p][i][s] = _mm512_dpbusd_epi32(acc[p][i][s], lo[s], xa);
                            acc[p][i][s] = _mm512_dpbusd_epi32(acc[p][i][s], hi[s], xb);
                        }
                    }
                }
            } else {
                let mut wv = [_mm512_setzero_si512(); S];
                for s in 0..S {
                    wv[s] = wd[s][b][t];
                }
                for p in 0..PASSES {
                    for i in 0..R {
                        let xa = _mm512_set1_epi32(xq[i][b][p][t] as i32);
                        for s in 0..S {
                            acc[p][i][s] = _mm512_dpbusd_epi32(acc[p][i][s], xa, wv[s]);
                        }
                    }
                }
            }
        }
        for i in 0..R {
            let sum = if NIB { _mm512_set1_ps(xsum[i][b]) } else { _mm512_setzero_ps() };
            for s in 0..S {
                for p in 0..PASSES {
                    let scale = _mm512_mul_ps(ws[s][b], _mm512_set1_ps(xs[i][b][p]));
                    facc[i][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][i][s]), scale, facc[i][s]);
                }
                if NIB {
                    facc[i][s] = _mm512_fmadd_ps(wm[s][b], sum, facc[i][s]);
                }
            }
        }
    }
    for (i, row) in facc.iter().enumerate() {
        for (s, sums) in row.iter().enumerate() {
            let c = c0 + s * LANES;
            let width = res.nb.saturating_sub(c).min(LANES);
            let out: [f32; LANES] = bytemuck::cast(*sums);
            let dst = &mut res.row(i0 + i)[c..c + width];
            dst.copy_from_slice(&out[..width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twin: the same two roundings of the activations, the weights dequantized, every
    /// block's sum in f64.
    fn twin(x: &[f32], w: &Weight, m: usize, k: usize, n: usize) -> Vec<f32> {
        let (q, sx) = crate::a8::quantize_rows(x, k);
        let rest: Vec<f32> =
            x.iter().zip(&q).enumerate().map(|(i, (x, q))| x - sx[i / A8_BLOCK] * f32::from(*q)).collect();
        let (q1, sx1) = crate::a8::quantize_rows(&rest, k);
        let dense = w.to_f32();
        let blocks = k / A8_BLOCK;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for b in 0..blocks {
                    let (s, mn) =
                        w.group_affine(j * w.format.groups_per_row(k) + b * A8_BLOCK / w.format.group() as usize);
                    let (mut dot, mut dot1, mut xsum) = (0f64, 0f64, 0f64);
                    for c in b * A8_BLOCK..(b + 1) * A8_BLOCK {
                        // the stored integer value, recovered from the dequantized one
                        let u = if s == 0.0 { 0.0 } else { ((dense[j * k + c] - mn) / s).round() };
                        dot += f64::from(u) * f64::from(q[r * k + c]);
                        dot1 += f64::from(u) * f64::from(q1[r * k + c]);
                    }
                    let (s0, s1) = (f64::from(sx[r * blocks + b]), f64::from(sx1[r * blocks + b]));
                    let block = |q: &[i8]| {
                        q[r * k + b * A8_BLOCK..r * k + (b + 1) * A8_BLOCK].iter().map(|v| f64::from(*v)).sum::<f64>()
                    };
                    xsum += s0 * block(&q) + s1 * block(&q1);
                    acc += (dot * s0 + dot1 * s1) * f64::from(s) + f64::from(mn) * xsum;
                }
                out[r * n + j] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn grouped_vnni_tiles_match_their_twin_over_ragged_shapes() {
        let (Some(token), Some(simd)) = (Vnni::detect(), pulp::x86::V4::try_new()) else {
            eprintln!("no AVX-512 VNNI here: nothing to check");
            return;
        };
        let mut seed = 7u32;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for format in [Format::Q4_1 { group: 32 }, Format::Q4 { group: 64 }, Format::Q8_0 { group: 32 }] {
            for (m, k, n) in [(1, 32, 1), (3, 64, 17), (8, 96, 50), (5, 256, 33), (13, 128, 97), (4, 32, 16)] {
                let x: Vec<f32> = (0..m * k).map(|_| rand() * 3.0).collect();
                let dense: Vec<f32> = (0..n * k).map(|_| rand()).collect();
                let w = Weight::quantize("w", &[n, k], &dense, format).unwrap();
                let g = Groups::new(&w).unwrap();
                let bias: Vec<f32> = (0..n).map(|_| rand()).collect();
                let mut out = vec![0f32; m * n];
                matmul(token, simd, &g, &x, Some(&bias), Activation::None, m, &mut out);
                let want = twin(&x, &w, m, k, n);
                let wd = w.to_f32();
                for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                    let want = want + bias[i % n];
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{format:?} {m}×{k}×{n} [{i}]: {got} vs {want}"
                    );
                    // and the two roundings keep about 15 bits: close to the f32 product
                    let exact: f32 =
                        (0..k).map(|c| x[(i / n) * k + c] * wd[(i % n) * k + c]).sum::<f32>() + bias[i % n];
                    assert!(
                        (got - exact).abs() <= 2e-3 * (1.0 + exact.abs()),
                        "{format:?} [{i}]: {got} vs f32 {exact}"
                    );
                }
            }
        }
        let w = Weight::quantize("w", &[4, 48], &[0.5; 4 * 48], Format::Q4_1 { group: 32 }).unwrap();
        assert!(Groups::new(&w).is_none(), "k must be whole blocks");
    }
}
