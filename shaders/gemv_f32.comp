#version 450
// y (n, out) = x (n, in) · Wᵀ, W (out, in), f32, for few tokens (decode). One workgroup per output row and per chunk
// of up to MAX_TOKENS tokens (grid z): each W element is loaded once and used for every token of the chunk. The
// reduction goes through shared memory so that it works for any subgroup size (lavapipe: 8).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // workgroup size, a power of two ≥ MAX_TOKENS
layout(local_size_x_id = 0) in;
const uint MAX_TOKENS = 8;

layout(std430, binding = 0) readonly buffer X { float x[]; };  // (n, in)
layout(std430, binding = 1) readonly buffer W { float w[]; };  // (out, in)
layout(std430, binding = 2) writeonly buffer Y { float y[]; }; // (n, out)
layout(push_constant) uniform P { uint n, in_f, out_f; } p;

shared float red[MAX_TOKENS * WG]; // (MAX_TOKENS, WG)

void main() {
    const uint row = wg_row();
    if (row >= p.out_f) return; // uniform across the workgroup
    const uint lid = gl_LocalInvocationID.x;
    const uint t0  = gl_WorkGroupID.z * MAX_TOKENS;
    const uint nt  = min(MAX_TOKENS, p.n - t0);
    float acc[MAX_TOKENS];
    for (uint t = 0; t < MAX_TOKENS; ++t) acc[t] = 0.0;
    for (uint j = lid; j < p.in_f; j += WG) {
        const float wv = w[row * p.in_f + j];
        for (uint t = 0; t < MAX_TOKENS; ++t)
            if (t < nt) acc[t] += wv * x[(t0 + t) * p.in_f + j];
    }
    for (uint t = 0; t < MAX_TOKENS; ++t) red[t * WG + lid] = acc[t];
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            for (uint t = 0; t < MAX_TOKENS; ++t) red[t * WG + lid] += red[t * WG + lid + s];
        barrier();
    }
    if (lid < nt) y[(t0 + lid) * p.out_f + row] = red[lid * WG];
}
