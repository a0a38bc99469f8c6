//! Shared test helpers: the GPU device (required under WEDGE_REQUIRE_GPU=1), random
//! data, single-op graphs and the tolerance table.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::sync::OnceLock;

use rand::{Rng, SeedableRng, rngs::StdRng};
use wedge::{Device, Elem, Format, Graph, HostTensor, Op, Session, Weight};

/// The GPU device, opened once per test binary. Fails the test when
/// `WEDGE_REQUIRE_GPU=1` and no adapter exists; otherwise returns `None` to skip.
pub(crate) fn gpu() -> Option<&'static Device> {
    static DEV: OnceLock<Result<Device, String>> = OnceLock::new();
    let open = || {
        let d = Device::gpu().map_err(|e| e.to_string())?;
        // f32 arithmetic, which the tolerance table is for; `gpu_f16` tests the f16 GEMM
        if let Some(ctx) = d.gpu_context() {
            ctx.set_f16(false);
        }
        Ok(d)
    };
    match DEV.get_or_init(open) {
        Ok(d) => Some(d),
        Err(e) => {
            wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", "GPU against CPU comparisons", e);
            None
        }
    }
}

/// A GPU device of its own (toggling it cannot reach other tests) with the f16 GEMM on, or
/// `None` when there is no GPU or it has no `shader-f16` (a failure under
/// `WEDGE_REQUIRE_GPU=1` without a GPU, as for [`gpu`], or under `WEDGE_REQUIRE_F16=1`
/// without shader-f16).
pub(crate) fn gpu_f16() -> Option<Device> {
    gpu()?;
    let d = Device::gpu().expect("a second GPU device");
    let ctx = d.gpu_context().expect("a GPU context");
    if !ctx.set_f16(true) {
        let why = format!("{} has no shader-f16", ctx.summary());
        wedge_testkit::unavailable("WEDGE_REQUIRE_F16", "the f16 GEMM against its CPU twin", &why);
        return None;
    }
    Some(d)
}

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub(crate) fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// One table of tolerances: (absolute, relative) by op, for GPU against CPU.
pub(crate) fn tolerance(op: &str) -> (f32, f32) {
    match op {
        // summation order differs; values are O(sqrt(k))
        "matmul" => (2e-4, 2e-4),
        "gather" | "binary" | "transpose" | "mean_pool" => (1e-6, 1e-6),
        // erf is approximated on the GPU (A&S 7.1.26, 1.5e-7)
        "activation" => (2e-6, 1e-5),
        "layernorm" | "rmsnorm" | "softmax" | "l2_normalize" => (1e-5, 1e-5),
        "attention" => (1e-5, 1e-4),
        "rope" => (2e-5, 1e-5),
        "encoder" | "decoder" => (2e-4, 2e-3),
        // the f16 GEMM (x and weights rounded to f16, chunks of 16 summed in f16): measured
        // on lavapipe, max |error| 3.3e-4 on unit-norm embeddings, 8.7e-3 on logits of |3.2|
        "encoder_f16" => (2e-3, 1e-2),
        "decoder_f16" => (2e-2, 1e-2),
        other => panic!("no tolerance for {other}"),
    }
}

/// The f16 GEMM's tolerances, in units of 2^-11 · Σ_k |x_k · w_k| per output: to its CPU
/// twin (which rounds as the kernel does, up to the kernel's choice of rounding and fused
/// multiply-adds), and to the f32 definition (three roundings per product and up to 16 adds
/// per chunk can each cost one unit in the worst case; random signs make it far less).
pub(crate) const F16_TWIN_UNITS: f32 = 2.0;
pub(crate) const F16_F32_UNITS: f32 = 8.0;

/// Compares element by element and reports the first failure with index, got and want.
pub(crate) fn assert_close(what: &str, op: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (atol, rtol) = tolerance(op);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: index {i}: got {g}, want {w} (tolerance {atol} + {rtol}·|want|)");
    }
}

/// A graph of one op over inputs of the given element types and shapes.
pub(crate) fn single(op: Op, inputs: &[(Elem, Vec<usize>)], weights: &[&str]) -> Graph {
    let mut g = Graph::default();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, (e, s))| g.input(&format!("in{i}"), *e, s.iter().map(|&d| wedge::Dim::Fixed(d)).collect()))
        .collect();
    for w in weights {
        g.weight(w);
    }
    let y = g.push(op, &ids);
    g.output("y", y);
    g
}

/// Runs a graph on the CPU and, when present, on the GPU; returns (cpu, gpu) outputs.
pub(crate) fn both(
    graph: &Graph,
    weights: &[Weight],
    inputs: &[HostTensor],
) -> (Vec<HostTensor>, Option<Vec<HostTensor>>) {
    let cpu = Session::new(&Device::cpu(), graph.clone(), weights.to_vec())
        .expect("cpu session")
        .run(inputs)
        .expect("cpu run");
    let gpu = gpu()
        .map(|d| Session::new(d, graph.clone(), weights.to_vec()).expect("gpu session").run(inputs).expect("gpu run"));
    (cpu, gpu)
}

pub(crate) const FORMATS: [Format; 15] = [
    Format::F32,
    Format::F16,
    Format::Q8,
    Format::Q8A8,
    Format::Q4 { group: 32 },
    Format::Q4 { group: 64 },
    Format::Q4 { group: 128 },
    Format::Q4_1 { group: 32 },
    Format::Q8_0 { group: 32 },
    Format::Q4K,
    Format::Q6K,
    Format::Bf16,
    Format::Q5_0,
    Format::Q5_1,
    Format::Q5K,
];

/// `k` as a row length `format` can hold: whole super-blocks of 256 for the k-quants,
/// else `k`.
#[allow(dead_code)]
pub(crate) fn cols_for(format: Format, k: usize) -> usize {
    if format.super_blocks() { k.div_ceil(256).max(1) * 256 } else { k }
}
