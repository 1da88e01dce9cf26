#version 450
// RMSNorm of each of n rows of width d: y = w ⊙ x / sqrt(mean(x²) + eps), one workgroup per row. In place allowed
// (x and y may be the same buffer: every x is read before the barrier that precedes the writes).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer X { float x[]; }; // (n, d)
layout(std430, binding = 1) readonly buffer G { float g[]; }; // (d)
layout(std430, binding = 2) buffer Y { float y[]; };          // (n, d)
layout(push_constant) uniform P { uint n, d; float eps; } p;

shared float red[WG];

void main() {
    const uint row = wg_row();
    if (row >= p.n) return;
    const uint lid = gl_LocalInvocationID.x, base = row * p.d;
    float ss = 0.0;
    for (uint j = lid; j < p.d; j += WG) ss += x[base + j] * x[base + j];
    red[lid] = ss;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier();
    }
    const float inv = 1.0 / sqrt(red[0] / float(p.d) + p.eps);
    for (uint j = lid; j < p.d; j += WG) y[base + j] = g[j] * (x[base + j] * inv);
}
