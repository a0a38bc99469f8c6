// Fused attention, one workgroup per (query row, head, batch): scores, padding
// and causal masks (a query at a padding position itself gives zeros), a streaming (online) softmax and the weighted sum of values,
// over keys in chunks of WG so that any key length fits in fixed workgroup memory.
// Grouped-query attention: query head h reads key/value head h / (heads / kv_heads).
// `softmax.wgsl` (appended by wedge-shaders) holds NEG and the workgroup `reduce`.

const WG: u32 = 64u;      // template: invocations per workgroup = keys per chunk (power of two)
const DPT: u32 = 4u;      // head dimensions each invocation accumulates (head_dim <= WG * DPT)
const MAX_D: u32 = 256u;  // largest head size

struct Params {
    batch: u32,
    q_len: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    causal: u32,
    masked: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> own_masked: u32;


@compute @workgroup_size(WG)
fn attention(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let b = wid.z;
    let tid = lid.x;
    let d = p.head_dim;
    let q_off = ((b * p.q_len + i) * p.heads + h) * d;
    // A query at a masked (padding) position (query i sits at key i + kv_len - q_len)
    // gets zeros: nothing reads it, and a padded batch then costs its real rows only. Broadcast so the branch is workgroup-uniform.
    if (tid == 0u) {
        own_masked = select(0u, 1u, p.masked == 1u && p.kv_len >= p.q_len
                                     && mask[b * p.kv_len + i + (p.kv_len - p.q_len)] == 0u);
    }
    if (workgroupUniformLoad(&own_masked) == 1u) {
        for (var c = tid; c < d; c += WG) {
            out[q_off + c] = 0.0;
        }
        return;
    }
    for (var c = tid; c < d; c += WG) {
        qs[c] = q[q_off + c] * p.scale;
    }
    workgroupBarrier();
    let kvh = h / (p.heads / p.kv_heads);
    var t_end = p.kv_len;
    if (p.causal == 1u) {
        t_end = min(p.kv_len, i + (p.kv_len - p.q_len) + 1u);
    }
    var m = NEG;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var t0 = 0u; t0 < t_end; t0 += WG) {
        let t = t0 + tid;
        var sc = NEG;
        var valid = t < t_end;
        if (valid && p.masked == 1u) {
            valid = mask[b * p.kv_len + t] != 0u;
        }
        if (valid) {
            let k_off = ((b * p.kv_len + t) * p.kv_heads + kvh) * d;
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                dot += qs[c] * k[k_off + c];
            }
            sc = dot;
        }
        let new_m = max(m, reduce(sc, tid, true));
        var pr = 0.0;
        if (valid) { pr = exp(sc - new_m); }
        probs[tid] = pr;
        let corr = exp(m - new_m);
        l = l * corr + reduce(pr, tid, false);
        // reduce() ends with a barrier, so every probs[] write is visible here
        let n_chunk = min(WG, t_end - t0);
        for (var j = 0u; j < DPT; j++) {
            let c = tid + j * WG;
            if (c < d) {
                var sum = acc[j] * corr;
                for (var tt = 0u; tt < n_chunk; tt++) {
                    let v_off = ((b * p.kv_len + t0 + tt) * p.kv_heads + kvh) * d;
                    sum += probs[tt] * v[v_off + c];
                }
                acc[j] = sum;
            }
        }
        m = new_m;
        workgroupBarrier();
    }
    var inv = 0.0;
    if (l > 0.0) { inv = 1.0 / l; }
    for (var j = 0u; j < DPT; j++) {
        let c = tid + j * WG;
        if (c < d) {
            out[q_off + c] = acc[j] * inv;
        }
    }
}
