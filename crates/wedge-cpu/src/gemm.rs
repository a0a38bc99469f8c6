//! The fast CPU matmul: `out = act(x · Wᵀ + bias)` with `W` in any weight format.
//!
//! Work is cut into tasks of `MB` activation rows × `NB` weight rows. A task dequantizes its
//! weight rows once into an f32 panel (kept in L2, reused by every activation row of the
//! task), then runs a register-blocked micro-kernel over `MR × NR` tiles: `MR` activation rows
//! against `NR` weight rows, both read along the reduction dimension `k` (the layout `W` is
//! stored in, so nothing is repacked), `MR × NR` vector accumulators reduced once at the end.
//! On this project's 2-core AVX2 machines it runs at about 70-80% of the measured FMA peak. The kernel is written once over
//! `pulp::Simd` and dispatched at run time to the widest vector unit the CPU has (AVX2+FMA,
//! AVX-512, NEON, wasm simd128), falling back to scalar code; everything inlined into it,
//! dequantization included, is compiled for that unit, all in safe code.

use pulp::{Arch, Simd, WithSimd};
use wedge_core::graph::Activation;
use wedge_core::quant::{Format, Weight};

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// Weight rows per task (the dequantized panel is `NB × k` floats).
const NB: usize = 48;
/// Activation rows per task.
pub(crate) const MB: usize = 64;
/// Activation rows per micro-tile.
const MR: usize = 3;
/// Weight rows per micro-tile.
const NR: usize = 3;

/// Dequantizes weight rows `[n0, n0 + rows)` into `panel` (`rows × k`, row-major).
#[inline(always)]
fn dequantize_rows(w: &Weight, n0: usize, rows: usize, k: usize, panel: &mut [f32]) {
    let wpr = w.format.words_per_row(k);
    let words = &w.words[n0 * wpr..(n0 + rows) * wpr];
    for (r, (dst, src)) in panel.chunks_exact_mut(k).zip(words.chunks_exact(wpr)).enumerate() {
        let row = n0 + r;
        match w.format {
            Format::F32 => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f32::from_bits(*s);
                }
            }
            // (q5_* and q6_k: their two sources of bits per value, through the definition)
            Format::F16 | Format::Bf16 | Format::Q6K | Format::Q5_0 | Format::Q5_1 | Format::Q5K => {
                w.dequantize_row(row, dst)
            }
            Format::Q8 | Format::Q8A8 => {
                let (s, _) = w.word_affine(row, 0);
                // byte j of a word is value j (little endian), so the row is a plain i8 run
                #[cfg(target_endian = "little")]
                {
                    let bytes: &[u8] = bytemuck::cast_slice(src);
                    for (d, b) in dst.iter_mut().zip(bytes) {
                        *d = f32::from(*b as i8) * s;
                    }
                }
                #[cfg(not(target_endian = "little"))]
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = f32::from((src[i / 4] >> (8 * (i % 4))) as u8 as i8) * s;
                }
            }
            Format::Q8_0 { group } => {
                #[cfg(target_endian = "little")]
                {
                    let bytes: &[u8] = bytemuck::cast_slice(src);
                    for (d, b) in dst.iter_mut().zip(bytes) {
                        *d = f32::from(*b as i8);
                    }
                }
                #[cfg(not(target_endian = "little"))]
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = f32::from((src[i / 4] >> (8 * (i % 4))) as u8 as i8);
                }
                let gpr = w.format.groups_per_row(k);
                for (g, dg) in dst.chunks_mut(group as usize).enumerate() {
                    let (s, _) = w.group_affine(row * gpr + g);
                    dg.iter_mut().for_each(|d| *d *= s);
                }
            }
            Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K => {
                let group = w.format.group();
                // first the raw nibbles of the whole row (one long loop that vectorizes), then
                // each group's affine map
                #[cfg(target_endian = "little")]
                {
                    // byte i holds values 2i (low nibble) and 2i + 1 (high nibble)
                    let bytes: &[u8] = bytemuck::cast_slice(src);
                    let mut pairs = dst.chunks_exact_mut(2);
                    for (d2, b) in (&mut pairs).zip(bytes) {
                        d2[0] = f32::from(b & 0xf);
                        d2[1] = f32::from(b >> 4);
                    }
                    if let Some(last) = pairs.into_remainder().first_mut() {
                        *last = f32::from(bytes[(k - 1) / 2] & 0xf);
                    }
                }
                #[cfg(not(target_endian = "little"))]
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = ((src[i / 8] >> (4 * (i % 8))) & 0xf) as f32;
                }
                let gpr = w.format.groups_per_row(k);
                for (g, dg) in dst.chunks_mut(group as usize).enumerate() {
                    let (s, m) = w.group_affine(row * gpr + g);
                    dg.iter_mut().for_each(|d| *d = *d * s + m);
                }
            }
        }
    }
}

