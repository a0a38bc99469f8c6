// `q8a8` matmuls (w8a8): activations rounded to 8 bits in blocks of A8 (32) values along the
// reduction, each block's products summed exactly with `dot4I8Packed`, as wedge-core's
// `quant` module defines (and wedge-cpu's `a8` twin computes):
//   y[c] = s_w[c] · Σ_b s_x[b] · Σ_{k in b} q_x[k] · q_w[c, k]
// wedge-shaders appends this file to qweight.wgsl (its bindings, `Params`, `act`, `bias_at`,
// `MAXM`, `WG`, `TS`, `MICRO`, `TILE`). The weights are `q8` words as stored: four i8 values
// per word are exactly what `dot4I8Packed` takes, so nothing is dequantized. WGSL lets an
// implementation assume there are no NaNs or infinities, so unlike the CPU twin a
// non-finite activation is not guaranteed to spoil its row here.

const A8: u32 = 32u;            // activations per block (wedge_core::quant::A8_BLOCK)
const QPR: u32 = TS / MICRO;    // gemm_a8: invocations that round one tile row

// out = act(acc · s_w + bias) for the columns inside the matrix (s_w: the q8 row scale).
fn a8_out(row: u32, col: u32, acc: f32) {
    if (row < p.m && col < p.n) {
        out[row * p.n + col] = act(acc * bitcast<f32>(s[col]) + bias_at(col));
    }
}

// per invocation: max |x| of its word, a lane per row; two halves used in turn, so that one
// barrier per step keeps a step's reads apart from the next step's writes
var<workgroup> a8_max: array<vec4<f32>, 2u * WG>;
var<workgroup> a8_red: array<vec4<f32>, WG * MAXM>;

fn a8_max4(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

fn a8_pack(v: vec4<f32>, inv: f32) -> u32 {
    return pack4xI8(vec4<i32>(clamp(round(v * inv), vec4<f32>(-127.0), vec4<f32>(127.0))));
}

// GEMV for one to four rows: a workgroup computes 4 columns for MAXM rows. Its invocations
// take one packed word (4 values along k) each, WG words per step (whole blocks, as WG is a
// multiple of 8): the 8 invocations of a block share their maxima through workgroup memory,
// each rounds its own 4 values of every row and multiplies them with the 4 columns' words.
// The partial sums meet in a workgroup-memory tree (fixed order).
@compute @workgroup_size(WG)
fn gemv_a8(@builtin(local_invocation_index) li: u32,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let c0 = (wid.x + wid.y * nwg.x) * 4u;
    let r0 = wid.z * MAXM;
    // rows and columns past the end read the last one (in bounds) and are not stored
    let last = max(p.m, 1u) - 1u;
    let o = vec4<u32>(min(r0, last), min(r0 + 1u, last), min(r0 + 2u, last), min(r0 + 3u, last)) * p.k;
    let cols = min(vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u), vec4<u32>(max(p.n, 1u) - 1u));
    var a0 = vec4<f32>(); // row r0, columns c0 .. c0 + 3
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let steps = (p.wpr + WG - 1u) / WG;
    for (var st = 0u; st < steps; st++) {
        let wi = st * WG + li;
        let k0 = wi * 4u;
        // this word's values of each row, zeros past p.k
        var v0 = vec4<f32>();
        var v1 = vec4<f32>();
        var v2 = vec4<f32>();
        var v3 = vec4<f32>();
        for (var j = 0u; j < 4u; j++) {
            if (k0 + j < p.k) {
                v0[j] = x[o.x + k0 + j];
                v1[j] = x[o.y + k0 + j];
                v2[j] = x[o.z + k0 + j];
                v3[j] = x[o.w + k0 + j];
            }
        }
        let half = (st & 1u) * WG;
        a8_max[half + li] = vec4<f32>(a8_max4(abs(v0)), a8_max4(abs(v1)), a8_max4(abs(v2)), a8_max4(abs(v3)));
        workgroupBarrier();
        var bm = vec4<f32>();
        let first = half + (li & ~7u);
        for (var i = 0u; i < 8u; i++) {
            bm = max(bm, a8_max[first + i]);
        }
        let inv = select(vec4<f32>(), 127.0 / bm, bm > vec4<f32>());
        let sx = bm / 127.0;
        if (wi < p.wpr) {
            let c = vec4<u32>(w[cols.x * p.wpr + wi], w[cols.y * p.wpr + wi], w[cols.z * p.wpr + wi],
                              w[cols.w * p.wpr + wi]);
            let q = vec4<u32>(a8_pack(v0, inv.x), a8_pack(v1, inv.y), a8_pack(v2, inv.z), a8_pack(v3, inv.w));
            a0 += vec4<f32>(vec4<i32>(dot4I8Packed(q.x, c.x), dot4I8Packed(q.x, c.y), dot4I8Packed(q.x, c.z), dot4I8Packed(q.x, c.w))) * sx.x;
            a1 += vec4<f32>(vec4<i32>(dot4I8Packed(q.y, c.x), dot4I8Packed(q.y, c.y), dot4I8Packed(q.y, c.z), dot4I8Packed(q.y, c.w))) * sx.y;
            a2 += vec4<f32>(vec4<i32>(dot4I8Packed(q.z, c.x), dot4I8Packed(q.z, c.y), dot4I8Packed(q.z, c.z), dot4I8Packed(q.z, c.w))) * sx.z;
            a3 += vec4<f32>(vec4<i32>(dot4I8Packed(q.w, c.x), dot4I8Packed(q.w, c.y), dot4I8Packed(q.w, c.z), dot4I8Packed(q.w, c.w))) * sx.w;
        }
    }
    a8_red[li] = a0;
    a8_red[WG + li] = a1;
    a8_red[2u * WG + li] = a2;
    a8_red[3u * WG + li] = a3;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (li < st) {
            for (var r = 0u; r < MAXM; r++) {
                a8_red[r * WG + li] += a8_red[r * WG + li + st];
            }
        }
        workgroupBarrier();
    }
    if (li < MAXM * 4u) {
        let r = li / 4u;
        let c = li % 4u;
        a8_out(r0 + r, c0 + c, a8_red[r * WG][c]);
    }
}

