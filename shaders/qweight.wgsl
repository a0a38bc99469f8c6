// Kernels over packed weights: the fused dequantizing GEMV (few rows), the tiled
// GEMM (many rows) and the embedding gather. The packing is defined once in
// wedge-core (`quant.rs`); `affine`, `raw` and `load_w` mirror it.

// Scalar knobs (pipeline-overridable constants).
override WTYPE: u32 = 0u;       // 0 f32, 1 f16, 2 q8, 3 q4, 4 q4_1, 5 q8a8 (stored as q8), 6 q8_0, 7 q4_k, 8 q6_k,
                                //   9 bf16, 10 q5_0, 11 q5_1, 12 q5_k
override ACT: u32 = 0u;         // 0 none, 1 gelu (erf), 2 gelu (tanh), 3 silu, 4 relu
override HAS_BIAS: bool = false;

// Shape-giving parameters (checked template substitution by wedge-shaders).
const WG: u32 = 64u; // template: invocations per workgroup (gemv, gather)
const TPR: u32 = 1u; // template: invocations that share one gemv output column (power of two)
const TS: u32 = 16u; // template: gemm invocations per tile side

const MAXM: u32 = 4u;    // rows of x a gemv dispatch handles
const BK: u32 = 16u;     // gemm reduction chunk
const MICRO: u32 = 4u;   // gemm outputs per invocation along each side
const TILE: u32 = TS * MICRO;

