//! Matmul kernel throughput: GEMV (1 row) and GEMM (128 rows) with f32, q8, q8a8 and q4
//! weights at 4096×4096 and MiniLM's 384×384, 1536×384 and 384×1536, on the GPU adapter and on the CPU
//! backend (the GEMV with and without subgroup reductions where the adapter has them). Prints GB/s of weight bytes, GFLOP/s, and the fraction of the device's
//! memory bandwidth where it is known (set `WEDGE_BW_GBS` to supply it).
//!
//! `cargo bench -p wedge --bench kernels [-- --quick] [-- --json] [-- --cpu] [-- --rows N] [-- --only q8]`
//! (`--cpu`: skip the GPU; `--rows`: GEMM rows, default 128, 4096 is MiniLM's batch of 32 × 128
//! tokens; `--only`: one weight format)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use wedge::{Activation, Device, Elem, Format, Graph, HostTensor, Op, Plan, Weight, WeightInfo};

struct Row {
    device: String,
    kernel: &'static str,
    format: String,
    m: usize,
    n: usize,
    k: usize,
    secs: f64,
    weight_bytes: usize,
}

fn known_bandwidth(name: &str) -> Option<f64> {
    if let Ok(v) = std::env::var("WEDGE_BW_GBS") {
        return v.parse().ok();
    }
    let n = name.to_lowercase();
    // vendor figures for the HBM parts this project is lent
    [("h200", 4800.0), ("h100 pcie", 2000.0), ("h100", 3350.0), ("a100", 2039.0)]
        .iter()
        .find(|(k, _)| n.contains(k))
        .map(|(_, v)| *v)
}