/// `R × C` dot products of `xs` rows against `ws` rows, all of length `k`: `R × C` vector
/// accumulators in registers, `R + C` loads per `R × C` fused multiply-adds.
#[inline(always)]
fn tile<S: Simd, const R: usize, const C: usize>(simd: S, xs: [&[f32]; R], ws: [&[f32]; C]) -> [[f32; C]; R] {
    let xv = xs.map(|x| S::as_simd_f32s(x));
    let wv = ws.map(|w| S::as_simd_f32s(w));
    let mut acc = [[simd.splat_f32s(0.0); C]; R];
    let chunks = xv[0].0.len();
    // slices cut to one length, so the loop carries no bounds checks
    let xh: [&[S::f32s]; R] = std::array::from_fn(|i| &xv[i].0[..chunks]);
    let wh: [&[S::f32s]; C] = std::array::from_fn(|j| &wv[j].0[..chunks]);
    for c in 0..chunks {
        let wc: [S::f32s; C] = std::array::from_fn(|j| wh[j][c]);
        for i in 0..R {
            let x = xh[i][c];
            for j in 0..C {
                acc[i][j] = simd.mul_add_e_f32s(x, wc[j], acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for i in 0..R {
        for j in 0..C {
            let mut s = simd.reduce_sum_f32s(acc[i][j]);
            for (a, b) in xv[i].1.iter().zip(wv[j].1) {
                s += a * b;
            }
            out[i][j] = s;
        }
    }
    out
}

/// All tiles of one task: `x` is `mb × k`, `panel` is `nb × k`, the results go to `res`.
#[inline(always)]
fn task_tiles<S: Simd>(simd: S, x: &[f32], panel: &[f32], k: usize, res: &mut Block) {
    #[inline(always)]
    fn rows<const R: usize>(m: &[f32], r0: usize, k: usize) -> [&[f32]; R] {
        std::array::from_fn(|i| &m[(r0 + i) * k..(r0 + i + 1) * k])
    }
    #[inline(always)]
    fn run<S: Simd, const R: usize, const C: usize>(
        simd: S,
        x: &[f32],
        panel: &[f32],
        k: usize,
        (i0, j0): (usize, usize),
        res: &mut Block,
    ) {
        let t = tile::<S, R, C>(simd, rows::<R>(x, i0, k), rows::<C>(panel, j0, k));
        for (i, tr) in t.iter().enumerate() {
            res.row(i0 + i)[j0..j0 + C].copy_from_slice(tr);
        }
    }
    let (mb, nb) = (res.mb, res.nb);
    let mut i0 = 0;
    while i0 < mb {
        let r = (mb - i0).min(MR);
        let mut j0 = 0;
        while j0 < nb {
            let c = (nb - j0).min(NR);
            let at = (i0, j0);
            match (r, c) {
                (3, 3) => run::<S, 3, 3>(simd, x, panel, k, at, res),
                (3, 2) => run::<S, 3, 2>(simd, x, panel, k, at, res),
                (3, _) => run::<S, 3, 1>(simd, x, panel, k, at, res),
                (2, 3) => run::<S, 2, 3>(simd, x, panel, k, at, res),
                (2, 2) => run::<S, 2, 2>(simd, x, panel, k, at, res),
                (2, _) => run::<S, 2, 1>(simd, x, panel, k, at, res),
                (_, 3) => run::<S, 1, 3>(simd, x, panel, k, at, res),
                (_, 2) => run::<S, 1, 2>(simd, x, panel, k, at, res),
                _ => run::<S, 1, 1>(simd, x, panel, k, at, res),
            }
            j0 += c;
        }
        i0 += r;
    }
}

/// One task, dispatched to the CPU's vector unit.
struct Task<'a, 'b> {
    x: &'a [f32],
    w: &'a Weight,
    k: usize,
    res: &'a mut Block<'b>,
}

impl WithSimd for Task<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Task { x, w, k, res } = self;
        let (m0, mb, n0, nb) = (res.m0, res.mb, res.n0, res.nb);
        let mut panel = vec![0f32; nb * k];
        dequantize_rows(w, n0, nb, k, &mut panel);
        task_tiles(simd, &x[m0 * k..(m0 + mb) * k], &panel, k, res);
    }
}

/// Adds the bias to each row of `res` (rows of `bias.len()` values) and applies the
/// activation to the whole of it: once per row block in one long loop, rather than once per
/// task row of 48 values, whose remainders the vectorizer leaves to narrower code.
pub(crate) fn epilogue(res: &mut [f32], bias: Option<&[f32]>, act: Activation) {
    if let Some(b) = bias {
        for row in res.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    crate::kernels::activate(act, res);
}

/// One task's share of an `m × n` output: rows `m0..m0 + mb`, columns `n0..n0 + nb`, written
/// in place through a window of whole rows (or, where tasks split the columns of the same
/// rows between threads, into a buffer of the block's own).
pub(crate) struct Block<'a> {
    pub(crate) m0: usize,
    pub(crate) mb: usize,
    pub(crate) n0: usize,
    pub(crate) nb: usize,
    data: &'a mut [f32],
    /// Floats from one row to the next in `data`.
    ld: usize,
    /// Where the block's columns start in each row of `data`.
    col: usize,
}

impl Block<'_> {
    /// The block's part of its row `i` (`nb` values).
    #[inline(always)]
    pub(crate) fn row(&mut self, i: usize) -> &mut [f32] {
        let o = i * self.ld + self.col;
        &mut self.data[o..o + self.nb]
    }
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// A task's block where tasks cannot write in place, kept for the thread's next task.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `task` over the `MB × NB` blocks of the whole `m × n` output, in parallel where
/// there are threads, then adds `bias` and applies `act`. With enough row blocks to keep
/// every thread busy, each thread takes whole row blocks and writes them in place;
/// otherwise (few rows) the blocks of a row are shared out and each writes a buffer its
/// thread keeps, copied into `out` under a lock.
pub(crate) fn run_tasks(
    m: usize,
    n: usize,
    out: &mut [f32],
    (bias, act): (Option<&[f32]>, Activation),
    task: impl Fn(&mut Block) + Sync,
) {
    let (mblocks, nblocks) = (m.div_ceil(MB), n.div_ceil(NB));
    let out = &mut out[..m * n];
    let row_block = |(b, data): (usize, &mut [f32])| {
        let (m0, mb) = (b * MB, data.len() / n);
        for n0 in (0..n).step_by(NB) {
            task(&mut Block { m0, mb, n0, nb: NB.min(n - n0), data: &mut *data, ld: n, col: n0 });
        }
        epilogue(data, bias, act);
    };
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (mblocks, nblocks);
        out.chunks_mut(MB * n).enumerate().for_each(row_block);
    }
    #[cfg(not(target_arch = "wasm32"))]
    if mblocks >= 4 * rayon::current_num_threads() {
        out.par_chunks_mut(MB * n).enumerate().for_each(row_block);
    } else {
        // each task's block goes to a buffer its thread keeps for the next, then into `out`
        // under a lock (a few kilobytes, copied while the other tasks compute)
        let out = std::sync::Mutex::new(out);
        (0..mblocks * nblocks).into_par_iter().for_each(|t| {
            let (m0, n0) = ((t / nblocks) * MB, (t % nblocks) * NB);
            let (mb, nb) = (MB.min(m - m0), NB.min(n - n0));
            let mut buf = SCRATCH.take();
            if buf.len() < mb * nb {
                buf.resize(mb * nb, 0.0);
            }
            let block = &mut buf[..mb * nb];
            // (zeroed, as fresh memory would be: nothing of an earlier task can show)
            block.fill(0.0);
            task(&mut Block { m0, mb, n0, nb, data: block, ld: nb, col: 0 });
            epilogue(block, bias.map(|b| &b[n0..n0 + nb]), act);
            {
                let mut out = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (r, src) in block.chunks_exact(nb).enumerate() {
                    let o = (m0 + r) * n + n0;
                    out[o..o + nb].copy_from_slice(src);
                }
            }
            SCRATCH.set(buf);
        });
    }
}

/// `out[m, n] = act(Σ_k x[m, k] · W[n, k] + bias[n])` with `W` (`n × k`) in any format.
///
/// With `q8`, `q4` or `q4_1` weights on a CPU with AVX2 the activations are first rounded per
/// row to 16-bit integers and the products summed exactly in 32-bit integers (module `int16`),
/// over a copy of the weight laid out for it; `q8a8` weights go the same way with 8-bit
/// activation blocks (four products a lane with `vpdpbusd` on AVX-512 VNNI: `crate::vnni`;
/// without AVX2 through the plain twin `crate::a8`); every other case dequantizes the weights
/// to f32 panels.
/// For repeated use, [`crate::CpuWeights`] lays weights out once.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    x: &[f32],
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_with(x, w, Packed::new(w).as_ref(), bias, act, m, k, n, out);
}