struct Params {
    m: u32,      // rows of x (gather: number of ids)
    k: u32,      // reduction size (gather: table columns)
    n: u32,      // output columns (gather: table rows)
    wpr: u32,    // packed words per weight row
    group: u32,  // q4 group size
    gpr: u32,    // groups per weight row
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> s: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read> ids: array<u32>;

var<workgroup> red: array<f32, WG * MAXM>;
var<workgroup> xs: array<f32, TILE * BK>;
var<workgroup> ws: array<f32, TILE * BK>;

fn vpw() -> u32 {
    if (WTYPE == 0u) { return 1u; }
    if (WTYPE == 1u || WTYPE == 9u) { return 2u; }
    if (WTYPE == 2u || WTYPE == 5u || WTYPE == 6u) { return 4u; }
    return 8u;
}

// (scale, offset) that turn the raw values of word `wi` of weight row `row` into weights.
fn affine(row: u32, wi: u32) -> vec2<f32> {
    if (WTYPE == 2u || WTYPE == 5u) {
        return vec2<f32>(bitcast<f32>(s[row]), 0.0);
    }
    if (WTYPE == 3u) {
        let g = row * p.gpr + (wi * 8u) / p.group;
        let pair = unpack2x16float(s[g >> 1u]);
        let sc = select(pair.x, pair.y, (g & 1u) == 1u);
        return vec2<f32>(sc, -8.0 * sc);
    }
    if (WTYPE == 4u) {
        let g = row * p.gpr + (wi * 8u) / p.group;
        return unpack2x16float(s[g]);
    }
    if (WTYPE == 6u) {
        let g = row * p.gpr + (wi * 4u) / p.group;
        let pair = unpack2x16float(s[g >> 1u]);
        return vec2<f32>(select(pair.x, pair.y, (g & 1u) == 1u), 0.0);
    }
    if (WTYPE == 10u) {
        // per pair of groups of 32: the two f16 scales, then each group's fifth bits
        let g = row * p.gpr + wi / 4u;
        let pair = unpack2x16float(s[(g >> 1u) * 3u]);
        let sc = select(pair.x, pair.y, (g & 1u) == 1u);
        return vec2<f32>(sc, -16.0 * sc);
    }
    if (WTYPE == 11u) {
        return unpack2x16float(s[2u * (row * p.gpr + wi / 4u)]);
    }
    if (WTYPE == 7u || WTYPE == 12u) {
        // a super-block of eight groups of 32: four words, (d, dmin) then 12 bytes of 6-bit
        // scales and minimums (quant.rs `q4k_scale_min`); q5_k: then eight words of fifth bits
        let g = row * p.gpr + wi / 4u;
        let base = (g / 8u) * select(4u, 12u, WTYPE == 12u);
        let j = g % 8u;
        let dm = unpack2x16float(s[base]);
        var sc: u32;
        var mn: u32;
        if (j < 4u) {
            sc = k_byte(base, j) & 63u;
            mn = k_byte(base, j + 4u) & 63u;
        } else {
            sc = (k_byte(base, j + 4u) & 15u) | ((k_byte(base, j - 4u) >> 6u) << 4u);
            mn = (k_byte(base, j + 4u) >> 4u) | ((k_byte(base, j) >> 6u) << 4u);
        }
        return vec2<f32>(dm.x * f32(sc), -(dm.y * f32(mn)));
    }
    if (WTYPE == 8u) {
        // a super-block of sixteen groups of 16: 21 words, d (f16, low half), 16 i8 scales in
        // four words, then the values' high bits (quant.rs `Format::Q6K`)
        let g = row * p.gpr + wi / 2u;
        let base = (g / 16u) * 21u;
        let j = g % 16u;
        let sc = extractBits(bitcast<i32>(s[base + 1u + j / 4u]), (j % 4u) * 8u, 8u);
        return vec2<f32>(unpack2x16float(s[base]).x * f32(sc), 0.0);
    }
    return vec2<f32>(1.0, 0.0);
}

// The bits above the low four of the eight values of word `wi` of weight row `row`, kept
// beside the scales (quant.rs `Weight::high_bits`; 0 for the types without them): q6_k's two
// per value, word i of a super-block's 32 taking half of scale word 5 + i / 2; the q5 types'
// one, a byte of their fifth-bit words.
fn hi_bits(row: u32, wi: u32) -> u32 {
    let at = row * p.wpr + wi;
    let g = row * p.gpr + wi / 4u;
    if (WTYPE == 8u) {
        let within = at % 32u;
        return extractBits(s[(at / 32u) * 21u + 5u + within / 2u], (within % 2u) * 16u, 16u);
    }
    if (WTYPE == 10u) { return extractBits(s[(g >> 1u) * 3u + 1u + (g & 1u)], (wi % 4u) * 8u, 8u); }
    if (WTYPE == 11u) { return extractBits(s[2u * g + 1u], (wi % 4u) * 8u, 8u); }
    if (WTYPE == 12u) { return extractBits(s[(at / 32u) * 12u + 4u + (at % 32u) / 4u], (at % 4u) * 8u, 8u); }
    return 0u;
}

// Byte `i` of the 12 packed bytes of the `q4_k` super-block whose scale words start at `base`.
fn k_byte(base: u32, i: u32) -> u32 {
    return extractBits(s[base + 1u + i / 4u], (i % 4u) * 8u, 8u);
}

// Raw value `j` of a packed word, before the affine (`hi`: the word's `hi_bits`).
fn raw(word: u32, j: u32, hi: u32) -> f32 {
    if (WTYPE == 0u) { return bitcast<f32>(word); }
    if (WTYPE == 1u) {
        let h = unpack2x16float(word);
        return select(h.x, h.y, j == 1u);
    }
    if (WTYPE == 2u || WTYPE == 5u || WTYPE == 6u) { return f32(extractBits(bitcast<i32>(word), j * 8u, 8u)); }
    if (WTYPE == 8u) { return f32(i32(extractBits(word, j * 4u, 4u) | (extractBits(hi, j * 2u, 2u) << 4u)) - 32); }
    if (WTYPE == 9u) { return bitcast<f32>(select(word << 16u, word & 0xffff0000u, j == 1u)); }
    if (WTYPE >= 10u) { return f32(extractBits(word, j * 4u, 4u) | (extractBits(hi, j, 1u) << 4u)); }
    return f32(extractBits(word, j * 4u, 4u));
}

fn load_w(row: u32, col: u32) -> f32 {
    let v = vpw();
    let wi = col / v;
    let a = affine(row, wi);
    return raw(w[row * p.wpr + wi], col % v, hi_bits(row, wi)) * a.x + a.y;
}

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); WGSL has no erf.
fn erf_approx(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return sign(v) * (1.0 - poly * exp(-v * v));
}