/// Repeats `f` until `budget` has passed (at least `min` times, once when a single call
/// outlasts the budget) and returns the median seconds.
fn time(budget: Duration, min: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f(); // warm-up
    let min = if t.elapsed() > budget { 1 } else { min };
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min || start.elapsed() < budget {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 1000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn matmul_graph(m: usize, k: usize) -> Graph {
    let mut g = Graph::default();
    let x = g.input("x", Elem::F32, vec![wedge::Dim::Fixed(m), wedge::Dim::Fixed(k)]);
    let w = g.weight("w");
    let y = g.push(Op::MatMul { weight: w, bias: None, act: Activation::None }, &[x]);
    g.output("y", y);
    g
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let budget = Duration::from_millis(if quick { 150 } else { 800 });
    let shapes = [(384usize, 384usize), (1536, 384), (384, 1536), (4096, 4096)];
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let gemm_rows: usize = value("--rows").map(|v| v.parse().expect("--rows N")).unwrap_or(128);
    let mut formats = vec![Format::F32, Format::Q8, Format::Q8A8, Format::Q4 { group: 32 }];
    if let Some(only) = value("--only") {
        formats.retain(|f| f.to_string() == *only);
    }
    let gpu = if args.iter().any(|a| a == "--cpu") { None } else { Device::gpu().ok() };
    let gpu_name = gpu.as_ref().and_then(|d| d.adapter()).map(|a| a.to_string());
    let mut rows = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for &(n, k) in &shapes {
        let values: Vec<f32> = (0..n * k).map(|_| next()).collect();
        for &format in &formats {
            let w = Weight::quantize("w", &[n, k], &values, format).expect("quantize");
            for (kernel, m) in [("gemv", 1usize), ("gemm", gemm_rows)] {
                let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
                // CPU backend
                let mut out = vec![0f32; m * n];
                // the backend's path: weights laid out once, as when a model loads
                let cw = wedge_cpu::CpuWeights::new(vec![w.clone()]);
                let secs = time(budget, 3, || cw.matmul(0, &x, None, Activation::None, (m, k, n), &mut out));
                eprintln!("cpu {kernel} {format} {n}x{k}: {:.1} µs", secs * 1e6);
                rows.push(Row {
                    device: "cpu".into(),
                    kernel,
                    format: format.to_string(),
                    m,
                    n,
                    k,
                    secs,
                    weight_bytes: w.packed_bytes(),
                });
                // GPU adapter: resident buffers, many dispatches per submission, timed to completion
                let Some(ctx) = gpu.as_ref().and_then(|d| d.gpu_context()) else { continue };
                // the GEMV both ways where the adapter has subgroups (q8a8 has one GEMV), the
                // GEMM both ways where it has shader-f16 (q8a8 keeps its integer GEMM)
                let (default_sg, default_f16) = (ctx.subgroups(), ctx.f16());
                let a = ctx.summary();
                let mut variants: Vec<(&'static str, bool, bool)> = Vec::new();
                if kernel == "gemv" && a.subgroups && format != Format::Q8A8 {
                    variants.extend([("gemv", false, default_f16), ("gemv-sg", true, default_f16)]);
                } else if kernel == "gemm" && a.shader_f16 && format != Format::Q8A8 {
                    variants.extend([("gemm", default_sg, false), ("gemm-h", default_sg, true)]);
                } else {
                    variants.push((kernel, default_sg, default_f16));
                }
                for (label, sg, f16) in variants {
                    ctx.set_subgroups(sg);
                    ctx.set_f16(f16);
                    let g = matmul_graph(m, k);
                    let plan = Plan::compile(&g, &[WeightInfo::from(&w)], &[vec![m, k]]).expect("plan");
                    let weights = wedge_gpu::GpuWeights::upload(ctx, std::slice::from_ref(&w)).expect("upload");
                    let run = pollster::block_on(wedge_gpu::ResidentRun::prepare(
                        ctx,
                        std::sync::Arc::new(plan.clone()),
                        &weights,
                    ))
                    .expect("prepare");
                    ctx.set_subgroups(default_sg);
                    ctx.set_f16(default_f16);
                    run.write_inputs(&[HostTensor::f32(&[m, k], &x)]).expect("inputs");
                    run.submit(1);
                    run.wait().expect("wait");
                    // size the batch of dispatches so one submission takes ~20 ms
                    let t = Instant::now();
                    run.submit(1);
                    run.wait().expect("wait");
                    let per = t.elapsed().as_secs_f64();
                    let reps = ((0.02 / per.max(1e-7)) as usize).clamp(1, 2000);
                    let secs = time(budget, 3, || {
                        run.submit(reps);
                        run.wait().expect("wait");
                    }) / reps as f64;
                    eprintln!("gpu {label} {format} {n}x{k}: {:.1} µs", secs * 1e6);
                    rows.push(Row {
                        device: "gpu".into(),
                        kernel: label,
                        format: format.to_string(),
                        m,
                        n,
                        k,
                        secs,
                        weight_bytes: w.packed_bytes(),
                    });
                }
            }
        }
    }
    let bw = gpu_name.as_deref().and_then(known_bandwidth);
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let gbs = r.weight_bytes as f64 / r.secs / 1e9;
                serde_json::json!({
                    "device": if r.device == "gpu" { gpu_name.clone().unwrap_or_default() } else { "cpu".into() },
                    "kernel": r.kernel, "format": r.format, "m": r.m, "n": r.n, "k": r.k,
                    "us": r.secs * 1e6, "weight_gb_s": gbs,
                    "gflop_s": 2.0 * (r.m * r.n * r.k) as f64 / r.secs / 1e9,
                    "bandwidth_fraction": if r.device == "gpu" { bw.map(|b| gbs / b) } else { None },
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
        return;
    }
    println!("GPU adapter: {}", gpu_name.as_deref().unwrap_or("none"));
    if let Some(b) = bw {
        println!("GPU memory bandwidth: {b} GB/s");
    }
    println!("CPU threads: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!(
        "{:<5} {:<7} {:<7} {:>4} {:>5}x{:<5} {:>10} {:>9} {:>9} {:>7}",
        "dev", "kern", "weights", "m", "n", "k", "time µs", "GB/s", "GFLOP/s", "of BW"
    );
    for r in &rows {
        let gbs = r.weight_bytes as f64 / r.secs / 1e9;
        let gflops = 2.0 * (r.m * r.n * r.k) as f64 / r.secs / 1e9;
        let frac = match (r.device.as_str(), bw) {
            ("gpu", Some(b)) => format!("{:.1}%", 100.0 * gbs / b),
            _ => "-".into(),
        };
        println!(
            "{:<5} {:<7} {:<7} {:>4} {:>5}x{:<5} {:>10.1} {:>9.2} {:>9.2} {:>7}",
            r.device,
            r.kernel,
            r.format,
            r.m,
            r.n,
            r.k,
            r.secs * 1e6,
            gbs,
            gflops,
            frac
        );
    }
}
