//! Few-row matmuls (a decoder's steps: one to a few tokens per sequence) straight from the
//! stored words, in f32.
//!
//! With one activation row, the f32 panels of [`crate::gemm`] cost a write and a read of four
//! bytes per weight value to save nothing: no second row reuses the panel. Here each group of
//! 32 values is widened in registers (bytes or nibbles to `i32` lanes, then to f32), multiplied
//! by up to eight activation rows at once, and scaled once per group: the weights are read once,
//! at their stored size, and nothing is written but the outputs.
//!
//! `q4` and `q4_1` keep values `2i` and `2i + 1` in the low and high nibble of byte `i`, so the
//! activations are first laid out per group of 32 as the 16 even values, then the 16 odd ones:
//! the low nibbles of a group's 16 bytes meet the even half, the high nibbles the odd half. The
//! affine offset of `q4_1` (and `q4`'s `-8 · s`) is applied per group as `m · Σ x` over the group.
//! `q8` and `q8_0` keep values in order.
//!
//! Every product is an f32 product of the exact dequantized value, summed in f32 (in another
//! order than the panels), so the results agree with the panels to rounding.
//!
//! Written over AVX2 (8 lanes) and AVX-512 (16 lanes) through `pulp`'s safe intrinsics, and
//! wasm simd128 (4 lanes; the browser's decode steps) through `core::arch::wasm32`; the kernel
//! is one generic body over [`Lanes`]. (simd128 has no fused multiply-add: a product and a sum
//! there, and so the same result in every engine.)

use pulp::NullaryFnOnce;
#[cfg(target_arch = "x86_64")]
use pulp::f32x8;
#[cfg(target_arch = "x86_64")]
use pulp::x86::{V3, V4};
#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;
use wedge_core::graph::Activation;
use wedge_core::quant::{Format, Weight};

/// The most activation rows this path takes (more go to the panels, which reuse the
/// dequantized weights across rows).
pub(crate) const MAX_ROWS: usize = 8;

/// Values per chunk: the smallest group, and the unit the kernels step by.
const CHUNK: usize = 32;

/// Whether [`matmul`] takes a matmul of `m` rows of `x` by `w` (`n × k`): `m` at most
/// [`MAX_ROWS`], `q4`/`q4_1`/`q8`/`q8_0` stored words, `k` whole chunks, AVX2 at least (or
/// wasm simd128), and `WEDGE_CPU_GEMV` not `0`.
pub(crate) fn takes(w: &Weight, m: usize, k: usize) -> bool {
    m <= MAX_ROWS
        && k > 0
        && k.is_multiple_of(CHUNK)
        && matches!(w.format, Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K | Format::Q8 | Format::Q8_0 { .. })
        && (w.format.group() as usize).is_multiple_of(CHUNK)
        && (w.format.group() == 0 || w.format.group().is_power_of_two())
        && !w.words.is_empty()
        && isa().is_some()
}

/// The vector units, as found once per process.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2(V3),
    #[cfg(target_arch = "x86_64")]
    Avx512(V4),
    /// (compiled in, so present: a browser without SIMD refuses the whole module)
    #[cfg(target_arch = "wasm32")]
    Simd128,
}

#[cfg(target_arch = "wasm32")]
fn isa() -> Option<Isa> {
    Some(Isa::Simd128)
}

#[cfg(target_arch = "x86_64")]
fn isa() -> Option<Isa> {
    static ON: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("WEDGE_CPU_GEMV").as_deref() == Ok("0") {
            return None;
        }
        let v4 = (std::env::var("WEDGE_CPU_AVX512").as_deref() != Ok("0")).then(V4::try_new).flatten();
        v4.map(Isa::Avx512).or_else(|| V3::try_new().map(Isa::Avx2))
    })
}

