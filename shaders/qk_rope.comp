#version 450
// After the fused QKV projection (bias included), for one token per workgroup, in the CPU forward's order:
// optional q/k RMSNorm (per head over head_dim: Qwen3; over the whole projection: OLMoE), optional clamp of q, k and v
// (OLMoE clip_qkv), rotary embedding of q and k (rotate-half pairs i, i + head_dim/2), then q to its own buffer and
// k, v into the KV cache at position n_past + t. cos / sin come from a host table computed with the CPU's f32
// formula (angle = pos · inv_freq in f32, then cosf / sinf), so the rotation uses the same factors as the CPU.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;    // power of two
layout(constant_id = 1) const uint QKNORM = 0; // 0 none, 1 per head, 2 full projection
layout(constant_id = 2) const bool CLIP = false;
layout(local_size_x_id = 0) in;
const uint MAX_HEADS = 512;

layout(std430, binding = 0) readonly buffer QKV { float qkv[]; };    // (n, qd + 2·kvd): q | k | v
layout(std430, binding = 1) writeonly buffer Q { float q[]; };       // (n, qd)
layout(std430, binding = 2) writeonly buffer KC { float kc[]; };     // (n_ctx, kvd)
layout(std430, binding = 3) writeonly buffer VC { float vc[]; };     // (n_ctx, kvd)
layout(std430, binding = 4) readonly buffer QN { float qn[]; };      // (head_dim) or (qd) or a dummy
layout(std430, binding = 5) readonly buffer KN { float kn[]; };      // (head_dim) or (kvd) or a dummy
layout(std430, binding = 6) readonly buffer Rope { float rope[]; };  // (n_pos, head_dim/2, 2) cos, sin
layout(push_constant) uniform P { uint n, n_past, nh, nkv, hd; float eps, clip; } p;

shared float red[WG];
shared float inv_s[MAX_HEADS]; // per head (or [0] q, [1] k for the full norm): 1 / rms

float reduce_sum(float v, uint lid) {
    red[lid] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier();
    }
    const float r = red[0];
    barrier();
    return r;
}

void main() {
    const uint t = wg_row();
    if (t >= p.n) return;
    const uint lid = gl_LocalInvocationID.x;
    const uint qd = p.nh * p.hd, kvd = p.nkv * p.hd, half_d = p.hd / 2, pos = p.n_past + t;
    const uint base = t * (qd + 2 * kvd);
    if (QKNORM == 1) {
        for (uint h = 0; h < p.nh + p.nkv; ++h) {
            float ss = 0.0;
            for (uint i = lid; i < p.hd; i += WG) ss += qkv[base + h * p.hd + i] * qkv[base + h * p.hd + i];
            const float tot = reduce_sum(ss, lid);
            if (lid == 0) inv_s[h] = 1.0 / sqrt(tot / float(p.hd) + p.eps);
        }
    } else if (QKNORM == 2) {
        float ss = 0.0;
        for (uint i = lid; i < qd; i += WG) ss += qkv[base + i] * qkv[base + i];
        float tot = reduce_sum(ss, lid);
        if (lid == 0) inv_s[0] = 1.0 / sqrt(tot / float(qd) + p.eps);
        ss = 0.0;
        for (uint i = lid; i < kvd; i += WG) ss += qkv[base + qd + i] * qkv[base + qd + i];
        tot = reduce_sum(ss, lid);
        if (lid == 0) inv_s[1] = 1.0 / sqrt(tot / float(kvd) + p.eps);
    }
    barrier();
    for (uint idx = lid; idx < (p.nh + p.nkv) * half_d; idx += WG) {
        const uint h = idx / half_d, i = idx % half_d, is_k = h >= p.nh ? 1u : 0u;
        const uint e = h * p.hd + i; // offset of x1 in q | k
        float a = qkv[base + e], b = qkv[base + e + half_d];
        if (QKNORM != 0) {
            const float inv = QKNORM == 1 ? inv_s[h] : inv_s[is_k];
            const uint  gi  = QKNORM == 1 ? i : e - is_k * qd; // weight index of x1
            const uint  gj  = QKNORM == 1 ? i + half_d : gi + half_d;
            a = (is_k != 0 ? kn[gi] : qn[gi]) * (a * inv);
            b = (is_k != 0 ? kn[gj] : qn[gj]) * (b * inv);
        }
        if (CLIP) {
            a = clamp(a, -p.clip, p.clip);
            b = clamp(b, -p.clip, p.clip);
        }
        const float c = rope[(pos * half_d + i) * 2], s = rope[(pos * half_d + i) * 2 + 1];
        const float r1 = a * c - b * s, r2 = b * c + a * s;
        if (is_k == 0) {
            q[t * qd + e]          = r1;
            q[t * qd + e + half_d] = r2;
        } else {
            kc[pos * kvd + e - qd]          = r1;
            kc[pos * kvd + e - qd + half_d] = r2;
        }
    }
    for (uint i = lid; i < kvd; i += WG) {
        float v = qkv[base + qd + kvd + i];
        if (CLIP) v = clamp(v, -p.clip, p.clip);
        vc[pos * kvd + i] = v;
    }
}
