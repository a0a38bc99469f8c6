//! `q8a8` tiles on AVX-512 VNNI. `vpdpbusd` multiplies 64 unsigned bytes by 64 signed bytes
//! and adds each four neighbouring products into a 32-bit lane: four multiply-adds per lane
//! per instruction, twice what `vpdpwssd` does on 16-bit pairs, and the weights go in as they
//! are stored, not widened first.
//!
//! The activations are the blocks of [`crate::a8::quantize_rows`] (integers in `[-127, 127]`,
//! one scale per [`A8_BLOCK`] values), offset by 128 to unsigned bytes. A block's integer sum
//! then holds `128 · Σ w` over the block besides `Σ x · w`; the layout keeps that per column
//! and block, negated, and each block's sums start from it, so they stay exact (at most
//! `32 · 255 · 127` in magnitude) and equal the plain twin's block sums.
//!
//! Stable Rust has the VNNI intrinsics, but the SIMD crate the rest of this backend is written
//! over (`pulp`) wraps none of them. This module and [`crate::vnni_groups`] hold the crate's
//! two `unsafe` blocks: each the call of a `#[target_feature]` function, made only through a
//! token ([`Vnni`]) that exists only where the CPU has the features.

use core::arch::x86_64::*;

use wedge_core::graph::Activation;
use wedge_core::quant::{A8_BLOCK, Weight};

use crate::gemm::{Block, run_tasks};

/// Groups of four values along `k` per block.
const QUADS: usize = A8_BLOCK / 4;

/// Columns per vector: one 32-bit lane each.
const LANES: usize = 16;

/// Activation rows per tile: six rows × two vectors of columns take 12 integer sums, 12 f32
/// sums, two weight vectors and a broadcast of AVX-512's 32 registers.
const ROWS: usize = 6;

/// Proof that this CPU has AVX-512 F/BW and VNNI (made only by [`Vnni::detect`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vnni(());

impl Vnni {
    /// The token, where the CPU has the features.
    pub(crate) fn detect() -> Option<Vnni> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Vnni(()))
    }
}

/// A `q8a8` weight (`n × k`) laid out for [`tile`]: per vector of 16 columns, per group of four
/// values along `k`, the 16 columns' four bytes side by side (64 bytes, zeros past `n` and `k`);
/// per vector and block, `-128 · Σ w` of each column over the block; per vector, the columns'
/// scales.
#[derive(Debug)]
pub(crate) struct Quads {
    data: Vec<__m512i>,
    corr: Vec<__m512i>,
    scales: Vec<__m512>,
    n: usize,
    k: usize,
    /// Blocks of [`A8_BLOCK`] values along `k`.
    blocks: usize,
}

impl Quads {
    /// Lays out `w` (`q8` or `q8a8` storage).
    pub(crate) fn new(w: &Weight) -> Quads {
        let (n, k) = w.rows_cols();
        let blocks = k.div_ceil(A8_BLOCK);
        let vectors = n.div_ceil(LANES);
        let wpr = w.format.words_per_row(k);
        let mut data = vec![[0i8; 64]; vectors * blocks * QUADS];
        let mut corr = vec![[0i32; LANES]; vectors * blocks];
        let mut scales = vec![[0f32; LANES]; vectors];
        for r in 0..n {
            let (v, lane) = (r / LANES, r % LANES);
            scales[v][lane] = w.word_affine(r, 0).0;
            // byte j of a word is value j (little endian): a row is a run of i8
            let row: &[i8] = bytemuck::cast_slice(&w.words[r * wpr..(r + 1) * wpr]);
            for (c, &value) in row.iter().take(k).enumerate() {
                data[v * blocks * QUADS + c / 4][4 * lane + c % 4] = value;
                corr[v * blocks + c / A8_BLOCK][lane] -= 128 * i32::from(value);
            }
        }
        Quads {
            data: data.into_iter().map(bytemuck::cast).collect(),
            corr: corr.into_iter().map(bytemuck::cast).collect(),
            scales: scales.into_iter().map(bytemuck::cast).collect(),
            n,
            k,
            blocks,
        }
    }
}