/// `out[m, n] = act(x · Wᵀ + bias)` for a matmul [`takes`] accepts.
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
    let Some(isa) = isa() else { return };
    let nibbles = matches!(w.format, Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K);
    let xs = Activations::new(&x[..m * k], k, nibbles);
    // columns per task: enough tasks to share out, few enough that each is worth a task
    let per = (n / (8 * crate::threads())).clamp(16, 256);
    let mut tmp = vec![0f32; n * m];
    let task = |(t, dst): (usize, &mut [f32])| {
        let job = Job { w, xs: &xs, n0: t * per, dst };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(s) => s.vectorize(Run { lanes: Avx2(s), job }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(s) => s.vectorize(Run { lanes: Avx512(s), job }),
            #[cfg(target_arch = "wasm32")]
            Isa::Simd128 => Run { lanes: Simd128, job }.call(),
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    tmp.par_chunks_mut(per * m).enumerate().for_each(task);
    #[cfg(target_arch = "wasm32")]
    tmp.chunks_mut(per * m).enumerate().for_each(task);
    let out = &mut out[..m * n];
    for (j, col) in tmp.chunks_exact(m).enumerate() {
        for (r, v) in col.iter().enumerate() {
            out[r * n + j] = *v;
        }
    }
    crate::gemm::epilogue(out, bias, act);
}

/// The activation rows as the kernels read them: per row, per chunk, 32 values (for nibble
/// formats the even ones, then the odd ones), and each row's sum over each chunk.
struct Activations {
    m: usize,
    chunks: usize,
    values: Vec<[f32; CHUNK]>,
    sums: Vec<f32>,
}

impl Activations {
    fn new(x: &[f32], k: usize, nibbles: bool) -> Activations {
        let chunks = k / CHUNK;
        let m = x.len() / k;
        let mut values = vec![[0f32; CHUNK]; m * chunks];
        let mut sums = vec![0f32; m * chunks];
        for ((src, dst), s) in x.chunks_exact(CHUNK).zip(&mut values).zip(&mut sums) {
            if nibbles {
                for i in 0..CHUNK / 2 {
                    dst[i] = src[2 * i];
                    dst[CHUNK / 2 + i] = src[2 * i + 1];
                }
            } else {
                dst.copy_from_slice(src);
            }
            *s = src.iter().sum();
        }
        Activations { m, chunks, values, sums }
    }
}

/// One task: weight rows `n0..` (as many as `dst` holds), all activation rows, into `dst`
/// (`m` values per weight row).
struct Job<'a> {
    w: &'a Weight,
    xs: &'a Activations,
    n0: usize,
    dst: &'a mut [f32],
}

/// A [`Job`] on one vector unit.
struct Run<'a, L> {
    lanes: L,
    job: Job<'a>,
}

impl<L: Lanes> NullaryFnOnce for Run<'_, L> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Run { lanes, job: Job { w, xs, n0, dst } } = self;
        let (m, chunks) = (xs.m, xs.chunks);
        let k = chunks * CHUNK;
        let rows = dst.len() / m;
        let nibbles = matches!(w.format, Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K);
        let row_bytes = if nibbles { k / 2 } else { k };
        let bytes: &[u8] = bytemuck::cast_slice(&w.words);
        // the task's scales in f32, one conversion for all its rows: `q8` one a row, `q8_0`
        // and `q4` one a group, `q4_1` a (scale, offset) pair a group
        let (table, gpr, stride) = match w.format {
            Format::Q8 => (w.scales[n0..n0 + rows].iter().map(|s| f32::from_bits(*s)).collect::<Vec<_>>(), 1, 1),
            Format::Q4K => {
                // (s, m) per group, from each super-block's 6-bit integers
                let gpr = w.format.groups_per_row(k);
                let t = (n0 * gpr..(n0 + rows) * gpr).flat_map(|g| <[f32; 2]>::from(w.group_affine(g))).collect();
                (t, gpr, 2)
            }
            f => {
                let gpr = f.groups_per_row(k);
                let stride = if matches!(f, Format::Q4_1 { .. }) { 2 } else { 1 };
                let halves: &[u16] = bytemuck::cast_slice(&w.scales);
                let t = halves[n0 * gpr * stride..(n0 + rows) * gpr * stride].iter().map(|h| f16_to_f32(*h)).collect();
                (t, gpr, stride)
            }
        };
        // chunks per group, a power of two (`q8`: all of them)
        let shift = match w.format.group() as usize {
            0 => usize::BITS - 1,
            g => (g / CHUNK).trailing_zeros(),
        };
        for (j, col) in dst.chunks_exact_mut(m).enumerate() {
            let row = n0 + j;
            let wrow = &bytes[row * row_bytes..(row + 1) * row_bytes];
            let sc = Scales { table: &table[j * gpr * stride..(j + 1) * gpr * stride], shift, stride };
            let mut r0 = 0;
            while r0 < m {
                r0 += if nibbles {
                    rows_step::<L, true>(lanes, wrow, sc, &xs.values[r0 * chunks..], chunks, &mut col[r0..])
                } else {
                    rows_step::<L, false>(lanes, wrow, sc, &xs.values[r0 * chunks..], chunks, &mut col[r0..])
                };
            }
            if nibbles {
                // the offsets, `Σ_g m_g · Σ_{k ∈ g} x_k`: `q4_1`'s own, `q4`'s `-8 · s`
                let asym = stride == 2;
                for (r, v) in col.iter_mut().enumerate() {
                    let sums = &xs.sums[r * chunks..(r + 1) * chunks];
                    let mut acc = 0f32;
                    for (c, s) in sums.iter().enumerate() {
                        let g = (c >> shift) * stride;
                        acc += s * if asym { sc.table[g + 1] } else { -8.0 * sc.table[g] };
                    }
                    *v += acc;
                }
            }
        }
    }
}

