//! Every GPU kernel against the CPU backend over seeded random shapes, including
//! sizes that are not multiples of any workgroup or tile size, for every weight format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rand::Rng;
use wedge::{Activation, Elem, Format, HostTensor, Op, RopeMode, RopeScaling, Weight};
use wedge_core::graph::BinaryOp;

fn compare(what: &str, op: &str, graph: &wedge::Graph, weights: &[Weight], inputs: &[HostTensor]) {
    let (cpu, gpu) = both(graph, weights, inputs);
    if let Some(gpu) = gpu {
        assert_close(what, op, &gpu[0].to_f32(), &cpu[0].to_f32());
    }
}

#[test]
fn matmul_every_format_gemv_and_gemm() {
    // every matmul path: the tiled GEMM, the barrier-free row-block kernel, and the GEMV
    // with workgroup-memory or subgroup reductions
    for (tiled, subgroups) in [(true, false), (false, false), (true, true)] {
        if let Some(ctx) = gpu().and_then(|d| d.gpu_context()) {
            ctx.set_tiled_gemm(tiled);
            let on = ctx.set_subgroups(subgroups);
            if subgroups && !on {
                wedge_testkit::skip("the subgroup GEMV", &format!("{} has no subgroups", ctx.summary()));
                continue;
            }
        }
        matmul_cases(tiled);
        if subgroups {
            long_gemv_cases();
        }
    }
}

/// Rows long enough (>= 1024 packed words) for the subgroup GEMV's wide workgroups.
fn long_gemv_cases() {
    let mut r = rng(11);
    for (format, k) in [(Format::F32, 1500), (Format::F16, 2100), (Format::Q4 { group: 32 }, 8200)] {
        let (m, n) = (r.random_range(1..=4), r.random_range(1..12));
        let w = Weight::quantize("w", &[n, k], &rand_vec(&mut r, n * k, 1.0), format).unwrap();
        let op = Op::MatMul { weight: wedge::WeightId(0), bias: None, act: Activation::None };
        let g = single(op, &[(Elem::F32, vec![m, k])], &["w"]);
        let x = HostTensor::f32(&[m, k], &rand_vec(&mut r, m * k, 1.0));
        compare(&format!("long gemv {format} m={m} k={k} n={n}"), "matmul", &g, &[w], &[x]);
    }
}

fn matmul_cases(_tiled: bool) {
    let mut r = rng(1);
    let acts = [Activation::None, Activation::GeluErf, Activation::GeluTanh, Activation::Silu, Activation::Relu];
    for (fi, &format) in FORMATS.iter().enumerate() {
        for case in 0..10 {
            // alternate GEMV (m <= 4) and GEMM, with ragged sizes
            let m = if case % 2 == 0 { r.random_range(1..=4) } else { r.random_range(5..150) };
            let k = cols_for(format, [1, 7, 31, 32, 100, 129, 256, 300][r.random_range(0..8)]);
            let n = [1, 13, 64, 65, 130, 200][r.random_range(0..6)];
            let bias = case % 3 != 0;
            let act = acts[case % 4];
            let w = Weight::quantize("w", &[n, k], &rand_vec(&mut r, n * k, 1.0), format).unwrap();
            let mut weights = vec![w];
            let mut names = vec!["w"];
            if bias {
                weights.push(Weight::from_f32("b", &[n], &rand_vec(&mut r, n, 1.0)).unwrap());
                names.push("b");
            }
            let op = Op::MatMul { weight: wedge::WeightId(0), bias: bias.then_some(wedge::WeightId(1)), act };
            let g = single(op, &[(Elem::F32, vec![m, k])], &names);
            let x = HostTensor::f32(&[m, k], &rand_vec(&mut r, m * k, 1.0));
            compare(
                &format!("matmul {format} m={m} k={k} n={n} bias={bias} {act:?} (case {fi}.{case})"),
                "matmul",
                &g,
                &weights,
                &[x],
            );
        }
    }
}

