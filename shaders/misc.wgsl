// Data movement and pooling: rotary embeddings, masked mean pooling, and
// rank-4 transposes. One invocation per output element (or element pair).

const WG: u32 = 256u; // template: invocations per workgroup

struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Rotary embedding. Params: a tokens, b heads, c head_dim, d mode (0 interleaved
// pairs (2i, 2i+1), 1 half pairs (i, i + d/2)). idx: position per token.
// table: inverse frequencies (head_dim / 2), computed once on the host.
@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let half = p.c / 2u;
    if (i >= p.a * p.b * half) { return; }
    let pi = i % half;
    let th = i / half;
    let t = th / p.b;
    let base = th * p.c;
    var i0 = pi;
    var i1 = pi + half;
    if (p.d == 0u) {
        i0 = 2u * pi;
        i1 = 2u * pi + 1u;
    }
    let ang = f32(idx[t]) * table[pi];
    let cs = cos(ang);
    let sn = sin(ang);
    let x0 = x[base + i0];
    let x1 = x[base + i1];
    out[base + i0] = x0 * cs - x1 * sn;
    out[base + i1] = x0 * sn + x1 * cs;
}

// Masked mean over the sequence. Params: a batch, b seq, c hidden. idx: mask [batch, seq].
@compute @workgroup_size(WG)
fn mean_pool(@builtin(global_invocation_id) gid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.a * p.c) { return; }
    let bi = i / p.c;
    let hi = i % p.c;
    var sum = 0.0;
    var cnt = 0.0;
    for (var s = 0u; s < p.b; s++) {
        if (idx[bi * p.b + s] != 0u) {
            sum += x[(bi * p.b + s) * p.c + hi];
            cnt += 1.0;
        }
    }
    out[i] = sum / max(cnt, 1e-9);
}

// Rank-4 permutation. Params: a..d output dimensions, e..h input strides of each output dimension.
@compute @workgroup_size(WG)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.a * p.b * p.c * p.d) { return; }
    let i3 = i % p.d;
    let r2 = i / p.d;
    let i2 = r2 % p.c;
    let r1 = r2 / p.c;
    let i1 = r1 % p.b;
    let i0 = r1 / p.b;
    out[i] = x[i0 * p.e + i1 * p.f + i2 * p.g + i3 * p.h];
}