/// An IEEE half as f32, exactly, in integer and float operations that vectorize (the library
/// conversion is a call per few values, which cost a tenth of a decode step): the half's bits
/// moved to an f32's places and scaled by 2^112 (subnormals included), infinities and NaNs
/// rebuilt.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = h & 0x7fff;
    let v = if magnitude >= 0x7c00 {
        f32::from_bits(0x7f80_0000 | ((h & 0x3ff) << 13))
    } else {
        f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// One weight row's scales: chunk `c`'s is `table[(c >> shift) · stride]`.
#[derive(Clone, Copy)]
struct Scales<'a> {
    table: &'a [f32],
    shift: u32,
    stride: usize,
}

impl Scales<'_> {
    #[inline(always)]
    fn of(&self, c: usize) -> f32 {
        self.table[(c >> self.shift) * self.stride]
    }
}

/// The next few activation rows (`x`, rows of `chunks` chunks) against one weight row, into
/// the front of `col`: eight at once where 32 registers hold their sums, four on AVX2, else
/// what is left. Returns how many.
#[inline(always)]
fn rows_step<L: Lanes, const NIB: bool>(
    l: L,
    w: &[u8],
    sc: Scales,
    x: &[[f32; CHUNK]],
    chunks: usize,
    col: &mut [f32],
) -> usize {
    #[inline(always)]
    fn go<L: Lanes, const NIB: bool, const R: usize>(
        l: L,
        w: &[u8],
        sc: Scales,
        x: &[[f32; CHUNK]],
        chunks: usize,
        col: &mut [f32],
    ) -> usize {
        let xs: [&[[f32; CHUNK]]; R] = std::array::from_fn(|r| &x[r * chunks..(r + 1) * chunks]);
        col[..R].copy_from_slice(&row_sums::<L, NIB, R>(l, w, sc, xs));
        R
    }
    match col.len() {
        8.. if L::W == 16 => go::<L, NIB, 8>(l, w, sc, x, chunks, col),
        4.. => go::<L, NIB, 4>(l, w, sc, x, chunks, col),
        2.. => go::<L, NIB, 2>(l, w, sc, x, chunks, col),
        _ => go::<L, NIB, 1>(l, w, sc, x, chunks, col),
    }
}

/// A vector unit: f32 vectors of [`Lanes::W`] lanes and the few operations the kernels use.
trait Lanes: Copy {
    type F: Copy;
    /// Lanes per vector.
    const W: usize;
    fn zero(self) -> Self::F;
    fn splat(self, v: f32) -> Self::F;
    /// `W` floats from the front of `x`.
    fn load(self, x: &[f32]) -> Self::F;
    /// `W` bytes from the front of `b`, as unsigned nibbles: (low nibbles, high nibbles).
    fn nibbles(self, b: &[u8]) -> (Self::F, Self::F);
    /// `W` bytes from the front of `b`, as signed values.
    fn bytes(self, b: &[u8]) -> Self::F;
    /// `a · b + c`.
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    fn sum(self, a: Self::F) -> f32;
}

