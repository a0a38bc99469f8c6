// The subgroup GEMV, for adapters with subgroup operations (`wgpu::Features::SUBGROUP`,
// WebGPU's "subgroups"). wedge-shaders appends this file to qweight.wgsl (it uses that
// file's bindings, `Params`, `vpw`, `affine`, `hi_bits`, `raw`, `act`, `bias_at`, `MAXM` and `WG`), so it
// is valid WGSL only after it. In a browser, wedge-gpu puts `enable subgroups;` in front
// (Tint needs it; naga 30 rejects it and needs only the capability).
//
// A workgroup computes NC (4) output columns for MAXM (4) rows of x. All of its invocations
// split the reduction (packed word wi of each column goes to invocation wi % WG), so every
// invocation holds partial sums for the same 16 outputs and any grouping of invocations into
// subgroups, of any size, gives the right answer: subgroupAdd sums a subgroup's partials,
// the subgroup's invocation of least index files them under the subgroup's rank (subgroups
// ordered by that index, so the order of the final sum is fixed and runs
// are reproducible), and 16 invocations add the subgroups' partials up. Two barriers in all,
// against log2(TPR) in the workgroup-memory reduction of `gemv`.

const NC: u32 = 4u;          // output columns per workgroup
const MAXSG: u32 = WG / 4u;  // subgroups per workgroup at most (wgpu: sizes are >= 4)

var<workgroup> sg_mask: array<atomic<u32>, WG / 32u>;   // bit i: invocation i leads its subgroup
var<workgroup> sg_part: array<vec4<f32>, MAXSG * MAXM>;  // per subgroup rank, per row: NC columns

@compute @workgroup_size(WG)
fn gemv_sg(@builtin(local_invocation_index) li: u32,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    if (li < WG / 32u) {
        atomicStore(&sg_mask[li], 0u);
    }
    workgroupBarrier();
    let c0 = (wid.x + wid.y * nwg.x) * NC;
    let r0 = wid.z * MAXM;
    // rows and columns past the end read the last one (in bounds) and are not stored
    let last = max(p.m, 1u) - 1u;
    let o = vec4<u32>(min(r0, last), min(r0 + 1u, last), min(r0 + 2u, last), min(r0 + 3u, last)) * p.k;
    let cols = min(vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u), vec4<u32>(max(p.n, 1u) - 1u));
    // a<r>: row r0 + r, columns c0 .. c0 + 3
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let v = vpw();
    for (var wi = li; wi < p.wpr; wi += WG) {
        let w0 = w[cols.x * p.wpr + wi];
        let w1 = w[cols.y * p.wpr + wi];
        let w2 = w[cols.z * p.wpr + wi];
        let w3 = w[cols.w * p.wpr + wi];
        let f0 = affine(cols.x, wi);
        let f1 = affine(cols.y, wi);
        let f2 = affine(cols.z, wi);
        let f3 = affine(cols.w, wi);
        let h = vec4<u32>(hi_bits(cols.x, wi), hi_bits(cols.y, wi), hi_bits(cols.z, wi), hi_bits(cols.w, wi));
        let scale = vec4<f32>(f0.x, f1.x, f2.x, f3.x);
        let offset = vec4<f32>(f0.y, f1.y, f2.y, f3.y);
        let k0 = wi * v;
        let kn = min(v, p.k - k0);
        for (var j = 0u; j < kn; j++) {
            let kk = k0 + j;
            let wv = vec4<f32>(raw(w0, j, h.x), raw(w1, j, h.y), raw(w2, j, h.z), raw(w3, j, h.w)) * scale + offset;
            a0 += x[o.x + kk] * wv;
            a1 += x[o.y + kk] * wv;
            a2 += x[o.z + kk] * wv;
            a3 += x[o.w + kk] * wv;
        }
    }
    // uniform control flow: every invocation of the workgroup gets here
    let s0 = subgroupAdd(a0);
    let s1 = subgroupAdd(a1);
    let s2 = subgroupAdd(a2);
    let s3 = subgroupAdd(a3);
    // the subgroup's invocation of least index (naga 30 has no subgroupElect)
    let lead = subgroupMin(li) == li;
    if (lead) {
        atomicOr(&sg_mask[li / 32u], 1u << (li % 32u));
    }
    workgroupBarrier();
    if (lead) {
        var rank = countOneBits(atomicLoad(&sg_mask[li / 32u]) & ((1u << (li % 32u)) - 1u));
        for (var i = 0u; i < li / 32u; i++) {
            rank += countOneBits(atomicLoad(&sg_mask[i]));
        }
        sg_part[rank * MAXM] = s0;
        sg_part[rank * MAXM + 1u] = s1;
        sg_part[rank * MAXM + 2u] = s2;
        sg_part[rank * MAXM + 3u] = s3;
    }
    workgroupBarrier();
    if (li < MAXM * NC) {
        var nsg = 0u;
        for (var i = 0u; i < WG / 32u; i++) {
            nsg += countOneBits(atomicLoad(&sg_mask[i]));
        }
        let r = li / NC;
        let c = li % NC;
        var t = 0.0;
        for (var i = 0u; i < nsg; i++) {
            t += sg_part[i * MAXM + r][c];
        }
        if (r0 + r < p.m && c0 + c < p.n) {
            out[(r0 + r) * p.n + c0 + c] = act(t + bias_at(c0 + c));
        }
    }
}
