// The tiled GEMM in half precision, for devices with `shader-f16`.
// Appended to qweight.wgsl, whose bindings, Params, tile_xw and store4 it uses;
// wedge-shaders puts `enable f16;` in front of the pair.
//
// Numerics (mirrored by wedge-cpu's `matmul_f16_reference`, its CPU twin): x and the
// dequantized weights are rounded to f16 as the tile is loaded, and each BK-long chunk
// of the reduction is summed in vec4<f16> accumulators (f16 products and adds), which
// are added into f32 accumulators after every chunk. So f16 arithmetic only ever sums
// BK (16) products, and the error stays within a few f16 roundings of Σ|x·w| per
// chunk. A product or chunk sum past f16's range (65504) becomes infinite: this path
// is for models whose activations stay far below that (encoders, as the accuracy tests
// check). Half the workgroup memory of `gemm`, and half the registers per accumulator.

var<workgroup> xh: array<f16, TILE * BK>;
var<workgroup> wh: array<f16, TILE * BK>;

@compute @workgroup_size(TS, TS)
fn gemm_h(@builtin(local_invocation_id) lid: vec3<u32>,
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
            xh[i] = f16(v.x);
            wh[i] = f16(v.y);
        }
        workgroupBarrier();
        let ar = lid.y * BK;
        let br = lid.x * BK;
        var h0 = vec4<f16>();
        var h1 = vec4<f16>();
        var h2 = vec4<f16>();
        var h3 = vec4<f16>();
        for (var kk = 0u; kk < BK; kk++) {
            let a = vec4<f16>(xh[ar + kk], xh[ar + TS * BK + kk], xh[ar + 2u * TS * BK + kk], xh[ar + 3u * TS * BK + kk]);
            let b = vec4<f16>(wh[br + kk], wh[br + TS * BK + kk], wh[br + 2u * TS * BK + kk], wh[br + 3u * TS * BK + kk]);
            h0 += a.x * b;
            h1 += a.y * b;
            h2 += a.z * b;
            h3 += a.w * b;
        }
        acc0 += vec4<f32>(h0);
        acc1 += vec4<f32>(h1);
        acc2 += vec4<f32>(h2);
        acc3 += vec4<f32>(h3);
        workgroupBarrier();
    }
    store4(m0 + lid.y, n0 + lid.x, acc0);
    store4(m0 + lid.y + TS, n0 + lid.x, acc1);
    store4(m0 + lid.y + 2u * TS, n0 + lid.x, acc2);
    store4(m0 + lid.y + 3u * TS, n0 + lid.x, acc3);
}
