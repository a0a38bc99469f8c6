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
#[target_feature(enable = "avx2,fma")]
unsafe fn kern_b<const R: usize>(x: &[[u32; K / 4]; 6], w: &[[i8; 32]], acc_out: &mut [i32; 8]) {
    // w: 2 col groups × K/4 quads, each 32 bytes (8 cols × 4 values)
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for p in 0..K / 4 {
        let w0 = _mm256_loadu_si256(w.as_ptr().add(p) as *const __m256i);
        let w1 = _mm256_loadu_si256(w.as_ptr().add(K / 4 + p) as *const __m256i);
        let a0 = _mm256_abs_epi8(w0);
        let a1 = _mm256_abs_epi8(w1);
        for i in 0..R {
            let xb = _mm256_set1_epi32(x[i][p] as i32);
            let p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0));
            let p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1));
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
        }
    }
    let mut s = _mm256_setzero_si256();
    for i in 0..R { s = _mm256_add_epi32(s, _mm256_add_epi32(acc[i][0], acc[i][1])); }
    _mm256_storeu_si256(acc_out.as_mut_ptr() as *mut __m256i, s);
}
#[target_feature(enable = "avx2,fma")]
unsafe fn kern_c<const R: usize>(x: &[[u32; K / 4]; 6], w: &[[i8; 32]], acc_out: &mut [i32; 8]) {
    // unsigned activations against signed weights, no sign trick: the fastest int8 form,
    // which saturates (not exact) when both neighbours' products are large
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for p in 0..K / 4 {
        let w0 = _mm256_loadu_si256(w.as_ptr().add(p) as *const __m256i);
        let w1 = _mm256_loadu_si256(w.as_ptr().add(K / 4 + p) as *const __m256i);
        for i in 0..R {
            let xb = _mm256_set1_epi32(x[i][p] as i32);
            let p0 = _mm256_maddubs_epi16(xb, w0);
            let p1 = _mm256_maddubs_epi16(xb, w1);
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
fn main() {
    if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
        eprintln!("cpu-peak needs AVX2 and FMA");
        return;
    }
    let reps = 200_000;
    let x = [[0x00030002u32; K / 2]; 6];
    let w = vec![[1i8; 16]; K];
    let mut o = [0i32; 8];
    let t = Instant::now();
    for _ in 0..reps { unsafe { kern_a(std::hint::black_box(&x), std::hint::black_box(&w), &mut o) } }
    let s = t.elapsed().as_secs_f64();
    println!("vpmaddwd, 16-bit pairs (wedge q8/q4), 6x2: {:.1} GMAC/s {}", (reps * 6 * 16 * K) as f64 / s / 1e9, o[0]);
    let xq = [[0x03020103u32; K / 4]; 6];
    let wq = vec![[-3i8; 32]; K / 2];
    let t = Instant::now();
    for _ in 0..reps { unsafe { kern_b::<6>(std::hint::black_box(&xq), std::hint::black_box(&wq), &mut o) } }
    let s = t.elapsed().as_secs_f64();
    println!("vpsignb+vpmaddubsw+vpmaddwd, exact int8, 6x2: {:.1} GMAC/s {}", (reps * 6 * 16 * K) as f64 / s / 1e9, o[0]);
    let t = Instant::now();
    for _ in 0..reps { unsafe { kern_b::<4>(std::hint::black_box(&xq), std::hint::black_box(&wq), &mut o) } }
    let s = t.elapsed().as_secs_f64();
    println!("the same, 4x2: {:.1} GMAC/s {}", (reps * 4 * 16 * K) as f64 / s / 1e9, o[0]);
    let t = Instant::now();
    for _ in 0..reps { unsafe { kern_c::<6>(std::hint::black_box(&xq), std::hint::black_box(&wq), &mut o) } }
    let s = t.elapsed().as_secs_f64();
    println!("vpmaddubsw+vpmaddwd, saturating int8, 6x2: {:.1} GMAC/s {}", (reps * 6 * 16 * K) as f64 / s / 1e9, o[0]);
    let xf = [[0.5f32; K]; 6];
    let wf = vec![0.25f32; K * 16];
    let mut of = [0f32; 8];
    let t = Instant::now();
    for _ in 0..reps { unsafe { kern_f(std::hint::black_box(&xf), std::hint::black_box(&wf), &mut of) } }
    let s = t.elapsed().as_secs_f64();
    println!("f32 FMA, 6x2: {:.1} GMAC/s {}", (reps * 6 * 16 * K) as f64 / s / 1e9, of[0]);
}