/// [`matmul`] with the weight's kernel layout made beforehand ([`Packed::new`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    x: &[f32],
    w: &Weight,
    packed: Option<&Packed>,
    bias: Option<&[f32]>,
    act: Activation,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if let Some(p) = packed {
        return crate::simd128::matmul(x, &p.0, bias, act, m, out);
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
    let _ = packed; // never made there
    // a decoder's few rows: straight from the stored words, in f32
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if packed.is_none() && crate::gemv::takes(w, m, k) {
        return crate::gemv::matmul(x, w, bias, act, m, k, n, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = packed {
        return match &p.0 {
            Kernel::Groups(g, token, simd) => crate::vnni_groups::matmul(*token, *simd, g, x, bias, act, m, out),
            Kernel::Int16(p) if p.grouped_layout() => int16::matmul_q4(x, p, bias, act, m, out),
            Kernel::Int16(p) if w.format == Format::Q8A8 => int16::matmul_a8(x, p, bias, act, m, out),
            Kernel::Int16(p) => int16::matmul(x, p, bias, act, m, out),
        };
    }
    if w.format == Format::Q8A8 {
        return crate::a8::matmul(x, w, bias, act, m, k, n, out);
    }
    let arch = Arch::new();
    run_tasks(m, n, out, (bias, act), |res| arch.dispatch(Task { x, w, k, res }));
}

/// The vector unit the integer matmul kernels (`q8`, `q8a8`, `q4`, `q4_1`) run on here:
/// `"AVX-512 VNNI"`, `"AVX-512"`, `"AVX2"`, or `"none"` (those formats then take the f32
/// panels).
pub fn integer_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    return int16::isa();
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return "wasm simd128";
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
    "none"
}

/// A weight laid out for a faster kernel than the f32 panels, where the CPU has one.
#[derive(Debug)]
pub struct Packed(
    #[cfg(target_arch = "x86_64")] Kernel,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))] crate::simd128::Packed,
);

/// Which integer kernel a weight is laid out for.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
enum Kernel {
    /// Activations rounded to 16 bits (module `int16`; `q8a8` to 8-bit blocks).
    Int16(int16::Packed),
    /// Grouped weights against 8-bit activation blocks on AVX-512 VNNI.
    Groups(crate::vnni_groups::Groups, crate::vnni::Vnni, pulp::x86::V4),
}

impl Packed {
    /// The layout of `w` for this CPU, if it has a kernel for `w`'s format: with AVX-512
    /// VNNI, `q4`, `q4_1`, `q4_k` and `q8_0` in groups of 32 values (`crate::vnni_groups`);
    /// otherwise `q8`, `q8a8`, `q4`, `q4_1` and `q4_k` with AVX2.
    pub fn new(w: &Weight) -> Option<Packed> {
        #[cfg(target_arch = "x86_64")]
        {
            if let (Some(token), Some(simd)) = (int16::vnni_token(), int16::v4())
                && let Some(g) = crate::vnni_groups::Groups::new(w)
            {
                return Some(Packed(Kernel::Groups(g, token, simd)));
            }
            if matches!(w.format, Format::Q8 | Format::Q8A8 | Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K)
                && w.shape.len() == 2
                && w.shape[1] > 0
            {
                return int16::Packed::new(w).map(|p| Packed(Kernel::Int16(p)));
            }
        }
        // wasm: `q8` on the simd128 tiles
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return crate::simd128::Packed::new(w).map(Packed);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        {
            let _ = w;
            None
        }
    }
}

/// `q8` weights against activations rounded to 16-bit integers, on AVX2.
///
/// Each activation row gets its own scale `max|x| / qmax`, so a row's result does not depend
/// on the other rows of its batch. `qmax` is the largest value (at most 32767) for which a
/// whole row of products, `k · qmax · 128`, still fits an `i32`, so the sums are exact:
/// 32767 up to `k` = 512, about 10900 at `k` = 1536, 4095 at `k` = 4096. The rounding error
/// of an output is at most `max|x| / (2 qmax) · Σ_k |w|`: the activations keep 13 to 16 bits.
/// `vpmaddwd` multiplies 16 pairs of 16-bit values and adds neighbours into 8 `i32` lanes:
/// twice the multiply-adds of an f32 FMA per instruction, from half the bytes.
#[cfg(target_arch = "x86_64")]
mod int16 {
    use pulp::x86::{V3, V4};
    use pulp::{NullaryFnOnce, Simd, f32x8, i8x16, i8x32, i16x16, i32x8, u32x8};
    use rayon::prelude::*;
    use wedge_core::graph::Activation;
    use wedge_core::quant::{A8_BLOCK, Weight};

    use super::{Block, run_tasks};
    use crate::vnni::{Quads, Vnni};
    use wedge_core::quant::Format;

    /// The largest activation magnitude for a reduction of `k` values (see the module docs).
    pub(super) fn qmax(k: usize) -> f32 {
        (i32::MAX as usize / (k.max(1) * 128)).min(32767) as f32
    }

    /// Rounds each row of `x` (`rows × k`) to integers in `[-qmax, qmax]`, rows padded with
    /// a zero to an even length; returns the rows and each row's scale.
    fn quantize_rows(simd: V3, x: &[f32], k: usize, qmax: f32) -> (Vec<i16>, Vec<f32>) {
        let kp = k.div_ceil(2) * 2;
        let rows = x.len() / k;
        let mut q = vec![0i16; rows * kp];
        let mut scales = vec![0f32; rows];
        // compiled for AVX2, so the rounding is one instruction rather than a libm call
        let row = |(src, (dst, scale)): (&[f32], (&mut [i16], &mut f32))| {
            simd.vectorize(|| {
                match crate::kernels::finite_amax(src) {
                    // a NaN or an infinity spoils every output of its row, as it would in f32
                    None => *scale = f32::NAN,
                    // (a row so small, below 1e-34, that `qmax / amax` overflows counts as
                    // zeros, as an all-zero row does)
                    Some(amax) if (qmax / amax).is_finite() => {
                        let inv = qmax / amax;
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = round_to_i16((v * inv).max(-qmax).min(qmax));
                        }
                        *scale = amax / qmax;
                    }
                    Some(_) => {}
                }
            })
        };
        // a short sentence's few rows take a microsecond, less than sharing them out
        if rows * k <= 1 << 16 {
            x.chunks_exact(k).zip(q.chunks_exact_mut(kp).zip(scales.iter_mut())).for_each(row);
        } else {
            x.par_chunks_exact(k).zip(q.par_chunks_exact_mut(kp).zip(scales.par_iter_mut())).for_each(row);
        }
        (q, scales)
    }

    /// `v` (at most 32767 in magnitude) rounded half to even, vectorizably
    /// ([`crate::kernels::round_even`]).
    #[inline(always)]
    pub(super) fn round_to_i16(v: f32) -> i16 {
        crate::kernels::round_even(v).1 as i16
    }

    /// Groups of eight weight rows (output columns) per micro-tile.
    const C: usize = 2;

    /// A `q8` weight laid out for this kernel once, when the weights are loaded: per group of
    /// eight weight rows, per pair of values along `k`, the eight rows' pairs side by side
    /// (16 bytes, zeros past the ends), and the rows' scales. The groups go two by two (a
    /// micro-tile's `C` groups, a zero group after an odd last one), their 16 bytes of each
    /// pair next to each other, so AVX-512 takes both in one 32-byte load.
    ///
    /// `q4` and `q4_1` weights take the same layout, each 4-bit value widened to a byte (`q4`:
    /// `u - 8`, `q4_1`: `u`), with the scales (and `q4_1`'s minimums) per group of eight rows
    /// and per quantization group along `k`, eight to a vector.
    #[derive(Debug)]
    pub(super) struct Packed {
        simd: V3,
        /// AVX-512 (F, BW, …), when the CPU has it and `WEDGE_CPU_AVX512` is not `0`: the
        /// tiles then run two column groups per 512-bit `vpmaddwd` (the same integer sums).
        v4: Option<V4>,
        n: usize,
        k: usize,
        pairs: usize,
        /// Per pair of groups, per pair of values: the two groups' 16 bytes.
        data: Vec<i8x32>,
        /// `q8`: one scale per row (zeros past `n`, up to whole pairs of groups).
        scales: Vec<f32>,
        /// `q4`/`q4_1`: the group size along `k` (0 for `q8`).
        group: usize,
        /// Per group of eight rows, per quantization group: the eight rows' scales.
        gscales: Vec<f32x8>,
        /// The same for `q4_1`'s minimums (empty for `q4`).
        gmins: Vec<f32x8>,
        /// `q8a8` on AVX-512 VNNI (with `v4`): the weight in [`Quads`]' layout instead of
        /// `data`, and the proof that the CPU runs it.
        quads: Option<(Quads, Vnni)>,
    }

    impl Packed {
        /// Lays out `w` (`q8`, `q8a8`, `q4` or `q4_1`, `n × k`), or `None` without AVX2.
        pub(super) fn new(w: &Weight) -> Option<Packed> {
            Self::build(w, v4(), vnni_token())
        }

        /// The layout for the AVX2 tiles only (tests compare the paths).
        #[cfg(test)]
        pub(super) fn avx2_only(w: &Weight) -> Option<Packed> {
            Self::build(w, None, None)
        }

        fn build(w: &Weight, v4: Option<V4>, vnni: Option<Vnni>) -> Option<Packed> {
            if w.format.group() > 0 {
                return Self::grouped(w, v4);
            }
            let simd = V3::try_new()?;
            let (n, k) = w.rows_cols();
            if let (Some(_), Some(token), Format::Q8A8) = (v4, vnni, w.format) {
                let quads = Some((Quads::new(w), token));
                return Some(Packed {
                    simd,
                    v4,
                    n,
                    k,
                    pairs: 0,
                    data: Vec::new(),
                    scales: Vec::new(),
                    group: 0,
                    gscales: Vec::new(),
                    gmins: Vec::new(),
                    quads,
                });
            }
            let (pairs, groups) = (k.div_ceil(2), n.div_ceil(8).next_multiple_of(C));
            let wpr = w.format.words_per_row(k);
            let mut data = vec![[0u16; 8]; groups * pairs];
            let mut scales = vec![0f32; groups * 8];
            for (r, scale) in scales.iter_mut().enumerate().take(n) {
                *scale = w.word_affine(r, 0).0;
                // byte j of a word is value j (little endian), so a row is a run of i8 padded
                // with zeros to whole words, and its pairs are little-endian u16
                let row: &[u8] = bytemuck::cast_slice(&w.words[r * wpr..(r + 1) * wpr]);
                for (p, two) in row.chunks_exact(2).take(pairs).enumerate() {
                    data[at(r / 8, p, pairs)][r % 8] = u16::from_le_bytes([two[0], two[1]]);
                }
            }
            let data = data.chunks_exact(C).map(|two| pulp::cast::<[[u16; 8]; C], i8x32>([two[0], two[1]])).collect();
            Some(Packed {
                simd,
                v4,
                n,
                k,
                pairs,
                data,
                scales,
                group: 0,
                gscales: Vec::new(),
                gmins: Vec::new(),
                quads: None,
            })
        }

        /// The `q4` / `q4_1` layout (see the type's docs).
        fn grouped(w: &Weight, v4: Option<V4>) -> Option<Packed> {
            let simd = V3::try_new()?;
            let (n, k) = w.rows_cols();
            let group = w.format.group() as usize;
            let (pairs, groups, kgroups) = (k.div_ceil(2), n.div_ceil(8).next_multiple_of(C), k.div_ceil(group));
            let asym = matches!(w.format, Format::Q4_1 { .. } | Format::Q4K);
            let offset: i8 = if asym { 0 } else { -8 };
            let wpr = w.format.words_per_row(k);
            let mut data = vec![[0i8; 16]; groups * pairs];
            let mut gscales = vec![[0f32; 8]; groups * kgroups];
            let mut gmins = vec![[0f32; 8]; if asym { groups * kgroups } else { 0 }];
            for r in 0..n {
                let words = &w.words[r * wpr..(r + 1) * wpr];
                for p in 0..pairs {
                    let d = &mut data[at(r / 8, p, pairs)];
                    for h in 0..2 {
                        let c = 2 * p + h;
                        if c < k {
                            d[2 * (r % 8) + h] = ((words[c / 8] >> (4 * (c % 8))) & 0xf) as i8 + offset;
                        }
                    }
                }
                for g in 0..kgroups {
                    let (sc, mn) = w.group_affine(r * kgroups + g);
                    gscales[(r / 8) * kgroups + g][r % 8] = sc;
                    if asym {
                        gmins[(r / 8) * kgroups + g][r % 8] = mn;
                    }
                }
            }
            Some(Packed {
                simd,
                v4,
                n,
                k,
                pairs,
                data: data.chunks_exact(C).map(|two| pulp::cast::<[[i8; 16]; C], i8x32>([two[0], two[1]])).collect(),
                scales: Vec::new(),
                group,
                gscales: gscales.into_iter().map(pulp::cast::<[f32; 8], f32x8>).collect(),
                gmins: gmins.into_iter().map(pulp::cast::<[f32; 8], f32x8>).collect(),
                quads: None,
            })
        }

        /// Whether the tiles run on AVX-512.
        #[cfg(test)]
        pub(super) fn avx512(&self) -> bool {
            self.v4.is_some()
        }

        /// Whether this runs the `q8a8` VNNI tiles.
        #[cfg(test)]
        pub(super) fn vnni_layout(&self) -> bool {
            self.quads.is_some()
        }

        /// Whether this is the `q4` / `q4_1` layout.
        pub(super) fn grouped_layout(&self) -> bool {
            self.group > 0
        }

        /// The pair of groups from group `g` (even).
        #[inline(always)]
        fn groups(&self, g: usize) -> &[i8x32] {
            let s = g / C;
            &self.data[s * self.pairs..(s + 1) * self.pairs]
        }
    }

    /// Where group `g`'s 16 bytes of pair `p` go in the layout before its pairs of groups are
    /// joined: each pair of groups' pairs in order, the two groups' bytes side by side.
    fn at(g: usize, p: usize, pairs: usize) -> usize {
        ((g / C) * pairs + p) * C + g % C
    }

    /// The vector unit these kernels run on here.
    pub(super) fn isa() -> &'static str {
        if v4().is_some() && vnni().is_some() {
            "AVX-512 VNNI"
        } else if v4().is_some() {
            "AVX-512"
        } else if V3::try_new().is_some() {
            "AVX2"
        } else {
            "none"
        }
    }

    pulp::simd_type! {
        /// [`V4`] and AVX-512 VNNI: with it in the compilation context LLVM fuses each
        /// `vpmaddwd` and the `vpaddd` that accumulates it into one `vpdpwssd`.
        pub(super) struct V4Vnni {
            pub sse: "sse",
            pub sse2: "sse2",
            pub fxsr: "fxsr",
            pub sse3: "sse3",
            pub ssse3: "ssse3",
            pub sse4_1: "sse4.1",
            pub sse4_2: "sse4.2",
            pub popcnt: "popcnt",
            pub avx: "avx",
            pub avx2: "avx2",
            pub bmi1: "bmi1",
            pub bmi2: "bmi2",
            pub fma: "fma",
            pub lzcnt: "lzcnt",
            pub avx512f: "avx512f",
            pub avx512bw: "avx512bw",
            pub avx512cd: "avx512cd",
            pub avx512dq: "avx512dq",
            pub avx512vl: "avx512vl",
            pub avx512vnni: "avx512vnni",
        }
    }

    /// AVX-512 where the CPU has it, unless `WEDGE_CPU_AVX512=0` (for comparisons); looked up
    /// once per process, not once per weight.
    pub(super) fn v4() -> Option<V4> {
        static V4_ON: std::sync::OnceLock<Option<V4>> = std::sync::OnceLock::new();
        *V4_ON.get_or_init(|| {
            if std::env::var("WEDGE_CPU_AVX512").as_deref() == Ok("0") {
                return None;
            }
            V4::try_new()
        })
    }

    /// VNNI where the CPU has it, unless `WEDGE_CPU_VNNI=0`.
    fn vnni() -> Option<V4Vnni> {
        static ON: std::sync::OnceLock<Option<V4Vnni>> = std::sync::OnceLock::new();
        *ON.get_or_init(|| if vnni_token().is_some() { V4Vnni::try_new() } else { None })
    }

    /// The token of the `q8a8` VNNI tiles, as [`vnni`] decides.
    pub(super) fn vnni_token() -> Option<Vnni> {
        static ON: std::sync::OnceLock<Option<Vnni>> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            if std::env::var("WEDGE_CPU_VNNI").as_deref() == Ok("0") {
                return None;
            }
            Vnni::detect()
        })
    }

    /// `R2 × C` blocks of eight outputs: row `i` of `x` (pairs of values as `u32`) against
    /// column group `j` of a pair of groups (per pair of values, eight rows × two values,
    /// widened to 16 bits here), summed over the pairs `span` only. Each pair of activations
    /// is broadcast to every lane, so each lane owns one output column and no horizontal sums
    /// are needed.
    ///
    /// With `v4` (AVX-512) both groups' pairs go into one 512-bit vector and one `vpmaddwd`
    /// takes the 16 columns: the same sums from half the instructions.
    #[inline(always)]
    fn sums<const R2: usize, const CC: usize>(
        simd: V3,
        w: &Packed,
        xs: [&[u32]; R2],
        g: usize,
        span: std::ops::Range<usize>,
    ) -> [[u32x8; CC]; R2] {
        let xh: [&[u32]; R2] = std::array::from_fn(|i| &xs[i][span.clone()]);
        let mut acc = [[simd.splat_u32s(0); CC]; R2];
        // (plain loops: closures would be compiled outside the vector unit's context)
        match (w.v4, CC) {
            (Some(v4), 4) => {
                let t = wide(v4, xh, [&w.groups(g)[span.clone()], &w.groups(g + C)[span.clone()]]);
                for i in 0..R2 {
                    for j in 0..CC {
                        acc[i][j] = t[i][j / C][j % C];
                    }
                }
            }
            (Some(v4), _) => {
                let t = wide(v4, xh, [&w.groups(g)[span.clone()]]);
                for i in 0..R2 {
                    for j in 0..CC.min(C) {
                        acc[i][j] = t[i][0][j];
                    }
                }
            }
            (None, _) => {
                // AVX2: its 16 registers hold `C` groups' sums; wider tiles take two passes
                for half in 0..CC.div_ceil(C) {
                    let two = narrow(simd, xh, &w.groups(g + half * C)[span.clone()]);
                    for i in 0..R2 {
                        for j in 0..C.min(CC - half * C) {
                            acc[i][half * C + j] = two[i][j];
                        }
                    }
                }
            }
        }
        acc
    }

    /// [`sums`] for one pair of groups on AVX2.
    #[inline(always)]
    fn narrow<const R2: usize>(simd: V3, xh: [&[u32]; R2], wh: &[i8x32]) -> [[u32x8; C]; R2] {
        let mut acc = [[simd.splat_u32s(0); C]; R2];
        // every slice cut to one length, so the loop needs no bounds checks
        let len = xh.iter().fold(wh.len(), |l, x| l.min(x.len()));
        let wh = &wh[..len];
        let mut xs: [&[u32]; R2] = [&[]; R2];
        for i in 0..R2 {
            xs[i] = &xh[i][..len];
        }
        let xh = xs;
        for (p, &w2) in wh.iter().enumerate() {
            let halves = pulp::cast::<i8x32, [i8x16; C]>(w2);
            let wp: [i16x16; C] = std::array::from_fn(|j| simd.convert_i8x16_to_i16x16(halves[j]));
            for i in 0..R2 {
                let xb: i16x16 = pulp::cast(simd.splat_u32s(xh[i][p]));
                for j in 0..C {
                    let prod: u32x8 = pulp::cast(simd.multiply_wrapping_add_adjacent_i16x16(xb, wp[j]));
                    acc[i][j] = simd.add_u32s(acc[i][j], prod);
                }
            }
        }
        acc
    }

    /// How many pairs of values ahead of the one it multiplies [`wide`] asks for the weights.
    const PREFETCH: usize = 32;

    /// [`sums`] on AVX-512 for `S` pairs of groups: per pair of values, each pair of groups'
    /// 32 bytes (one load) widened to 32 lanes of 16 bits, against the broadcast pair of each
    /// row. With `S` = 2 each broadcast feeds two multiply-adds, which halves the broadcast
    /// loads per multiply-add.
    #[inline(always)]
    fn wide<const R2: usize, const S: usize>(v4: V4, xh: [&[u32]; R2], wh: [&[i8x32]; S]) -> [[[u32x8; C]; S]; R2] {
        use core::arch::x86_64::{__m256i, __m512i};
        let (f, bw) = (v4.avx512f, v4.avx512bw);
        let mut acc: [[__m512i; S]; R2] = [[f._mm512_setzero_si512(); S]; R2];
        // every slice cut to one length, so the loop needs no bounds checks
        let len = xh.iter().fold(wh.iter().fold(usize::MAX, |l, w| l.min(w.len())), |l, x| l.min(x.len()));
        let mut ws: [&[i8x32]; S] = [&[]; S];
        for s in 0..S {
            ws[s] = &wh[s][..len];
        }
        let mut xs: [&[u32]; R2] = [&[]; R2];
        for i in 0..R2 {
            xs[i] = &xh[i][..len];
        }
        for p in 0..len {
            let mut wp = [f._mm512_setzero_si512(); S];
            for s in 0..S {
                // (every pair, though a line holds two: a branch here splits the loop body,
                // and LLVM then leaves half the multiply-adds unfused)
                let ahead = ws[s].as_ptr().wrapping_add(p + PREFETCH) as *const i8;
                v4.sse._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ahead);
                wp[s] = bw._mm512_cvtepi8_epi16(pulp::cast::<i8x32, __m256i>(ws[s][p]));
            }
            for i in 0..R2 {
                let xb = f._mm512_set1_epi32(xs[i][p] as i32);
                for s in 0..S {
                    acc[i][s] = f._mm512_add_epi32(bw._mm512_madd_epi16(wp[s], xb), acc[i][s]);
                }
            }
        }
        let mut out = [[[pulp::cast([0u32; 8]); C]; S]; R2];
        for i in 0..R2 {
            for s in 0..S {
                let a = acc[i][s];
                out[i][s] = [pulp::cast(f._mm512_castsi512_si256(a)), pulp::cast(f._mm512_extracti64x4_epi64::<1>(a))];
            }
        }
        out
    }

    /// An `i32` vector of sums as f32 (rounded to nearest, as `as f32` does).
    #[inline(always)]
    fn to_f32(simd: V3, v: u32x8) -> f32x8 {
        simd.convert_i32x8_to_f32x8(pulp::cast::<u32x8, i32x8>(v))
    }

    /// What sets the three integer kernels apart: the activations as rounded for it, how a
    /// micro-tile's integer sums become f32, how many rows a micro-tile takes, and the factor
    /// each output takes at the end. [`Job`] walks the tiles the same way for all of them.
    trait Fold: Sync {
        /// Activation rows per micro-tile on AVX2 (at most 6). Kernels that fold spans into
        /// f32 accumulators take fewer: those take registers too.
        const ROWS: usize;
        /// The same on AVX-512 (at most 8), whose 32 registers hold more rows' sums.
        const ROWS_WIDE: usize = Self::ROWS;
        /// The sums of activation rows `rows` against the `CC` column groups from `g` (even),
        /// in f32.
        fn tile<const R2: usize, const CC: usize>(
            &self,
            simd: V3,
            w: &Packed,
            rows: [usize; R2],
            g: usize,
        ) -> [[f32x8; CC]; R2];
        /// Output row `row` from its tile sums `acc` (columns from `n0`, as many as `dst`):
        /// each times the factor it takes after the tiles.
        fn finish(&self, w: &Packed, row: usize, n0: usize, acc: &[f32], dst: &mut [f32]);
    }

    /// `q8`: activations per row to at most 16 bits (`xq`, pairs as `u32`; scales `xs`), one
    /// exact integer sum over all of `k`, times the row's and the column's scale.
    struct Q8<'a> {
        xq: &'a [u32],
        xs: &'a [f32],
    }

    impl Fold for Q8<'_> {
        const ROWS: usize = 6;
        /// Eight rows × four groups: 16 sums, two weight vectors and a broadcast.
        const ROWS_WIDE: usize = 8;

        #[inline(always)]
        fn tile<const R2: usize, const CC: usize>(
            &self,
            simd: V3,
            w: &Packed,
            rows: [usize; R2],
            g: usize,
        ) -> [[f32x8; CC]; R2] {
            let p = w.pairs;
            let acc: [[u32x8; CC]; R2] = sums(simd, w, slices(self.xq, rows, p), g, 0..p);
            let mut out = [[simd.splat_f32x8(0.0); CC]; R2];
            for (o, a) in out.iter_mut().zip(&acc) {
                for (o, a) in o.iter_mut().zip(a) {
                    *o = to_f32(simd, *a);
                }
            }
            out
        }

        #[inline(always)]
        fn finish(&self, w: &Packed, row: usize, n0: usize, acc: &[f32], dst: &mut [f32]) {
            let sx = self.xs[row];
            for ((d, a), sw) in dst.iter_mut().zip(acc).zip(&w.scales[n0..n0 + acc.len()]) {
                *d = a * (sx * sw);
            }
        }
    }

    /// `q8a8`: activations in blocks of [`A8_BLOCK`] values (16 pairs) with a scale each
    /// (`sx`), each block's integer sum folded into f32 with its scale as `wedge_core::quant`
    /// defines, times the column's scale at the end.
    struct A8<'a> {
        xq: &'a [u32],
        sx: &'a [f32],
        blocks: usize,
    }

    impl Fold for A8<'_> {
        const ROWS: usize = 3;

        #[inline(always)]
        fn tile<const R2: usize, const CC: usize>(
            &self,
            simd: V3,
            w: &Packed,
            rows: [usize; R2],
            g: usize,
        ) -> [[f32x8; CC]; R2] {
            let (pairs, xpairs, bp) = (w.pairs, self.blocks * A8_BLOCK / 2, A8_BLOCK / 2);
            let xs = slices(self.xq, rows, xpairs);
            let mut facc = [[simd.splat_f32x8(0.0); CC]; R2];
            for (b, p0) in (0..pairs).step_by(bp).enumerate() {
                let acc: [[u32x8; CC]; R2] = sums(simd, w, xs, g, p0..(p0 + bp).min(pairs));
                for i in 0..R2 {
                    let s = simd.splat_f32x8(self.sx[rows[i] * self.blocks + b]);
                    for j in 0..CC {
                        facc[i][j] = simd.mul_add_f32x8(to_f32(simd, acc[i][j]), s, facc[i][j]);
                    }
                }
            }
            facc
        }

        #[inline(always)]
        fn finish(&self, w: &Packed, _: usize, n0: usize, acc: &[f32], dst: &mut [f32]) {
            for ((d, a), sw) in dst.iter_mut().zip(acc).zip(&w.scales[n0..n0 + acc.len()]) {
                *d = a * sw;
            }
        }
    }

    /// `q4` / `q4_1`: activations per row to 16 bits, the integer sums of each quantization
    /// group folded into f32 with the columns' group scales and, for `q4_1`, the group's sum
    /// of activations (`xsum`) times the columns' minimums (`w = u·s + m`, so
    /// `Σ x·w = s·Σ x·u + m·Σ x`); times the row's scale at the end.
    struct Q4<'a> {
        xq: &'a [u32],
        xs: &'a [f32],
        xsum: &'a [i32],
    }

    impl Q4<'_> {
        #[inline(always)]
        fn tile_with<const R2: usize, const CC: usize, const MIN: bool>(
            &self,
            simd: V3,
            w: &Packed,
            rows: [usize; R2],
            g0: usize,
        ) -> [[f32x8; CC]; R2] {
            let (pairs, gp, kgroups) = (w.pairs, w.group / 2, w.k.div_ceil(w.group));
            let xs = slices(self.xq, rows, pairs);
            let mut facc = [[simd.splat_f32x8(0.0); CC]; R2];
            for (g, p0) in (0..pairs).step_by(gp).enumerate() {
                let acc: [[u32x8; CC]; R2] = sums(simd, w, xs, g0, p0..(p0 + gp).min(pairs));
                for i in 0..R2 {
                    let xg = simd.splat_f32x8(self.xsum[rows[i] * kgroups + g] as f32);
                    for j in 0..CC {
                        let at = (g0 + j) * kgroups + g;
                        facc[i][j] = simd.mul_add_f32x8(to_f32(simd, acc[i][j]), w.gscales[at], facc[i][j]);
                        if MIN {
                            facc[i][j] = simd.mul_add_f32x8(xg, w.gmins[at], facc[i][j]);
                        }
                    }
                }
            }
            facc
        }
    }

    impl Fold for Q4<'_> {
        const ROWS: usize = 3;

        #[inline(always)]
        fn tile<const R2: usize, const CC: usize>(
            &self,
            simd: V3,
            w: &Packed,
            rows: [usize; R2],
            g: usize,
        ) -> [[f32x8; CC]; R2] {
            if w.gmins.is_empty() {
                self.tile_with::<R2, CC, false>(simd, w, rows, g)
            } else {
                self.tile_with::<R2, CC, true>(simd, w, rows, g)
            }
        }

        #[inline(always)]
        fn finish(&self, _: &Packed, row: usize, _: usize, acc: &[f32], dst: &mut [f32]) {
            let sx = self.xs[row];
            for (d, a) in dst.iter_mut().zip(acc) {
                *d = a * sx;
            }
        }
    }

    /// One task of any integer kernel: `mb` activation rows from `m0` against the `nb`
    /// weight rows from `n0` (a multiple of 8), in micro-tiles of up to `F::ROWS_WIDE` rows ×
    /// four groups of eight columns on AVX-512 (two at a block's end), up to `F::ROWS` rows ×
    /// two groups on AVX2.
    struct Job<'a, 'b, F> {
        fold: &'a F,
        w: &'a Packed,
        res: &'a mut Block<'b>,
    }

    impl<F: Fold> NullaryFnOnce for Job<'_, '_, F> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            let Job { fold, w, res } = self;
            let (mb, groups) = (res.mb, res.nb.div_ceil(8));
            // four groups a tile on AVX-512 (see `wide`), two on AVX2
            let wide = w.v4.is_some();
            // as few row tiles as the widest allows, the rows shared out evenly: 14 rows as
            // 7 + 7, not 6 + 6 + 2, whose last tile has too few sums in flight to hide the
            // multiply-add's latency, and reads the weights once more
            let tiles = mb.div_ceil(if wide { F::ROWS_WIDE } else { F::ROWS });
            let mut i0 = 0;
            for t in 0..tiles {
                let r = (mb - i0).div_ceil(tiles - t);
                let mut j0 = 0;
                while j0 < groups {
                    // (after a last odd group comes a group of zeros, not stored)
                    let at = (i0, j0);
                    if wide && groups - j0 > C {
                        tile_and_store::<F, { 2 * C }>(fold, w, res, at, r);
                        j0 += 2 * C;
                    } else {
                        tile_and_store::<F, C>(fold, w, res, at, r);
                        j0 += C;
                    }
                }
                i0 += r;
            }
        }
    }

    /// The tile of `r` rows (at most `F::ROWS_WIDE`) × `CC` groups at `(i0, j0)` of the
    /// task's block, computed and stored.
    #[inline(always)]
    fn tile_and_store<F: Fold, const CC: usize>(
        fold: &F,
        w: &Packed,
        res: &mut Block,
        (i0, j0): (usize, usize),
        r: usize,
    ) {
        let (simd, r0, g) = (w.simd, res.m0 + i0, res.n0 / 8 + j0);
        let at = (i0, j0);
        match r {
            8 if F::ROWS_WIDE >= 8 => store(fold, w, res, at, &fold.tile::<8, CC>(simd, w, rows(r0), g)),
            7 if F::ROWS_WIDE >= 7 => store(fold, w, res, at, &fold.tile::<7, CC>(simd, w, rows(r0), g)),
            6 => store(fold, w, res, at, &fold.tile::<6, CC>(simd, w, rows(r0), g)),
            5 => store(fold, w, res, at, &fold.tile::<5, CC>(simd, w, rows(r0), g)),
            4 => store(fold, w, res, at, &fold.tile::<4, CC>(simd, w, rows(r0), g)),
            3 => store(fold, w, res, at, &fold.tile::<3, CC>(simd, w, rows(r0), g)),
            2 => store(fold, w, res, at, &fold.tile::<2, CC>(simd, w, rows(r0), g)),
            _ => store(fold, w, res, at, &fold.tile::<1, CC>(simd, w, rows(r0), g)),
        }
    }

    /// A tile's sums (rows from `i0`, groups from `j0` of the task's block) straight to their
    /// outputs, times the factors they take; groups past the block (zeros) are not stored.
    #[inline(always)]
    fn store<F: Fold, const CC: usize>(
        fold: &F,
        w: &Packed,
        res: &mut Block,
        (i0, j0): (usize, usize),
        t: &[[f32x8; CC]],
    ) {
        let (m0, n0, nb) = (res.m0, res.n0, res.nb);
        let groups = nb.div_ceil(8);
        for (i, row) in t.iter().enumerate() {
            let dst = res.row(i0 + i);
            for (j, v) in row.iter().enumerate().take(groups - j0) {
                let c0 = (j0 + j) * 8;
                let c1 = (c0 + 8).min(nb);
                let sums = pulp::cast::<f32x8, [f32; 8]>(*v);
                fold.finish(w, m0 + i0 + i, n0 + c0, &sums[..c1 - c0], &mut dst[c0..c1]);
            }
        }
    }

    /// Rows `rows` of `x`, `len` values each.
    #[inline(always)]
    fn slices<const N: usize>(x: &[u32], rows: [usize; N], len: usize) -> [&[u32]; N] {
        std::array::from_fn(|i| &x[rows[i] * len..(rows[i] + 1) * len])
    }

    /// `N` consecutive rows from `r0`.
    #[inline(always)]
    fn rows<const N: usize>(r0: usize) -> [usize; N] {
        std::array::from_fn(|i| r0 + i)
    }

    /// Runs the tasks of a whole matmul with kernel `fold`.
    fn run<F: Fold>(fold: &F, w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
        run_tasks(m, w.n, out, (bias, act), |res| {
            let job = Job { fold, w, res };
            // compiled for AVX-512 where the tiles take it (see `sums`)
            match (w.v4, vnni()) {
                (Some(_), Some(vnni)) => vnni.vectorize(job),
                (Some(v4), None) => v4.vectorize(job),
                (None, _) => w.simd.vectorize(job),
            }
        });
    }

    /// A `q4` / `q4_1` matmul on AVX2: activations rounded per row to 16 bits (sums run over
    /// one quantization group at a time, at most `128 · 32767 · 15`, so `qmax` is 32767 at any
    /// `k`), the groups' integer sums folded into f32 as [`Q4`] says.
    pub(super) fn matmul_q4(x: &[f32], w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
        let (simd, k, group) = (w.simd, w.k, w.group);
        let (xq, xs) = quantize_rows(simd, &x[..m * k], k, 32767.0);
        let kp = k.div_ceil(2) * 2;
        let xsum: Vec<i32> = xq
            .chunks_exact(kp)
            .flat_map(|row| row.chunks(group).map(|g| g.iter().map(|v| i32::from(*v)).sum::<i32>()))
            .collect();
        debug_assert_eq!(xsum.len(), m * k.div_ceil(group));
        run(&Q4 { xq: bytemuck::cast_slice(&xq), xs: &xs, xsum: &xsum }, w, bias, act, m, out);
    }

    /// A `q8a8` matmul on AVX2: the activations rounded by [`crate::a8::quantize_rows`] (the
    /// twin's rounding exactly) and widened to 16-bit pairs, the weights in [`Packed`]'s layout.
    pub(super) fn matmul_a8(x: &[f32], w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
        let (simd, k) = (w.simd, w.k);
        if let (Some((quads, token)), Some(v4)) = (&w.quads, w.v4) {
            return crate::vnni::matmul(*token, v4, quads, x, bias, act, m, out);
        }
        // compiled for AVX2, so the rounding is one instruction rather than a libm call
        let (xq, sx) = simd.vectorize(|| {
            let (q, sx) = crate::a8::quantize_rows(&x[..m * k], k);
            let xq: Vec<u32> = q
                .chunks_exact(2)
                .map(|p| u32::from(i16::from(p[0]) as u16) | (u32::from(i16::from(p[1]) as u16) << 16))
                .collect();
            (xq, sx)
        });
        run(&A8 { xq: &xq, sx: &sx, blocks: k.div_ceil(A8_BLOCK) }, w, bias, act, m, out);
    }

    /// A `q8` matmul (see the module docs).
    pub(super) fn matmul(x: &[f32], w: &Packed, bias: Option<&[f32]>, act: Activation, m: usize, out: &mut [f32]) {
        let (simd, k) = (w.simd, w.k);
        let (xq, xs) = quantize_rows(simd, &x[..m * k], k, qmax(k));
        run(&Q8 { xq: bytemuck::cast_slice(&xq), xs: &xs }, w, bias, act, m, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use wedge_core::quant::A8_BLOCK;

    #[cfg(target_arch = "x86_64")]
    fn int16_qmax(k: usize) -> f32 {
        int16::qmax(k)
    }
    /// The activations' rounding of the wasm tiles (q8 only), as x86's.
    #[cfg(not(target_arch = "x86_64"))]
    fn int16_qmax(k: usize) -> f32 {
        (i32::MAX as usize / (k.max(1) * 128)).min(32767) as f32
    }

    /// The float-only rounding of the int16 kernels against `round_ties_even` at every
    /// integer and half in its range (and quarters between), and the bit-pattern maximum.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn activations_round_half_to_even() {
        for i in -4 * 32767..=4 * 32767 {
            let v = i as f32 / 4.0;
            assert_eq!(int16::round_to_i16(v), v.round_ties_even() as i16, "{v}");
        }
        let finite_amax = crate::kernels::finite_amax;
        assert_eq!(finite_amax(&[]), Some(0.0));
        assert_eq!(finite_amax(&[1.0, -3.5, 2.0, -0.0]), Some(3.5));
        assert_eq!(finite_amax(&[f32::MIN_POSITIVE / 4.0]), Some(f32::MIN_POSITIVE / 4.0));
        assert_eq!(finite_amax(&[f32::MAX, -f32::MAX]), Some(f32::MAX));
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(finite_amax(&[1.0, bad, 2.0]), None, "{bad}");
        }
    }

    /// The vectorizable exp and erf against libm over their whole useful range.
    #[test]
    fn exp_and_erf_approximations_are_tight() {
        for i in -20000..=20000 {
            let x = i as f32 * 0.0044;
            let (e, r) = (crate::kernels::exp_approx(x), x.exp());
            if x >= -87.0 {
                assert!((e - r).abs() <= 4e-7 * r, "exp({x}) = {e}, libm {r}");
            } else {
                assert_eq!(e, 0.0, "exp({x})");
            }
            let (e, r) = (crate::kernels::erf_approx(x), libm::erff(x));
            assert!((e - r).abs() <= 6e-7, "erf({x}) = {e}, libm {r}");
        }
        assert_eq!(crate::kernels::exp_approx(f32::NEG_INFINITY), 0.0);
        assert!(crate::kernels::exp_approx(200.0).is_finite());
        assert!(crate::kernels::exp_approx(f32::NAN).is_nan());
        assert_eq!(crate::kernels::max_of(f32::NEG_INFINITY, f32::NAN), f32::NEG_INFINITY);
        assert_eq!(crate::kernels::max_of(-1.0, 2.0), 2.0);
    }

    /// The integer kernel at the edge of its range: every activation at `±max|x|` and every
    /// weight at `±127` steps (the largest sums `qmax` allows), where an overflow would show,
    /// and a NaN that must spoil its own row only.
    #[test]
    fn q8_integer_sums_are_exact_at_the_extremes() {
        for k in [1usize, 2, 17, 515, 1536, 4099] {
            let (m, n) = (7, 19);
            // row j of W: all +1 for even j, alternating signs for odd j
            let wv: Vec<f32> =
                (0..n * k).map(|i| if (i / k) % 2 == 0 || (i % k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let mut x: Vec<f32> = (0..m * k).map(|i| if (i / k) % 3 == 2 { -2.5 } else { 2.5 }).collect();
            x[3 * k] = f32::NAN;
            let w = Weight::quantize("w", &[n, k], &wv, Format::Q8).unwrap();
            let mut out = vec![0f32; m * n];
            matmul(&x, &w, None, Activation::None, m, k, n, &mut out);
            for (i, o) in out.iter().enumerate() {
                let (row, col) = (i / n, i % n);
                if row == 3 {
                    assert!(o.is_nan(), "k={k} row 3 col {col}: {o}");
                    continue;
                }
                let want: f64 = (0..k).map(|c| f64::from(x[row * k + c]) * f64::from(wv[col * k + c])).sum();
                let tol = 1e-6 * 2.5 * k as f64;
                assert!((f64::from(*o) - want).abs() <= tol, "k={k} at ({row}, {col}): {o} vs {want}");
            }
        }
    }

    /// The AVX-512 tiles (and `q8a8`'s VNNI tiles) give the AVX2 tiles' integer sums, so the
    /// same outputs bit for bit, for every integer kernel over ragged shapes (odd column
    /// groups included).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tiles_equal_avx2_tiles() {
        let mut rng = StdRng::seed_from_u64(8);
        let formats = [Format::Q8, Format::Q8A8, Format::Q4 { group: 32 }, Format::Q4_1 { group: 64 }];
        for case in 0..32 {
            let m = [1, 5, 6, 7, 14, 64, 130, 1100][case % 8];
            let n = rng.random_range(1..70);
            let k: usize = [1, 3, 31, 32, 33, 100, 384, 1536][rng.random_range(0..8)];
            let format = formats[case % formats.len()];
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let w = Weight::quantize("w", &[n, k], &wv, format).unwrap();
            let Some(wide) = int16::Packed::new(&w) else {
                wedge_testkit::skip("AVX-512 tile equality", "the CPU has no AVX2, so no integer kernel");
                return;
            };
            if !wide.avx512() {
                let why = "the CPU has no AVX-512 (or WEDGE_CPU_AVX512=0): only the AVX2 tiles run here";
                wedge_testkit::skip("AVX-512 tile equality", why);
                return;
            }
            // (VNNI where the CPU has it, so that `q8a8` compares its tiles, not AVX2's twice)
            assert_eq!(wide.vnni_layout(), int16::vnni_token().is_some() && format == Format::Q8A8, "{format}");
            let narrow = Packed(Kernel::Int16(int16::Packed::avx2_only(&w).unwrap()));
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            matmul_with(&x, &w, Some(&Packed(Kernel::Int16(wide))), None, Activation::GeluErf, m, k, n, &mut a);
            matmul_with(&x, &w, Some(&narrow), None, Activation::GeluErf, m, k, n, &mut b);
            let (a, b): (Vec<u32>, Vec<u32>) =
                (a.iter().map(|v| v.to_bits()).collect(), b.iter().map(|v| v.to_bits()).collect());
            assert_eq!(a, b, "{format} m={m} n={n} k={k}");
        }
    }

    /// Whether `w` runs on the grouped VNNI tiles (8-bit activation blocks) here.
    fn on_vnni_groups(w: &Weight) -> bool {
        #[cfg(target_arch = "x86_64")]
        return matches!(Packed::new(w), Some(Packed(Kernel::Groups(..))));
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = w;
            false
        }
    }

    /// The fast kernel against the plain reference over ragged shapes and every format.
    #[test]
    fn matches_reference_on_ragged_shapes() {
        let mut rng = StdRng::seed_from_u64(7);
        let formats = [
            Format::F32,
            Format::F16,
            Format::Q8,
            Format::Q4 { group: 32 },
            Format::Q4 { group: 128 },
            Format::Q4_1 { group: 64 },
            Format::Q4_1 { group: 32 },
            Format::Q8_0 { group: 32 },
            Format::Q4K,
            Format::Q6K,
            Format::Bf16,
            Format::Q5_0,
            Format::Q5_1,
            Format::Q5K,
        ];
        for case in 0..60 {
            // (from 8 row blocks per thread up, tasks write their rows in place: 1100 rows)
            let m = [1, 2, 3, 4, 5, 7, 63, 64, 65, 130, 1100, 8][case % 12];
            let n = rng.random_range(1..120);
            let k: usize = [1, 3, 8, 31, 32, 33, 64, 100, 129, 384][rng.random_range(0..10)];
            let format = formats[case % formats.len()];
            // (k-quant rows are whole super-blocks)
            let k = if format.super_blocks() { 256 * k.div_ceil(128) } else { k };
            let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Weight::quantize("w", &[n, k], &wv, format).unwrap();
            let act = [Activation::None, Activation::GeluErf, Activation::Silu, Activation::GeluTanh, Activation::Relu]
                [case % 5];
            let b = (case % 2 == 0).then_some(bias.as_slice());
            let mut fast = vec![f32::NAN; m * n];
            let mut reference = vec![0f32; m * n];
            matmul(&x, &w, b, act, m, k, n, &mut fast);
            crate::kernels::matmul_reference(&x, &w, b, act, m, k, n, &mut reference);
            let wd = w.to_f32();
            for (i, (a, r)) in fast.iter().zip(&reference).enumerate() {
                let mut tol = 1e-5 * (k as f32).sqrt() * (1.0 + r.abs());
                // the integer kernels round activations to integers: half a step of the row's
                // scale per product (the activations change slopes by at most 1.2)
                let qmax = match format {
                    Format::Q8 => Some(int16_qmax(k)),
                    Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K => Some(32767.0),
                    _ => None,
                };
                if on_vnni_groups(&w) {
                    // two 8-bit roundings a block: half a step of the second scale (at most
                    // the block's `max|x| / (127 · 254)`) per product
                    let (row, col) = (i / n, i % n);
                    let xr = &x[row * k..(row + 1) * k];
                    let wr = &wd[col * k..(col + 1) * k];
                    tol += xr
                        .chunks(A8_BLOCK)
                        .zip(wr.chunks(A8_BLOCK))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                            1.2 * amax / (2.0 * 127.0 * 254.0) * wb.iter().map(|v| v.abs()).sum::<f32>()
                        })
                        .sum::<f32>();
                } else if let Some(qmax) = qmax.filter(|_| Packed::new(&w).is_some()) {
                    let (row, col) = (i / n, i % n);
                    let amax = x[row * k..(row + 1) * k].iter().fold(0f32, |a, v| a.max(v.abs()));
                    let wsum: f32 = wd[col * k..(col + 1) * k].iter().map(|v| v.abs()).sum();
                    tol += 1.2 * amax / (2.0 * qmax) * wsum;
                }
                assert!((a - r).abs() <= tol, "{format} m={m} n={n} k={k} at {i}: {a} vs {r}");
            }
        }
    }
}