/// The scaled sums of one weight row (`q4`/`q4_1` with `NIB`, else `q8`/`q8_0`) against `R`
/// activation rows: each chunk's `R` vector sums scaled and added up in two running sums, even
/// and odd chunks (written out, so that they stay in registers), so that consecutive chunks'
/// multiply-adds do not wait on each other. (No closures: those would be compiled outside the
/// vector unit's context, and every intrinsic in them become a call.)
#[inline(always)]
fn row_sums<L: Lanes, const NIB: bool, const R: usize>(
    l: L,
    w: &[u8],
    sc: Scales,
    xs: [&[[f32; CHUNK]]; R],
) -> [f32; R] {
    let chunks = xs[0].len();
    let (mut even, mut odd) = ([l.zero(); R], [l.zero(); R]);
    let mut c = 0;
    while c + 1 < chunks {
        let (t0, t1) = (chunk::<L, NIB, R>(l, w, &xs, c), chunk::<L, NIB, R>(l, w, &xs, c + 1));
        let (s0, s1) = (l.splat(sc.of(c)), l.splat(sc.of(c + 1)));
        for r in 0..R {
            even[r] = l.fma(t0[r], s0, even[r]);
            odd[r] = l.fma(t1[r], s1, odd[r]);
        }
        c += 2;
    }
    if c < chunks {
        let (t0, s0) = (chunk::<L, NIB, R>(l, w, &xs, c), l.splat(sc.of(c)));
        for r in 0..R {
            even[r] = l.fma(t0[r], s0, even[r]);
        }
    }
    std::array::from_fn(|r| l.sum(l.add(even[r], odd[r])))
}

/// Chunk `c`'s sums: [`chunk_q4`] with `NIB`, else [`chunk_q8`].
#[inline(always)]
fn chunk<L: Lanes, const NIB: bool, const R: usize>(l: L, w: &[u8], xs: &[&[[f32; CHUNK]]; R], c: usize) -> [L::F; R] {
    if NIB { chunk_q4(l, w, xs, c) } else { chunk_q8(l, w, xs, c) }
}

/// `q4`/`q4_1` raw nibble sums (before offsets) of chunk `c` of one weight row (`k / 2`
/// bytes) against `R` activation rows.
#[inline(always)]
fn chunk_q4<L: Lanes, const R: usize>(l: L, w: &[u8], xs: &[&[[f32; CHUNK]]; R], c: usize) -> [L::F; R] {
    let mut t = [l.zero(); R];
    for (h, wb) in w[c * CHUNK / 2..(c + 1) * CHUNK / 2].chunks_exact(L::W).enumerate() {
        let (lo, hi) = l.nibbles(wb);
        for r in 0..R {
            let x = &xs[r][c];
            let even = l.load(&x[h * L::W..]);
            let odd = l.load(&x[CHUNK / 2 + h * L::W..]);
            t[r] = l.fma(hi, odd, l.fma(lo, even, t[r]));
        }
    }
    t
}

