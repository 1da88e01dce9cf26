#version 450
// MoE routing in one dispatch, one workgroup per token: RMSNorm(x) (NORM), the router logits (n_expert rows, plus a
// shared-expert gate row when stride > n_expert: written out for the shared down's gate), then the selection
// of topk.glsl.
// Each lane computes whole logits (rows lid, lid + WG, …): a router is small (n_expert × H), and a token's routing
// then costs one dispatch instead of a GEMV and a top-k.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(constant_id = 1) const uint FORMAT = 0;
layout(constant_id = 2) const uint BITS = 4;
layout(constant_id = 3) const bool NORM = false;
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer X { float x[]; };      // (n, H)
layout(std430, binding = 1) writeonly buffer L { float lg[]; };    // (n, stride) logits
layout(std430, binding = 2) writeonly buffer I { int ids[]; };     // (n, k)
layout(std430, binding = 3) writeonly buffer Wt { float w[]; };    // (n, k)
layout(std430, binding = 4) readonly buffer NG { float ng[]; };    // (H) RMSNorm weight or a dummy
#define QW_BINDING 5
#include "qweight.glsl"
layout(push_constant) uniform P {
    uint n, in_f, n_expert, k, stride, renorm, row_bytes, n_groups, group;
    float eps;
} p;

shared float red[WG];
shared float logit[MOE_MAX_E + 1];
#define LOGIT(e) logit[e]
#include "topk.glsl"

void main() {
    const uint t = wg_row();
    if (t >= p.n) return; // uniform across the workgroup
    const uint lid = gl_LocalInvocationID.x, xb = t * p.in_f;
    float      inv = 1.0;
    if (NORM) {
        float ss = 0.0;
        for (uint j = lid; j < p.in_f; j += WG) ss += x[xb + j] * x[xb + j];
        red[lid] = ss;
        barrier();
        for (uint s = WG / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] += red[lid + s];
            barrier();
        }
        inv = 1.0 / sqrt(red[0] / float(p.in_f) + p.eps);
    }
    for (uint e = lid; e < p.stride; e += WG) {
        float acc = 0.0;
        for (uint j = 0; j < p.in_f; ++j)
            acc += qweight(e, j, p.in_f, p.stride, p.row_bytes, p.n_groups, p.group) * (NORM ? ng[j] * x[xb + j] : x[xb + j]);
        if (NORM) acc *= inv;
        logit[e]              = acc;
        lg[t * p.stride + e] = acc;
    }
    barrier();
    if (lid == 0) select_topk(t);
}