fn act(v: f32) -> f32 {
    if (ACT == 1u) { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
    if (ACT == 2u) {
        // clamped so that tanh never sees arguments some drivers overflow on
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    }
    if (ACT == 3u) { return v / (1.0 + exp(-v)); }
    if (ACT == 4u) { return max(v, 0.0); }
    return v;
}

fn bias_at(col: u32) -> f32 {
    if (HAS_BIAS) { return bias[col]; }
    return 0.0;
}

// out[r0 + r, col] for r < MAXM (4), r0 = MAXM * workgroup_id.z: each weight word is
// decoded once and used for every row of the block, the rows held in one vec4 (no
// dynamically indexed private array). The x reads are the same for every invocation
// of the workgroup, which CPU-emulated devices turn into scalar loads. With TPR 1 it
// needs no workgroup memory or barriers: the many-row kernel for such devices.
@compute @workgroup_size(WG)
fn gemv(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid.x % TPR;
    let col = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid.x / TPR;
    let r0 = wid.z * MAXM;
    // rows past the end read the last row (in bounds) and are not stored
    let last = max(p.m, 1u) - 1u;
    let o0 = min(r0, last) * p.k;
    let o1 = min(r0 + 1u, last) * p.k;
    let o2 = min(r0 + 2u, last) * p.k;
    let o3 = min(r0 + 3u, last) * p.k;
    var acc = vec4<f32>();
    if (col < p.n) {
        let v = vpw();
        for (var wi = lane; wi < p.wpr; wi += TPR) {
            let word = w[col * p.wpr + wi];
            let a = affine(col, wi);
            let hi = hi_bits(col, wi);
            let k0 = wi * v;
            let kn = min(v, p.k - k0);
            for (var j = 0u; j < kn; j++) {
                let kk = k0 + j;
                acc += (raw(word, j, hi) * a.x + a.y) * vec4<f32>(x[o0 + kk], x[o1 + kk], x[o2 + kk], x[o3 + kk]);
            }
        }
    }
    if (TPR > 1u) {
        for (var r = 0u; r < MAXM; r++) {
            red[r * WG + lid.x] = acc[r];
        }
        workgroupBarrier();
        for (var st = TPR / 2u; st > 0u; st >>= 1u) {
            if (lane < st) {
                for (var r = 0u; r < MAXM; r++) {
                    red[r * WG + lid.x] += red[r * WG + lid.x + st];
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < MAXM; r++) {
            acc[r] = red[r * WG + lid.x];
        }
    }
    if (col < p.n && lane == 0u) {
        let b = bias_at(col);
        for (var r = 0u; r < MAXM; r++) {
            if (r0 + r < p.m) {
                out[(r0 + r) * p.n + col] = act(acc[r] + b);
            }
        }
    }
}

// Tiled GEMM: a TILE x TILE block of out per workgroup, MICRO x MICRO (4 x 4) per
// invocation held in four vec4 accumulators: no dynamically indexed private arrays,
// which CPU-emulated devices (lavapipe, SwiftShader) turn into per-lane memory traffic.
// Weights are dequantized into workgroup memory as the tile is loaded.
@compute @workgroup_size(TS, TS)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let tid = lid.y * TS + lid.x;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var i = tid; i < TILE * BK; i += TS * TS) {
            let v = tile_xw(i, m0, n0, k0);
            xs[i] = v.x;
            ws[i] = v.y;
        }
        workgroupBarrier();
        let ar = lid.y * BK;
        let br = lid.x * BK;
        for (var kk = 0u; kk < BK; kk++) {
            let a = vec4<f32>(xs[ar + kk], xs[ar + TS * BK + kk], xs[ar + 2u * TS * BK + kk], xs[ar + 3u * TS * BK + kk]);
            let b = vec4<f32>(ws[br + kk], ws[br + TS * BK + kk], ws[br + 2u * TS * BK + kk], ws[br + 3u * TS * BK + kk]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    store4(m0 + lid.y, n0 + lid.x, acc0);
    store4(m0 + lid.y + TS, n0 + lid.x, acc1);
    store4(m0 + lid.y + 2u * TS, n0 + lid.x, acc2);
    store4(m0 + lid.y + 3u * TS, n0 + lid.x, acc3);
}

// Element i of the x and weight tiles for the block at (m0, n0) and the chunk from k0 (the
// weight dequantized), zeros outside the matrices.
fn tile_xw(i: u32, m0: u32, n0: u32, k0: u32) -> vec2<f32> {
    let r = i / BK;
    let gk = k0 + i % BK;
    var v = vec2<f32>();
    if (gk < p.k) {
        if (m0 + r < p.m) { v.x = x[(m0 + r) * p.k + gk]; }
        if (n0 + r < p.n) { v.y = load_w(n0 + r, gk); }
    }
    return v;
}

// out[gm, gn + j * TS] = act(v[j] + bias) for the columns inside the matrix.
fn store4(gm: u32, gn: u32, v: vec4<f32>) {
    if (gm >= p.m) { return; }
    for (var j = 0u; j < MICRO; j++) {
        let c = gn + j * TS;
        if (c < p.n) {
            out[gm * p.n + c] = act(v[j] + bias_at(c));
        }
    }
}

// Embedding gather: out[t, c] = table[ids[t], c] in any weight format.
@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.m * p.k) { return; }
    let t = i / p.k;
    out[i] = load_w(ids[t], i % p.k);
}