/// Rows of `x` (`rows × k`) rounded as [`crate::a8::quantize_rows`] rounds them, as [`tile`]
/// reads them: each group of four values offset by 128 to unsigned bytes, as one `u32`; and
/// the block scales. Each row is rounded in `simd`'s context (AVX-512: a block in two vectors).
fn quantize_rows(simd: pulp::x86::V4, x: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let blocks = k.div_ceil(A8_BLOCK);
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut quads = vec![0u32; rows * blocks * QUADS];
    let mut scales = vec![0f32; rows * blocks];
    let row = |((x, q), scales): ((&[f32], &mut [u32]), &mut [f32])| simd.vectorize(RoundRow { x, k, q, scales });
    let (xs, qs, ss) =
        (x.chunks_exact(k.max(1)), quads.chunks_exact_mut(blocks * QUADS), scales.chunks_exact_mut(blocks));
    // a short sentence's few rows take a microsecond, less than sharing them out
    if rows * k <= 1 << 16 {
        xs.zip(qs).zip(ss).for_each(row);
    } else {
        use rayon::prelude::*;
        let (xs, qs, ss) = (
            x.par_chunks_exact(k.max(1)),
            quads.par_chunks_exact_mut(blocks * QUADS),
            scales.par_chunks_exact_mut(blocks),
        );
        xs.zip(qs).zip(ss).for_each(row);
    }
    (quads, scales)
}

/// One row for [`quantize_rows`]: a type with an inlined call rather than a closure, which
/// LLVM may leave out of line, compiled without the vector unit.
struct RoundRow<'a> {
    x: &'a [f32],
    k: usize,
    q: &'a mut [u32],
    scales: &'a mut [f32],
}

impl pulp::NullaryFnOnce for RoundRow<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        crate::a8::quantize_rows_into(self.x, self.k, bytemuck::cast_slice_mut(self.q), self.scales);
        for v in self.q {
            *v ^= 0x8080_8080;
        }
    }
}

/// A `q8a8` matmul, `out = act(x · Wᵀ + bias)`, `x` being `m × k`: the activations rounded
/// (in `simd`'s context), then each task's rows in tiles of up to [`ROWS`] rows (shared out
/// evenly: 14 rows as 5 + 5 + 4, not 6 + 6 + 2) × two vectors of columns (one at a task's
/// odd end).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    token: Vnni,
    simd: pulp::x86::V4,
    w: &Quads,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    out: &mut [f32],
) {
    let (xq, sx) = quantize_rows(simd, &x[..m * w.k], w.k);
    let (xlen, blocks) = (w.blocks * QUADS, w.blocks);
    run_tasks(m, w.n, out, (bias, act), |res| {
        let (m0, n0) = (res.m0, res.n0);
        tiles(res.mb, res.nb, ROWS, |i0, r, v, s| {
            let rows = m0 + i0..m0 + i0 + r;
            let (xq, sx) = (&xq[rows.start * xlen..rows.end * xlen], &sx[rows.start * blocks..rows.end * blocks]);
            let at = Tile { w, xq, sx, v: n0 / LANES + v, i0, c0: v * LANES };
            match (r, s) {
                (6, 2) => run::<6, 2>(token, at, res),
                (5, 2) => run::<5, 2>(token, at, res),
                (4, 2) => run::<4, 2>(token, at, res),
                (3, 2) => run::<3, 2>(token, at, res),
                (2, 2) => run::<2, 2>(token, at, res),
                (_, 2) => run::<1, 2>(token, at, res),
                (6, _) => run::<6, 1>(token, at, res),
                (5, _) => run::<5, 1>(token, at, res),
                (4, _) => run::<4, 1>(token, at, res),
                (3, _) => run::<3, 1>(token, at, res),
                (2, _) => run::<2, 1>(token, at, res),
                (_, _) => run::<1, 1>(token, at, res),
            }
        });
    });
}

/// The tiles of a task's block of `mb` rows × `nb` columns: the rows in as few tiles of at
/// most `max_rows` as cover them, shared out evenly (14 rows as 5 + 5 + 4, not 6 + 6 + 2),
/// each across pairs of 16-column vectors (one at an odd end). Calls `tile(i0, rows, v, s)`
/// for the tile's first row and rows, first vector and vectors.
pub(crate) fn tiles(mb: usize, nb: usize, max_rows: usize, mut tile: impl FnMut(usize, usize, usize, usize)) {
    let vectors = nb.div_ceil(LANES);
    let count = mb.div_ceil(max_rows);
    let mut i0 = 0;
    for t in 0..count {
        let r = (mb - i0).div_ceil(count - t);
        let mut v = 0;
        while v < vectors {
            let s = if vectors - v >= 2 { 2 } else { 1 };
            tile(i0, r, v, s);
            v += s;
        }
        i0 += r;
    }
}

