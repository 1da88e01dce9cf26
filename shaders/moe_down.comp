#version 450
// Down projection of the chosen experts, weighted and summed: y[t, d] (+)= Σ_j w[t, j] · (h[t·k + j] · Wd[e_j, d]),
// e_j = ids[t·k + j]. The sum runs over j in order, 0 + w_0·y_0 + w_1·y_1 + …, and the router writes the slots sorted
// by expert id, so this is the CPU's combine order and does not depend on the batch. Grid x = row d, y = token.
// RESIDUAL adds the sum into y (the residual stream) when there is no shared expert to add after it.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(constant_id = 1) const uint FORMAT = 0;
layout(constant_id = 2) const uint BITS = 4;
layout(constant_id = 3) const bool RESIDUAL = false;
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Hb { float h[]; };  // (n·k, F)
layout(std430, binding = 1) readonly buffer I { int ids[]; };   // (n, k)
layout(std430, binding = 2) readonly buffer W { float w[]; };   // (n, k)
layout(std430, binding = 3) buffer Y { float y[]; };            // (n, H)
#define QW_BINDING 4
#define QW_X(xo, j) h[(xo) + (j)]
#include "qweight.glsl"
layout(push_constant) uniform P { uint n, k, in_f, out_f, row_bytes, n_groups, group; } p;

shared float red[WG];

void main() {
    const uint d = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    if (d >= p.out_f || t >= p.n) return;
    const uint lid = gl_LocalInvocationID.x;
    float      out_v = 0.0;
    for (uint j = 0; j < p.k; ++j) {
        const uint e = uint(ids[t * p.k + j]), r = e * p.out_f + d, hb = (t * p.k + j) * p.in_f;
        float      acc = 0.0;
        if (FORMAT == 3 && p.group % 32u == 0u)
            for (uint wi = lid; wi < (p.in_f + 31u) / 32u; wi += WG)
                acc += qdot_binary_word(r, wi, hb, p.in_f, p.row_bytes, p.n_groups, p.group);
        else
            for (uint i = lid; i < p.in_f; i += WG)
                acc += qweight(r, i, p.in_f, p.out_f, p.row_bytes, p.n_groups, p.group) * h[hb + i];
        red[lid] = acc;
        barrier();
        for (uint s = WG / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] += red[lid + s];
            barrier();
        }
        out_v += w[t * p.k + j] * red[0];
        barrier();
    }
    if (lid == 0) {
        const uint o = t * p.out_f + d;
        y[o]         = RESIDUAL ? y[o] + out_v : out_v;
    }
}
