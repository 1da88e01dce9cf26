#version 450
// y (n, out) = x (n, in) · Wᵀ, W (out, in), f32, for many tokens (prefill): a plain shared-memory tiled GEMM, one
// 16 × 16 output tile (tokens × rows) per workgroup, K in steps of 16. A first version: register tiling and
// cooperative matrices (kernels.md §7.3) come later.
layout(local_size_x = 16, local_size_y = 16) in;
const uint T = 16;

layout(std430, binding = 0) readonly buffer X { float x[]; };  // (n, in)
layout(std430, binding = 1) readonly buffer W { float w[]; };  // (out, in)
layout(std430, binding = 2) writeonly buffer Y { float y[]; }; // (n, out)
layout(push_constant) uniform P { uint n, in_f, out_f; } p;

shared float xs[T][T + 1]; // (tokens, k), padded against bank conflicts
shared float ws[T][T + 1]; // (rows, k)

void main() {
    const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    const uint o0 = gl_WorkGroupID.x * T, t0 = gl_WorkGroupID.y * T;
    float acc = 0.0;
    for (uint k0 = 0; k0 < p.in_f; k0 += T) {
        const uint k = k0 + tx;
        xs[ty][tx] = (t0 + ty < p.n && k < p.in_f) ? x[(t0 + ty) * p.in_f + k] : 0.0;
        ws[ty][tx] = (o0 + ty < p.out_f && k < p.in_f) ? w[(o0 + ty) * p.in_f + k] : 0.0;
        barrier();
        for (uint kk = 0; kk < T; ++kk) acc += xs[ty][kk] * ws[tx][kk];
        barrier();
    }
    if (t0 + ty < p.n && o0 + tx < p.out_f) y[(t0 + ty) * p.out_f + o0 + tx] = acc;
}
