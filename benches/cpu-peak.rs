//! The vector unit's multiply-add ceiling on this CPU, for reading the CPU backend's GFLOP/s
//! against: the same 6-row x 16-column register tile over 384 values (everything in L1), once
//! with f32 FMA (the f32 kernels), once with `vpmaddwd` on 16-bit pairs (wedge's q8/q4 integer
//! kernels), once with `vpmaddubsw` on 8-bit values plus the `vpmaddwd` that widens them (the
//! usual AVX2 int8 GEMM, as onnxruntime's), with and without the sign trick that keeps it exact.
//! One thread; GMAC/s (x2 for GFLOP/s, x threads for the machine). Outside the workspace (it
//! needs `unsafe` intrinsics, which the workspace forbids):
//!
//!     rustc -O -C target-cpu=native benches/cpu-peak.rs -o /tmp/cpu-peak && /tmp/cpu-peak
//!
//! On the 2-core AMD EPYC (Zen 1) VMs of this project all four land at 19-23 GMAC/s: integer
//! multiply-adds are no faster than f32 ones there, so 8-bit weights save memory, not compute.
//! On the 2-core Sapphire Rapids VMs (AVX-512, VNNI): f32 FMA 56, vpmaddwd 106, exact int8 71,
//! saturating int8 110, and with 512-bit vectors vpmaddwd about 158 and VNNI vpdpbusd about 300.
#![allow(clippy::all)]
use std::arch::x86_64::*;
use std::time::Instant;
const K: usize = 384; // values along k
#[target_feature(enable = "avx2,fma")]
unsafe fn kern_a(x: &[[u32; K / 2]; 6], w: &[[i8; 16]], acc_out: &mut [i32; 8]) {
    // w: 2 col groups × K/2 pairs, each 16 bytes
    let mut acc = [[_mm256_setzero_si256(); 2]; 6];
    for p in 0..K / 2 {
        let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().add(p) as *const __m128i));
        let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().add(K / 2 + p) as *const __m128i));
        for i in 0..6 {
            let xb = _mm256_set1_epi32(x[i][p] as i32);
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(xb, w0));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(xb, w1));
        }
    }
    let mut s = _mm256_setzero_si256();
    for i in 0..6 { s = _mm256_add_epi32(s, _mm256_add_epi32(acc[i][0], acc[i][1])); }
    _mm256_storeu_si256(acc_out.as_mut_ptr() as *mut __m256i, s);
}
/// 8-bit values, four along k per lane: `EXACT` uses the sign trick (|w| times x with w's sign,
/// so each pair of products fits i16), otherwise unsigned activations against signed weights,
/// the fastest int8 form, which saturates when both neighbours' products are large.
#[target_feature(enable = "avx2,fma")]
unsafe fn kern_int8<const R: usize, const EXACT: bool>(x: &[[u32; K / 4]; 6], w: &[[i8; 32]], acc_out: &mut [i32; 8]) {
    // w: 2 col groups × K/4 quads, each 32 bytes (8 cols × 4 values)
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for p in 0..K / 4 {
        let w0 = _mm256_loadu_si256(w.as_ptr().add(p) as *const __m256i);
        let w1 = _mm256_loadu_si256(w.as_ptr().add(K / 4 + p) as *const __m256i);
        let (a0, a1) = if EXACT { (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1)) } else { (w0, w1) };
        for i in 0..R {
            let xb = _mm256_set1_epi32(x[i][p] as i32);
            let (p0, p1) = if EXACT {
                (
                    _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)),
                    _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)),
                )
            } else {
                (_mm256_maddubs_epi16(xb, a0), _mm256_maddubs_epi16(xb, a1))
            };
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
        }
    }
    let mut s = _mm256_setzero_si256();
    for i in 0..R { s = _mm256_add_epi32(s, _mm256_add_epi32(acc[i][0], acc[i][1])); }
    _mm256_storeu_si256(acc_out.as_mut_ptr() as *mut __m256i, s);
}
#[target_feature(enable = "avx2,fma")]
unsafe fn kern_f(x: &[[f32; K]; 6], w: &[f32], out: &mut [f32; 8]) {
    // f32: 6 rows × 2 col vectors (16 cols), weights laid out [k][16]
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..K {
        let w0 = _mm256_loadu_ps(w.as_ptr().add(p * 16));
        let w1 = _mm256_loadu_ps(w.as_ptr().add(p * 16 + 8));
        for i in 0..6 {
            let xb = _mm256_set1_ps(x[i][p]);
            acc[i][0] = _mm256_fmadd_ps(xb, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(xb, w1, acc[i][1]);
        }
    }
    let mut s = _mm256_setzero_ps();
    for i in 0..6 { s = _mm256_add_ps(s, _mm256_add_ps(acc[i][0], acc[i][1])); }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
}
/// AVX-512: 6 rows × 2 vectors of 16 columns; `vpmaddwd` on 16-bit pairs widened from bytes
/// (wedge's q8/q4 tiles on AVX-512), or `vpdpbusd` on unsigned × signed bytes (VNNI, four
/// products per lane: the route to 8-bit activations).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kern_z<const VNNI: bool>(x: &[[u32; K / 2]; 6], w: &[[i8; 32]], acc_out: &mut [i32; 16]) {
    // w: 2 column vectors × K/2 steps of 32 bytes (16 columns × 2 values; VNNI takes 64 bytes,
    // 16 columns × 4 values, per step)
    let mut acc = [[_mm512_setzero_si512(); 2]; 6];
    let steps = if VNNI { K / 4 } else { K / 2 };
    for p in 0..steps {
        let (w0, w1) = if VNNI {
            (_mm512_loadu_si512(w.as_ptr().add(2 * p) as *const _), _mm512_loadu_si512(w.as_ptr().add(K + 2 * p) as *const _))
        } else {
            (_mm512_cvtepi8_epi16(_mm256_loadu_si256(w.as_ptr().add(p) as *const __m256i)),
             _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.as_ptr().add(K / 2 + p) as *const __m256i)))
        };
        for i in 0..6 {
            let xb = _mm512_set1_epi32(x[i][p] as i32);
            if VNNI {
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], xb, w0);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], xb, w1);
            } else {
                acc[i][0] = _mm512_add_epi32(acc[i][0], _mm512_madd_epi16(xb, w0));
                acc[i][1] = _mm512_add_epi32(acc[i][1], _mm512_madd_epi16(xb, w1));
            }
        }
    }
    let mut s = _mm512_setzero_si512();
    for i in 0..6 { s = _mm512_add_epi32(s, _mm512_add_epi32(acc[i][0], acc[i][1])); }
    _mm512_storeu_si512(acc_out.as_mut_ptr() as *mut _, s);
}
fn main() {
    if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
        eprintln!("cpu-peak needs AVX2 and FMA");
        return;
    }
    let reps = 200_000;
    // runs `kernel` `reps` times and prints GMAC/s for `rows` rows × 16 columns × K values
    let measure = |label: &str, rows: usize, kernel: &mut dyn FnMut() -> f32| {
        let t = Instant::now();
        let mut check = 0.0;
        for _ in 0..reps {
            check = kernel();
        }
        let s = t.elapsed().as_secs_f64();
        println!("{label}: {:.1} GMAC/s (check {check})", (reps * rows * 16 * K) as f64 / s / 1e9);
    };
    let (x, w) = ([[0x00030002u32; K / 2]; 6], vec![[1i8; 16]; K]);
    let (xq, wq) = ([[0x03020103u32; K / 4]; 6], vec![[-3i8; 32]; K / 2]);
    let (xf, wf) = ([[0.5f32; K]; 6], vec![0.25f32; K * 16]);
    let mut o = [0i32; 8];
    let mut of = [0f32; 8];
    use std::hint::black_box as bb;
    measure("vpmaddwd, 16-bit pairs (wedge q8/q4), 6x2", 6, &mut || {
        unsafe { kern_a(bb(&x), bb(&w), &mut o) };
        o[0] as f32
    });
    measure("vpsignb+vpmaddubsw+vpmaddwd, exact int8, 6x2", 6, &mut || {
        unsafe { kern_int8::<6, true>(bb(&xq), bb(&wq), &mut o) };
        o[0] as f32
    });
    measure("the same, 4x2", 4, &mut || {
        unsafe { kern_int8::<4, true>(bb(&xq), bb(&wq), &mut o) };
        o[0] as f32
    });
    measure("vpmaddubsw+vpmaddwd, saturating int8, 6x2", 6, &mut || {
        unsafe { kern_int8::<6, false>(bb(&xq), bb(&wq), &mut o) };
        o[0] as f32
    });
    measure("f32 FMA, 6x2", 6, &mut || {
        unsafe { kern_f(bb(&xf), bb(&wf), &mut of) };
        of[0]
    });
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")) {
        println!("(no AVX-512 VNNI: the 512-bit forms are not measured)");
        return;
    }
    // 32 columns per step here, so half the steps of the 16-column AVX2 forms
    let wz = vec![[1i8; 32]; 2 * K];
    let mut oz = [0i32; 16];
    measure("AVX-512 vpmaddwd + vpmovsxbw, 16-bit pairs (wedge q8/q4 there), 6x2", 12, &mut || {
        unsafe { kern_z::<false>(bb(&x), bb(&wz), &mut oz) };
        oz[0] as f32
    });
    measure("AVX-512 VNNI vpdpbusd, u8 x s8, 6x2", 12, &mut || {
        unsafe { kern_z::<true>(bb(&x), bb(&wz), &mut oz) };
        oz[0] as f32
    });
}