/// `q8`/`q8_0` sums of chunk `c` of one weight row (`k` bytes) against `R` activation rows.
#[inline(always)]
fn chunk_q8<L: Lanes, const R: usize>(l: L, w: &[u8], xs: &[&[[f32; CHUNK]]; R], c: usize) -> [L::F; R] {
    let mut t = [l.zero(); R];
    for (h, wb) in w[c * CHUNK..(c + 1) * CHUNK].chunks_exact(L::W).enumerate() {
        let v = l.bytes(wb);
        for r in 0..R {
            t[r] = l.fma(v, l.load(&xs[r][c][h * L::W..]), t[r]);
        }
    }
    t
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(V3);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    type F = f32x8;
    const W: usize = 8;

    #[inline(always)]
    fn zero(self) -> f32x8 {
        self.0.splat_f32x8(0.0)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> f32x8 {
        self.0.splat_f32x8(v)
    }
    #[inline(always)]
    fn load(self, x: &[f32]) -> f32x8 {
        let a: [f32; 8] = x[..8].try_into().unwrap_or([0.0; 8]);
        pulp::cast(a)
    }
    #[inline(always)]
    fn nibbles(self, b: &[u8]) -> (f32x8, f32x8) {
        let s = self.0;
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&b[..8]);
        let v = s.avx2._mm256_cvtepu8_epi32(pulp::cast(a));
        let lo = s.avx2._mm256_and_si256(v, s.avx._mm256_set1_epi32(0xf));
        let hi = s.avx2._mm256_srli_epi32::<4>(v);
        (pulp::cast(s.avx._mm256_cvtepi32_ps(lo)), pulp::cast(s.avx._mm256_cvtepi32_ps(hi)))
    }
    #[inline(always)]
    fn bytes(self, b: &[u8]) -> f32x8 {
        let s = self.0;
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&b[..8]);
        pulp::cast(s.avx._mm256_cvtepi32_ps(s.avx2._mm256_cvtepi8_epi32(pulp::cast(a))))
    }
    #[inline(always)]
    fn fma(self, a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        self.0.mul_add_f32x8(a, b, c)
    }
    #[inline(always)]
    fn add(self, a: f32x8, b: f32x8) -> f32x8 {
        self.0.add_f32x8(a, b)
    }
    #[inline(always)]
    fn sum(self, a: f32x8) -> f32 {
        let v: [f32; 8] = pulp::cast(a);
        (v[0] + v[4]) + (v[1] + v[5]) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx512(V4);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type F = core::arch::x86_64::__m512;
    const W: usize = 16;

    #[inline(always)]
    fn zero(self) -> Self::F {
        self.0.avx512f._mm512_setzero_ps()
    }
    #[inline(always)]
    fn splat(self, v: f32) -> Self::F {
        self.0.avx512f._mm512_set1_ps(v)
    }
    #[inline(always)]
    fn load(self, x: &[f32]) -> Self::F {
        let a: [f32; 16] = x[..16].try_into().unwrap_or([0.0; 16]);
        pulp::cast(a)
    }
    #[inline(always)]
    fn nibbles(self, b: &[u8]) -> (Self::F, Self::F) {
        let f = self.0.avx512f;
        let a: [u8; 16] = b[..16].try_into().unwrap_or([0; 16]);
        let v = f._mm512_cvtepu8_epi32(pulp::cast(a));
        let lo = f._mm512_and_si512(v, f._mm512_set1_epi32(0xf));
        let hi = f._mm512_srli_epi32::<4>(v);
        (f._mm512_cvtepi32_ps(lo), f._mm512_cvtepi32_ps(hi))
    }
    #[inline(always)]
    fn bytes(self, b: &[u8]) -> Self::F {
        let f = self.0.avx512f;
        let a: [u8; 16] = b[..16].try_into().unwrap_or([0; 16]);
        f._mm512_cvtepi32_ps(f._mm512_cvtepi8_epi32(pulp::cast(a)))
    }
    #[inline(always)]
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        self.0.avx512f._mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    fn add(self, a: Self::F, b: Self::F) -> Self::F {
        self.0.avx512f._mm512_add_ps(a, b)
    }
    #[inline(always)]
    fn sum(self, a: Self::F) -> f32 {
        self.0.avx512f._mm512_reduce_add_ps(a)
    }
}

/// wasm simd128: four lanes, built with the crate (`+simd128`, as every WebGPU browser runs).
#[cfg(target_arch = "wasm32")]
#[derive(Clone, Copy)]
struct Simd128;

#[cfg(target_arch = "wasm32")]
impl Lanes for Simd128 {
    type F = core::arch::wasm32::v128;
    const W: usize = 4;