/// One tile of a task: its rows' activations (`xq`, `sx`: those rows only), the first vector
/// of columns `v` (of the whole weight), and where the tile starts in the task's block.
#[derive(Clone, Copy)]
struct Tile<'a> {
    w: &'a Quads,
    xq: &'a [u32],
    sx: &'a [f32],
    v: usize,
    i0: usize,
    c0: usize,
}

/// Runs [`tile`] for `R` rows × `S` vectors.
#[inline(always)]
fn run<const R: usize, const S: usize>(token: Vnni, at: Tile, res: &mut Block) {
    let _ = token;
    // SAFETY: `tile` needs AVX-512 F, BW and VNNI; a `Vnni` token exists only where
    // `Vnni::detect` found all three on this CPU.
    #[allow(unsafe_code)]
    unsafe {
        tile::<R, S>(at, res)
    }
}

/// `R` rows × `S` vectors of 16 outputs: each block's exact integer sums (starting from the
/// block's correction) times the row's block scale, summed in f32, times the columns' scales
/// at the end, stored straight into the task's block (columns past it left alone).
// (plain loops only: a closure here, as `array::from_fn` takes, is compiled with these
// features and cannot be inlined into the generic code that calls it, so each would be a call)
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize, const S: usize>(at: Tile, res: &mut Block) {
    let Tile { w, xq, sx, v, i0, c0 } = at;
    let blocks = w.blocks;
    // every slice cut to its length up front, so the loop needs no bounds checks
    let mut wq: [&[[__m512i; QUADS]]; S] = [&[]; S];
    let mut wc: [&[__m512i]; S] = [&[]; S];
    for s in 0..S {
        let q = blocks * QUADS;
        wq[s] = &w.data[(v + s) * q..(v + s + 1) * q].as_chunks::<QUADS>().0[..blocks];
        wc[s] = &w.corr[(v + s) * blocks..(v + s + 1) * blocks];
    }
    let mut xs: [&[[u32; QUADS]]; R] = [&[]; R];
    let mut scales: [&[f32]; R] = [&[]; R];
    for i in 0..R {
        xs[i] = &xq[i * blocks * QUADS..(i + 1) * blocks * QUADS].as_chunks::<QUADS>().0[..blocks];
        scales[i] = &sx[i * blocks..(i + 1) * blocks];
    }
    let mut facc = [[_mm512_setzero_ps(); S]; R];
    for b in 0..blocks {
        let mut acc = [[_mm512_setzero_si512(); S]; R];
        for s in 0..S {
            let c = wc[s][b];
            for row in acc.iter_mut() {
                row[s] = c;
            }
        }
        for q in 0..QUADS {
            let mut wv = [_mm512_setzero_si512(); S];
            for s in 0..S {
                wv[s] = wq[s][b][q];
            }
            for i in 0..R {
                let xb = _mm512_set1_epi32(xs[i][b][q] as i32);
                for s in 0..S {
                    acc[i][s] = _mm512_dpbusd_epi32(acc[i][s], xb, wv[s]);
                }
            }
        }
        for i in 0..R {
            let scale = _mm512_set1_ps(scales[i][b]);
            for s in 0..S {
                facc[i][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][s]), scale, facc[i][s]);
            }
        }
    }
    for (i, row) in facc.iter().enumerate() {
        for (s, sums) in row.iter().enumerate() {
            let c = c0 + s * LANES;
            let width = res.nb.saturating_sub(c).min(LANES);
            let out: [f32; LANES] = bytemuck::cast(_mm512_mul_ps(*sums, w.scales[v + s]));
            let dst = &mut res.row(i0 + i)[c..c + width];
            if width == LANES {
                dst.copy_from_slice(&out);
            } else {
                dst.copy_from_slice(&out[..width]);
            }
        }
    }
}