/// The f16 GEMM (`gemm_h`, shader-f16) against its CPU twin, which rounds as it does, and
/// against the f32 definition within the bound f16 arithmetic allows: for each output,
/// a few roundings of 2^-11 times Σ|x·w| over its chunk.
#[test]
fn f16_gemm_matches_its_twin() {
    let Some(device) = gpu_f16() else { return };
    let mut r = rng(12);
    let acts = [Activation::None, Activation::GeluErf, Activation::GeluTanh, Activation::Silu, Activation::Relu];
    let (mut worst_twin, mut worst_f32) = (0f32, 0f32);
    for &format in FORMATS.iter().filter(|f| **f != Format::Q8A8) {
        for case in 0..6 {
            let m = [5, 17, 64, 65, 130][r.random_range(0..5)];
            let k = cols_for(format, [1, 15, 16, 17, 100, 300, 1536][r.random_range(0..7)]);
            let n = [1, 13, 64, 65, 200][r.random_range(0..5)];
            let act = acts[case % 4];
            let w = Weight::quantize("w", &[n, k], &rand_vec(&mut r, n * k, 1.0), format).unwrap();
            let b = Weight::from_f32("b", &[n], &rand_vec(&mut r, n, 1.0)).unwrap();
            let bias = b.to_f32();
            let op = Op::MatMul { weight: wedge::WeightId(0), bias: Some(wedge::WeightId(1)), act };
            let g = single(op, &[(Elem::F32, vec![m, k])], &["w", "b"]);
            let xs = rand_vec(&mut r, m * k, 4.0);
            let session = wedge::Session::new(&device, g, vec![w.clone(), b]).expect("gpu session");
            let got = session.run(&[HostTensor::f32(&[m, k], &xs)]).expect("gpu run")[0].to_f32();
            let (mut twin, mut exact) = (vec![0f32; m * n], vec![0f32; m * n]);
            wedge_cpu::matmul_f16_reference(&xs, &w, Some(&bias), act, m, k, n, &mut twin);
            wedge_cpu::matmul_reference(&xs, &w, Some(&bias), act, m, k, n, &mut exact);
            // Σ|x·w| per output
            let mut wrow = vec![0f32; k];
            let mut mass = vec![0f32; m * n];
            for j in 0..n {
                w.dequantize_row(j, &mut wrow);
                for i in 0..m {
                    mass[i * n + j] = xs[i * k..(i + 1) * k].iter().zip(&wrow).map(|(a, b)| (a * b).abs()).sum();
                }
            }
            let what = format!("f16 gemm {format} m={m} k={k} n={n} {act:?}");
            for i in 0..m * n {
                let unit = mass[i] * 2f32.powi(-11) + 1e-6;
                let (dt, de) = ((got[i] - twin[i]).abs() / unit, (got[i] - exact[i]).abs() / unit);
                worst_twin = worst_twin.max(dt);
                worst_f32 = worst_f32.max(de);
                // GPU and twin may round each value either way and fuse a multiply-add
                assert!(dt <= F16_TWIN_UNITS, "{what}: index {i}: got {}, twin {} ({dt:.2} units)", got[i], twin[i]);
                assert!(de <= F16_F32_UNITS, "{what}: index {i}: got {}, f32 {} ({de:.2} units)", got[i], exact[i]);
            }
        }
    }
    eprintln!("f16 gemm: worst error {worst_twin:.3} units of 2^-11·Σ|x·w| to the twin, {worst_f32:.3} to f32");
}

#[test]
fn gather_every_format() {
    let mut r = rng(2);
    for &format in &FORMATS {
        let (rows, cols) = (r.random_range(2..60), cols_for(format, [5, 32, 33, 100][r.random_range(0..4)]));
        let w = Weight::quantize("t", &[rows, cols], &rand_vec(&mut r, rows * cols, 1.0), format).unwrap();
        let n = r.random_range(1..40);
        let ids: Vec<u32> = (0..n).map(|_| r.random_range(0..rows as u32)).collect();
        let g = single(Op::Embedding { table: wedge::WeightId(0) }, &[(Elem::U32, vec![n])], &["t"]);
        compare(&format!("gather {format} [{rows},{cols}] x{n}"), "gather", &g, &[w], &[HostTensor::u32(&[n], &ids)]);
    }
}