    #[inline(always)]
    fn zero(self) -> Self::F {
        core::arch::wasm32::f32x4_splat(0.0)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> Self::F {
        core::arch::wasm32::f32x4_splat(v)
    }
    #[inline(always)]
    fn load(self, x: &[f32]) -> Self::F {
        let a: [f32; 4] = x[..4].try_into().unwrap_or([0.0; 4]);
        core::arch::wasm32::f32x4(a[0], a[1], a[2], a[3])
    }
    #[inline(always)]
    fn nibbles(self, b: &[u8]) -> (Self::F, Self::F) {
        use core::arch::wasm32::*;
        let word = u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]));
        let v = u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(u32x4(word, 0, 0, 0)));
        let lo = v128_and(v, u32x4_splat(0xf));
        let hi = u32x4_shr(v, 4);
        (f32x4_convert_i32x4(lo), f32x4_convert_i32x4(hi))
    }
    #[inline(always)]
    fn bytes(self, b: &[u8]) -> Self::F {
        use core::arch::wasm32::*;
        let word = u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]));
        f32x4_convert_i32x4(i32x4_extend_low_i16x8(i16x8_extend_low_i8x16(u32x4(word, 0, 0, 0))))
    }
    #[inline(always)]
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        core::arch::wasm32::f32x4_add(core::arch::wasm32::f32x4_mul(a, b), c)
    }
    #[inline(always)]
    fn add(self, a: Self::F, b: Self::F) -> Self::F {
        core::arch::wasm32::f32x4_add(a, b)
    }
    #[inline(always)]
    fn sum(self, a: Self::F) -> f32 {
        use core::arch::wasm32::f32x4_extract_lane as lane;
        (lane::<0>(a) + lane::<2>(a)) + (lane::<1>(a) + lane::<3>(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Against the plain definition over every format and group this path takes, one to nine
    /// rows (every row tile and the remainders), odd and even numbers of chunks, and numbers of
    /// weight rows that leave a short last task; with a bias and an activation.
    #[test]
    fn matches_the_definition() {
        let mut rng = StdRng::seed_from_u64(25);
        let formats = [
            Format::Q4 { group: 32 },
            Format::Q4_1 { group: 32 },
            Format::Q4_1 { group: 64 },
            Format::Q4 { group: 128 },
            Format::Q8_0 { group: 32 },
            Format::Q8_0 { group: 64 },
            Format::Q8,
            Format::Q4K,
        ];
        for format in formats {
            // (q4_k: whole super-blocks)
            let g = if format == Format::Q4K { 256 } else { format.group().max(32) as usize };
            for &(m, k, n) in &[(1, 128, 1), (2, 3 * g, 17), (3, g, 300), (5, 5 * g, 33), (8, 2 * g, 70), (9, 7 * g, 5)]
            {
                if k % g != 0 {
                    continue;
                }
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
                let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..0.7)).collect();
                let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let w = Weight::quantize("w", &[n, k], &wv, format).unwrap();
                let mut want = vec![0f32; m * n];
                crate::matmul_reference(&x, &w, Some(&bias), Activation::Silu, m, k, n, &mut want);
                assert_eq!(takes(&w, m, k), m <= MAX_ROWS && isa().is_some(), "{format:?} {m}");
                if !takes(&w, m, k) {
                    continue;
                }
                let mut got = vec![f32::NAN; m * n];
                matmul(&x, &w, Some(&bias), Activation::Silu, m, k, n, &mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * (k as f32).sqrt() * (1.0 + b.abs()),
                        "{format:?} {m}x{k}x{n} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let w = Weight::quantize("w", &[4, 48], &[0.5; 4 * 48], Format::Q4_1 { group: 32 }).unwrap();
        assert!(!takes(&w, 1, 48), "a part chunk");
        let w = Weight::quantize("w", &[4, 64], &[0.5; 4 * 64], Format::F16).unwrap();
        assert!(!takes(&w, 1, 64), "f16");
        let w = Weight::quantize("w", &[4, 64], &[0.5; 4 * 64], Format::Q8_0 { group: 32 }).unwrap();
        assert!(!takes(&w, MAX_ROWS + 1, 64), "many rows");
    }

    #[test]
    fn halves_convert_exactly() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}: {got} vs {want}");
        }
    }
}
