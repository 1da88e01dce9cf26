#version 450
// MoE routing for one token per invocation from router logits: topk.glsl's selection.
#include "common.glsl"

layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer L { float logits[]; }; // (n, stride): experts at [0, n_expert)
layout(std430, binding = 1) writeonly buffer I { int ids[]; };     // (n, k)
layout(std430, binding = 2) writeonly buffer W { float w[]; };     // (n, k)
layout(push_constant) uniform P { uint n, n_expert, k, stride, renorm; } p;
#define LOGIT(e) logits[t * p.stride + (e)]
#include "topk.glsl"

void main() {
    const uint t = gl_GlobalInvocationID.x;
    if (t >= p.n) return;
    select_topk(t);
}