#[test]
fn elementwise_with_broadcast() {
    let mut r = rng(3);
    for case in 0..8 {
        let shape = vec![r.random_range(1..5), r.random_range(1..70), r.random_range(1..300)];
        let bshape = shape[case % 3..].to_vec();
        let n: usize = shape.iter().product();
        let bn: usize = bshape.iter().product();
        let op = if case % 2 == 0 { BinaryOp::Add } else { BinaryOp::Mul };
        let g = single(Op::Binary(op), &[(Elem::F32, shape.clone()), (Elem::F32, bshape.clone())], &[]);
        let a = HostTensor::f32(&shape, &rand_vec(&mut r, n, 2.0));
        let b = HostTensor::f32(&bshape, &rand_vec(&mut r, bn, 2.0));
        compare(&format!("{op:?} {shape:?} {bshape:?}"), "binary", &g, &[], &[a, b]);
    }
    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Silu, Activation::Relu] {
        let n = r.random_range(1..5000);
        let mut v = rand_vec(&mut r, n, 6.0);
        v.extend([-30.0, 30.0, 0.0, -1e-3]);
        let x = HostTensor::f32(&[n + 4], &v);
        let g2 = single(Op::Act(act), &[(Elem::F32, vec![n + 4])], &[]);
        compare(&format!("{act:?} n={n}"), "activation", &g2, &[], &[x]);
    }
}

#[test]
fn row_reductions() {
    let mut r = rng(4);
    for case in 0..6 {
        let rows = r.random_range(1..40);
        let cols = [1, 3, 64, 255, 256, 257, 1000][r.random_range(0..7)];
        let x = HostTensor::f32(&[rows, cols], &rand_vec(&mut r, rows * cols, 3.0));
        let gamma = Weight::from_f32("g", &[cols], &rand_vec(&mut r, cols, 1.0)).unwrap();
        let beta = Weight::quantize("b", &[cols], &rand_vec(&mut r, cols, 1.0), Format::F16).unwrap();
        let (id0, id1) = (wedge::WeightId(0), wedge::WeightId(1));
        let inp = [(Elem::F32, vec![rows, cols])];
        let what = format!("[{rows},{cols}] case {case}");
        let ln = single(Op::LayerNorm { gamma: id0, beta: id1, eps: 1e-5 }, &inp, &["g", "b"]);
        compare(&format!("layernorm {what}"), "layernorm", &ln, &[gamma.clone(), beta], std::slice::from_ref(&x));
        let rms = single(Op::RmsNorm { gamma: id0, eps: 1e-6 }, &inp, &["g"]);
        compare(&format!("rmsnorm {what}"), "rmsnorm", &rms, std::slice::from_ref(&gamma), std::slice::from_ref(&x));
        let sm = single(Op::Softmax, &inp, &[]);
        compare(&format!("softmax {what}"), "softmax", &sm, &[], std::slice::from_ref(&x));
        let l2 = single(Op::L2Normalize { eps: 1e-12 }, &inp, &[]);
        compare(&format!("l2 {what}"), "l2_normalize", &l2, &[], &[x]);
    }
}

#[test]
fn attention_masks_and_grouped_heads() {
    let mut r = rng(5);
    let cases = [
        // (batch, q_len, kv_len, heads, kv_heads, head_dim, causal, masked)
        (2, 5, 5, 4, 4, 8, false, true),
        (1, 1, 1, 1, 1, 1, false, false),
        (3, 70, 70, 2, 2, 32, false, true),
        (1, 9, 9, 6, 2, 16, true, true),
        (2, 3, 130, 8, 1, 64, true, false),
        (1, 1, 200, 9, 3, 64, true, true),
        (1, 4, 67, 2, 1, 256, false, true),
        (2, 65, 65, 3, 3, 24, true, false),
    ];
    for (bi, s, t, h, kvh, d, causal, masked) in cases {
        let q = HostTensor::f32(&[bi, s, h * d], &rand_vec(&mut r, bi * s * h * d, 1.0));
        let k = HostTensor::f32(&[bi, t, kvh * d], &rand_vec(&mut r, bi * t * kvh * d, 1.0));
        let v = HostTensor::f32(&[bi, t, kvh * d], &rand_vec(&mut r, bi * t * kvh * d, 1.0));
        let mut inputs = vec![q, k, v];
        let mut shapes =
            vec![(Elem::F32, vec![bi, s, h * d]), (Elem::F32, vec![bi, t, kvh * d]), (Elem::F32, vec![bi, t, kvh * d])];
        if masked {
            // each batch row keeps a random prefix (padding after it); one row fully masked
            let mut m = vec![0u32; bi * t];
            for b in 0..bi {
                let keep = if b == 1 { 0 } else { r.random_range(1..=t) };
                m[b * t..b * t + keep].fill(1);
            }
            inputs.push(HostTensor::u32(&[bi, t], &m));
            shapes.push((Elem::U32, vec![bi, t]));
        }
        let op = Op::Attention { heads: h, kv_heads: kvh, head_dim: d, causal, scale: 1.0 / (d as f32).sqrt() };
        let g = single(op, &shapes, &[]);
        compare(
            &format!("attention b={bi} s={s} t={t} h={h}/{kvh} d={d} causal={causal} masked={masked}"),
            "attention",
            &g,
            &[],
            &inputs,
        );
    }
}

