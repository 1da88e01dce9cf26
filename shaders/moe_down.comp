#version 450
// Down projection of the chosen experts, weighted and summed: y[t, d] (+)= Σ_j w[t, j] · (h[t·k + j] · Wd[e_j, d]),
// e_j = ids[t·k + j]. The sum runs over j in order, 0 + w_0·y_0 + w_1·y_1 + …, and the router writes the slots sorted
// by expert id, so this is the CPU's combine order and does not depend on the batch. Grid x = row d, y = token.
// RESIDUAL adds the sum into y (the residual stream) when there is no shared expert to add after it.
// KBVQ (engine/cpu/kbvq_linear.h): the weights are the VQ residuals; the basis B (H, r), γ and β are shared by the
// experts, so Σ_j w_j (γ ⊙ (R_e h_j + B C_e h_j) + β) = γ ⊙ (Σ_j w_j R_e h_j + B v) + β · Σ_j w_j with
// v (n, r) = Σ_j w_j C_e h_j computed before this dispatch; the affine (binding 8, f32): B (H, r), γ (H), β (H).
// A set split by rows (model_ops.h QWeights) is applied one part per dispatch: rows [d0, d0 + rows) of every expert.
// SHARED: the shared expert's down in the same dispatch, from a second weight set of any format (bindings 9–11,
// qweight_second.glsl; (1, H, F')) over hs (n, F'): y (+)= routed + sigmoid(gate[t·gate_stride + gate_off]) · hs·Wdᵀ
// (GATED; else weight 1), the order of the CPU and of the separate shared-down linear it replaces.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(constant_id = 1) const uint FORMAT = 0;
layout(constant_id = 2) const uint BITS = 4;
layout(constant_id = 3) const bool RESIDUAL = false;
layout(constant_id = 4) const bool KBVQ = false;
layout(constant_id = 5) const bool SHARED = false;
layout(constant_id = 6) const bool GATED = false;
layout(constant_id = 15) const uint FORMAT2 = 0; // the shared expert's set
layout(constant_id = 16) const uint BITS2 = 4;
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Hb { float h[]; };  // (n·k, F)
layout(std430, binding = 1) readonly buffer I { int ids[]; };   // (n, k)
layout(std430, binding = 2) readonly buffer W { float w[]; };   // (n, k)
layout(std430, binding = 3) buffer Y { float y[]; };            // (n, H)
#define QW_BINDING 4
#define QW_X(xo, j) h[(xo) + (j)]
#include "qweight.glsl"
layout(std430, binding = 7) readonly buffer V { float v[]; };   // (n, r) or a dummy
layout(std430, binding = 8) readonly buffer A { float aff[]; }; // B (H, r), γ (H), β (H), or a dummy
layout(std430, binding = 12) readonly buffer HS { float hs[]; };  // (n, F') with SHARED, else a dummy
layout(std430, binding = 13) readonly buffer G { float gate[]; }; // (n, gate_stride) logits with GATED, else a dummy
#undef QW_X
#define QW_X(xo, j) hs[(xo) + (j)]
#define QW2_BINDING 9
#include "qweight_second.glsl"
layout(push_constant) uniform P {
    uint n, k, in_f, out_f, row_bytes, n_groups, group, rank, d0, rows;
    uint ff2, row_bytes2, n_groups2, group2, gate_stride, gate_off; // the shared expert's set
} p;

shared float red[WG];

void main() {
    const uint dl = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    if (dl >= p.rows || t >= p.n) return;
    const uint d = p.d0 + dl;
    const uint lid = gl_LocalInvocationID.x;
    float      out_v = 0.0, w_sum = 0.0;
    for (uint j = 0; j < p.k; ++j) {
        const uint e = uint(ids[t * p.k + j]), r = e * p.rows + dl, hb = (t * p.k + j) * p.in_f;
        float      acc = 0.0;
        if (FORMAT == 3 && p.group % 32u == 0u)
            for (uint wi = lid; wi < (p.in_f + 31u) / 32u; wi += WG)
                acc += qdot_binary_word(r, wi, hb, p.in_f, p.row_bytes, p.n_groups, p.group);
        else
            for (uint i = lid; i < p.in_f; i += WG)
                acc += qweight(r, i, p.in_f, p.rows, p.row_bytes, p.n_groups, p.group) * h[hb + i];
        red[lid] = acc;
        barrier();
        for (uint s = WG / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] += red[lid + s];
            barrier();
        }
        out_v += w[t * p.k + j] * red[0];
        w_sum += w[t * p.k + j];
        barrier();
    }
    float sh = 0.0; // the shared expert's row d, as linear.comp sums it
    if (SHARED) {
        float acc = 0.0;
        if (FORMAT2 == 3 && p.group2 % 32u == 0u)
            for (uint wi = lid; wi < (p.ff2 + 31u) / 32u; wi += WG)
                acc += qdot_binary_word2(d, wi, t * p.ff2, p.ff2, p.row_bytes2, p.n_groups2, p.group2);
        else
            for (uint i = lid; i < p.ff2; i += WG)
                acc += qweight2(d, i, p.ff2, p.out_f, p.row_bytes2, p.n_groups2, p.group2) * hs[t * p.ff2 + i];
        red[lid] = acc;
        barrier();
        for (uint s = WG / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] += red[lid + s];
            barrier();
        }
        sh = red[0];
    }
    if (lid == 0) {
        if (KBVQ) {
            float c = 0.0;
            for (uint q = 0; q < p.rank; ++q) c += aff[d * p.rank + q] * v[t * p.rank + q];
            const uint ab = p.out_f * p.rank;
            out_v         = aff[ab + d] * (out_v + c) + aff[ab + p.out_f + d] * w_sum;
        }
        if (SHARED) out_v = out_v + (GATED ? 1.0 / (1.0 + exp(-gate[t * p.gate_stride + p.gate_off])) * sh : sh);
        const uint o = t * p.out_f + d;
        y[o]         = RESIDUAL ? y[o] + out_v : out_v;
    }
}
