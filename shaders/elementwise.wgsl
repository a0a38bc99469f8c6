// Elementwise kernels: binary ops with suffix broadcasting, and activations.

override OP: u32 = 0u;   // 0 add, 1 mul
override ACT: u32 = 0u;  // 0 none, 1 gelu (erf), 2 gelu (tanh), 3 silu, 4 relu

const WG: u32 = 256u; // template: invocations per workgroup

struct Params {
    n: u32,   // elements of a and out
    bn: u32,  // elements of b (b broadcasts: b[i % bn])
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), as in qweight.wgsl.
fn erf_approx(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return sign(v) * (1.0 - poly * exp(-v * v));
}

fn act(v: f32) -> f32 {
    if (ACT == 1u) { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
    if (ACT == 2u) {
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    }
    if (ACT == 3u) { return v / (1.0 + exp(-v)); }
    if (ACT == 4u) { return max(v, 0.0); }
    return v;
}

@compute @workgroup_size(WG)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let bv = b[i % p.bn];
    if (OP == 1u) {
        out[i] = a[i] * bv;
    } else {
        out[i] = a[i] + bv;
    }
}

@compute @workgroup_size(WG)
fn activation(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    out[i] = act(a[i]);
}
