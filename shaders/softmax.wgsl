
// Shared by the attention kernels (appended to attention.wgsl and cache.wgsl, which declare
// WG): the most negative f32 and a workgroup reduction for a streaming softmax.

const NEG: f32 = -0x1.fffffep+127f; // -f32::MAX, exact (a rounded decimal is rejected by Tint)

var<workgroup> red: array<f32, WG>;

// The max (or the sum) of `val` over the workgroup, given to every invocation; every
// invocation must call it (it holds barriers), and it ends with one so `red` can be reused.
fn reduce(val: f32, tid: u32, is_max: bool) -> f32 {
    red[tid] = val;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) {
            if (is_max) {
                red[tid] = max(red[tid], red[tid + st]);
            } else {
                red[tid] += red[tid + st];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