var<workgroup> a8_xs: array<u32, TILE * 8u>;     // x tile, one block: 8 words per row
var<workgroup> a8_ws: array<u32, TILE * 8u>;     // weight tile: 8 words per column
var<workgroup> a8_part: array<f32, TILE * QPR>;  // partial maxima of the x rows
var<workgroup> a8_sx: array<f32, TILE>;          // the x rows' block scales

// Tiled GEMM: a TILE x TILE block of out per workgroup, MICRO x MICRO per invocation, one
// block of 32 along k per step: x rounded into workgroup memory as it is loaded (QPR
// invocations per row share the row's maximum), weight words copied as stored, 16 integer
// accumulators per invocation folded into f32 with the rows' scales after each block.
@compute @workgroup_size(TS, TS)
fn gemm_a8(@builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let tid = lid.y * TS + lid.x;
    let qr = tid / QPR;          // the tile row this invocation rounds
    let qp = tid % QPR;          // which part of it
    let span = A8 / QPR;         // values per part (a multiple of 4)
    let xo = min(m0 + qr, max(p.m, 1u) - 1u) * p.k;
    var f0 = vec4<f32>();
    var f1 = vec4<f32>();
    var f2 = vec4<f32>();
    var f3 = vec4<f32>();
    let nb = (p.k + A8 - 1u) / A8;
    for (var b = 0u; b < nb; b++) {
        let k0 = b * A8 + qp * span;
        var amax = 0.0;
        for (var i = 0u; i < span; i++) {
            if (k0 + i < p.k) {
                amax = max(amax, abs(x[xo + k0 + i]));
            }
        }
        a8_part[tid] = amax;
        for (var i = tid; i < TILE * 8u; i += TS * TS) {
            let c = n0 + i / 8u;
            let wi = b * 8u + i % 8u;
            var word = 0u;
            if (c < p.n && wi < p.wpr) {
                word = w[c * p.wpr + wi];
            }
            a8_ws[i] = word;
        }
        workgroupBarrier();
        var rmax = 0.0;
        for (var i = 0u; i < QPR; i++) {
            rmax = max(rmax, a8_part[qr * QPR + i]);
        }
        let inv = select(0.0, 127.0 / rmax, rmax > 0.0);
        if (qp == 0u) {
            a8_sx[qr] = rmax / 127.0;
        }
        for (var wd = 0u; wd < span / 4u; wd++) {
            var v = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let kk = k0 + wd * 4u + j;
                if (kk < p.k) {
                    v[j] = x[xo + kk];
                }
            }
            a8_xs[qr * 8u + qp * (span / 4u) + wd] = a8_pack(v, inv);
        }
        workgroupBarrier();
        var i0 = vec4<i32>();
        var i1 = vec4<i32>();
        var i2 = vec4<i32>();
        var i3 = vec4<i32>();
        let ar = lid.y * 8u;
        let br = lid.x * 8u;
        for (var kw = 0u; kw < 8u; kw++) {
            let a = vec4<u32>(a8_xs[ar + kw], a8_xs[ar + TS * 8u + kw], a8_xs[ar + 2u * TS * 8u + kw],
                              a8_xs[ar + 3u * TS * 8u + kw]);
            let c = vec4<u32>(a8_ws[br + kw], a8_ws[br + TS * 8u + kw], a8_ws[br + 2u * TS * 8u + kw],
                              a8_ws[br + 3u * TS * 8u + kw]);
            i0 += vec4<i32>(dot4I8Packed(a.x, c.x), dot4I8Packed(a.x, c.y), dot4I8Packed(a.x, c.z), dot4I8Packed(a.x, c.w));
            i1 += vec4<i32>(dot4I8Packed(a.y, c.x), dot4I8Packed(a.y, c.y), dot4I8Packed(a.y, c.z), dot4I8Packed(a.y, c.w));
            i2 += vec4<i32>(dot4I8Packed(a.z, c.x), dot4I8Packed(a.z, c.y), dot4I8Packed(a.z, c.z), dot4I8Packed(a.z, c.w));
            i3 += vec4<i32>(dot4I8Packed(a.w, c.x), dot4I8Packed(a.w, c.y), dot4I8Packed(a.w, c.z), dot4I8Packed(a.w, c.w));
        }
        f0 += vec4<f32>(i0) * a8_sx[lid.y];
        f1 += vec4<f32>(i1) * a8_sx[lid.y + TS];
        f2 += vec4<f32>(i2) * a8_sx[lid.y + 2u * TS];
        f3 += vec4<f32>(i3) * a8_sx[lid.y + 3u * TS];
        workgroupBarrier();
    }
    for (var j = 0u; j < MICRO; j++) {
        a8_out(m0 + lid.y, n0 + lid.x + j * TS, f0[j]);
        a8_out(m0 + lid.y + TS, n0 + lid.x + j * TS, f1[j]);
        a8_out(m0 + lid.y + 2u * TS, n0 + lid.x + j * TS, f2[j]);
        a8_out(m0 + lid.y + 3u * TS, n0 + lid.x + j * TS, f3[j]);
    }
}
