#version 450
// Causal attention against the KV cache, for prefill and decode alike: one workgroup per (q head, token); token t
// sits at position n_past + t and sees keys 0..n_past + t. GQA: q head h reads kv head h / (nh / nkv).
// Three passes over the visible keys, as the CPU forward: scores s_p = (q · k_p) · scale, then softmax (max,
// exp, sum, multiply by 1/sum), then out = Σ_p prob_p · v_p summed in key order. Scores go through a global scratch
// row per (token, head) so that any context length fits (shared memory would cap it).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Q { float q[]; };   // (n, nh·hd)
layout(std430, binding = 1) readonly buffer KC { float kc[]; }; // (n_ctx, nkv·hd)
layout(std430, binding = 2) readonly buffer VC { float vc[]; }; // (n_ctx, nkv·hd)
layout(std430, binding = 3) writeonly buffer O { float o[]; };  // (n, nh·hd)
layout(std430, binding = 4) coherent buffer S { float sc[]; };  // (n·nh, n_ctx) scratch
layout(push_constant) uniform P { uint n, n_past, nh, nkv, hd, n_ctx; float scale; } p;

shared float red[WG];

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    if (t >= p.n) return;
    const uint lid = gl_LocalInvocationID.x;
    const uint qd = p.nh * p.hd, kvd = p.nkv * p.hd, kvh = h / (p.nh / p.nkv);
    const uint len = p.n_past + t + 1;
    const uint qo = t * qd + h * p.hd, so = (t * p.nh + h) * p.n_ctx;
    float mx = -1.0 / 0.0;
    for (uint k = lid; k < len; k += WG) {
        float d = 0.0;
        for (uint i = 0; i < p.hd; ++i) d += q[qo + i] * kc[k * kvd + kvh * p.hd + i];
        const float s = d * p.scale;
        sc[so + k] = s;
        mx = max(mx, s);
    }
    red[lid] = mx;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] = max(red[lid], red[lid + s]);
        barrier();
    }
    mx = red[0];
    barrier();
    float sum = 0.0;
    for (uint k = lid; k < len; k += WG) {
        const float e = exp(sc[so + k] - mx);
        sc[so + k] = e;
        sum += e;
    }
    red[lid] = sum;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier();
    }
    const float inv = 1.0 / red[0];
    memoryBarrierBuffer(); // the exp values written above are read by other invocations below
    barrier();
    for (uint i = lid; i < p.hd; i += WG) {
        float acc = 0.0;
        for (uint k = 0; k < len; ++k) acc += (sc[so + k] * inv) * vc[k * kvd + kvh * p.hd + i];
        o[qo + i] = acc;
    }
}
