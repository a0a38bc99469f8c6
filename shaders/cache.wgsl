// Kernels over state tensors (key/value caches that outlive a run): writing token rows into
// a cache, attention of query rows over their sequences' cached rows, and picking the rows
// whose logits are wanted. `wedge_cpu::cache` is the CPU twin.
//
// A cache is [seqs, ctx, width] row-major, as f32 words or (HALF) as f16 pairs packed by
// pack2x16float, the lower value first. Token t of a step belongs to sequence seq[t] at
// position pos[t]; the plan has checked both against the cache's shape. `softmax.wgsl`
// (appended by wedge-shaders) holds NEG and the workgroup `reduce`.

override HALF: bool = false;

const WG: u32 = 64u;      // template: invocations per workgroup = keys per chunk (power of two)
const DPT: u32 = 4u;      // head dimensions each invocation accumulates (head_dim <= WG * DPT)
const MAX_D: u32 = 256u;  // largest head size

struct Params {
    tokens: u32,   // rows of x / q (select_rows: rows picked)
    width: u32,    // cache values per row (select_rows: values per row)
    ctx: u32,      // rows per sequence in the cache
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> seq: array<u32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;
@group(0) @binding(4) var<storage, read> vc: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> probs: array<f32, WG>;


fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Words per cache row.
fn row_words() -> u32 {
    if (HALF) { return p.width / 2u; }
    return p.width;
}

// One word of the cache per invocation: f32 values as their bits, f16 pairs packed.
@compute @workgroup_size(WG)
fn cache_write(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let rw = row_words();
    if (i >= p.tokens * rw) { return; }
    let t = i / rw;
    let j = i % rw;
    let dst = (seq[t] * p.ctx + pos[t]) * rw + j;
    if (HALF) {
        let src = t * p.width + 2u * j;
        kc[dst] = pack2x16float(vec2<f32>(x[src], x[src + 1u]));
    } else {
        kc[dst] = bitcast<u32>(x[t * p.width + j]);
    }
}

// Value `c` of cache row `row` (an index over rows of the whole cache).
fn load_k(row: u32, c: u32) -> f32 {
    if (HALF) {
        let pair = unpack2x16float(kc[(row * p.width + c) / 2u]);
        return select(pair.x, pair.y, (c & 1u) == 1u);
    }
    return bitcast<f32>(kc[row * p.width + c]);
}

fn load_v(row: u32, c: u32) -> f32 {
    if (HALF) {
        let pair = unpack2x16float(vc[(row * p.width + c) / 2u]);
        return select(pair.x, pair.y, (c & 1u) == 1u);
    }
    return bitcast<f32>(vc[row * p.width + c]);
}

// One workgroup per (token, head): the token's query head over rows 0..=pos of its
// sequence, keys in chunks of WG with a streaming softmax (any context fits).
@compute @workgroup_size(WG)
fn cached_attention(@builtin(local_invocation_id) lid: vec3<u32>,
                    @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    let h = wid.y;
    let tid = lid.x;
    let d = p.head_dim;
    let q_off = (t * p.heads + h) * d;
    for (var c = tid; c < d; c += WG) {
        qs[c] = x[q_off + c];
    }
    workgroupBarrier();
    let kvh = h / (p.heads / p.kv_heads);
    let base = seq[t] * p.ctx;
    let keys = pos[t] + 1u;
    var m = NEG;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var j0 = 0u; j0 < keys; j0 += WG) {
        let j = j0 + tid;
        var sc = NEG;
        let valid = j < keys;
        if (valid) {
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                dot += qs[c] * load_k(base + j, kvh * d + c);
            }
            sc = dot * p.scale;
        }
        let new_m = max(m, reduce(sc, tid, true));
        var pr = 0.0;
        if (valid) { pr = exp(sc - new_m); }
        probs[tid] = pr;
        let corr = exp(m - new_m);
        l = l * corr + reduce(pr, tid, false);
        // reduce() ends with a barrier, so every probs[] write is visible here
        let n_chunk = min(WG, keys - j0);
        for (var jj = 0u; jj < DPT; jj++) {
            let c = tid + jj * WG;
            if (c < d) {
                var sum = acc[jj] * corr;
                for (var k = 0u; k < n_chunk; k++) {
                    sum += probs[k] * load_v(base + j0 + k, kvh * d + c);
                }
                acc[jj] = sum;
            }
        }
        m = new_m;
        workgroupBarrier();
    }
    var inv = 0.0;
    if (l > 0.0) { inv = 1.0 / l; }
    for (var jj = 0u; jj < DPT; jj++) {
        let c = tid + jj * WG;
        if (c < d) {
            out[q_off + c] = acc[jj] * inv;
        }
    }
}

// Rows seq[r] of x (`width` values each) into out: `seq` holds the row indices here.
@compute @workgroup_size(WG)
fn select_rows(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.tokens * p.width) { return; }
    let r = i / p.width;
    let c = i % p.width;
    out[i] = x[seq[r] * p.width + c];
}
