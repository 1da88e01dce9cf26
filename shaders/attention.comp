#version 450
// Causal attention against the KV cache, for prefill and decode alike: one workgroup per (q head, token); token t
// sits at position n_past + t and sees keys 0..n_past + t. GQA: q head h reads kv head h / (nh / nkv).
// Three passes over the visible keys, as the CPU forward: scores s_p = (q · k_p) · scale, then softmax (max,
// exp, sum, multiply by 1/sum), then out = Σ_p prob_p · v_p summed in key order. Scores go through a global scratch
// row per (token, head) so that any context length fits (shared memory would cap it).
// ROPE (decode, n = 1): qk_rope.comp's step runs here first, so a decode layer saves that dispatch: each workgroup
// norms, clips and rotates its own q head and its kv head's k (and clips v) from the qkv row, exactly as qk_rope.comp
// does, keeps them in shared memory for the current position and writes k, v into the cache (the first q head of
// each kv group does; the others read the cache only at earlier positions, written by earlier dispatches).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(constant_id = 1) const bool ROPE = false;
layout(constant_id = 2) const uint QKNORM = 0; // with ROPE: 0 none, 1 per head, 2 full projection
layout(constant_id = 3) const bool CLIP = false;
layout(local_size_x_id = 0) in;
const uint MAX_HD = 256; // head_dim with ROPE

layout(std430, binding = 0) readonly buffer Q { float q[]; };   // (n, nh·hd), with ROPE a dummy
layout(std430, binding = 1) buffer KC { float kc[]; };          // (n_ctx, nkv·hd)
layout(std430, binding = 2) buffer VC { float vc[]; };          // (n_ctx, nkv·hd)
layout(std430, binding = 3) writeonly buffer O { float o[]; };  // (n, nh·hd)
layout(std430, binding = 4) coherent buffer S { float sc[]; };  // (n·nh, n_ctx) scratch
layout(std430, binding = 5) readonly buffer QKV { float qkv[]; };   // ROPE: (1, qd + 2·kvd) q | k | v, else a dummy
layout(std430, binding = 6) readonly buffer QN { float qn[]; };     // (head_dim) or (qd) or a dummy
layout(std430, binding = 7) readonly buffer KN { float kn[]; };     // (head_dim) or (kvd) or a dummy
layout(std430, binding = 8) readonly buffer Rope { float rope[]; }; // (n_pos, head_dim/2, 2) cos, sin, or a dummy
layout(push_constant) uniform P { uint n, n_past, nh, nkv, hd, n_ctx; float scale, eps, clip; } p;

shared float red[WG];
shared float qs[MAX_HD], ks[MAX_HD], vs[MAX_HD]; // ROPE: this head's q, its kv head's k and v at position n_past

// qk_rope.comp's reduce_sum.
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

// 1 / rms of qkv[off, off + len), as qk_rope.comp computes it.
float inv_rms(uint off, uint len, uint lid) {
    float ss = 0.0;
    for (uint i = lid; i < len; i += WG) ss += qkv[off + i] * qkv[off + i];
    const float tot = reduce_sum(ss, lid);
    return 1.0 / sqrt(tot / float(len) + p.eps);
}

// qk_rope.comp's step for q head h and kv head kvh of the one token, into qs, ks, vs.
void rope_heads(uint h, uint kvh, uint lid) {
    const uint qd = p.nh * p.hd, kvd = p.nkv * p.hd, half_d = p.hd / 2, pos = p.n_past;
    float      inv_q = 1.0, inv_k = 1.0;
    if (QKNORM == 1) {
        inv_q = inv_rms(h * p.hd, p.hd, lid);
        inv_k = inv_rms(qd + kvh * p.hd, p.hd, lid);
    } else if (QKNORM == 2) {
        inv_q = inv_rms(0, qd, lid);
        inv_k = inv_rms(qd, kvd, lid);
    }
    for (uint i = lid; i < half_d; i += WG) {
        const float c = rope[(pos * half_d + i) * 2], s = rope[(pos * half_d + i) * 2 + 1];
        for (uint is_k = 0; is_k < 2; ++is_k) {
            const uint e = is_k != 0 ? qd + kvh * p.hd + i : h * p.hd + i; // offset of x1 in q | k
            float      a = qkv[e], b = qkv[e + half_d];
            if (QKNORM != 0) {
                const float inv = is_k != 0 ? inv_k : inv_q;
                const uint  gi  = QKNORM == 1 ? i : e - is_k * qd; // weight index of x1
                const uint  gj  = QKNORM == 1 ? i + half_d : gi + half_d;
                a = (is_k != 0 ? kn[gi] : qn[gi]) * (a * inv);
                b = (is_k != 0 ? kn[gj] : qn[gj]) * (b * inv);
            }
            if (CLIP) {
                a = clamp(a, -p.clip, p.clip);
                b = clamp(b, -p.clip, p.clip);
            }
            const float r1 = a * c - b * s, r2 = b * c + a * s;
            if (is_k == 0) {
                qs[i]          = r1;
                qs[i + half_d] = r2;
            } else {
                ks[i]          = r1;
                ks[i + half_d] = r2;
            }
        }
    }
    for (uint i = lid; i < p.hd; i += WG) {
        float v = qkv[qd + kvd + kvh * p.hd + i];
        if (CLIP) v = clamp(v, -p.clip, p.clip);
        vs[i] = v;
    }
    barrier();
    if (h % (p.nh / p.nkv) == 0)
        for (uint i = lid; i < p.hd; i += WG) {
            kc[pos * kvd + kvh * p.hd + i] = ks[i];
            vc[pos * kvd + kvh * p.hd + i] = vs[i];
        }
}

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    if (t >= p.n) return;
    const uint lid = gl_LocalInvocationID.x;
    const uint qd = p.nh * p.hd, kvd = p.nkv * p.hd, kvh = h / (p.nh / p.nkv);
    const uint len = p.n_past + t + 1;
    const uint qo = t * qd + h * p.hd, so = (t * p.nh + h) * p.n_ctx;
    if (ROPE) rope_heads(h, kvh, lid); // n = 1
    float mx = -1.0 / 0.0;
    for (uint k = lid; k < len; k += WG) {
        float d = 0.0;
        if (ROPE && k == p.n_past)
            for (uint i = 0; i < p.hd; ++i) d += qs[i] * ks[i];
        else if (ROPE)
            for (uint i = 0; i < p.hd; ++i) d += qs[i] * kc[k * kvd + kvh * p.hd + i];
        else
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
        for (uint k = 0; k < len; ++k)
            acc += (sc[so + k] * inv) * (ROPE && k == p.n_past ? vs[i] : vc[k * kvd + kvh * p.hd + i]);
        o[qo + i] = acc;
    }
}
