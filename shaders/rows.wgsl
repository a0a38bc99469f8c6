// Row-wise reductions, one workgroup per row: layernorm, rmsnorm, softmax and
// L2 normalization over the last dimension.

const WG: u32 = 256u; // template: invocations per workgroup (power of two)

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

fn reduce_sum(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) { red[tid] += red[tid + st]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) { red[tid] = max(red[tid], red[tid + st]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn layernorm(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let tid = lid.x;
    var sum = 0.0;
    for (var c = tid; c < p.cols; c += WG) { sum += x[base + c]; }
    let mean = reduce_sum(sum, tid) / f32(p.cols);
    var sq = 0.0;
    for (var c = tid; c < p.cols; c += WG) {
        let d = x[base + c] - mean;
        sq += d * d;
    }
    let inv = inverseSqrt(reduce_sum(sq, tid) / f32(p.cols) + p.eps);
    for (var c = tid; c < p.cols; c += WG) {
        out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}

@compute @workgroup_size(WG)
fn rmsnorm(@builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let tid = lid.x;
    var sq = 0.0;
    for (var c = tid; c < p.cols; c += WG) {
        let v = x[base + c];
        sq += v * v;
    }
    let inv = inverseSqrt(reduce_sum(sq, tid) / f32(p.cols) + p.eps);
    for (var c = tid; c < p.cols; c += WG) {
        out[base + c] = x[base + c] * inv * gamma[c];
    }
}

@compute @workgroup_size(WG)
fn softmax(@builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let tid = lid.x;
    var mx = -0x1.fffffep+127f; // -f32::MAX, exact (a rounded decimal is rejected by Tint)
    for (var c = tid; c < p.cols; c += WG) { mx = max(mx, x[base + c]); }
    let m = reduce_max(mx, tid);
    var sum = 0.0;
    for (var c = tid; c < p.cols; c += WG) { sum += exp(x[base + c] - m); }
    let inv = 1.0 / reduce_sum(sum, tid);
    for (var c = tid; c < p.cols; c += WG) {
        out[base + c] = exp(x[base + c] - m) * inv;
    }
}

@compute @workgroup_size(WG)
fn l2_normalize(@builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let tid = lid.x;
    var sq = 0.0;
    for (var c = tid; c < p.cols; c += WG) {
        let v = x[base + c];
        sq += v * v;
    }
    let inv = 1.0 / max(sqrt(reduce_sum(sq, tid)), p.eps);
    for (var c = tid; c < p.cols; c += WG) {
        out[base + c] = x[base + c] * inv;
    }
}