#[test]
fn rope_pool_transpose() {
    let mut r = rng(6);
    let factors = RopeScaling::Factors((0..32).map(|i| 1.0 + i as f32 / 4.0).collect());
    for (mode, (b, s, h, d), scaling) in [
        (RopeMode::Interleaved, (2, 7, 3, 8), RopeScaling::None),
        (RopeMode::Half, (1, 33, 9, 64), RopeScaling::None),
        (RopeMode::Interleaved, (3, 5, 1, 2), RopeScaling::Linear { factor: 4.0 }),
        (RopeMode::Half, (2, 9, 2, 64), factors),
    ] {
        let x = HostTensor::f32(&[b, s, h * d], &rand_vec(&mut r, b * s * h * d, 1.0));
        let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32 + 3 * (i / s) as u32).collect();
        let g = single(
            Op::Rope { heads: h, head_dim: d, base: 10000.0, mode, scaling },
            &[(Elem::F32, vec![b, s, h * d]), (Elem::U32, vec![b, s])],
            &[],
        );
        compare(&format!("rope {mode:?} {b}x{s}x{h}x{d}"), "rope", &g, &[], &[x, HostTensor::u32(&[b, s], &pos)]);
    }
    for (b, s, hd) in [(1, 1, 1), (3, 17, 384), (2, 300, 5)] {
        let x = HostTensor::f32(&[b, s, hd], &rand_vec(&mut r, b * s * hd, 1.0));
        let mask: Vec<u32> = (0..b * s).map(|i| u32::from(i % s < 1 + (i / s) * 3 % s)).collect();
        let g = single(Op::MeanPool, &[(Elem::F32, vec![b, s, hd]), (Elem::U32, vec![b, s])], &[]);
        compare(&format!("mean_pool {b}x{s}x{hd}"), "mean_pool", &g, &[], &[x, HostTensor::u32(&[b, s], &mask)]);
    }
    for (shape, perm) in [
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
        (vec![7, 33], vec![1, 0]),
        (vec![3, 5, 65], vec![2, 0, 1]),
        (vec![2, 3, 4, 5], vec![3, 2, 1, 0]),
    ] {
        let n: usize = shape.iter().product();
        let x = HostTensor::f32(&shape, &rand_vec(&mut r, n, 1.0));
        let g = single(Op::Transpose(perm.clone()), &[(Elem::F32, shape.clone())], &[]);
        compare(&format!("transpose {shape:?} {perm:?}"), "transpose", &g, &[], &[x]);
    }
}

#[test]
fn ids_outside_the_table_are_rejected_on_both_backends() {
    let w = Weight::from_f32("t", &[4, 3], &[0.0; 12]).unwrap();
    let g = single(Op::Embedding { table: wedge::WeightId(0) }, &[(Elem::U32, vec![2])], &["t"]);
    let bad = [HostTensor::u32(&[2], &[1, 4])];
    let cpu = wedge::Session::new(&wedge::Device::cpu(), g.clone(), vec![w.clone()]).unwrap();
    let err = cpu.run(&bad).unwrap_err().to_string();
    assert!(err.contains("outside the embedding table"), "{err}");
    if let Some(d) = gpu() {
        let err = wedge::Session::new(d, g, vec![w]).unwrap().run(&bad).unwrap_err().to_string();
        assert!(err.contains("outside the embedding table"), "{err}");
    }
}
